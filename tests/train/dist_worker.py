"""Run by tests/train/test_loop.py under torchrun --nproc_per_node 2 (not a test by itself)."""
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from ssmkit.recipe import build_task, validate
from ssmkit.train.loop import evaluate, make_loader, train

out = Path(sys.argv[1])
recipe = validate({
    "name": "dist",
    "task": {"name": "cumsum", "L": 16, "samples_per_epoch": 64, "val_samples": 37},
    "model": {"d_model": 8, "n_layers": 1, "layer": {"kernel": "s4d", "d_state": 8}},
    "optimizer": {"lr": 1e-2},
    "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 8, "eval_every": 0, "log_every": 2,
              "runs_dir": str(out / "runs")},
})
summary, model = train(recipe, return_model=True)
acc = Accelerator(cpu=True)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = acc.gather(flat[None])  # (2, P)
task = build_task(recipe)
train_loader, val_loader = acc.prepare(make_loader(task, "train", recipe, 0), make_loader(task, "val", recipe, 0))
x, _ = next(iter(train_loader))
batches = acc.gather(x[None])  # (2, B, L, F)
dist_metrics = evaluate(model, val_loader, task, acc)
if acc.is_main_process:
    net = acc.unwrap_model(model)
    totals = {}
    with torch.no_grad():
        for i in range(37):
            xi, yi = task.dataset("val")[i]
            for k, v in task.metric_stats(net(xi[None]), yi[None]).items():
                totals[k] = totals.get(k, 0) + v.sum(0)
    result = {
        "processes": acc.num_processes,
        "params_equal": bool(torch.equal(gathered[0], gathered[1])),
        "first_batches_differ": not torch.equal(batches[0], batches[1]),
        "eval_samples": dist_metrics["samples"],
        "dist_metrics": dist_metrics,
        "local_metrics": task.compute_metrics(totals),
        "summary_final": summary["final"],
    }
    (out / "result.json").write_text(json.dumps(result))
