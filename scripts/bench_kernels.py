"""Benchmark of ssmkit's kernels against the FFT-convolution floor (the table in docs/performance.md).

    python scripts/bench_kernels.py                 # layer fwd+bwd at DESIGN.md's shape, per backend; step rate
    python scripts/bench_kernels.py --large         # also the long-sequence memory points (minutes)
    python scripts/bench_kernels.py --out bench.json

Sections:
  layer   the mixer (ConvMixer) of each kernel at B=8, H=128, N=64, L=4096, forward+backward, one child process
          per point (peak RSS above the pre-run RSS), with the bare FFT convolution of the same shape
          (``floor``) and the kernel generation alone (``kernel ms``: forward+backward of kernel(L)).
  large   DLR N=4096, H=32, L=2^20 and S4D H=256, N=64, L=2^18, forward+backward, B=1 (peak RSS).
  naive   the FFT convolution written as the reference layers write it (autograd through the FFTs).
  step    recurrent steps per second of a 6-layer S4D SequenceModel (d_model 128) at batch 1, eager and
          with ``compile_step()``.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ssmkit import profile

LAYER_POINTS = [  # (kernel, backend, output map)
    ("s4d", "chunked", "glu"), ("s4d", "torch", "glu"),
    ("s4", "extension", "glu"), ("s4", "chunked", "glu"), ("s4", "torch", "glu"),
    ("dss", "chunked", "glu"), ("dss", "torch", "glu"),
    ("dlr", "chunked", "glu"), ("dlr", "torch", "glu"),
    ("sgconv", "auto", "glu"),
    # the DLR repository's layers (DSS-exp, DLR, SGConv) map C*H -> H with one Linear, no GLU
    ("dss", "chunked", "linear"), ("dlr", "chunked", "linear"), ("sgconv", "auto", "linear"),
]
REFERENCE = {"s4d": 1.14, "s4": 2.08, "dss": 1.69, "dlr": 0.27, "sgconv": 0.24}  # DESIGN.md, seconds


def kernel_only_ms(kernel: str, backend: str, H: int, N: int, L: int, repeat: int = 3) -> float:
    layer = profile._build_layer(kernel, H, N, backend, L)

    def run():
        K, _ = layer.kernel(L)
        K.sum().backward()

    return profile.median_ms(run, repeat)


def naive_floor_ms(B: int, H: int, L: int, repeat: int = 3) -> float:
    """The FFT convolution as the reference layers write it (autograd through rfft, mul, irfft): the
    floor their times contain. ``floor`` in the table is ssmkit's own ``fftconv`` (hand-written backward)."""
    u = torch.randn(B, H, L, requires_grad=True)
    k = torch.randn(H, L, requires_grad=True)

    def run():
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
        y.sum().backward()

    return profile.median_ms(run, repeat)


def step_rate(n_layers: int = 6, d_model: int = 128) -> dict:
    """Steps/s of the whole-model recurrent step at batch 1 (features in = out = d_model), eager and
    ``compile_step()`` (AOTInductor), on one thread; timed like scripts/bench_step.py."""
    from bench_step import steps_per_second

    from ssmkit.models.sequence import SequenceModel

    model = SequenceModel(d_model, d_model, d_model=d_model, n_layers=n_layers, pool=None,
                          mixer={"name": "s4d", "d_state": 64}).eval()
    model.setup_step()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a step is ~100 tiny ops: extra threads only add synchronisation
    x = torch.randn(1, d_model)
    rates = {"eager": steps_per_second(model.step, x, model.default_state(1))}
    t0 = time.perf_counter()
    fast = model.compile_step("aot")
    fast(x, model.default_state(1, real=True))
    rates["compile_s"] = time.perf_counter() - t0
    rates["aot"] = steps_per_second(fast, x, model.default_state(1, real=True))
    torch.set_num_threads(threads)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", action="store_true", help="also the long-sequence memory points")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=None, help="write all numbers to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, H, N, L = 8, 128, 64, 4096
    common = dict(mode="fwd+bwd", batch=B, d_model=H, d_state=N, repeat=args.repeat, floor=True, device="cpu",
                  threads=args.threads)
    results = {"machine": profile.machine(), "layer": [], "large": [], "step": None}
    print(f"machine: {results['machine']}")
    print(f"{'kernel':8} {'backend':10} {'output':7} {'layer ms':>9} {'floor ms':>9} {'ratio':>6} {'kernel ms':>9} "
          f"{'peak MB':>8} {'vs ref':>7}")
    for kernel, backend, output in LAYER_POINTS:
        row = profile.run_point({"kernel": kernel, "length": L, "backend": backend, "output": output, **common})
        row["output"] = output
        row["kernel_ms"] = kernel_only_ms(kernel, backend, H, N, L, args.repeat) if row["status"] == "ok" else None
        row["speedup_vs_reference"] = REFERENCE[kernel] * 1e3 / row["time_ms"] if row["time_ms"] else None
        results["layer"].append(row)
        if row["status"] != "ok":
            print(f"{kernel:8} {backend:10} {output:7} {row['status']}")
            continue
        print(f"{kernel:8} {backend:10} {output:7} {row['time_ms']:9.0f} {row['floor_ms']:9.0f} {row['ratio']:6.2f} "
              f"{row['kernel_ms']:9.1f} {row['peak_mb']:8.0f} {row['speedup_vs_reference']:6.2f}x", flush=True)
    naive = naive_floor_ms(B, H, L, args.repeat)
    results["naive_floor_ms"] = naive
    print(f"reference-style FFT convolution (autograd through rfft/irfft), same shape: {naive:.0f} ms", flush=True)
    rates = step_rate()
    results["step"] = {"model": "6-layer S4D, d_model 128, d_state 64, batch 1, 1 thread", "steps_per_s": rates}
    print(f"step: 6-layer S4D d_model 128, batch 1: eager {rates['eager']:,.0f} steps/s, compile_step() "
          f"{rates['aot']:,.0f} steps/s (compiled in {rates['compile_s']:.0f} s)", flush=True)
    if args.large:
        for kernel, H_, N_, L_ in (("s4d", 256, 64, 1 << 18), ("dlr", 32, 4096, 1 << 20)):
            spec = dict(common, kernel=kernel, length=L_, backend="auto", batch=1, d_model=H_, d_state=N_, repeat=1,
                        floor=False)
            row = profile.run_point(spec)
            results["large"].append(row)
            print(f"large: {kernel} H={H_} N={N_} L={L_} B=1 fwd+bwd: {row['status']}, "
                  f"{(row['time_ms'] or 0) / 1e3:.1f} s, peak {(row['peak_mb'] or 0) / 1024:.2f} GiB", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
