"""Two real processes (torchrun, gloo, Accelerator(cpu=True)): one 2-process launch trains (a straight run
and a half run), a second launch resumes the half run through ``ssmkit train --processes 2``; then one
process evaluates the 2-process checkpoint."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.runs.checkpoint import find_checkpoint, load_checkpoint
from ssmkit.runs.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}


def _comparable(records):
    """Training lines and evaluations on the eval_every grid (the half run also evaluated at its end, step 6:
    that evaluation must not change what follows)."""
    return [(r["step"], r["epoch"], r["lr"], r["loss"], r["metrics"]) for r in records if r["loss"] is not None or r["step"] % 4 == 0]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_train_resume_and_evaluate_in_one(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).parent / "dist_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Grad strides do not match" not in proc.stderr  # DDP gets row-major gradients (Kernel.register)
    result = json.loads((tmp_path / "result.json").read_text())
    straight, half = Path(result["summary"]["run_dir"]), Path(result["half"]["run_dir"])

    # DDP keeps the replicas identical; each rank reads its own half of every epoch, together all of it
    assert result["processes"] == 2 and result["summary"]["processes"] == 2
    assert result["params_equal"]
    counts = torch.tensor(result["counts"])  # (rank, sample)
    assert counts.sum(0).tolist() == [1] * 64 and counts.sum(1).tolist() == [32, 32]

    # gathered validation metrics are exact: 37 = 2 * 18 + 1 samples, the padding duplicate dropped
    assert result["eval_samples"] == 37 and result["summary"]["final"]["val/samples"] == 37
    for key in ("mse", "r2"):
        assert result["dist_metrics"][key] == pytest.approx(result["local_metrics"][key], rel=1e-6)

    # only rank 0 wrote: the two run directories, each step logged once
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["half", "straight"]
    steps = [r["step"] for r in read_metrics(straight) if r["loss"] is not None]
    assert steps == list(range(1, 13))
    assert len(load_checkpoint(find_checkpoint(straight)).state.rng_by_rank) == 2

    # resume the 2-process half run in a new 2-process launch: it continues exactly (mid-epoch, dropout)
    resume = [sys.executable, "-m", "ssmkit", "train", "--resume", str(half), "--processes", "2", "train.max_steps=12"]
    proc = subprocess.run(resume, capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished: 12 steps" in proc.stdout
    a = load_file(str(find_checkpoint(straight) / "model.safetensors"))
    b = load_file(str(find_checkpoint(half) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _comparable(read_metrics(straight)) == _comparable(read_metrics(half))

    # the 2-process checkpoint loads and evaluates in this single process, with the same metrics
    out = CliRunner().invoke(app, ["eval", str(straight)])
    assert out.exit_code == 0, out.output
    single = json.loads(out.stdout.strip().splitlines()[-1])
    assert single["step"] == 12 and single["samples"] == 37
    for key in ("mse", "r2"):
        assert single[key] == pytest.approx(result["summary"]["final"][f"val/{key}"], rel=1e-6)


def test_processes_refuses_bad_recipes_and_nested_launches(tmp_path, monkeypatch):
    """The recipe is validated before any process starts; --processes inside torchrun is refused."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {name: cumsum, seq_len: 16}\ntrain: {batch_sise: 4}\n")
    out = CliRunner().invoke(app, ["train", str(bad), "--processes", "2"])
    assert out.exit_code == 2 and "unknown key train.batch_sise" in out.output and "batch_size" in out.output
    good = tmp_path / "good.yaml"
    good.write_text("task: {name: cumsum, seq_len: 16}\n")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = CliRunner().invoke(app, ["train", str(good), "--processes", "2"])
    assert out.exit_code == 2 and "already distributed launch" in out.output
