"""Causal and bidirectional convolution by FFT.

The convolution is done in float32/complex64 whatever the input dtype (bf16/fp16 inputs are upcast
and the result cast back), with zero padding to 2L so that nothing wraps around.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _fft_len(n: int) -> int:
    """A length >= n that FFTs fast: the next number of the form 2^a 3^b 5^c."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def fftconv(
    u: torch.Tensor,
    k: torch.Tensor,
    k_reverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Convolve u (B, H, L) with kernels k (C, H, Lk), Lk <= L; returns (B, C, H, L).

    Causal:        y[b, c, h, t] = sum_{s <= t} k[c, h, t - s] u[b, h, s]
    Bidirectional: when ``k_reverse`` (C, H, Lk) is given, the anticausal part
                   sum_{s > t} k_reverse[c, h, s - t - 1] u[b, h, s] is added, so each direction has its
                   own kernel and position t sees its own input once (through k[..., 0]).
    """
    if u.dim() != 3 or k.dim() != 3:
        raise ValueError(f"fftconv expects u (B, H, L) and k (C, H, L), got {tuple(u.shape)} and {tuple(k.shape)}")
    L = u.shape[-1]
    if k.shape[-1] > L:
        k = k[..., :L]
    if k_reverse is not None and k_reverse.shape[-1] > L:
        k_reverse = k_reverse[..., :L]
    dtype = u.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=u.device.type, enabled=False):
        u32 = u.to(compute)
        k32 = k.to(compute)
        n = _fft_len(2 * L)
        if k_reverse is not None:
            # One length-n circular kernel: causal taps at 0..L-1, anticausal taps at n-1, n-2, ...
            kr = k_reverse.to(compute)
            k32 = F.pad(k32, (0, n - k32.shape[-1])) + F.pad(kr.flip(-1), (n - kr.shape[-1], 0))
        k_f = torch.fft.rfft(k32, n=n)  # (C, H, n/2+1)
        u_f = torch.fft.rfft(u32, n=n)  # (B, H, n/2+1)
        y = torch.fft.irfft(u_f.unsqueeze(1) * k_f, n=n)[..., :L]  # (B, C, H, L)
    return y.to(dtype)
