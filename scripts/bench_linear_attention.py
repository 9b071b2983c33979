"""GLA and Gated DeltaNet on the CPU against the S4D layer, forward+backward at B=8, H=128, each configuration run
once per round in one process (the order rotated every round) so a loaded machine slows all alike:

* ``s4d``: the reference, ``build_mixer(128, {"name": "s4d"})``;
* ``gla``: ``build_mixer(128, {"name": "gla"})`` with its defaults (4 heads, dk 16, dv 32, chunk 64);
* ``gated_deltanet``: ``build_mixer(128, {"name": "gated_deltanet"})`` with its defaults (4 heads, head_dim 24,
  dv 48, short conv 4, chunk 64);
* ``gated_deltanet-hd16``: head_dim 16 (dk 16, dv 32 as GLA's: the like-for-like row, projections as GLA's);
* ``--chunks 32,128,...``: each chunk_size on both mixers.

Besides the median time it prints the ratio to s4d and what autograd keeps for the backward (MB of saved
tensors, hand-written backwards included), which is the memory that grows with L.

    OMP_NUM_THREADS=1 python scripts/bench_linear_attention.py --length 4096 --rounds 5
    OMP_NUM_THREADS=1 python scripts/bench_linear_attention.py --length 16384 --rounds 3 --configs gated_deltanet
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ssmkit.mixers import build_mixer

B, H = 8, 128
CONFIGS = {
    "s4d": {"name": "s4d"},
    "gla": {"name": "gla"},
    "gated_deltanet": {"name": "gated_deltanet"},
    "gated_deltanet-hd16": {"name": "gated_deltanet", "head_dim": 16},
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=B)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default="s4d,gla,gated_deltanet")
    parser.add_argument("--chunks", default="", help="chunk sizes to add for both mixers, e.g. 32,128")
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs.split(",") if name}
    for q in filter(None, args.chunks.split(",")):
        for name in ("gla", "gated_deltanet"):
            configs[f"{name}-Q{q}"] = {**CONFIGS[name], "chunk_size": int(q)}
    if "s4d" not in configs:
        configs = {"s4d": CONFIGS["s4d"], **configs}
    torch.manual_seed(0)
    x = torch.randn(args.batch, H, args.length, requires_grad=True)
    layers = {name: build_mixer(H, dict(opts)) for name, opts in configs.items()}

    def run(name):
        layers[name](x).sum().backward()

    memory = {name: saved_mb(lambda name=name: layers[name](x).sum()) for name in layers}
    for name in layers:
        run(name)  # warm-up
    times: dict = {name: [] for name in layers}
    names = list(layers)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - t0)
    print(f"B={args.batch} H={H} L={args.length}, forward+backward, {torch.get_num_threads()} threads, {args.rounds} "
          f"interleaved rounds (median)")
    ref = statistics.median(times["s4d"])
    print(f"{'layer':20s} {'ms':>9s} {'x s4d':>7s} {'saved MB':>9s}")
    for name in names:
        t = statistics.median(times[name])
        print(f"{name:20s} {1e3 * t:9.1f} {t / ref:7.2f} {memory[name]:9.1f}")


if __name__ == "__main__":
    main()
