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

from bench_layers import compare

B, H = 8, 128
CONFIGS = {
    "s4d": {"name": "s4d"},
    "mamba2": {"name": "mamba2"},
    "mamba2-N16-P32": {"name": "mamba2", "d_state": 16, "headdim": 32},
}


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
    compare(configs, B, H, args.length, args.rounds)


if __name__ == "__main__":
    main()
