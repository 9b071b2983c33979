"""ssmkit's compiled Cauchy product. ``ssmkit.ops.cauchy`` wraps it in autograd; use that instead.

``cauchy_fwd(v, z, w, symmetric)``: v, w (batch, N), z (L,) complex -> (batch, L).
``cauchy_bwd(v, z, w, grad, symmetric)`` -> [dv, dw] (batch, N).
``has_cuda()``: whether the CUDA part was compiled.
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from ssmkit_cauchy._C import cauchy_bwd, cauchy_fwd, has_cuda

__all__ = ["cauchy_fwd", "cauchy_bwd", "has_cuda"]
