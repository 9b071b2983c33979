"""KernelCache: one kernel computation per optimizer step, the same parameter gradients as recomputing."""
import time

import pytest
import torch

from ssmkit.mixers.kernels.s4d import S4DKernel
from ssmkit.ops.cache import KernelCache, flush_kernel_caches
from ssmkit.ops.fftconv import fftconv


def micro_batches(n=3, H=4, L=32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, H, L, dtype=torch.float64, generator=g) for _ in range(n)]


def test_accumulated_gradients_equal_recomputing_per_micro_batch():
    torch.manual_seed(0)
    kernel = S4DKernel(4, d_state=8).double()
    us = micro_batches()
    for u in us:  # reference: recompute K for every micro-batch
        fftconv(u, kernel(u.shape[-1])[0]).pow(2).mean().backward()
    ref = {n: p.grad.clone() for n, p in kernel.named_parameters()}
    kernel.zero_grad()

    kernel.kernel_cache = KernelCache()
    for u in us:
        K = kernel.kernel_cache.get(kernel.cache_key(u.shape[-1]), lambda: kernel(u.shape[-1])[0])  # noqa: B023
        fftconv(u, K).pow(2).mean().backward()
    assert kernel.kernel_cache.computed == 1
    assert all(p.grad is None for p in kernel.parameters())  # nothing sent until the flush
    assert flush_kernel_caches(kernel) == 1
    for n, p in kernel.named_parameters():
        torch.testing.assert_close(p.grad, ref[n])


def test_eval_computes_once_until_parameters_change():
    kernel = S4DKernel(4, d_state=8)
    cache = KernelCache()
    with torch.no_grad():
        for _ in range(3):
            cache.get(kernel.cache_key(16), lambda: kernel(16)[0])
        assert cache.computed == 1
        kernel.C.add_(1.0)  # an optimizer step: the key follows tensor versions
        K = cache.get(kernel.cache_key(16), lambda: kernel(16)[0])
    assert cache.computed == 2
    torch.testing.assert_close(K, kernel(16)[0].detach())


def test_late_flush_warns_and_still_sends_the_gradient():
    kernel = S4DKernel(2, d_state=4)
    cache = KernelCache()
    K = cache.get(("a",), lambda: kernel(8)[0])
    K.sum().backward()
    with pytest.warns(RuntimeWarning, match="flushed late"):
        cache.get(("b",), lambda: kernel(8)[0])
    assert kernel.C.grad is not None


def test_saving_under_accumulation_is_measurable():
    """Eight micro-batches: one kernel computation instead of eight (printed with -s)."""
    kernel = S4DKernel(64, d_state=64)
    L, steps = 2048, 8
    t0 = time.perf_counter()
    for _ in range(steps):
        kernel(L)[0].sum().backward()
    per_micro = time.perf_counter() - t0
    cache = KernelCache()
    t0 = time.perf_counter()
    for _ in range(steps):
        cache.get(kernel.cache_key(L), lambda: kernel(L)[0]).sum().backward()
    cache.flush()
    cached = time.perf_counter() - t0
    print(f"kernel fwd+bwd x{steps}: {per_micro * 1e3:.1f} ms recomputed, {cached * 1e3:.1f} ms cached")
    assert cache.computed == 1
