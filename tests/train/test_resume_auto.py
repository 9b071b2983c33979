"""Requeued jobs: `--resume auto` starts a run or continues it; a run killed before its first checkpoint starts again
in place; `--max-steps` on resume stops early and leaves the schedule as the uninterrupted run's."""
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.runs.checkpoint import find_checkpoint
from ssmkit.runs.rundir import read_metrics


def recipe(tmp_path, **train) -> dict:
    return {
        "name": "auto",
        "task": {"name": "cumsum", "seq_len": 16, "samples_per_epoch": 64, "val_samples": 16},
        "model": {"d_model": 8, "n_layers": 1, "dropout": 0.1, "mixer": {"name": "s4d", "d_state": 8}},
        "optimizer": {"lr": 1e-2},
        "scheduler": {"name": "cosine", "warmup_steps": 2},
        "train": {"max_steps": 12, "batch_size": 8, "eval_every": 4, "save_every": 1, "keep_checkpoints": 20,
                  "log_every": 1, "runs_dir": str(tmp_path / "runs"), **train},
    }


def cli(*args):
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    return result


def weights(run):
    return load_file(str(find_checkpoint(run) / "model.safetensors"))


def lrs(run) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_metrics(run) if r["loss"] is not None}


def test_resume_auto_starts_then_continues_and_refuses_another_experiment(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path)))
    run = tmp_path / "runs" / "auto"  # no --run-dir: <runs_dir>/<name>, exactly
    first = cli(path, "--resume", "auto")
    assert first.exit_code == 0, first.output
    assert "run      " + str(run) + " (new)" in first.stdout
    assert json.loads((run / "summary.json").read_text())["step"] == 12
    # requeued: the same command continues the run (here it is complete: nothing more to train, no re-evaluation)
    lines_before = len(read_metrics(run))
    again = cli(path, "--resume", "auto")
    assert again.exit_code == 0, again.output
    assert f"run      {run} (resumed at step 12)" in again.stdout and not (tmp_path / "runs" / "auto-2").exists()
    assert len(read_metrics(run)) == lines_before
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final"]["val/samples"] == 16

    other = cli(path, "model.d_model=16", "--resume", "auto")
    assert other.exit_code == 2
    assert "model.d_model is 16 here and 8 in that run" in other.stderr and "\n" not in other.stderr.strip()


def straight_run_and_copy(tmp_path):
    """The recipe file, an uninterrupted run of it, and a copy of that run to cut and continue."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path)))
    straight = tmp_path / "straight"
    assert cli(path, "--run-dir", straight).exit_code == 0
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    return path, straight, run


def test_resume_auto_continues_a_stopped_run_like_the_uninterrupted_one(tmp_path):
    path, straight, run = straight_run_and_copy(tmp_path)
    # the run as a job that was stopped after step 5: its checkpoints up to 5
    for ckpt in (run / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > 5:
            shutil.rmtree(ckpt)
    (run / "checkpoints" / "latest").write_text(json.dumps({"checkpoint": "step-00000005", "step": 5, "metric": None}))
    (run / "summary.json").unlink()
    result = cli(path, "--run-dir", run, "--resume", "auto")
    assert result.exit_code == 0, result.output
    assert f"run      {run} (resumed at step 5)" in result.stdout
    assert lrs(run) == lrs(straight)
    a, b = weights(straight), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_max_steps_on_resume_stops_early_and_keeps_the_schedule(tmp_path):
    path, straight, run = straight_run_and_copy(tmp_path)
    stopped = cli("--resume", run / "checkpoints" / "step-00000003", "--max-steps", 7)  # continue at 3, stop at 7
    assert stopped.exit_code == 0, stopped.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["step"] == 7 and summary["total_steps"] == 12
    assert "stopped at step 7 of 12 (--max-steps); continue with: ssmkit train --resume" in stopped.stdout
    assert {s: lr for s, lr in lrs(run).items() if s <= 7} == {s: lr for s, lr in lrs(straight).items() if s <= 7}
    # the cosine over 12 steps, not re-planned over 7: its lr at 7 is far from the floor
    assert lrs(run)[7] == pytest.approx(lrs(straight)[7]) and lrs(run)[7] > 0.2e-2
    finished = cli("--resume", run)
    assert finished.exit_code == 0, finished.output
    assert lrs(run) == lrs(straight)
    a, b = weights(straight), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)

    past = cli("--resume", run, "--max-steps", 20)
    assert past.exit_code == 2 and "--max-steps 20 is past the end of this run (12 steps" in past.stderr
    assert "train.max_steps=20" in past.stderr


def test_a_run_killed_before_its_first_checkpoint_starts_again_in_place(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path, max_steps=3)))
    for how in (["--resume", "{run}"], ["--run-dir", "{run}", "--resume", "auto"]):
        run = tmp_path / f"killed{len(how)}"
        run.mkdir()  # what a run killed during its first steps leaves: its recipe and some log lines
        (run / "recipe.yaml").write_text(yaml.safe_dump(recipe(tmp_path, max_steps=3)))
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
        args = [a.format(run=run) for a in how]
        result = cli(*args) if how[0] == "--resume" else cli(path, *args)
        assert result.exit_code == 0, result.output
        assert f"run      {run} (restarted from step 0)" in result.stdout
        assert [r["step"] for r in read_metrics(run) if r["loss"] is not None] == [1, 2, 3]
        assert 9.0 not in [r["loss"] for r in read_metrics(run)]
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    # --run-dir never reuses a directory: it points at --resume, which continues it
    assert cli(path, "--run-dir", run).exit_code == 2
