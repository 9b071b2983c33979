"""Dense linear solves that survive the CPU LAPACK of the torch wheels.

torch 2.14.1's CPU wheels call oneMKL's *batched* LU (``getrf`` with a batch) for ``torch.linalg.solve`` on a
(..., n, n) input. With ``torch.get_num_threads() >= 2`` and n >= 256 that call prints
"Intel oneMKL ERROR: Parameter 6 was incorrect on entry to ZLASWP" (DLASWP/CLASWP for the other dtypes), and then
either returns garbage or spins for minutes (measured on the 2-core CI machine: a (2, 512, 512) float64 solve ran
3 min 20 s; S4 with ``d_state=256`` and H > 1 hits it in its bilinear discretisation). One matrix at a time the
same LAPACK is correct and fast (a 512 x 512 complex128 solve: 0.1 s). So on the CPU, batches of large systems are
solved one matrix at a time; everything else goes to ``torch.linalg.solve`` unchanged.
"""
from __future__ import annotations

import torch

# With 2 threads the batched path failed from n = 130 up and was correct to n = 129 (measured, complex128); the
# threshold keeps a margin for machines with more threads. The loop costs one Python call per matrix, so small
# systems (S4's default N = 64) keep the batched call.
BATCHED_CPU_MAX_N = 64


def solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve(A, B)`` for A (..., n, n) and B (..., n, k) (batch dimensions broadcast), computed
    one matrix at a time on the CPU when the batch holds more than one system of size n > BATCHED_CPU_MAX_N."""
    n = A.shape[-1]
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    if A.device.type != "cpu" or n <= BATCHED_CPU_MAX_N or len(batch) == 0 or batch.numel() <= 1:
        return torch.linalg.solve(A, B)
    A_flat = A.expand(*batch, n, n).reshape(-1, n, n)
    B_flat = B.expand(*batch, *B.shape[-2:]).reshape(-1, *B.shape[-2:])
    out = torch.stack([torch.linalg.solve(a, b) for a, b in zip(A_flat.unbind(0), B_flat.unbind(0))])
    return out.reshape(*batch, *B.shape[-2:])
