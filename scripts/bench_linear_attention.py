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

from bench_layers import compare

B, H = 8, 128
CONFIGS = {
    "s4d": {"name": "s4d"},
    "gla": {"name": "gla"},
    "gated_deltanet": {"name": "gated_deltanet"},
    "gated_deltanet-hd16": {"name": "gated_deltanet", "head_dim": 16},
}


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
    compare(configs, args.batch, H, args.length, args.rounds)


if __name__ == "__main__":
    main()
