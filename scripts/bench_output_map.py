"""The position-wise output map (Linear C*H -> H or 2H applied channels-first to (B, C*H, L)),
forward+backward, as the 1x1 conv1d the old layer used and as three GEMM formulations. The variants
alternate in one process (order reversed every round), so a loaded machine slows all of them alike.

    OMP_NUM_THREADS=2 python scripts/bench_output_map.py --out 256 --rounds 10
    OMP_NUM_THREADS=1 python scripts/bench_output_map.py --cpu-time        # process CPU time, not wall
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

B, H, L = 8, 128, 4096


def variants(y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> dict:
    h_out = w.shape[0]
    return {
        "conv1d": lambda: F.conv1d(y, w.unsqueeze(-1), b),
        "matmul": lambda: torch.matmul(w, y) + b.unsqueeze(-1),
        "baddbmm": lambda: torch.baddbmm(b.unsqueeze(-1).expand(B, h_out, L), w.expand(B, h_out, H), y),
        "addmm": lambda: torch.addmm(b.unsqueeze(-1), w, y.transpose(0, 1).reshape(H, B * L))
        .view(h_out, B, L)
        .transpose(0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=int, default=H, help="output features: 128 (linear) or 256 (glu)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cpu-time", action="store_true", help="time with process CPU time instead of wall")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.manual_seed(0)
    y = torch.randn(B, H, L, requires_grad=True)
    w = (torch.randn(args.out, H) / H**0.5).requires_grad_()
    b = torch.randn(args.out, requires_grad=True)
    fns = variants(y, w, b)
    ref = fns["conv1d"]()
    for name, fn in fns.items():
        torch.testing.assert_close(fn(), ref, atol=1e-4, rtol=1e-4, msg=f"{name} differs from conv1d")

    def run(fn) -> float:
        t = clock()
        out = fn()
        out.backward(torch.ones_like(out))
        return clock() - t

    names = list(fns)
    times = {name: [] for name in names}
    for fn in fns.values():
        run(fn)
    for i in range(args.rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(run(fns[name]))
    for name, ts in times.items():
        print(f"{name:8s} median {1000 * statistics.median(ts):6.0f} ms  min {1000 * min(ts):6.0f} ms")


if __name__ == "__main__":
    main()
