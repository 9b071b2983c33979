"""Cauchy backends: each equals an explicit float64 sum, and the torch backend in value and gradient."""
import math

import pytest
import torch
from helpers import MaxTensor

from ssmkit.errors import UserError
from ssmkit.ops import backends, cauchy
from ssmkit.ops.dispatch import BackendUnavailable

SIZES = [(1, 1), (3, 7), (4, 16), (5, 33), (8, 64)]  # (N, L), odd and even


def explicit(v, z, w, conj):
    """r[b, l] = sum_n v/(z_l - w) (+ conj terms), one term at a time in float64 (independent of ssmkit)."""
    out = torch.zeros(*v.shape[:-1], z.shape[0], dtype=torch.complex128)
    for n in range(v.shape[-1]):
        for l in range(z.shape[0]):
            term = v[..., n] / (z[l] - w[..., n])
            if conj:
                term = term + v[..., n].conj() / (z[l] - w[..., n].conj())
            out[..., l] += term
    return out


def problem(N, L, seed=0, batch=(2, 3)):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*batch, N, dtype=torch.complex128, generator=g)
    w = torch.complex(-torch.rand(batch[-1], N, dtype=torch.float64, generator=g) - 0.1,
                      torch.randn(batch[-1], N, dtype=torch.float64, generator=g))
    z = torch.exp(2j * math.pi * torch.arange(L, dtype=torch.float64) / max(L, 2)).to(torch.complex128)
    return v, z, w


def grads(fn, v, z, w, conj, seed=1):
    v, z, w = (t.clone().requires_grad_() for t in (v, z, w))
    out = fn(v, z, w, conj)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return out.detach(), torch.autograd.grad(out, (v, z, w), g)


@pytest.mark.parametrize("N,L", SIZES)
@pytest.mark.parametrize("conj", [True, False])
def test_torch_backend_matches_explicit_sum(N, L, conj):
    v, z, w = problem(N, L)
    torch.testing.assert_close(cauchy.cauchy_torch(v, z, w, conj), explicit(v, z, w, conj))


@pytest.mark.parametrize("N,L", SIZES)
@pytest.mark.parametrize("conj", [True, False])
def test_chunked_equals_torch_with_small_chunks(N, L, conj):
    v, z, w = problem(N, L)
    ref, ref_g = grads(cauchy.cauchy_torch, v, z, w, conj)
    # budget 2*3*N*3 elements: blocks of 3 positions, so L = 7, 16, 33, 64 cross block boundaries
    fn = lambda *a: cauchy.cauchy_chunked(*a, budget=2 * 3 * N * 3)  # noqa: E731
    out, out_g = grads(fn, v, z, w, conj)
    torch.testing.assert_close(out, ref)
    for a, b in zip(out_g, ref_g):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("N,L", [(3, 7), (8, 33)])
@pytest.mark.parametrize("conj", [True, False])
def test_keops_equals_torch_on_cpu(N, L, conj):
    if not backends.probe_keops().ok:
        pytest.skip(backends.probe_keops().reason)
    v, z, w = problem(N, L)
    ref, ref_g = grads(cauchy.cauchy_torch, v, z, w, conj)
    v_, w_ = v.clone().requires_grad_(), w.clone().requires_grad_()
    out = cauchy.cauchy_keops(v_, z, w_, conj)
    torch.testing.assert_close(out.detach(), ref)
    if conj and N == 3:  # the gradient formulas compile once each; one size is enough
        g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        dv, dw = torch.autograd.grad(out, (v_, w_), g)
        torch.testing.assert_close(dv, ref_g[0])
        torch.testing.assert_close(dw, ref_g[2])


@pytest.mark.parametrize("N,L", SIZES)
@pytest.mark.parametrize("conj", [True, False])
def test_extension_equals_torch(N, L, conj):
    probe = backends.probe_extension()
    if not probe.ok:
        pytest.skip(f"the compiled extension is not built here: {probe.reason}")
    v, z, w = problem(N, L)
    ref, ref_g = grads(cauchy.cauchy_torch, v, z, w, conj)
    v_, w_ = v.clone().requires_grad_(), w.clone().requires_grad_()
    out = cauchy.cauchy_extension(v_, z, w_, conj)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    dv, dw = torch.autograd.grad(out, (v_, w_), g)
    torch.testing.assert_close(out.detach(), ref)
    torch.testing.assert_close(dv, ref_g[0])  # w is broadcast over the leading dim: dw is summed
    torch.testing.assert_close(dw, ref_g[2])




def test_chunked_memory_is_bounded_forward_and_backward():
    B, N, L, budget = 8, 64, 4096, 1 << 14
    v = torch.randn(B, N, dtype=torch.complex64, requires_grad=True)
    w = torch.complex(-torch.rand(B, N), torch.randn(B, N)).requires_grad_()
    z = torch.exp(2j * math.pi * torch.arange(L) / L).to(torch.complex64)
    with MaxTensor() as m:
        cauchy.cauchy_chunked(v, z, w, True, budget=budget).abs().sum().backward()
    full = B * N * L  # what the torch backend materialises (2M elements), several times over
    assert m.max_numel <= max(budget, B * L)
    assert m.max_numel * 32 <= full
    assert v.grad is not None and torch.isfinite(v.grad).all()


def test_unknown_backend_names_the_choices():
    v, z, w = problem(2, 3)
    with pytest.raises(ValueError, match="chunked"):
        cauchy.cauchy(v, z, w, backend="cuda")


def test_unavailable_backend_is_a_one_line_error_naming_why_and_the_alternatives(monkeypatch):
    backends.reset()
    monkeypatch.setitem(backends._probes, "keops", backends.Probe(False, "pretend pykeops is not installed"))
    v, z, w = problem(3, 5)
    with pytest.raises(UserError, match=r"cauchy: backend 'keops' cannot run this call on cpu \(pretend pykeops is "
                                        r"not installed\); choose auto or .*torch or chunked") as e:
        cauchy.cauchy(v, z, w, backend="keops")
    assert isinstance(e.value, BackendUnavailable) and "\n" not in str(e.value)
    torch.testing.assert_close(cauchy.cauchy(v, z, w), explicit(v, z, w, True))  # auto still runs
    backends.reset()


def test_auto_logs_its_choice_once(caplog):
    backends.reset()
    v, z, w = problem(3, 5)
    with caplog.at_level("INFO", logger="ssmkit.ops"):
        cauchy.cauchy(v, z, w)
        cauchy.cauchy(v, z, w)
    lines = [r.message for r in caplog.records if r.message.startswith("cauchy on cpu")]
    assert len(lines) == 1, lines
    expected = "extension" if backends.probe_extension().ok else "torch"
    assert f"using the {expected} backend" in lines[0]


def test_extension_refuses_z_gradient_and_auto_falls_back():
    v, z, w = problem(3, 5)
    z = z.clone().requires_grad_()
    assert cauchy.choose_backend(v, z, w, "auto") in ("torch", "chunked")
    why = "no gradient with respect to z" if backends.probe_extension().ok else "ssmkit_cauchy"
    with pytest.raises(BackendUnavailable, match=f"backend 'extension' cannot run .*{why}"):
        cauchy.choose_backend(v, z, w, "extension")
