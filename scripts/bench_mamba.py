"""The parts of the Mamba layer on the CPU, forward+backward, each with its torch path and the extension's
fused kernel, interleaved in one process (order reversed every round) so a loaded machine slows both alike:

* ``scan``: the selective scan with skip and gate, (B, E, N, L) = (8, 256, 16, L), ``ssmkit.ops.selective_scan``
  with ``backend="torch"`` (chunked log-space scan) against ``backend="extension"`` (fused C++);
* ``conv``: the causal depthwise convolution (K = 4) + SiLU, ``ssmkit.ops.causal_conv``;
* ``layer``: the whole layer (``build_mixer(H, {"name": "mamba"})``, H = 128) with ``backend`` torch /
  extension (which also picks the convolution's backend).

    OMP_NUM_THREADS=2 python scripts/bench_mamba.py --length 4096 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssmkit.mixers import build_mixer
from ssmkit.ops.causal_conv import causal_conv1d_silu
from ssmkit.ops.selective_scan import selective_scan

B, H, E, N, K = 8, 128, 256, 16, 4


def parts(L: int) -> dict:
    g = torch.Generator().manual_seed(0)
    u, z = torch.randn(B, E, L, generator=g), torch.randn(B, E, L, generator=g)
    delta = torch.rand(B, E, L, generator=g) * 0.1 + 1e-3
    A, D = -torch.arange(1.0, N + 1).repeat(E, 1), torch.ones(E)
    Bm, Cm = torch.randn(B, N, L, generator=g), torch.randn(B, N, L, generator=g)
    w, b = torch.randn(E, K, generator=g) / 2, torch.randn(E, generator=g)
    scan_in = [t.requires_grad_() for t in (u, delta, A, Bm, Cm, D, z)]
    conv_in = [t.requires_grad_() for t in (u.detach().clone(), w, b)]
    x = torch.randn(B, H, L, generator=g, requires_grad=True)
    torch.manual_seed(0)
    layers = {name: build_mixer(H, {"name": "mamba", "d_state": N, "backend": name}) for name in ("torch", "extension")}

    def scan(backend):
        y, _ = selective_scan(*scan_in[:6], backend=backend, z=scan_in[6])
        y.sum().backward()

    def conv(backend):
        causal_conv1d_silu(*conv_in, backend=backend).sum().backward()

    def layer(backend):
        layers[backend](x).sum().backward()

    return {"scan": scan, "conv": conv, "layer": layer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", default="scan,conv,layer")
    args = parser.parse_args()
    fns = parts(args.length)
    print(f"B={B} H={H} E={E} N={N} K={K} L={args.length}, forward+backward, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds (median)")
    print(f"{'part':6s} {'torch ms':>10s} {'extension ms':>13s} {'speed-up':>9s}")
    for name in args.parts.split(","):
        fn = fns[name]
        times = {"torch": [], "extension": []}
        for backend in times:
            fn(backend)  # warm-up (and the extension's self-test)
        for r in range(args.rounds):
            for backend in (("torch", "extension") if r % 2 == 0 else ("extension", "torch")):
                t0 = time.perf_counter()
                fn(backend)
                times[backend].append(time.perf_counter() - t0)
        t, e = (1e3 * statistics.median(times[k]) for k in ("torch", "extension"))
        print(f"{name:6s} {t:10.1f} {e:13.1f} {t / e:8.1f}x")


if __name__ == "__main__":
    main()
