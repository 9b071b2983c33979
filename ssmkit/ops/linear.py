"""A Linear layer's map applied channels-first: (B, in, L) -> (B, out, L) as one batched GEMM.

``channels_first_linear(x, weight, bias)`` computes ``weight @ x[b] + bias`` for every b with ``torch.bmm`` /
``torch.baddbmm`` on the weight expanded over the batch (a view, no copy): no transposes of the activations,
and the gradient arrives in the layout the activation was saved in. On CPU this is ~1.5x faster forward+backward
than ``nn.Linear`` on a transposed view and 1.3-2.9x faster than the equivalent 1x1 ``conv1d`` (mkldnn) at the
shapes of the S4/Mamba layers (docs/performance.md; ``scripts/bench_output_map.py``).
"""
from __future__ import annotations

import torch


def channels_first_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, in, L), weight (out, in) (an ``nn.Linear``'s), bias (out,) or None -> (B, out, L)."""
    w = weight.expand(x.shape[0], *weight.shape)
    if bias is None:
        return torch.bmm(w, x)
    return torch.baddbmm(bias.unsqueeze(-1).expand(x.shape[0], weight.shape[0], x.shape[-1]), w, x)
