"""The training loop: learning, exact resume, signals, eval, and a real two-process run."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.recipe import validate
from ssmkit.runs.checkpoint import find_checkpoint, load_checkpoint
from ssmkit.runs.rundir import read_metrics
from ssmkit.train.loop import train

ROOT = Path(__file__).resolve().parents[2]


def tiny(tmp_path, task="cumsum", **train_options) -> dict:
    return {
        "name": "tiny",
        "task": {"name": task, "seq_len": 16, "samples_per_epoch": 64, "val_samples": 24},
        "model": {"d_model": 8, "n_layers": 1, "dropout": 0.1, "mixer": {"name": "s4d", "d_state": 8, "lr": 1e-3}},
        "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.01},
        "scheduler": {"name": "constant", "warmup_steps": 15},
        "train": {"epochs": 3, "batch_size": 8, "eval_every": 5, "log_every": 1, "grad_clip": 1.0,
                  "runs_dir": str(tmp_path / "runs"), **train_options},
    }


def final_params(run_dir) -> dict:
    return load_file(str(find_checkpoint(run_dir) / "model.safetensors"))


def comparable(records):
    return [(r["step"], r["epoch"], r["lr"], r["loss"], r["metrics"]) for r in records]


@pytest.mark.slow
def test_s4d_learns_shift(tmp_path):
    """S4D reaches R^2 >= 0.99 on shift at L=32 in a few hundred steps."""
    recipe = validate({
        "name": "shift-small",
        "task": {"name": "shift", "seq_len": 32, "samples_per_epoch": 32 * 600, "val_samples": 256},
        "model": {"d_model": 32, "n_layers": 2, "mixer": {"name": "s4d", "d_state": 64, "lr": 1e-3}},
        "optimizer": {"name": "adamw", "lr": 4e-3},
        "train": {"epochs": 1, "batch_size": 32, "eval_every": 300, "log_every": 100, "runs_dir": str(tmp_path)},
    })
    summary = train(recipe)
    assert summary["status"] == "finished" and summary["step"] == 600
    assert summary["final"]["val/r2"] >= 0.99
    assert summary["final"]["val/samples"] == 256


def test_resume_continues_exactly_and_eval_reproduces(tmp_path):
    """2N steps straight == N steps, resume, N more (mid-epoch, with dropout, warmup and grad clipping)."""
    straight = train(validate(tiny(tmp_path, max_steps=20)))
    first = train(validate(tiny(tmp_path, max_steps=10)))
    assert first["run_dir"] != straight["run_dir"]  # a new run never reuses a directory
    resumed = train(validate(tiny(tmp_path, max_steps=20)), resume=first["run_dir"])
    assert resumed["run_dir"] == first["run_dir"] and resumed["step"] == 20
    a, b = final_params(straight["run_dir"]), final_params(first["run_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(read_metrics(straight["run_dir"])) == comparable(read_metrics(first["run_dir"]))
    assert len(read_metrics(straight["run_dir"])) == 20 + 4  # a line per step, an eval every 5

    # eval of the finished run reproduces the last logged validation metrics
    result = CliRunner().invoke(app, ["eval", straight["run_dir"]])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout.strip().splitlines()[-1])
    logged = read_metrics(straight["run_dir"])[-1]["metrics"]
    assert evaluated["step"] == 20 and evaluated["samples"] == 24
    assert evaluated["mse"] == pytest.approx(logged["val/mse"], rel=1e-9, abs=1e-12)
    assert evaluated["r2"] == pytest.approx(logged["val/r2"], rel=1e-9, abs=1e-12)
    run = Path(straight["run_dir"])
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["max_steps"] == 20
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_gpu_generator_state_is_saved_and_restored(tmp_path, monkeypatch):
    """Dropout on a GPU draws from the device generator: a checkpoint keeps it and resume puts it back.
    (No GPU here: the device boundary, ssmkit.runs.checkpoint.device_rng_state/set_device_rng_state, is faked.)"""
    import ssmkit.runs.checkpoint as checkpoint
    import ssmkit.train.loop as loop

    generator = {"state": torch.tensor([7, 7, 7], dtype=torch.uint8)}
    monkeypatch.setattr(loop, "device_rng_state", lambda device: generator["state"].clone())  # saved by the loop
    monkeypatch.setattr(checkpoint, "set_device_rng_state", lambda device, state: generator.update(state=state))
    first = train(validate(tiny(tmp_path, max_steps=4)))
    saved = load_checkpoint(find_checkpoint(first["run_dir"]))
    assert [t.tolist() for t in saved.state.device_rng_by_rank] == [[7, 7, 7]]
    generator["state"] = torch.tensor([1, 2, 3], dtype=torch.uint8)  # the generator moved on since
    train(validate(tiny(tmp_path, max_steps=6)), resume=first["run_dir"])
    assert load_checkpoint(find_checkpoint(first["run_dir"])).state.step == 6
    assert generator["state"].tolist() == [7, 7, 7]  # resume restored the saved device state


def _start(tmp_path, **train_options) -> tuple[subprocess.Popen, Path]:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny(tmp_path, **train_options)))
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ssmkit", "train", str(recipe), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, run_dir


def _wait_for(path: Path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    proc, run_dir = _start(tmp_path, max_steps=100_000, eval_every=0, epochs=1000)
    _wait_for(run_dir / "metrics.jsonl", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err  # 143: a batch system sees an interrupted job
    assert "Traceback" not in err and "stopped by SIGTERM" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    saved = load_checkpoint(find_checkpoint(run_dir))
    assert saved.state.step == summary["step"] > 0
    resumed = train(validate(tiny(tmp_path, max_steps=summary["step"] + 3, eval_every=0, epochs=1000)), resume=run_dir)
    assert resumed["step"] == summary["step"] + 3


def test_sigkill_leaves_a_loadable_checkpoint(tmp_path):
    proc, run_dir = _start(tmp_path, max_steps=100_000, eval_every=0, epochs=1000, save_every=1)
    _wait_for(run_dir / "checkpoints" / "latest", proc)
    time.sleep(random.uniform(0.2, 1.5))
    proc.kill()
    proc.communicate(timeout=60)
    ckpt = find_checkpoint(run_dir)
    saved = load_checkpoint(ckpt)
    step = saved.state.step
    assert step >= 1 and ckpt.name == f"step-{step:08d}"
    assert not any(p.name.startswith(".tmp") and (p / "state.json").exists() is False and p == ckpt
                   for p in (run_dir / "checkpoints").iterdir())
    resumed = train(validate(tiny(tmp_path, max_steps=step + 2, eval_every=0, epochs=1000)), resume=run_dir)
    assert resumed["step"] == step + 2
    assert [r["step"] for r in read_metrics(run_dir)] == sorted(r["step"] for r in read_metrics(run_dir))


def test_new_run_never_overwrites(tmp_path):
    from ssmkit.errors import UserError
    from ssmkit.runs.rundir import new_run_dir

    a = new_run_dir(tmp_path, "x")
    (a / "file").write_text("keep")
    b = new_run_dir(tmp_path, "x")
    assert b.name == "x-2" and (a / "file").read_text() == "keep"
    with pytest.raises(UserError, match="already exists"):
        new_run_dir(tmp_path, "x", run_dir=a)


def test_a_torn_metrics_line_from_a_killed_run_is_dropped(tmp_path):
    from ssmkit.errors import UserError
    from ssmkit.runs.rundir import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    truncate_metrics(tmp_path, 1)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(UserError, match="metrics.jsonl:2: not a JSON line"):
        read_metrics(tmp_path)
