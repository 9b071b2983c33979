"""ssmkit's compiled Cauchy product. ``ssmkit.ops.cauchy`` wraps it in autograd; use that instead.

``cauchy_fwd(v, z, w, symmetric)``: v (batch, N), w (P, N) with P dividing batch (row b uses w row b % P),
z (L,) complex -> (batch, L).
``cauchy_bwd(v, z, w, grad, symmetric)`` -> [dv (batch, N), dw (P, N) summed over the rows sharing it].
``has_cuda()``: whether the CUDA part was compiled. ``shares_poles``: True (w may have fewer rows than v).
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from ssmkit_cauchy._C import cauchy_bwd, cauchy_fwd, has_cuda, shares_poles

__all__ = ["cauchy_fwd", "cauchy_bwd", "has_cuda", "shares_poles"]
