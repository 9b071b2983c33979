"""The checkpoint format stays readable: every ``state.json`` an earlier ssmkit wrote is one ``LoopState`` with the
same keys, and a run saved before the mixer redesign (``tests/fixtures/legacy_v0``) resumes training with today's
loop (its recipe and weights upgraded by ``ssmkit/runs/legacy.py``, its optimizer, schedule and RNG restored)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import ssmkit
from ssmkit.cli import app
from ssmkit.runs.checkpoint import (
    LoopState,
    find_checkpoint,
    load_checkpoint,
    load_torch_file,
    save_checkpoint,
)
from ssmkit.runs.rundir import read_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v0" / "runs"
RUNS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


@pytest.mark.parametrize("name", RUNS)
def test_an_old_state_json_is_one_loop_state_with_the_same_keys(name, tmp_path):
    ckpt = find_checkpoint(FIXTURES / name)
    saved = load_checkpoint(ckpt)
    written = json.loads((ckpt / "state.json").read_text())
    state = saved.state
    assert isinstance(state, LoopState) and state.step == written["step"] == 2
    assert state.to_json() == written  # nothing renamed, nothing lost, nothing added
    rng = load_torch_file(ckpt / "rng.pt")
    assert torch.equal(state.rng_torch, rng["torch"]) and len(state.rng_by_rank) == state.processes == 1
    # written again by today's code: the same state.json, the same generators
    out = save_checkpoint(tmp_path / "run", saved.weights, saved.optimizer, state, saved.recipe_yaml)
    assert json.loads((out / "state.json").read_text()) == written
    again = load_checkpoint(out)
    assert torch.equal(again.state.rng_torch, state.rng_torch)
    assert all(torch.equal(a, b) for a, b in zip(again.state.rng_by_rank, state.rng_by_rank))


@pytest.mark.parametrize("name", ["s4d", "s5", "sashimi"])
def test_an_old_run_resumes_training(name, tmp_path):
    """``ssmkit train --resume`` on a run of the old layout: steps 3 and 4 continue from its step-2 checkpoint (Adam's
    step count carries on from 2), its records are kept, and the new checkpoint is in today's layout."""
    run = shutil.copytree(FIXTURES / name, tmp_path / name)
    old_records = read_metrics(run)
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "train.max_steps=4", "train.log_every=1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
    ckpt = find_checkpoint(run)
    saved = load_checkpoint(ckpt)
    assert ckpt.name == "step-00000004" and saved.state.step == 4
    assert {float(s["step"]) for s in saved.optimizer["state"].values()} == {4.0}  # restored at 2, two more steps
    assert yaml.safe_load(saved.recipe_yaml)["model"]["mixer"]["name"] == ssmkit.load(run).recipe.model.mixer["name"]
    assert not any(".layer." in key for key in saved.weights)  # today's state-dict layout
    records = read_metrics(run)
    assert records[:len(old_records)] == old_records
    assert [r["step"] for r in records[len(old_records):] if r.get("loss") is not None] == [3, 4]
