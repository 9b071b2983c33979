"""Mamba's causal depthwise convolution + SiLU (ssmkit.ops.causal_conv) against the sum written out in float64
here, for the torch path and the extension's kernel (its AVX2+FMA and its baseline variant)."""
import pytest
import torch
from helpers import needs_ext

from ssmkit.ops import backends
from ssmkit.ops.causal_conv import causal_conv1d_silu, choose_backend, last_inputs
from ssmkit.ops.dispatch import BackendUnavailable

_ext = backends.probe_extension()


@pytest.fixture
def backend(mamba_backend):
    """torch, the extension, the extension's baseline variant (tests/ops/conftest.py)."""
    return mamba_backend


def explicit(x, w, bias, prev):
    """y[b, e, t] = silu(bias[e] + sum_k w[e, k] x_full[b, e, t + k]), x_full = [prev | x], term by term."""
    B, E, L = x.shape
    K = w.shape[1]
    full = torch.cat([prev, x], -1).double()
    pre = torch.zeros(B, E, L, dtype=torch.float64) + (0 if bias is None else bias.double()[:, None])
    for k in range(K):
        pre = pre + w.double()[:, k, None] * full[..., k:k + L]
    return pre * torch.sigmoid(pre)


def problem(B=2, E=5, L=37, K=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, E, L, generator=g, dtype=dtype), torch.randn(E, K, generator=g, dtype=dtype),
            torch.randn(E, generator=g, dtype=dtype), torch.randn(B, E, K - 1, generator=g, dtype=dtype))


@pytest.mark.parametrize("L, K", [(37, 4), (8, 4), (3, 4), (50, 1), (19, 2), (0, 4)])  # L below, at, past the vector width
@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_gradients_match_the_explicit_sum(L, K, with_bias, backend):
    x, w, bias, prev = (t.requires_grad_() for t in problem(L=L, K=K))
    bias = bias if with_bias else None
    y = causal_conv1d_silu(x, w, bias, prev, backend=backend)
    y_ref = explicit(x, w, bias, prev)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(y)
    wrt = [t for t in (x, w, bias, prev) if t is not None]
    kw = {"allow_unused": True, "materialize_grads": True}  # L = 0: nothing reads the filter
    for g, r in zip(torch.autograd.grad((y * gy).sum(), wrt, **kw), torch.autograd.grad((y_ref * gy).sum(), wrt, **kw)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_float32_within_rounding_of_float64(backend):
    x, w, bias, prev = problem(E=16, L=300, dtype=torch.float32)
    y = causal_conv1d_silu(x, w, bias, prev, backend=backend)
    y_ref = explicit(x, w, bias, prev)
    assert ((y.double() - y_ref).abs().max() / y_ref.abs().max()).item() < 1e-6


def test_bf16_input_is_computed_in_float32(backend):
    x, w, bias, prev = problem(E=8, L=64, dtype=torch.float32)
    y = causal_conv1d_silu(x.bfloat16(), w, bias, prev, backend=backend)
    y_ref = explicit(x.bfloat16().float(), w, bias, prev)
    if backend == "extension":
        assert y.dtype == torch.float32
        torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    else:  # torch's conv of a bf16 input with float32 weights casts them to bf16
        assert ((y.double() - y_ref).abs().max() / y_ref.abs().max()).item() < 2e-2


def test_no_prev_is_zeros_and_state_passing_equals_one_pass(backend):
    x, w, bias, _ = problem(L=40)
    y = causal_conv1d_silu(x, w, bias, backend=backend)
    torch.testing.assert_close(y, explicit(x, w, bias, torch.zeros(2, 5, 3, dtype=torch.float64)))
    cut = 17
    y1 = causal_conv1d_silu(x[..., :cut], w, bias, backend=backend)
    y2 = causal_conv1d_silu(x[..., cut:], w, bias, last_inputs(x[..., :cut], None, 3), backend=backend)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y)


def test_last_inputs_for_short_chunks():
    x, _, _, prev = problem(L=2)
    torch.testing.assert_close(last_inputs(x, prev, 3), torch.cat([prev, x], -1)[..., -3:])
    torch.testing.assert_close(last_inputs(x, None, 3)[..., 0], torch.zeros(2, 5, dtype=torch.float64))


def test_bad_inputs_and_unavailable_backends(monkeypatch):
    x, w, bias, prev = problem()
    with pytest.raises(ValueError, match=r"prev must be \(B, E, K - 1\)"):
        causal_conv1d_silu(x, w, bias, prev[..., 1:])
    with pytest.raises(ValueError, match=r"weight \(E, K\)"):
        causal_conv1d_silu(x, w[1:], bias)
    with pytest.raises(ValueError, match="unknown causal-convolution backend"):
        causal_conv1d_silu(x, w, bias, backend="cuda")
    backends.reset()
    monkeypatch.setitem(backends._probes, "extension", backends.Probe(True, "an old build", object()))
    with pytest.raises(BackendUnavailable, match=r"backend 'extension' cannot run this call on cpu \(the installed "
                                                 r"ssmkit_cauchy predates the causal convolution; rebuild it .*\); "
                                                 r"choose auto or torch$"):
        causal_conv1d_silu(x, w, bias, prev, backend="extension")
    assert choose_backend(x, "auto") == "torch"  # auto falls back, with the same numbers
    torch.testing.assert_close(causal_conv1d_silu(x, w, bias, prev), explicit(x, w, bias, prev))
    backends.reset()


@needs_ext
def test_extension_checks_its_arguments():
    mod = _ext.module
    x, w, bias, prev = problem(dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"prev must be \(batch, E, K - 1\)"):
        mod.causal_conv_silu_fwd(x, w, bias, prev[..., 1:].contiguous())
    with pytest.raises(RuntimeError, match="share one dtype"):
        mod.causal_conv_silu_fwd(x, w.double(), bias, prev)
    with pytest.raises(RuntimeError, match="gy must be"):
        mod.causal_conv_silu_bwd(x, w, bias, prev, x[..., 1:].contiguous())
