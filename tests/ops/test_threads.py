"""The extension's kernels on 1 and 2 threads: at sizes large enough for ``at::parallel_for`` to split the work
(``extensions/cauchy/csrc/parallel.h``: at least 32,768 element operations per thread) and at tiny sizes that stay
on the calling thread, the results are the same (each row is computed the same way on any thread; only the
selective scan's backward sums its dB/dC partial sums in a thread-dependent order). Their values against float64
sums and recurrences are tested in test_extension.py, test_selective_scan.py and test_causal_conv.py."""
import math

import pytest
import torch

from ssmkit.ops import backends

probe = backends.probe_extension()
pytestmark = pytest.mark.skipif(not probe.ok, reason=f"the compiled extension is not built here: {probe.reason}")


def _on(threads: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _same(a, b, exact: bool = True):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x is None:  # an output the call does not make (an undefined tensor)
            assert y is None
            continue
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("B,E,L", [(2, 64, 512), (1, 8, 4)])  # parallel (16+ rows a thread), serial
def test_causal_conv_same_on_any_thread_count(B, E, L):
    m, K = probe.module, 4
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(B, E, L, generator=g), torch.randn(E, K, generator=g), torch.randn(E, generator=g)
    prev, gy = torch.randn(B, E, K - 1, generator=g), torch.randn(B, E, L, generator=g)

    def run():
        return [m.causal_conv_silu_fwd(x, w, b, prev), *m.causal_conv_silu_bwd(x, w, b, prev, gy)]

    _same(_on(1, run), _on(2, run))


@pytest.mark.parametrize("b,D,L", [(2, 32, 256), (1, 4, 8)])
def test_selective_scan_same_on_any_thread_count(b, D, L):
    m, N, chunk = probe.module, 16, 64
    g = torch.Generator().manual_seed(1)
    u, z, gy = (torch.randn(b, D, L, generator=g) for _ in range(3))
    delta = torch.rand(b, D, L, generator=g) * 0.1
    A = -torch.rand(D, N, generator=g) - 0.1
    Bt, Ct = torch.randn(b, L, N, generator=g), torch.randn(b, L, N, generator=g)
    h0, gh = torch.randn(b, D, N, generator=g), torch.randn(b, D, N, generator=g)
    Dskip = torch.randn(D, generator=g)

    def run():
        y, last, starts = m.selective_scan_fwd(u, delta, A, Bt, Ct, h0, Dskip, z, chunk)
        grads = m.selective_scan_bwd(u, delta, A, Bt, Ct, starts, Dskip, z, gy, gh, chunk)
        return [y, last, starts], grads

    (f1, g1), (f2, g2) = _on(1, run), _on(2, run)
    _same(f1, f2)
    _same(g1, g2, exact=False)  # dBt, dCt: per-thread partial sums, added in another order


@pytest.mark.parametrize("P,N,L", [(8, 32, 1024), (2, 4, 16)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_cauchy_same_on_any_thread_count(P, N, L, symmetric):
    m = probe.module
    g = torch.Generator().manual_seed(2)
    v = torch.randn(P, N, dtype=torch.complex64, generator=g)
    w = torch.complex(-torch.rand(P, N, generator=g) - 0.05, torch.randn(P, N, generator=g) * 10)
    zz = torch.exp(2j * math.pi * torch.arange(L, dtype=torch.float64) / (2 * L)).to(torch.complex64)
    grad = torch.randn(P, L, dtype=torch.complex64, generator=g)

    def run():
        return [m.cauchy_fwd(v, zz, w, symmetric), *m.cauchy_bwd(v, zz, w, grad, symmetric)]

    _same(_on(1, run), _on(2, run))
