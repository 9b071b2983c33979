"""The Mamba-2 layer (SSD) on the CPU against the S4D layer, forward+backward at B=8, H=128, each configuration
run once per round in one process (the order rotated every round) so a loaded machine slows all alike:

* ``s4d``: the reference, ``build_mixer(128, {"name": "s4d"})``;
* ``mamba2``: ``build_mixer(128, {"name": "mamba2"})`` with its defaults (d_state 128, headdim 64, expand 2,
  chunk_size 64: the official sizes);
* ``mamba2-N16-P32``: d_state 16, headdim 32, a state size like the other mixers' (issue #25's like-for-like row);
* ``--chunks 32,64,...``: each chunk_size (the SSD computation setting) on the ``--chunk-config`` layer.

Besides the median time it prints the ratio to s4d and what autograd keeps for the backward (MB of saved
tensors, hand-written backwards included), which is the memory that grows with L.

    OMP_NUM_THREADS=1 python scripts/bench_mamba2.py --length 4096 --rounds 5
    OMP_NUM_THREADS=1 python scripts/bench_mamba2.py --configs mamba2 --chunks 32,64,128,256
    OMP_NUM_THREADS=1 python scripts/bench_mamba2.py --configs mamba2-N16-P32 --chunk-config mamba2-N16-P32 --chunks 32
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
    "mamba2": {"name": "mamba2"},
    "mamba2-N16-P32": {"name": "mamba2", "d_state": 16, "headdim": 32},
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default="s4d,mamba2,mamba2-N16-P32")
    parser.add_argument("--chunks", default="", help="mamba2 chunk sizes to add, e.g. 32,64,128,256")
    parser.add_argument("--chunk-config", default="mamba2", choices=[n for n in CONFIGS if n != "s4d"],
                        help="the layer whose chunk_size --chunks varies")
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs.split(",") if name}
    for q in filter(None, args.chunks.split(",")):
        configs[f"{args.chunk_config}-Q{q}"] = {**CONFIGS[args.chunk_config], "chunk_size": int(q)}
    if "s4d" not in configs:
        configs = {"s4d": CONFIGS["s4d"], **configs}
    torch.manual_seed(0)
    x = torch.randn(B, H, args.length, requires_grad=True)
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
    print(f"B={B} H={H} L={args.length}, forward+backward, {torch.get_num_threads()} threads, {args.rounds} "
          f"interleaved rounds (median)")
    ref = statistics.median(times["s4d"])
    print(f"{'layer':20s} {'ms':>9s} {'x s4d':>7s} {'saved MB':>9s}")
    for name in names:
        t = statistics.median(times[name])
        print(f"{name:20s} {1e3 * t:9.1f} {t / ref:7.2f} {memory[name]:9.1f}")


if __name__ == "__main__":
    main()
