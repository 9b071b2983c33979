"""Vandermonde backends: each equals an explicit float64 sum, and the torch backend in value and gradient."""
import pytest
import torch
from helpers import MaxTensor

from ssmkit.ops import backends, vandermonde
from ssmkit.ops.dispatch import BackendUnavailable

SIZES = [(1, 1), (3, 7), (4, 16), (5, 33), (8, 100)]  # (N, L)


def explicit(v, x, L):
    """K[..., l] = sum_n v_n exp(x_n)^l by repeated multiplication, in float64."""
    out = torch.zeros(*torch.broadcast_shapes(v.shape, x.shape)[:-1], L, dtype=torch.complex128)
    power = torch.ones_like(x)
    for l in range(L):
        out[..., l] = (v * power).sum(-1)
        power = power * torch.exp(x)
    return out


def problem(N, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(2, 3, N, dtype=torch.complex128, generator=g)  # (C, H, N)
    x = torch.complex(-torch.rand(3, N, dtype=torch.float64, generator=g) * 0.2,
                      torch.randn(3, N, dtype=torch.float64, generator=g))  # (H, N)
    return v, x


def grads(fn, v, x, L):
    v, x = v.clone().requires_grad_(), x.clone().requires_grad_()
    out = fn(v, x, L)
    g = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    return out.detach(), torch.autograd.grad(out, (v, x), g)


@pytest.mark.parametrize("N,L", SIZES)
def test_torch_backend_matches_explicit_sum(N, L):
    v, x = problem(N)
    torch.testing.assert_close(vandermonde.log_vandermonde_torch(v, x, L), explicit(v, x, L))


@pytest.mark.parametrize("N,L", SIZES)
@pytest.mark.parametrize(
    "shared,budget",
    [(False, vandermonde.CHUNK_ELEMENTS), (False, 6 * 3 * 6),  # one block; blocks of 9
     (True, vandermonde.CHUNK_ELEMENTS), (True, 5)],  # x (N,) shared by all rows (DLR): blocks of 5 // N or 1
)
def test_chunked_equals_torch(N, L, shared, budget):
    v, x = problem(N)
    x = x[0] if shared else x
    ref, ref_g = grads(vandermonde.log_vandermonde_torch, v, x, L)
    out, out_g = grads(lambda *a: vandermonde.log_vandermonde_chunked(*a, budget=budget * N), v, x, L)
    torch.testing.assert_close(out, explicit(v, x, L))
    torch.testing.assert_close(out, ref)
    for a, b in zip(out_g, ref_g):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("N,L", [(3, 7), (8, 100)])
def test_keops_equals_torch_on_cpu(N, L):
    if not backends.probe_keops().ok:
        pytest.skip(backends.probe_keops().reason)
    v, x = problem(N)
    ref, ref_g = grads(vandermonde.log_vandermonde_torch, v, x, L)
    out, out_g = grads(vandermonde.log_vandermonde_keops, v, x, L)
    torch.testing.assert_close(out, ref)
    for a, b in zip(out_g, ref_g):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("N,L", SIZES)
def test_transpose_is_the_state_of_the_recurrence(N, L):
    g = torch.Generator().manual_seed(2)
    v, x = problem(N)
    v = v[0]  # (H, N)
    u = torch.randn(4, 3, L, dtype=torch.float64, generator=g)  # (B, H, L)
    state = torch.zeros(4, 3, N, dtype=torch.complex128)
    for l in range(L):  # s_l = exp(x) s_{l-1} + v u_l
        state = torch.exp(x) * state + v * u[..., l : l + 1]
    torch.testing.assert_close(vandermonde.log_vandermonde_transpose(u, v, x, L), state)


def test_chunked_memory_is_bounded_forward_and_backward():
    H, N, L, budget = 8, 64, 1 << 13, 1 << 14
    v = torch.randn(H, N, dtype=torch.complex64, requires_grad=True)
    x = torch.complex(-torch.rand(H, N) * 1e-3, torch.randn(H, N)).requires_grad_()
    with MaxTensor() as m:
        vandermonde.log_vandermonde_chunked(v, x, L, budget=budget).real.sum().backward()
    full = H * N * L  # 4M elements for the torch backend
    assert m.max_numel <= max(budget, 2 * H * L)  # output-sized tensors (as real pairs) are allowed
    assert m.max_numel * 16 <= full
    assert torch.isfinite(x.grad).all()


def test_extension_name_is_refused_for_vandermonde():
    """S4 passes one backend name to both of its ops; the extension has no Vandermonde kernel: one line saying so."""
    v, x = problem(3)
    with pytest.raises(BackendUnavailable, match="no Vandermonde kernel .*use chunked") as e:
        vandermonde.log_vandermonde(v, x, 5, backend="extension")
    assert "\n" not in str(e.value)


def test_unknown_backend_names_the_choices():
    v, x = problem(3)
    with pytest.raises(ValueError, match="chunked"):
        vandermonde.log_vandermonde(v, x, 5, backend="cuda")


def test_float32_long_kernels_keep_their_phase():
    """At L = 65536 a float32 phase theta*l loses ~1e-3 rad; the chunked backend forms it in float64."""
    import math as _math

    N, L = 16, 65536
    theta = 2 * _math.pi * torch.arange(N) / N
    x = torch.complex(torch.full((N,), -1e-5), theta.float())
    v = torch.randn(N, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    ell = torch.arange(L, dtype=torch.float64)
    ref = (v.to(torch.complex128)[:, None] * torch.exp(x.to(torch.complex128)[:, None] * ell)).sum(0)
    got = vandermonde.log_vandermonde(v, x, L, backend="chunked")
    assert ((got - ref).abs().norm() / ref.abs().norm()).item() < 1e-4
    u = torch.randn(L, generator=torch.Generator().manual_seed(1))
    ref_state = v.to(torch.complex128) * (u.double() * torch.exp(x.to(torch.complex128)[:, None] * (L - 1 - ell))).sum(1)
    state = vandermonde.log_vandermonde_transpose(u, v, x, L)
    assert ((state - ref_state).abs().norm() / ref_state.abs().norm()).item() < 1e-4


def test_shared_nodes_memory_is_bounded_forward_and_backward():
    H, N, L, budget = 2, 256, 1 << 13, 1 << 14  # the torch backend would hold N x L = 2M entries
    v = torch.randn(H, N, dtype=torch.complex64, requires_grad=True)
    x = torch.complex(-torch.rand(N) * 1e-3, torch.randn(N)).requires_grad_()
    with MaxTensor() as m:
        vandermonde.log_vandermonde_chunked(v, x, L, budget=budget).real.sum().backward()
    assert m.max_numel <= max(budget, 2 * H * L)
    assert m.max_numel * 16 <= N * L
    assert torch.isfinite(x.grad).all()
