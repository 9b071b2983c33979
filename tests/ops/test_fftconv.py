import pytest
import torch

from ssmkit.ops.fftconv import _fft_len, fftconv


def direct_conv(u, k, k_rev=None):
    """Explicit float64 double loop over positions."""
    B, H, L = u.shape
    C, Lk = k.shape[0], k.shape[-1]
    y = torch.zeros(B, C, H, L, dtype=torch.float64)
    u, k = u.double(), k.double()
    for t in range(L):
        for s in range(L):
            if s <= t and t - s < Lk:
                y[..., t] += k[None, :, :, t - s] * u[:, None, :, s]
            if k_rev is not None and s > t and s - t - 1 < Lk:
                y[..., t] += k_rev.double()[None, :, :, s - t - 1] * u[:, None, :, s]
    return y


@pytest.mark.parametrize("L,Lk", [(1, 1), (7, 7), (16, 5), (33, 33)])
def test_causal_matches_direct(L, Lk):
    u, k = torch.randn(2, 3, L), torch.randn(2, 3, Lk)
    torch.testing.assert_close(fftconv(u, k).double(), direct_conv(u, k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("L,Lk", [(7, 7), (12, 4)])
def test_bidirectional_matches_direct(L, Lk):
    u, k, kr = torch.randn(2, 3, L), torch.randn(1, 3, Lk), torch.randn(1, 3, Lk)
    torch.testing.assert_close(fftconv(u, k, kr).double(), direct_conv(u, k, kr), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("C,L,Lk,bidirectional", [(1, 7, 7, False), (2, 16, 5, False), (1, 12, 4, True), (2, 9, 9, True)])
def test_gradients_equal_those_of_the_direct_sum(C, L, Lk, bidirectional):
    """The hand-written backward against autograd through the explicit double loop (float64)."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 3, L, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(C, 3, Lk, dtype=torch.float64, generator=g, requires_grad=True)
    kr = torch.randn(C, 3, Lk, dtype=torch.float64, generator=g, requires_grad=True) if bidirectional else None
    dy = torch.randn(2, C, 3, L, dtype=torch.float64, generator=g)
    inputs = [u, k] + ([kr] if bidirectional else [])
    got = torch.autograd.grad(fftconv(u, k, kr), inputs, dy)
    want = torch.autograd.grad(direct_conv(u, k, kr), inputs, dy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_float64_stays_float64():
    u, k = torch.randn(1, 2, 9, dtype=torch.float64), torch.randn(1, 2, 9, dtype=torch.float64)
    y = fftconv(u, k)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, direct_conv(u, k), rtol=1e-10, atol=1e-10)


def test_bf16_input_is_convolved_in_float32():
    u, k = torch.randn(2, 4, 64), torch.randn(1, 4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fftconv(u.bfloat16(), k)
    assert y.dtype == torch.bfloat16
    ref = direct_conv(u.bfloat16().float(), k)
    # Only the final cast to bf16 loses precision: relative error at bf16's resolution.
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


def test_fft_len_is_smooth_and_large_enough():
    for n in [1, 2, 7, 100, 1000, 4097, 65537]:
        m = _fft_len(n)
        assert m >= n
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="expects u"):
        fftconv(torch.randn(3, 4), torch.randn(1, 3, 4))


@pytest.mark.parametrize("block", [32, 64, 7 * 32])  # one row per block; 2 features; 2 whole batch entries
def test_blocked_convolution_equals_direct_in_value_and_gradient(monkeypatch, block):
    """Blocks that split features within a batch entry, and blocks that hold several batch entries."""
    import importlib

    monkeypatch.setattr(importlib.import_module("ssmkit.ops.fftconv"), "BLOCK_SAMPLES", block)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 3, 16, dtype=torch.float64, generator=g, requires_grad=True)  # n = 32
    k = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    kr = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    dy = torch.randn(3, 2, 3, 16, dtype=torch.float64, generator=g)
    y = fftconv(u, k, kr)
    torch.testing.assert_close(y, direct_conv(u, k, kr))
    got = torch.autograd.grad(y, (u, k, kr), dy)
    want = torch.autograd.grad(direct_conv(u, k, kr), (u, k, kr), dy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
