"""Kernel overhead over the FFT-convolution floor: each kernel in a bare layer (activation id, no output map)
and in the default layer (GELU, Linear + GLU), forward+backward, B=8, H=128, N=64, L=4096.

    OMP_NUM_THREADS=2 python scripts/bench_overhead.py
"""
from __future__ import annotations

import torch

from ssmkit.mixers import build_mixer
from ssmkit.ops.fftconv import fftconv
from ssmkit.profile import median_ms

B, H, L = 8, 128, 4096


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(B, H, L, requires_grad=True)  # (B, H, L)
    k = torch.randn(1, H, L, requires_grad=True)  # (C, H, L)
    floor = median_ms(lambda: fftconv(x, k).sum().backward())
    print(f"{'floor':14s} {floor:7.1f} ms")
    for kernel in ["s4d", "s4", "dss", "dlr", "sgconv"]:
        options = {"l_max": L} if kernel == "sgconv" else {"d_state": 64}
        for name, layer in [
            ("bare", build_mixer(H, {"name": kernel, "activation": "id", "output": None, **options})),
            ("default", build_mixer(H, {"name": kernel, **options})),
        ]:
            ms = median_ms(lambda layer=layer: layer(x).sum().backward())
            print(f"{kernel + ' ' + name:14s} {ms:7.1f} ms  x{ms / floor:.2f}")


if __name__ == "__main__":
    main()
