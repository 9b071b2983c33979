"""Mamba's short causal depthwise convolution followed by SiLU: x (B, E, L) -> silu(conv(x)) (B, E, L).

    y[b, e, t] = silu(bias[e] + sum_k w[e, k] x_full[b, e, t + k]),      x_full = [prev | x]

with a filter of K taps per channel and prev (B, E, K - 1) the K - 1 inputs before x (the convolution's part of
Mamba's recurrent state; zeros for a sequence that starts here).

Backends: ``torch`` (``F.conv1d`` with ``groups=E`` on the padded input, then ``F.silu``) and ``extension``,
ssmkit's compiled kernel (``extensions/cauchy/csrc/causal_conv_cpu.cpp``): one pass per (batch, channel) row,
forward and backward, instead of a padded copy, the convolution and the SiLU each with its own backward pass
(~3x faster forward+backward at B 8, E 256, L 4096; docs/performance.md). ``auto`` takes the extension for CPU
tensors when it is built and passed its self-test against the torch path, else torch (CUDA): the table :data:`OP`,
chosen from by ``ssmkit/ops/dispatch.py``. It computes in
float64 for float64 inputs and in float32 otherwise (bf16/fp16 inputs under autocast give a float32 output, as
the selective scan after it does). Both are tested against the sum written out in float64 in
``tests/ops/test_causal_conv.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops import backends, dispatch


def _torch_conv(x, weight, bias, prev):
    if x.shape[-1] == 0:
        return x * 0
    xp = torch.cat([prev.to(x.dtype), x], dim=-1)
    return F.silu(F.conv1d(xp, weight.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype), groups=x.shape[1]))


class _ExtensionConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, prev):
        mod = backends.probe_extension().module
        x, weight, prev = x.contiguous(), weight.contiguous(), prev.contiguous()
        bias = None if bias is None else bias.contiguous()
        ctx.save_for_backward(x, weight, bias, prev)
        ctx.mod = mod
        return mod.causal_conv_silu_fwd(x, weight, bias, prev)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, weight, bias, prev = ctx.saved_tensors
        dx, dw, db, dprev = ctx.mod.causal_conv_silu_bwd(x, weight, bias, prev, gy.contiguous())
        return dx, dw, db, dprev


def _extension_conv(x, weight, bias, prev):
    """float64 stays float64; anything else (float32, and bf16/fp16 under autocast) is computed in float32."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    cast = [None if t is None else t.to(dtype) for t in (x, weight, bias, prev)]
    return _ExtensionConv.apply(*cast)


def _self_test_error(name: str, device: torch.device) -> float:
    """Max difference (relative to the values' scale) of backend ``name`` against torch: values and gradients."""
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(2, 5, 37, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g),
            torch.randn(2, 5, 3, generator=g)]
    return dispatch.max_relative_error(OP.fns[name], _torch_conv, [t.to(device) for t in args],
                                       lambda y: y.square().sum())


#: the causal convolution's backends, in the order ``auto`` prefers them
OP = dispatch.Op("causal_conv", "causal-convolution", [
    dispatch.Impl("extension", _extension_conv, "fused C++ convolution + SiLU", devices=("cpu",),
                  probe=backends.extension_kernel("causal_conv_silu_fwd", "causal convolution"),
                  self_test=lambda d: _self_test_error("extension", d), tol=1e-5),
    dispatch.Impl("torch", _torch_conv, "conv1d + silu"),
], example=dispatch.float32_call, example_text="Mamba, float32")
BACKENDS = OP.names


def _extension_reason() -> str | None:
    """None if the extension's fused convolution can run on the CPU, else why not."""
    return OP.why_not("extension", dispatch.float32_call(torch.device("cpu")))


def choose_backend(x: torch.Tensor, backend: str = "auto") -> str:
    """The backend :func:`causal_conv1d_silu` runs for x (``ssmkit/ops/dispatch.py``): ``auto`` takes the extension
    on CPU tensors where it runs; a name that cannot run x is a one-line ``BackendUnavailable``."""
    return OP.choose(backend, dispatch.Call(x.device, frozenset((x.dtype,))))


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       prev: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """silu(causal depthwise conv(x)): x (B, E, L), weight (E, K), bias (E,) or None, prev (B, E, K - 1) or None
    (zeros) -> (B, E, L) in x's dtype."""
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d_silu: x must be (B, E, L) and weight (E, K), got {tuple(x.shape)} and {tuple(weight.shape)}")
    k1 = weight.shape[1] - 1
    if prev is None:
        prev = x.new_zeros(x.shape[0], x.shape[1], k1)
    elif prev.shape != (x.shape[0], x.shape[1], k1):
        raise ValueError(f"causal_conv1d_silu: prev must be (B, E, K - 1) = {(x.shape[0], x.shape[1], k1)}, got {tuple(prev.shape)}")
    return OP.fns[choose_backend(x, backend)](x, weight, bias, prev)


def last_inputs(x: torch.Tensor, prev: torch.Tensor | None, k1: int) -> torch.Tensor:
    """The last k1 inputs of [prev | x] (B, E, k1): the convolution's state after x (prev None: zeros)."""
    if x.shape[-1] >= k1:
        return x[..., x.shape[-1] - k1:]
    prev = x.new_zeros(*x.shape[:2], k1) if prev is None else prev.to(x.dtype)
    return torch.cat([prev, x], dim=-1)[..., -k1:] if k1 else x[..., :0]
