"""Recurrent inference speed: steps/s of a SequenceModel's whole-model step, eager and compiled
(``compile_step('aot')``: AOTInductor; ``compile_step('inductor')``: torch.compile).

    OMP_NUM_THREADS=1 python scripts/bench_step.py [--kernel s4d] [--layers 6] [--d-model 128] [--d-state 64]
"""
from __future__ import annotations

import argparse
import time

import torch

from ssmkit import SequenceModel


def steps_per_second(step, x, state, n: int = 3000, repeats: int = 5) -> float:
    """Best of ``repeats`` timings of ``n`` steps, after 100 warm-up steps."""
    best = 0.0
    with torch.inference_mode():
        for _ in range(100):
            _, state = step(x, state)
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(n):
                _, state = step(x, state)
            best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="s4d")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backends", default="aot,inductor", help="compile_step backends to time")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SequenceModel(1, 1, d_model=args.d_model, n_layers=args.layers, pool=None,
                          mixer={"name": args.kernel, "d_state": args.d_state}).eval()
    model.setup_step()
    x = torch.randn(args.batch, 1)
    print(f"eager:    {steps_per_second(model.step, x, model.default_state(args.batch)):,.0f} steps/s", flush=True)
    for backend in args.backends.split(","):
        start = time.perf_counter()
        fast = model.compile_step(backend)
        state = model.default_state(args.batch, real=True)
        with torch.inference_mode():
            fast(x, state)
        print(f"{backend}: compile {time.perf_counter() - start:.1f} s (once), "
              f"{steps_per_second(fast, x, state):,.0f} steps/s", flush=True)

if __name__ == "__main__":
    main()
