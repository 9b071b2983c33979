"""``ssmkit sweep`` (ssmkit/sweep.py): grid expansion and naming, then real sweeps of tiny ``ssmkit train`` runs
in child processes: a 2x2 grid x 2 seeds runs, re-runs without training anything, resumes exactly the runs
that lost their summary or their checkpoints, continues a run stopped by SIGTERM, reports a failing point,
and tabulates mean ± std (checked against statistics.mean/stdev of the runs' own summary.json files)."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.errors import UserError
from ssmkit.sweep import Axis, axis_labels, build_grid, parse_axes, point_name, split_values, value_labels

TINY = """\
task: {name: shift, seq_len: 16, samples_per_epoch: 64, val_samples: 16}
model: {d_model: 8, n_layers: 1, mixer: {name: s4d, d_state: 8}}
optimizer: {name: adamw, lr: 1.0e-3}
train: {epochs: 1, batch_size: 8, seed: 3}
"""
GRID = ["model.mixer.d_state=4,8", "optimizer.lr=1e-3,3e-3"]


def invoke(*args, cwd: Path):
    """``ssmkit sweep ARGS`` in this process; the trainings it starts are real child processes."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, ["sweep", *map(str, args)])
    finally:
        os.chdir(old)


@pytest.fixture()
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


# --- grid expansion and naming (no training) --------------------------------------------------------
def test_split_values_keeps_lists_and_quoted_commas():
    assert split_values("16,32,64") == ["16", "32", "64"]
    assert split_values("[4,4]") == ["[4,4]"]
    assert split_values("[4,4],[2,[8,1]]") == ["[4,4]", "[2,[8,1]]"]
    assert split_values("{a: 1, b: 2},'x,y',\"p,q\"") == ["{a: 1, b: 2}", "'x,y'", '"p,q"']
    with pytest.raises(UserError, match="unclosed"):
        split_values("[4,4")
    with pytest.raises(UserError, match="unclosed"):
        split_values("'a,b")


def test_parse_axes():
    axes, fixed = parse_axes(["model.mixer.d_state=16,32", "model.pool_factors=[4,4]", "optimizer.lr=1e-3,3e-3",
                              "train.seed=5"])
    assert axes == [Axis("model.mixer.d_state", ("16", "32")), Axis("optimizer.lr", ("1e-3", "3e-3"))]
    assert fixed == ["model.pool_factors=[4,4]", "train.seed=5"]
    for bad, fragment in ((["optimizer.lr"], "not of the form"), (["a..b=1,2"], "empty key part"),
                          (["optimizer.lr=1,2", "optimizer.lr=3"], "given twice"), (["optimizer.lr=1,1"], "twice"),
                          (["optimizer.lr=1,,2"], "empty value"), (["train.seed=1,2"], "--seeds")):
        with pytest.raises(UserError, match=fragment):
            parse_axes(bad)


def test_names_are_readable_unique_and_stable():
    assert axis_labels(["model.mixer.d_state", "optimizer.lr", "model.mixer.lr"]) == {
        "model.mixer.d_state": "d_state", "optimizer.lr": "optimizer.lr", "model.mixer.lr": "mixer.lr"}
    axes = [Axis("model.mixer.d_state", ("16", "32")), Axis("model.pool_factors", ("[4,4]", "[2,8]"))]
    assert point_name(axes, {"model.mixer.d_state": "16", "model.pool_factors": "[4,4]"}) == "d_state=16,pool_factors=4-4"
    assert point_name([], {}) == "base"
    # two values that would make the same folder name get a short hash each, always the same one
    labels = value_labels(Axis("task.name", ("a b", "ab")))
    assert labels["a b"] != labels["ab"] and labels == value_labels(Axis("task.name", ("a b", "ab")))
    assert all(label.startswith("ab~") for label in labels.values())


def test_build_grid_order_seeds_and_validation(recipe):
    grid = build_grid(str(recipe), [*GRID, "train.batch_size=4"], seeds=2)
    assert grid.seeds == [3, 4]  # from the recipe's train.seed
    names = [r.name for r in grid.runs]
    assert names[:4] == ["d_state=4,lr=1e-3-seed3", "d_state=4,lr=3e-3-seed3", "d_state=8,lr=1e-3-seed3",
                         "d_state=8,lr=3e-3-seed3"]
    assert len(set(names)) == 8 and names[4].endswith("-seed4")
    assert grid.runs[5].overrides == ["train.batch_size=4", "model.mixer.d_state=4", "optimizer.lr=3e-3", "train.seed=4"]
    with pytest.raises(UserError, match="sweep point d_state=4,lrr=1e-3: .*unknown key optimizer.lrr"):
        build_grid(str(recipe), ["model.mixer.d_state=4,8", "optimizer.lrr=1e-3,3e-3"], seeds=1)


def test_bad_sweep_commands_are_one_line(recipe, tmp_path):
    folder = tmp_path / "s"
    cases = [
        ([recipe, "model.mixer.d_stat=4,8", "--dir", folder], "unknown option model.mixer.d_stat"),
        ([recipe, "model.mixer.d_state=4,8", "--seeds", "0", "--dir", folder], "--seeds must be at least 1"),
        ([recipe, "model.mixer.d_state=4,8", "--index", "9", "--dir", folder], "outside the sweep's 2 runs"),
        ([recipe, "model.mixer.d_state=[4,8", "--dir", folder], "unclosed bracket"),
        (["optimizer.lr=1,2", "--dir", folder], "the first argument is the recipe"),
        (["--table"], "missing RECIPE"),
        (["--table", "--dir", folder], "no sweep folder"),
        ([recipe, "--list", "--table"], "give one of --list, --index and --table"),
        ([recipe, "--list", "--json"], "--json does nothing with --list"),
        ([recipe, "--index", "0", "--processes", "2"], "--processes does nothing with --index"),
        (["--table", "--dir", folder, "--force"], "--force does nothing with --table"),
    ]
    for args, fragment in cases:
        result = invoke(*args, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not folder.exists() and not (tmp_path / "runs").exists()


def test_list_prints_one_line_per_run(recipe, tmp_path):
    result = invoke(recipe, *GRID, "--seeds", "2", "--list", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 8
    index, name, state, overrides = lines[6].split("\t")
    assert (index, name, state) == ("6", "d_state=8,lr=1e-3-seed4", "pending")
    assert overrides == "model.mixer.d_state=8 optimizer.lr=1e-3 train.seed=4"
    assert not (tmp_path / "runs").exists()  # listing writes nothing


def test_children_get_threads_or_one_gpu_each(recipe, tmp_path, monkeypatch):
    import ssmkit.sweep as sweep_module

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweep_module, "_cpu_count", lambda: 16)
    env = sweep_module.child_env(4, None)
    assert env["OMP_NUM_THREADS"] == "4"  # 16 cores / 4 runs at a time
    assert env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")  # no GPU given: unchanged
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = sweep_module.child_env(4, "5")
    assert env["OMP_NUM_THREADS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == "5"  # the user's setting wins
    monkeypatch.setattr(sweep_module, "_gpus", lambda: ["0", "1"])
    result = invoke(recipe, "model.mixer.d_state=4,8", "--processes", "3", "--dir", tmp_path / "s", cwd=tmp_path)
    assert result.exit_code == 2 and "--processes 3 but 2 GPU(s) visible" in result.stderr
    assert not (tmp_path / "s").exists()


def test_broken_sweep_folders_are_one_line(recipe, tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = invoke(recipe, "model.mixer.d_state=4,8", "--dir", folder, cwd=tmp_path)
    assert result.exit_code == 2 and "is not empty and holds no sweep.json" in result.stderr
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]  # nothing written there
    (folder / "sweep.json").write_bytes(b"\x00\xff{")
    for args in (["--table", "--dir", folder], [recipe, "model.mixer.d_state=4,8", "--dir", folder]):
        result = invoke(*args, cwd=tmp_path)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "not readable JSON" in result.stderr
    for args, fragment in ((["plot", "--x", "d_state", "--y", "val/r2"], "--x/--y go with --sweep"),
                           (["plot", "--sweep", tmp_path, "--x", "a", "--y", "b"], "not a sweep folder"),
                           (["plot", "--sweep", folder, "--x", "a"], "needs --x KEY"),
                           (["plot", tmp_path, "--sweep", folder, "--x", "a", "--y", "b"], "not both")):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


# --- real sweeps --------------------------------------------------------------------------------------
def _summaries(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/summary.json")}


def _attempts(folder: Path, run: str) -> int:
    return sum(line.startswith("== ") for line in (folder / "logs" / f"{run}.out").read_text().splitlines())


def test_sweep_runs_resumes_and_tabulates(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = tmp_path / "sw"
    first = invoke(recipe, *GRID, "--seeds", "2", "--processes", "2", "--dir", folder, "--json", cwd=tmp_path)
    assert first.exit_code == 0, first.output
    summaries = _summaries(folder)
    assert len(summaries) == 8 and all(s["status"] == "finished" for s in summaries.values())
    data = json.loads((folder / "sweep.json").read_text())
    assert data["axes"] == [{"key": "model.mixer.d_state", "values": ["4", "8"]},
                            {"key": "optimizer.lr", "values": ["1e-3", "3e-3"]}]
    assert {r["status"] for r in data["runs"]} == {"finished"}
    # each run trained the point it is named after
    import yaml

    run_recipe = yaml.safe_load((folder / "d_state=8,lr=3e-3-seed4" / "recipe.yaml").read_text())
    assert run_recipe["model"]["mixer"]["d_state"] == 8 and run_recipe["optimizer"]["lr"] == 3e-3
    assert run_recipe["train"]["seed"] == 4

    # the aggregate is the mean and the sample std over the two seeds' own summaries
    results = json.loads(first.stdout)
    assert len(results["points"]) == 4
    for point in results["points"]:
        runs = [summaries[f"{point['point']}-seed{s}"] for s in (3, 4)]
        for metric in ("val/r2", "val/mse"):
            values = [r["final"][metric] for r in runs]
            got = point["metrics"][metric]
            assert got["n"] == 2
            assert got["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert got["std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert point["best"]["mean"] == pytest.approx(statistics.mean(r["best"] for r in runs), rel=1e-12)
        assert point["counts"] == {"finished": 2}

    # the same command again trains nothing
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/summary.json")}
    again = invoke(recipe, *GRID, "--seeds", "2", "--processes", "2", "--dir", folder, cwd=tmp_path)
    assert again.exit_code == 0, again.output
    assert "all 8 run(s) already finished" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/summary.json")} == stamps
    assert all(_attempts(folder, name) == 1 for name in summaries)
    # the table: one row per point, mean ± std (n=2), not cut at 80 columns when not on a terminal
    table = again.stdout
    mean, std = results["points"][0]["metrics"]["val/r2"]["mean"], results["points"][0]["metrics"]["val/r2"]["std"]
    assert f"{mean:.4g} ± {std:.2g} (n=2)" in table
    assert sum("2/2 finished" in line for line in table.splitlines()) == 4
    assert max(len(line) for line in table.splitlines()) > 80

    # a run that lost its summary is resumed from its checkpoint; one that lost its checkpoints starts again
    # (its old folder moved to .stale/, not deleted); nothing else runs
    resumed, restarted = "d_state=4,lr=3e-3-seed3", "d_state=8,lr=1e-3-seed4"
    (folder / resumed / "summary.json").unlink()
    (folder / restarted / "summary.json").unlink()
    for ckpt in (folder / restarted / "checkpoints").iterdir():
        if ckpt.is_dir():
            for f in ckpt.iterdir():
                f.unlink()
            ckpt.rmdir()
        else:
            ckpt.unlink()
    (folder / restarted / "checkpoints").rmdir()
    third = invoke(recipe, *GRID, "--seeds", "2", "--dir", folder, cwd=tmp_path)
    assert third.exit_code == 0, third.output
    assert "6 of 8 run(s) already finished; running 2" in third.stderr
    assert f"resume {resumed}" in third.stderr and f"start  {restarted}" in third.stderr
    assert (folder / ".stale" / restarted / "recipe.yaml").is_file()
    after = _summaries(folder)
    assert after[resumed]["status"] == after[restarted]["status"] == "finished"
    assert after[restarted]["final"] == summaries[restarted]["final"]  # same seed, same data: the same run again
    for name in summaries:
        assert _attempts(folder, name) == (2 if name in (resumed, restarted) else 1), name
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/summary.json") if p.parent.name not in (resumed, restarted)} \
        == {p: t for p, t in stamps.items() if p.parent.name not in (resumed, restarted)}

    # a different grid on the same folder is refused in one line; --table alone needs no recipe
    other = invoke(recipe, "model.mixer.d_state=4,16", "optimizer.lr=1e-3,3e-3", "--dir", folder, cwd=tmp_path)
    assert other.exit_code == 2 and other.stderr.count("\n") == 1
    assert "holds another sweep" in other.stderr and "--force" in other.stderr
    shown = invoke("--table", "--dir", folder, cwd=tmp_path)
    assert shown.exit_code == 0 and f"{mean:.4g} ± {std:.2g} (n=2)" in shown.stdout

    # the plot: metric against d_state, one line per lr, error bars over seeds
    pytest.importorskip("matplotlib", reason="ssmkit plot --sweep needs the optional matplotlib (pip install 'ssmkit[plot]')")
    from ssmkit.sweep import plot_sweep

    out = tmp_path / "r2.png"
    assert plot_sweep(folder, "d_state", "val/r2", out) == {"lines": 2, "points": 4}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cli = CliRunner().invoke(app, ["plot", "--sweep", str(folder), "--x", "model.mixer.d_state", "--y", "val/r2"])
    assert cli.exit_code == 0, cli.output
    assert (folder / "val-r2-vs-model.mixer.d_state.png").read_bytes()[:4] == b"\x89PNG"
    again = CliRunner().invoke(app, ["plot", "--sweep", str(folder), "--x", "model.mixer.d_state", "--y", "val/r2"])
    assert again.exit_code == 2 and "already exists" in again.stderr  # never overwritten without --force
    bad = CliRunner().invoke(app, ["plot", "--sweep", str(folder), "--x", "d_stat", "--y", "val/r2"])
    assert bad.exit_code == 2 and "did you mean 'd_state'" in bad.stderr and bad.stderr.count("\n") == 1


def test_failed_point_is_reported_and_retried(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = tmp_path / "sw"
    grid = ["model.mixer.d_state=4,-4", "--dir", folder]
    # one run alone, as a SLURM array task does (--index): d_state=-4 passes the recipe's type checks and fails
    # when the mixer is built, inside the child
    task = invoke(recipe, *grid, "--index", "1", cwd=tmp_path)
    assert task.exit_code == 1, task.output
    assert "run 1 (d_state=-4-seed3): failed: error:" in task.stderr and "d_state must be positive" in task.stderr
    record = json.loads((folder / "sweep.json").read_text())["runs"][1]
    assert record["status"] == "failed" and record["returncode"] == 2 and "d_state must be positive" in record["error"]
    assert not (folder / "d_state=4-seed3").exists()  # the other run was not touched
    # the whole grid: the failed run is retried (and fails again), the table shows it with its error
    result = invoke(recipe, *grid, cwd=tmp_path)
    assert result.exit_code == 1, result.output
    assert "0 of 2 run(s) already finished; running 2" in result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2
    assert "1/1 finished" in rows[0]
    assert "0/1 finished; 1 failed" in rows[1] and "d_state must be positive" in rows[1]
    assert "1 run(s) failed" in result.stderr
    assert json.loads((folder / "sweep.json").read_text())["runs"][1]["attempts"] == 2


def test_sigterm_stops_the_sweep_and_the_same_command_continues(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = tmp_path / "sw"
    args = [sys.executable, "-m", "ssmkit", "sweep", str(recipe), "train.max_steps=200", "train.epochs=100",
            "train.log_every=1", "--dir", str(folder)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = folder / "base-seed3" / "metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    summary = json.loads((folder / "base-seed3" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] < 200, (summary, err)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err
    assert "1 interrupted" in out, out
    again = invoke(recipe, "train.max_steps=200", "train.epochs=100", "train.log_every=1", "--dir", folder, cwd=tmp_path)
    assert again.exit_code == 0, again.output
    assert "resume base-seed3" in again.stderr
    summary = json.loads((folder / "base-seed3" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 200
