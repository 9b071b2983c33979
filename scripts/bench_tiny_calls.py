"""Tiny calls of the compiled extension: time per call, idle and under K busy background processes.

    OMP_NUM_THREADS=2 python scripts/bench_tiny_calls.py                        # ssmkit's default wait (spin 10,000)
    OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 python scripts/bench_tiny_calls.py # the passive wait
    GOMP_SPINCOUNT=300000 OMP_NUM_THREADS=2 python scripts/bench_tiny_calls.py  # libgomp's default spinning wait
    OMP_NUM_THREADS=1 python scripts/bench_tiny_calls.py                        # one thread

Mamba's fused causal convolution and selective scan (``extensions/cauchy/csrc/``) at sizes a recurrent step or a
short prompt gives them (B 1, E 64, L 1-16). Each is called ``--calls`` times after 50 warm-up calls, idle and then
under ``--contention K`` busy processes (``ssmkit/contention.py``); printed: the median and the 99th percentile in
microseconds. A call that wakes the OpenMP pool for a few microseconds of work shows up in both: the median pays
the wake-up, and the 99th percentile under load pays for a pool thread that is not running (with a spinning wait,
up to the whole spin). docs/performance.md, "Under contention", has the numbers.
"""
from __future__ import annotations

# isort: off
import ssmkit  # noqa: F401  first: sets OpenMP's wait policy before torch loads its runtime (ssmkit/openmp.py)
import argparse
import statistics
import time

import torch
# isort: on

from ssmkit import openmp
from ssmkit.contention import BusyLoad
from ssmkit.ops import backends


def cases(m) -> dict:
    g = torch.Generator().manual_seed(0)

    def conv(B, E, L, K=4):
        x, w, b = torch.randn(B, E, L, generator=g), torch.randn(E, K, generator=g), torch.randn(E, generator=g)
        prev = torch.zeros(B, E, K - 1)
        return lambda: m.causal_conv_silu_fwd(x, w, b, prev)

    def scan(b, D, L, N=16):
        u, dl = torch.randn(b, D, L, generator=g), torch.rand(b, D, L, generator=g)
        A, h0 = -torch.rand(D, N, generator=g), torch.zeros(b, D, N)
        Bt, Ct = torch.randn(b, L, N, generator=g), torch.randn(b, L, N, generator=g)
        return lambda: m.selective_scan_fwd(u, dl, A, Bt, Ct, h0, None, None, 64)

    return {"causal_conv B1 E64 L1": conv(1, 64, 1), "causal_conv B1 E64 L16": conv(1, 64, 16),
            "scan B1 D64 L1 N16": scan(1, 64, 1), "scan B1 D64 L8 N16": scan(1, 64, 8)}


def timed(fn, calls: int) -> tuple[float, float]:
    for _ in range(50):
        fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6, sorted(ts)[int(0.99 * (calls - 1))] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--contention", type=int, default=2, metavar="K")
    args = ap.parse_args()
    probe = backends.probe_extension()
    if not probe.ok:
        raise SystemExit(f"the compiled extension is not available here: {probe.reason}")
    load = BusyLoad(args.contention)
    print(f"{torch.get_num_threads()} threads; OpenMP: {openmp.wait_policy()}; loaded = {load.describe()}")
    print(f"{'call':24} {'idle median':>11} {'p99':>9} {'loaded median':>13} {'p99':>9}   (microseconds)")
    for name, fn in cases(probe.module).items():
        idle = timed(fn, args.calls)
        with load:
            loaded = timed(fn, args.calls)
        print(f"{name:24} {idle[0]:11.1f} {idle[1]:9.1f} {loaded[0]:13.1f} {loaded[1]:9.1f}", flush=True)


if __name__ == "__main__":
    main()
