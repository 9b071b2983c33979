"""``ssmkit runs`` lists run directories newest first with what each did (running / finished / crashed /
unreadable, total time, chosen recipe columns, filters, JSON); ``ssmkit plot`` renders their curves."""
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.runs.listing import COLUMNS
from ssmkit.runs.lock import RunLock

RECIPE = {
    "task": {"name": "shift", "seq_len": 16, "samples_per_epoch": 32, "val_samples": 8},
    "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
    "train": {"batch_size": 8, "epochs": 2, "log_every": 1, "eval_every": 2},
}


def _train(root, name: str, mixer: str, seed: int, *args: str):
    recipe = {**RECIPE, "name": name, "model": {**RECIPE["model"], "mixer": {"name": mixer, "d_state": 4}},
              "train": {**RECIPE["train"], "runs_dir": str(root), "seed": seed}}
    path = root.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(path), *args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs (s4d, then dlr; the dlr one resumed once, so two segments), plus an unfinished one
    (killed: no summary.json, nobody holds it) and a broken one."""
    root = tmp_path_factory.mktemp("runs")
    _train(root, "tiny-s4d", "s4d", 0, "--max-steps", "6")
    time.sleep(0.05)  # distinct start times
    _train(root, "tiny-dlr", "dlr", 1, "--max-steps", "4")
    # lengthen the 4-step run to 6 (re-plans its schedule; --max-steps on resume is only a stop point)
    result = CliRunner().invoke(app, ["train", "--resume", str(root / "tiny-dlr"), "train.max_steps=6"])
    assert result.exit_code == 0, result.output
    # an unfinished run: as if killed after its checkpoint (no summary.json)
    unfinished = root / "killed"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "recipe.yaml").write_text(yaml.safe_dump({**RECIPE, "name": "killed"}))
    (unfinished / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 0.5, "metrics": {}}) + "\n")
    broken = root / "group" / "broken"
    broken.mkdir(parents=True)
    (broken / "recipe.yaml").write_text(yaml.safe_dump({**RECIPE, "name": "broken"}))
    (broken / "summary.json").write_bytes(b"\x80garbage")
    for age, d in ((3600, unfinished), (7200, broken)):  # the hand-made runs are older than the trained ones
        old = time.time() - age
        for p in [d, *d.rglob("*")]:
            os.utime(p, (old, old))
    return root


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def table_rows(output: str) -> dict[str, list[str]]:
    """{run: cells} of the table rows in ``output`` (rich's box characters as separators)."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells
    return rows


def test_runs_table_newest_first(runs):
    result = invoke("runs", runs)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert list(rows) == ["tiny-dlr", "tiny-s4d", "killed", "group/broken"], result.output
    dlr = dict(zip(COLUMNS, rows["tiny-dlr"]))
    summary = json.loads((runs / "tiny-dlr" / "summary.json").read_text())
    assert (dlr["task"], dlr["mixer"], dlr["status"], dlr["step"]) == ("shift", "dlr", "finished", "6")
    assert dlr["best"] == f"r2 {summary['best']:.4g}"  # the best value of the task's main metric, as summary.json has it
    killed = dict(zip(COLUMNS, rows["killed"]))
    assert killed["status"] == "crashed" and killed["step"] == "3"  # nobody holds it, no summary: the last logged step
    assert "crashed: no process holds the run" in result.output
    broken = dict(zip(COLUMNS, rows["group/broken"]))
    assert broken["status"].startswith("unreadable") and broken["task"] == "shift"  # listed, not hiding the others
    assert re.search(r"unreadable group/broken: \S*summary\.json: not valid JSON", result.output)


def test_the_time_is_the_total_over_resumed_segments(runs):
    summary = json.loads((runs / "tiny-dlr" / "summary.json").read_text())
    assert len(summary["segments"]) == 2  # trained to step 4, then resumed to step 6
    (record,) = json.loads(invoke("runs", runs, "--json", "--filter", "tiny-dlr").stdout)
    assert record["time"] == summary["time_s"] == pytest.approx(sum(s["time_s"] for s in summary["segments"]))
    assert record["time"] > summary["segments"][-1]["time_s"]


def test_a_live_run_is_running_and_a_dead_one_crashed(runs, tmp_path):
    """The lock (ssmkit/train/lock.py) tells them apart: held by a live process = running, with its pid."""
    live = tmp_path / "live"
    shutil.copytree(runs / "tiny-s4d", live)
    (live / "summary.json").unlink()  # a run still training has no summary of its own yet
    lock = RunLock(live).acquire()
    try:
        result = invoke("runs", tmp_path, "--json")
        (record,) = json.loads(result.stdout)
        assert record["status"] == "running" and record["lock"]["pid"] == os.getpid()
        assert record["time"] is not None and 0 <= record["time"] < 600  # since the lock was taken
        row = table_rows(invoke("runs", tmp_path).output)["live"]
        assert f"running (pid {os.getpid()}" in row[COLUMNS.index("status")]
    finally:
        lock.release()
    (record,) = json.loads(invoke("runs", tmp_path, "--json").stdout)
    assert record["status"] == "crashed" and record["lock"] is None and record["step"] == 6


# (file of the run, what to write into it, fragment of the reason)
MALFORMED = [
    ("checkpoints/latest", b"{garbage", "latest: not readable JSON"),
    ("checkpoints/latest", b'{"step": 3}', "latest: expected a JSON object naming a checkpoint"),
    ("checkpoints/best", b"\xff\xfe", "best: not readable JSON"),
    ("checkpoints/step-00000006/state.json", b"[1, 2", "state.json: not valid JSON"),
    ("checkpoints/step-00000006/state.json", b'{"step": "six"}', "state.json: step must be a non-negative integer"),
    ("summary.json", b"{", "summary.json: not valid JSON"),
    ("summary.json", b'{"status": "finished", "time_s": "long"}', "summary.json"),
    ("summary.json", b'{"status": 5}', "summary.json: status must be a string"),
    ("metrics.jsonl", b'{"step": 1}\n{torn\n{"step": 2}\n', "metrics.jsonl:2: not a JSON line"),
    ("recipe.yaml", b"model: [unclosed\n", "recipe.yaml: malformed YAML"),
]


@pytest.mark.parametrize("name,content,reason", MALFORMED, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(MALFORMED)])
def test_a_malformed_file_marks_that_run_unreadable_and_lists_the_rest(runs, tmp_path, name, content, reason):
    for run in ("tiny-s4d", "tiny-dlr"):
        shutil.copytree(runs / run, tmp_path / run)
    (tmp_path / "tiny-s4d" / name).write_bytes(content)
    result = invoke("runs", tmp_path, "--columns", "model.mixer.name")
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert rows["tiny-dlr"][COLUMNS.index("status")] == "finished"
    assert rows["tiny-s4d"][COLUMNS.index("status")] == "unreadable (see below)"
    assert re.search(rf"unreadable tiny-s4d: \S*{re.escape(reason)}", result.output), result.output
    records = {r["run"]: r for r in json.loads(invoke("runs", tmp_path, "--json").stdout)}
    assert records["tiny-s4d"]["status"] == "unreadable" and reason in records["tiny-s4d"]["reason"]


def test_columns_of_any_recipe_key_with_defaults_filled_in(runs):
    result = invoke("runs", runs, "--columns", "model.mixer.name,model.d_model,optimizer.lr,model.mixer.d_state,"
                    "train.grad_clip,task.num_shifts")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.strip("┃").split("┃")][len(COLUMNS):] == [
        "model.mixer.name", "model.d_model", "optimizer.lr", "model.mixer.d_state", "train.grad_clip", "task.num_shifts"]
    rows = table_rows(result.output)
    # optimizer.lr, grad_clip and num_shifts are defaults the recipes never wrote (ModelConfig/TrainConfig, the task's signature)
    assert rows["tiny-dlr"][len(COLUMNS):] == ["dlr", "4", "0.001", "4", "null", "8"]
    assert rows["tiny-s4d"][len(COLUMNS):] == ["s4d", "4", "0.001", "4", "null", "8"]
    assert rows["group/broken"][len(COLUMNS):] == ["s4d", "4", "0.001", "4", "null", "8"]  # its recipe is fine


@pytest.mark.parametrize("spec,expected", [
    (["model.mixer.name=s4d"], ["tiny-s4d", "killed", "group/broken"]),
    (["model.mixer.name=dlr"], ["tiny-dlr"]),
    (["model.mixer.name=s4*", "status=finished"], ["tiny-s4d"]),
    (["optimizer.lr=1e-3", "train.seed=1"], ["tiny-dlr"]),  # 1e-3 read as the number 0.001
    (["tiny-*"], ["tiny-dlr", "tiny-s4d"]),
    (["broken"], ["group/broken"]),  # text without wildcards: a substring of the name
    (["status=crashed"], ["killed"]),
    (["model.d_model=5"], []),
])
def test_filters(runs, spec, expected):
    args = [a for s in spec for a in ("--filter", s)]
    records = json.loads(invoke("runs", runs, "--json", *args).stdout)
    assert [r["run"] for r in records] == expected
    table = invoke("runs", runs, *args)
    assert table.exit_code == 0 and list(table_rows(table.output)) == expected
    if not expected:
        assert "none of the 4 runs" in table.output


def test_json_round_trips_every_column(runs):
    keys = ["model.mixer.name", "optimizer.betas", "train.grad_clip"]
    result = invoke("runs", runs, "--json", "--columns", ",".join(keys))
    assert result.exit_code == 0 and result.stderr == ""
    records = json.loads(result.stdout)
    assert json.loads(json.dumps(records)) == records
    rows = table_rows(invoke("runs", runs, "--columns", ",".join(keys)).output)
    assert [r["run"] for r in records] == list(rows)
    for record in records:
        assert set(COLUMNS) | set(keys) <= set(record)
        cells = dict(zip([*COLUMNS, *keys], rows[record["run"]]))
        for col in ("run", "task", "mixer"):
            assert record[col] == cells[col]
        assert cells["status"].startswith(record["status"])
        assert cells["step"] == ("-" if record["step"] is None else str(record["step"]))
        if record["best"] is not None:
            assert cells["best"] == f"{record['main_metric']} {record['best']:.4g}"
        assert record["started"].replace("T", " ")[:16] == cells["started"]
        assert record["optimizer.betas"] == [0.9, 0.999] and record["train.grad_clip"] is None
    s4d = next(r for r in records if r["run"] == "tiny-s4d")
    assert s4d["model.mixer.name"] == "s4d" and s4d["step"] == 6 and s4d["status"] == "finished"


def test_lines_are_not_cut_when_piped(runs, tmp_path):
    """Off a terminal (CliRunner's output is a pipe) no row is cut or wrapped at 80 columns, whatever $COLUMNS says."""
    long_name = "a-run-with-a-rather-long-name-" + "x" * 90
    shutil.copytree(runs / "tiny-s4d", tmp_path / long_name)
    for env in ({}, {"COLUMNS": "80"}):
        result = CliRunner().invoke(app, ["runs", str(tmp_path), "--columns", "model.mixer.name,optimizer.betas"], env=env)
        (line,) = [line for line in result.output.splitlines() if long_name in line]
        assert len(line) > 160 and "…" not in result.output and line.rstrip().endswith("│")
        assert "[0.9, 0.999]" in line


def test_runs_of_an_empty_or_missing_folder(tmp_path):
    result = CliRunner().invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0 and "no run directories" in result.output
    assert json.loads(invoke("runs", tmp_path, "--json").stdout) == []
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no runs folder" in result.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--columns", "model.layer.kernel"], "the token mixer of a recipe is model.mixer.name"),
    (["--columns", "model.d_modl"], "did you mean 'model.d_model'"),
    (["--columns", "d_state"], "did you mean 'model.mixer.d_state'"),
    (["--columns", "model.d_model,,task.seq_len"], "an empty key"),
    (["--columns", "status"], "already a column"),
    (["--filter", "optimizer.lrr=1"], "did you mean 'optimizer.lr'"),
    (["--filter", ""], "--filter is empty"),
    (["--filter", "=s4d"], "no key before '='"),
])
def test_bad_columns_and_filters(runs, args, fragment):
    result = invoke("runs", runs, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_plot_renders_both_runs_on_shared_axes(runs, tmp_path):
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(app, ["plot", str(runs / "tiny-s4d"), str(runs / "tiny-dlr"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "val/r2" in result.output  # the task's main metric by default
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 800 and im.size[1] > 300
        pixels = np.asarray(im.convert("RGB")).astype(int)
    # two differently coloured curves: many saturated pixels of at least two hues (not a blank canvas)
    saturated = pixels[(pixels.max(-1) - pixels.min(-1)) > 80]
    hues = {tuple(p // 64) for p in saturated}
    assert len(saturated) > 500 and len(hues) >= 2


def test_plot_metric_choice_and_errors(runs, tmp_path):
    out = tmp_path / "m.png"
    ok = CliRunner().invoke(app, ["plot", str(runs / "tiny-s4d"), "--metric", "val/mse", "--out", str(out)])
    assert ok.exit_code == 0 and out.stat().st_size > 1000 and "val/mse" in ok.output
    again = CliRunner().invoke(app, ["plot", str(runs / "tiny-s4d"), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.stderr
    bad = CliRunner().invoke(app, ["plot", str(runs / "tiny-s4d"), "--metric", "val/msee", "--out", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "did you mean 'val/mse'" in bad.stderr and not (tmp_path / "x.png").exists()


def test_plot_of_a_run_with_a_damaged_summary_still_uses_the_main_metric(runs, tmp_path):
    """plot reads metrics.jsonl; a malformed summary.json only loses its hint, the latest state.json names the metric."""
    run = tmp_path / "run"
    shutil.copytree(runs / "tiny-s4d", run)
    (run / "summary.json").write_bytes(b"\x80{")
    result = invoke("plot", run, "--out", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    assert "val/r2" in result.output and (tmp_path / "c.png").stat().st_size > 1000


def test_a_run_saved_before_the_mixer_redesign_is_listed_with_its_mixer(tmp_path):
    """A run directory of the old layout (``model.layer.kernel``, tests/fixtures/legacy_v0) shows its mixer and
    status like any other; its files are only read."""
    fixture = Path(__file__).parent / "fixtures" / "legacy_v0" / "runs" / "s4d"
    shutil.copytree(fixture, tmp_path / "old-s4d")
    (record,) = json.loads(invoke("runs", tmp_path, "--json").stdout)
    assert (record["mixer"], record["status"], record["step"]) == ("s4d", "finished", 2)
    result = invoke("runs", tmp_path, "--columns", "model.layer.kernel")  # its own keys stay columns
    assert result.exit_code == 0 and table_rows(result.output)["old-s4d"][len(COLUMNS):] == ["s4d"]
