"""The training loop's overhead: ``ssmkit train`` against a bare hand-written loop with the same model,
optimizer and batches (the table in docs/performance.md, "Training-loop overhead").

    OMP_NUM_THREADS=1 python scripts/bench_loop.py                       # DLR atomic config, 1000 steps
    OMP_NUM_THREADS=1 python scripts/bench_loop.py --steps 300 --kernel sgconv

The configuration is the DLR paper's atomic one at CPU scale (recipes/quick/atomic-dlr.yaml with d_state 256:
1 layer, d_model 64, L 128, batch 32, the shift task). The bare loop gets its batches generated beforehand
(outside its clock) and runs forward, backward, AdamW step, zero_grad, nothing else. ``ssmkit train`` is timed
whole, from the call to its return: data generation, Accelerate, logging, progress, the final evaluation
(256 validation samples) and the checkpoint included. Each is run twice, alternating; the best of each counts.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ssmkit.recipe import build_task, load_recipe
from ssmkit.train.loop import build_loop_model, make_loader, train
from ssmkit.train.optim import build_optimizer


def bare_loop(recipe, steps: int) -> float:
    torch.manual_seed(recipe.train.seed)
    task = build_task(recipe)
    model = build_loop_model(recipe, task)
    optimizer = build_optimizer(model, recipe.optimizer)
    loader = make_loader(task, "train", recipe, recipe.train.seed)
    batches = []
    while len(batches) < steps:
        batches.extend(b for _, b in zip(range(steps - len(batches)), loader))
    model.train()
    t0 = time.perf_counter()
    for x, y in batches:
        loss = task.loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - t0


def ssmkit_loop(recipe, steps: int) -> float:
    t0 = time.perf_counter()
    train(recipe, max_steps=steps)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--kernel", default="dlr", help="dlr (the atomic recipe) or any kernel with d_state")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        overrides = [f"train.runs_dir={runs}", "model.mixer.d_state=256", "train.log_every=50"]
        if args.kernel != "dlr":
            overrides = [f"train.runs_dir={runs}", "train.log_every=50"]
        recipe = load_recipe(f"recipes/quick/atomic-{args.kernel}.yaml", overrides)
        bare_loop(recipe, 20)  # warm-up: imports (torch._dynamo via the optimizer), allocator, FFT plans
        bare, ours = [], []
        for _ in range(args.repeat):
            bare.append(bare_loop(recipe, args.steps))
            ours.append(ssmkit_loop(recipe, args.steps))
    b, o = min(bare), min(ours)
    print(f"{args.kernel}, {args.steps} steps, torch threads {torch.get_num_threads()}")
    print(f"bare loop     {b:7.2f} s  ({b / args.steps * 1e3:.2f} ms/step)   runs: {', '.join(f'{t:.2f}' for t in bare)}")
    print(f"ssmkit train  {o:7.2f} s  ({o / args.steps * 1e3:.2f} ms/step)   runs: {', '.join(f'{t:.2f}' for t in ours)}")
    print(f"overhead      {100 * (o / b - 1):+.1f}%")


if __name__ == "__main__":
    main()
