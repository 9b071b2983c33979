"""ssmkit's compiled kernels: the Cauchy product (``ssmkit.ops.cauchy`` wraps it in autograd; use that instead)
and Mamba's selective scan on the CPU (wrapped by ``ssmkit.ops.selective_scan``).

``cauchy_fwd(v, z, w, symmetric)``: v (batch, N), w (P, N) with P dividing batch (row b uses w row b % P),
z (L,) complex -> (batch, L).
``cauchy_bwd(v, z, w, grad, symmetric)`` -> [dv (batch, N), dw (P, N) summed over the rows sharing it].
``selective_scan_fwd(u, delta, A, Bt, Ct, h0, chunk)`` -> [y, h_last, chunk start states] and
``selective_scan_bwd(u, delta, A, Bt, Ct, starts, gy, gh, chunk)`` -> [du, ddelta, dA, dBt, dCt, dh0]: CPU only,
float32/float64, B and C transposed to (batch, L, N) (``csrc/selective_scan.h``); ``selective_scan_isa()``: the
compiled variant in use (``avx2+fma`` or ``baseline``).
``causal_conv_silu_fwd(x, w, bias, prev)`` / ``causal_conv_silu_bwd(x, w, bias, prev, gy)``: Mamba's causal
depthwise convolution and SiLU, CPU only (``csrc/causal_conv.h``).
``has_cuda()``: whether the CUDA part was compiled. ``shares_poles``: True (w may have fewer rows than v).
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from ssmkit_cauchy._C import (
    causal_conv_silu_bwd,
    causal_conv_silu_fwd,
    cauchy_bwd,
    cauchy_fwd,
    has_cuda,
    selective_scan_bwd,
    selective_scan_fwd,
    selective_scan_isa,
    shares_poles,
)

__all__ = ["cauchy_fwd", "cauchy_bwd", "causal_conv_silu_fwd", "causal_conv_silu_bwd", "has_cuda", "selective_scan_fwd", "selective_scan_bwd", "selective_scan_isa",
           "shares_poles"]
