"""A NaN/inf training loss stops the run (one line, exit 3, nothing applied, no NaN checkpoint, `best` never on a NaN
model), or, with train.on_nonfinite=skip, skips the step and goes on; the weights check catches an update that
overflowed with a finite loss."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.recipe import validate
from ssmkit.runs.checkpoint import load_torch_file
from ssmkit.runs.rundir import read_metrics
from ssmkit.tasks.synthetic import SyntheticDataset

POISONED = 5  # the index of the training sample that holds a NaN


def recipe(tmp_path, **train) -> dict:
    return {
        "name": "nan",
        "task": {"name": "cumsum", "seq_len": 16, "samples_per_epoch": 64, "val_samples": 16},
        "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 8}},
        "optimizer": {"lr": 1e-2},
        "train": {"epochs": 2, "batch_size": 8, "eval_every": 2, "log_every": 1, "keep_checkpoints": 20,
                  "runs_dir": str(tmp_path / "runs"), **train},
    }


@pytest.fixture
def nan_in_training_data(monkeypatch):
    """Training sample POISONED of every epoch has a NaN input value (validation data stays clean)."""
    real = SyntheticDataset.__getitem__

    def getitem(self, index):
        x, y = real(self, index)
        if self.split == "train" and index == POISONED:
            x = x.clone()
            x.view(-1)[3] = math.nan
        return x, y

    monkeypatch.setattr(SyntheticDataset, "__getitem__", getitem)


def _train(tmp_path, data: dict, *args):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    return CliRunner().invoke(app, ["train", str(path), "--run-dir", str(run), *args]), run


def _checkpoints(run: Path) -> dict[int, dict]:
    return {int(p.name.split("-")[1]): load_file(str(p / "model.safetensors"))
            for p in sorted((run / "checkpoints").glob("step-*"))}


def _finite(weights: dict) -> bool:
    return all(torch.isfinite(t).all() for t in weights.values())


def test_nan_data_stops_with_one_line_and_no_nan_checkpoint(tmp_path, nan_in_training_data):
    assert SyntheticDataset.__getitem__ is not None
    result, run = _train(tmp_path, recipe(tmp_path))
    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert lines[0].startswith("error: step ") and "NaN or infinite" in lines[0]
    assert "NaN/inf in the data" in lines[0] and "optimizer.lr=0.01" in lines[0] and "train.on_nonfinite=skip" in lines[0]
    stopped_at = int(lines[0].split()[2].rstrip(":"))  # the step that was not applied
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "nonfinite" and summary["step"] == stopped_at - 1
    checkpoints = _checkpoints(run)
    assert checkpoints and all(_finite(w) for w in checkpoints.values())
    assert max(checkpoints) <= summary["step"]
    best = json.loads((run / "checkpoints" / "best").read_text())
    assert best["step"] in checkpoints and _finite(checkpoints[best["step"]])
    losses = [r["loss"] for r in read_metrics(run) if r["loss"] is not None]
    assert losses and all(math.isfinite(v) for v in losses)  # no NaN ever reached a log line


def test_skip_drops_the_nan_steps_and_trains_on(tmp_path, nan_in_training_data):
    result, run = _train(tmp_path, recipe(tmp_path, on_nonfinite="skip"))
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    # one poisoned batch per epoch: 8 batches per epoch, 2 epochs, 2 skipped steps
    assert summary["status"] == "finished" and summary["skipped_steps"] == 2 and summary["step"] == 14
    assert result.stdout.count("non-finite training loss, step skipped") == 2
    checkpoints = _checkpoints(run)
    assert all(_finite(w) for w in checkpoints.values())
    # AdamW counts the updates it applied: exactly the 14 finite steps, none for the skipped batches
    optimizer = load_torch_file(run / "checkpoints" / f"step-{14:08d}" / "optimizer.pt")
    assert {float(s["step"]) for s in optimizer["state"].values()} == {14.0}
    assert all(math.isfinite(r["loss"]) for r in read_metrics(run) if r["loss"] is not None)
    assert [r["step"] for r in read_metrics(run) if r["loss"] is not None] == list(range(1, 15))


def test_an_update_that_overflows_the_weights_is_never_saved(tmp_path, monkeypatch):
    """A finite loss whose update leaves an infinite weight (an overflow, simulated by the optimizer step writing
    inf into one weight): the checkpoint after it is refused, the run stops with one line."""
    real_step = torch.optim.AdamW.step

    def overflowing_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = math.inf
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    result, run = _train(tmp_path, recipe(tmp_path, save_every=1, eval_every=0))
    assert result.exit_code == 3, result.output
    line = result.stderr.strip()
    assert "\n" not in line, line
    assert line.startswith("error: step 1: the weights became NaN or infinite") and "no checkpoint was written yet" in line
    assert "exploding gradients (set train.grad_clip" in line
    assert not _checkpoints(run)


def test_on_nonfinite_is_validated(tmp_path):
    from ssmkit.errors import RecipeError

    with pytest.raises(RecipeError, match="train.on_nonfinite='drop' is not allowed.*stop, skip"):
        validate(recipe(tmp_path, on_nonfinite="drop"))


@pytest.mark.parametrize("precision", ["bf16", "fp16", "no"])
def test_the_stop_message_names_precision_only_under_mixed_precision(tmp_path, precision):
    from ssmkit.train.guard import causes

    line = causes(validate(recipe(tmp_path, mixed_precision=precision, grad_clip=1.0)))
    assert "NaN/inf in the data" in line and "optimizer.lr=0.01" in line and "\n" not in line
    named = f"half-precision overflow (train.mixed_precision={precision}; try no)"
    assert (named in line) == (precision != "no"), line
    assert ("precision" in line) == (precision != "no"), line
    assert "grad_clip" not in line  # clipping is on
    assert "exploding gradients (set train.grad_clip" in causes(validate(recipe(tmp_path, grad_clip=None)))


def test_data_readers_refuse_nan_and_inf(tmp_path):
    """Where the check is cheap the readers refuse non-finite data in one line naming the file (and row): a float
    WAV with a NaN sample (Speech Commands, SC09), a ListOps target of nan/inf/4.5."""
    import numpy as np
    import soundfile

    from ssmkit.errors import DataError
    from ssmkit.tasks import TASKS

    wav = tmp_path / "bad.wav"
    samples = np.zeros(16000, np.float32)
    samples[1234] = np.nan
    soundfile.write(wav, samples, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=r"bad.wav: sample 1234 is nan \(a NaN or infinite value\)"):
        TASKS.get("sc10")(data_dir=str(tmp_path)).read(wav)
    samples[1234] = 0.5  # the same file with a finite value reads
    soundfile.write(wav, samples, 16000, subtype="FLOAT")
    assert TASKS.get("sc10")(data_dir=str(tmp_path)).read(wav)[1234] == 0.5

    for bad in ("nan", "inf", "-inf", "4.5"):
        for split in ("train", "val", "test"):
            (tmp_path / f"basic_{split}.tsv").write_text(f"Source\tTarget\n[MAX 2 3 ]\t3\n[MIN 2 3 ]\t{bad}\n")
        with pytest.raises(DataError, match=rf"basic_train.tsv:3: Target '{bad}' is not a digit 0-9"):
            TASKS.get("listops")(data_dir=str(tmp_path)).dataset("train")


def test_out_of_memory_is_one_line(tmp_path, monkeypatch):
    """A real allocation failure (1 PiB) in a training step: one line naming the step, what failed and the sizes to
    lower, exit 2; summary.json says failed, not finished. (Sizes no machine holds, model.d_model=1e9, are refused
    before anything is allocated: tests/test_bad_inputs.py.)"""
    from ssmkit.models.sequence import SequenceModel

    real_forward = SequenceModel.forward

    def forward(self, *args, **kwargs):
        if self.training and forward.calls >= 2:  # the third training step (after an evaluation)
            torch.empty(2**50, dtype=torch.uint8)  # the CPU allocator refuses this
        forward.calls += 1
        return real_forward(self, *args, **kwargs)

    forward.calls = 0
    monkeypatch.setattr(SequenceModel, "forward", forward)
    result, run = _train(tmp_path, recipe(tmp_path))
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in result.output
    assert "out of memory while training (step 3) (tried to allocate 1125899906842624 bytes)" in line
    assert "train.batch_size=8" in line and "model.d_model=8" in line
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


@pytest.mark.distributed
def test_two_processes_stop_together_in_one_line(tmp_path):
    """Under --processes 2 the decision is one all-reduce: both ranks stop at the same step, rank 0 reports once."""
    import os
    import subprocess
    import sys

    data = recipe(tmp_path, eval_every=0, max_steps=50)
    data["optimizer"] = {"name": "sgd", "lr": 1e38, "momentum": 0.0}  # the first update overflows
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "ssmkit", "train", "r.yaml", "--run-dir", "run", "--processes", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert lines[0].startswith("error: step ") and "optimizer.lr=1e+38" in lines[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "nonfinite" and summary["processes"] == 2
    assert all(_finite(w) for w in _checkpoints(tmp_path / "run").values())
