"""Benchmark of ssmkit's kernels against the FFT-convolution floor (the table in docs/performance.md).

    python scripts/bench_kernels.py                 # layer fwd+bwd at DESIGN.md's shape, per backend; step rate
    python scripts/bench_kernels.py --large         # also the long-sequence memory points (minutes)
    python scripts/bench_kernels.py --out bench.json

Sections:
  layer   a SequenceLayer of each kernel at B=8, H=128, N=64, L=4096, forward+backward, one child process
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
import statistics
import time

import torch

from ssmkit import profile

LAYER_POINTS = [  # (kernel, backend)
    ("s4d", "chunked"), ("s4d", "torch"),
    ("s4", "extension"), ("s4", "chunked"), ("s4", "torch"),
    ("dss", "chunked"), ("dss", "torch"),
    ("dlr", "chunked"), ("dlr", "torch"),
    ("sgconv", "auto"),
]
REFERENCE = {"s4d": 1.14, "s4": 2.08, "dss": 1.69, "dlr": 0.27, "sgconv": 0.24}  # DESIGN.md, seconds


def kernel_only_ms(kernel: str, backend: str, H: int, N: int, L: int, repeat: int = 3) -> float:
    layer = profile._build_layer(kernel, H, N, backend)

    def run():
        K, _ = layer.kernel(L)
        K.sum().backward()

    run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def naive_floor_ms(B: int, H: int, L: int, repeat: int = 3) -> float:
    """The FFT convolution as the reference layers write it (autograd through rfft, mul, irfft): the
    floor their times contain. ``floor`` in the table is ssmkit's own ``fftconv`` (hand-written backward)."""
    u = torch.randn(B, H, L, requires_grad=True)
    k = torch.randn(H, L, requires_grad=True)

    def run():
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
        y.sum().backward()

    run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def step_rate(n_layers: int = 6, d_model: int = 128, steps: int = 2000) -> dict:
    """Steps/s of the whole-model recurrent step at batch 1, eager and ``compile_step()`` (AOTInductor)."""
    from ssmkit.models.sequence import SequenceModel

    model = SequenceModel(d_model, d_model, d_model=d_model, n_layers=n_layers, layer={"kernel": "s4d", "d_state": 64})
    model.eval()
    model.setup_step()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a step is ~100 tiny ops: extra threads only add synchronisation
    x = torch.randn(steps, 1, d_model)
    rates = {}
    t0 = time.perf_counter()
    fast = model.compile_step("aot")
    fast(x[0], model.default_state(1, real=True))
    rates["compile_s"] = time.perf_counter() - t0
    for name, step, state in (("eager", model.step, model.default_state(1)),
                              ("aot", fast, model.default_state(1, real=True))):
        with torch.inference_mode():
            for t in range(50):  # warm-up
                _, state = step(x[t], state)
            t0 = time.perf_counter()
            for t in range(steps):
                _, state = step(x[t], state)
        rates[name] = steps / (time.perf_counter() - t0)
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
    print(f"{'kernel':8} {'backend':10} {'layer ms':>9} {'floor ms':>9} {'ratio':>6} {'kernel ms':>9} "
          f"{'peak MB':>8} {'vs ref':>7}")
    for kernel, backend in LAYER_POINTS:
        row = profile.run_point({"kernel": kernel, "length": L, "backend": backend, **common})
        row["kernel_ms"] = kernel_only_ms(kernel, backend, H, N, L, args.repeat) if row["status"] == "ok" else None
        row["speedup_vs_reference"] = REFERENCE[kernel] * 1e3 / row["time_ms"] if row["time_ms"] else None
        results["layer"].append(row)
        if row["status"] != "ok":
            print(f"{kernel:8} {backend:10} {row['status']}")
            continue
        print(f"{kernel:8} {backend:10} {row['time_ms']:9.0f} {row['floor_ms']:9.0f} {row['ratio']:6.2f} "
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
