"""What the layer benchmarks share (``scripts/bench_mamba2.py``, ``scripts/bench_linear_attention.py``): layers by
``build_mixer`` specs timed forward+backward in interleaved rounds (each configuration once per round in one process,
the order rotated every round, so a loaded machine slows all alike), the median, the ratio to the ``s4d`` layer and
what autograd saves for the backward."""
from __future__ import annotations

import statistics
import time

import torch

from ssmkit.mixers import build_mixer


def saved_mb(fn) -> float:
    """MB of the tensors autograd saves for the backward during fn() (each storage counted once)."""
    seen: dict = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values()) / 2**20


def compare(configs: dict, batch: int, width: int, length: int, rounds: int) -> None:
    """Builds every config (``s4d`` first: the reference), times them and prints one row each."""
    if "s4d" not in configs:
        configs = {"s4d": {"name": "s4d"}, **configs}
    torch.manual_seed(0)
    x = torch.randn(batch, width, length, requires_grad=True)
    layers = {name: build_mixer(width, dict(opts)) for name, opts in configs.items()}

    def run(name):
        layers[name](x).sum().backward()

    memory = {name: saved_mb(lambda name=name: layers[name](x).sum()) for name in layers}
    for name in layers:
        run(name)  # warm-up
    times: dict = {name: [] for name in layers}
    names = list(layers)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - t0)
    print(f"B={batch} H={width} L={length}, forward+backward, {torch.get_num_threads()} threads, {rounds} "
          f"interleaved rounds (median)")
    ref = statistics.median(times["s4d"])
    print(f"{'layer':20s} {'ms':>9s} {'x s4d':>7s} {'saved MB':>9s}")
    for name in names:
        t = statistics.median(times[name])
        print(f"{name:20s} {1e3 * t:9.1f} {t / ref:7.2f} {memory[name]:9.1f}")
