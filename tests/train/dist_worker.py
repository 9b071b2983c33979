"""Run by tests/train/test_distributed.py under torchrun --nproc_per_node 2 (not a test by itself).

One launch serves several checks: a straight 12-step run, a 6-step run that the test resumes in a second
launch, the parameters on both ranks, which samples each rank reads in an epoch, and gathered metrics.
"""
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from ssmkit.recipe import build_task, validate
from ssmkit.train.launch import end_distributed_worker, leave_distributed_worker
from ssmkit.train.loop import evaluate, make_loader, train

out = Path(sys.argv[1])


def recipe(max_steps: int):
    return validate({
        "name": "dist",
        "task": {"name": "cumsum", "seq_len": 16, "samples_per_epoch": 64, "val_samples": 37},
        "model": {"d_model": 8, "n_layers": 1, "dropout": 0.1, "mixer": {"name": "s4d", "d_state": 8}},
        "optimizer": {"lr": 1e-2},
        "scheduler": {"name": "constant", "warmup_steps": 20},  # the same lr whatever max_steps
        "train": {"epochs": 3, "max_steps": max_steps, "batch_size": 4, "eval_batch_size": 8, "eval_every": 4,
                  "log_every": 1, "grad_clip": 1.0, "runs_dir": str(out / "runs")},
    })


summary, model = train(recipe(12), run_dir=out / "runs" / "straight", return_model=True)
# 6 of 8 steps of epoch 0, ending with an evaluation off the eval_every grid: resumed mid-epoch by the test
half = train(recipe(6), run_dir=out / "runs" / "half")
acc = Accelerator(cpu=True)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = acc.gather(flat[None])  # (2, P)

# Which samples each rank reads in epoch 1 (the loop's loader, prepared the same way).
r = recipe(12)
task = build_task(r)
train_loader, val_loader = acc.prepare(make_loader(task, "train", r, 0), make_loader(task, "val", r, 0))
train_loader.set_epoch(1)
train_loader.dataset.set_epoch(1)
xs = torch.cat([x for x, _ in train_loader])  # (64 / 2, L, F) on this rank
seen = acc.gather(xs[None])  # (2, 32, L, F)
dist_metrics = evaluate(model, val_loader, task, acc)
if acc.is_main_process:
    data = train_loader.dataset
    full = torch.stack([data[i][0] for i in range(len(data))])  # (64, L, F)
    # count, for every dataset sample, how many times each rank saw it
    counts = [[int((seen[r] == full[i]).flatten(1).all(1).sum()) for i in range(len(data))] for r in range(2)]
    net = acc.unwrap_model(model).eval()
    totals = {}
    with torch.no_grad():
        for i in range(37):
            xi, yi = task.dataset("val")[i]
            for k, v in task.metric_stats(net(xi[None]), yi[None]).items():
                totals[k] = totals.get(k, 0) + v.sum(0)
    result = {
        "processes": acc.num_processes,
        "params_equal": bool(torch.equal(gathered[0], gathered[1])),
        "counts": counts,
        "eval_samples": dist_metrics["samples"],
        "dist_metrics": dist_metrics,
        "local_metrics": task.compute_metrics(totals),
        "summary": summary,
        "half": half,
    }
    (out / "result.json").write_text(json.dumps(result))
end_distributed_worker(barrier=True)  # as the CLI does: tear gloo down, then leave without finalization
leave_distributed_worker(0)
