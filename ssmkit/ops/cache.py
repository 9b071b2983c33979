"""Compute a convolution kernel once per optimizer step, not once per micro-batch.

Under gradient accumulation every micro-batch of a step sees the same parameters, hence the same
kernel K. :class:`KernelCache` computes K once, hands out a detached leaf ``K'`` that each micro-batch
uses, lets ``K'.grad`` accumulate the micro-batches' gradients, and :meth:`KernelCache.flush` sends
that sum through K's graph into the parameters once (d loss/d theta = (dK/d theta)^T sum_i dloss_i/dK,
the chain rule, so the parameter gradients are exactly those of recomputing K per micro-batch).

With gradients off (eval, ``torch.no_grad``), the kernel is kept until ``key`` changes, so inference
computes it once in total. ``key`` must change whenever a parameter does (``Kernel.cache_key`` follows
in-place updates through ``tensor._version``).

Contract for the caller (``ConvMixer`` in ``ssmkit/mixers/conv.py`` / the training loop):
  * ``get(key, compute)`` in forward instead of ``compute()``;
  * ``flush_kernel_caches(model)`` after the last micro-batch's backward and before clipping /
    ``optimizer.step()``. A ``get`` with a new key flushes first, so a forgotten flush is never a wrong
    gradient for a past step, only a late one, and :meth:`flush` warns if gradients were left unsent.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable

import torch
import torch.nn as nn


class KernelCache:
    def __init__(self) -> None:
        self._key: Hashable | None = None
        self._graph: torch.Tensor | None = None  # K with its autograd graph (training)
        self._value: torch.Tensor | None = None  # what callers get: leaf (training) or K (no grad)
        self.computed = 0  # how many times ``compute`` ran (for tests and profiling)

    def get(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        training = torch.is_grad_enabled()
        fresh = self._value is not None and self._key == key and (self._graph is not None) == training
        if fresh:
            return self._value
        self.flush(warn=True)
        K = compute()
        self.computed += 1
        self._key = key
        if training and K.requires_grad:
            self._graph = K
            self._value = K.detach().requires_grad_()
        else:
            self._graph, self._value = None, K.detach()
        return self._value

    def flush(self, warn: bool = False) -> bool:
        """Back-propagates the accumulated kernel gradient into the parameters; True if it did."""
        sent = False
        if self._graph is not None and self._value is not None and self._value.grad is not None:
            if warn:
                warnings.warn("KernelCache: kernel gradients were flushed late (call flush_kernel_caches(model) "
                              "before optimizer.step())", RuntimeWarning, stacklevel=3)
            torch.autograd.backward(self._graph, self._value.grad)
            sent = True
        self._key = self._graph = self._value = None
        return sent

    def clear(self) -> None:
        """Drops the cached kernel without sending gradients."""
        self._key = self._graph = self._value = None


def flush_kernel_caches(model: nn.Module) -> int:
    """Flushes every :class:`KernelCache` held by a module of ``model`` (attribute ``kernel_cache``)."""
    n = 0
    for m in model.modules():
        cache = getattr(m, "kernel_cache", None)
        if isinstance(cache, KernelCache) and cache.flush():
            n += 1
    return n


def set_kernel_caching(model: nn.Module, on: bool) -> int:
    """Turns per-step kernel caching in training on or off for every layer that supports it."""
    n = 0
    for m in model.modules():
        if isinstance(getattr(m, "kernel_cache", None), KernelCache) and hasattr(m, "cache_in_training"):
            m.cache_in_training = on
            m.kernel_cache.clear()
            n += 1
    return n
