"""The FFT convolution: ssmkit's ``fftconv`` (blocked, hand-written backward) against autograd through the
same rfft / multiply / irfft calls, as the reference layers write it. Forward+backward, median of 7.

    OMP_NUM_THREADS=2 python scripts/bench_fftconv.py
"""
from __future__ import annotations

import torch

from ssmkit.ops.fftconv import fftconv
from ssmkit.profile import median_ms

SHAPES = [(8, 128, 4096, 1), (256, 128, 128, 1), (32, 64, 1024, 2), (1, 256, 65536, 1)]  # B, H, L, C


def time_shape(B: int, H: int, L: int, C: int) -> tuple[float, float]:
    """(ssmkit fftconv ms, autograd-through-FFTs ms) for one shape."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(B, H, L, generator=g, requires_grad=True)
    k = torch.randn(C, H, L, generator=g, requires_grad=True)
    dy = torch.randn(B, C, H, L, generator=g)

    def ours():
        fftconv(u, k).backward(dy)

    def reference():
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L).unsqueeze(1) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
        y.backward(dy)

    return median_ms(ours, 7), median_ms(reference, 7)


def main() -> None:
    print(f"{'B':>4} {'H':>4} {'L':>6} {'C':>2} {'fftconv ms':>11} {'autograd ms':>12} {'speed-up':>9}")
    for B, H, L, C in SHAPES:
        a, b = time_shape(B, H, L, C)
        print(f"{B:4d} {H:4d} {L:6d} {C:2d} {a:11.1f} {b:12.1f} {b / a:8.1f}x", flush=True)


if __name__ == "__main__":
    main()
