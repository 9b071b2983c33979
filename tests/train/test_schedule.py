"""Learning-rate schedules against independent references (torch's own schedulers, closed forms)."""
import math

import pytest
import torch

from ssmkit.recipe import validate
from ssmkit.runs.rundir import read_metrics
from ssmkit.train.loop import train
from ssmkit.train.optim import lr_factor


def test_warmup_is_linear_then_cosine_reaches_the_floor():
    f = [lr_factor(s, "cosine", warmup_steps=4, total_steps=20, min_lr_ratio=0.1) for s in range(25)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0)
    assert f[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert f[20:] == pytest.approx([0.1] * 5)  # held at the floor after total_steps
    lin = [lr_factor(s, "linear", warmup_steps=0, total_steps=10) for s in range(11)]
    assert lin == pytest.approx([1 - s / 10 for s in range(11)])
    assert lr_factor(7, "constant", warmup_steps=2, total_steps=10) == 1.0


def test_epoch_interval_equals_cosine_annealing_stepped_per_epoch():
    """The S4D example: CosineAnnealingLR(T_max=epochs), scheduler.step() once per epoch."""
    epochs, per_epoch = 6, 5
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    want = []
    for _ in range(epochs):
        want += [opt.param_groups[0]["lr"]] * per_epoch
        opt.step()
        ref.step()
    got = [lr_factor(s, "cosine", 0, epochs * per_epoch, steps_per_epoch=per_epoch) for s in range(epochs * per_epoch)]
    assert got == pytest.approx(want)


def test_training_logs_an_lr_that_moves_once_per_epoch(tmp_path):
    recipe = validate({
        "name": "sched",
        "task": {"name": "cumsum", "seq_len": 8, "samples_per_epoch": 32, "val_samples": 8},
        "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
        "optimizer": {"lr": 1e-2},
        "scheduler": {"name": "cosine", "interval": "epoch"},
        "train": {"epochs": 3, "batch_size": 8, "log_every": 1, "runs_dir": str(tmp_path)},
    })
    summary = train(recipe)
    lrs = [r["lr"] for r in read_metrics(summary["run_dir"]) if r["loss"] is not None]
    assert len(lrs) == 12  # 4 steps per epoch; the lr logged after each step is the next step's
    assert len(set(lrs[:3])) == 1 and len(set(lrs[4:7])) == 1 and len(set(lrs[8:11])) == 1
    assert lrs[3] == pytest.approx(1e-2 * 0.75) and lrs[7] == pytest.approx(1e-2 * 0.25)
