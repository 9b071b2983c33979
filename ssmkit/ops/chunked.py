"""Evaluating a function of positions block by block with bounded memory, forward and backward (the ``chunked``
Cauchy and Vandermonde implementations)."""
from __future__ import annotations

from collections.abc import Callable

import torch


def chunked_positions(fn: Callable[..., torch.Tensor], L: int, chunk: int, *tensors: torch.Tensor) -> torch.Tensor:
    """Evaluates ``fn(l0, n, *tensors) -> (..., n)`` over l0 = 0, chunk, 2*chunk, ... and concatenates.

    Memory is bounded in backward too: nothing of a chunk's graph is kept; backward recomputes each
    chunk under autograd, takes its vector-Jacobian product and drops it before the next chunk.
    """
    return _Chunked.apply(fn, L, chunk, *tensors)


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, L, chunk, *tensors):
        ctx.fn, ctx.L, ctx.chunk = fn, L, chunk
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            return torch.cat([fn(l0, min(chunk, L - l0), *tensors) for l0 in range(0, L, chunk)], dim=-1)

    @staticmethod
    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        grads = [None] * len(tensors)
        inputs = [t.detach().requires_grad_(n) for t, n in zip(tensors, needs)]
        wrt = [t for t, n in zip(inputs, needs) if n]
        if not wrt:
            return (None, None, None, *grads)
        acc = [torch.zeros_like(t) for t in wrt]
        for l0 in range(0, ctx.L, ctx.chunk):
            n = min(ctx.chunk, ctx.L - l0)
            with torch.enable_grad():
                out = ctx.fn(l0, n, *inputs)
                parts = torch.autograd.grad(out, wrt, grad[..., l0 : l0 + n], allow_unused=True)
            for a, p in zip(acc, parts):
                if p is not None:
                    a += p
        it = iter(acc)
        grads = [next(it) if n else None for n in needs]
        return (None, None, None, *grads)
