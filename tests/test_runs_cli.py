"""``ssmkit runs`` lists run directories newest first with what each did; ``ssmkit plot`` renders their curves."""
import json
import os
import time

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from ssmkit.cli import app

RECIPE = {
    "task": {"name": "shift", "L": 16, "samples_per_epoch": 32, "val_samples": 8},
    "model": {"d_model": 4, "n_layers": 1, "layer": {"kernel": "s4d", "d_state": 4}},
    "train": {"batch_size": 8, "epochs": 2, "log_every": 1, "eval_every": 2},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs (s4d, then dlr), plus an unfinished one (summary.json removed) and a broken one."""
    root = tmp_path_factory.mktemp("runs")
    for i, kernel in enumerate(("s4d", "dlr")):
        recipe = {**RECIPE, "name": f"tiny-{kernel}", "model": {**RECIPE["model"], "layer": {"kernel": kernel, "d_state": 4}},
                  "train": {**RECIPE["train"], "runs_dir": str(root), "seed": i}}
        path = root.parent / f"{kernel}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        result = CliRunner().invoke(app, ["train", str(path), "--max-steps", "6"])
        assert result.exit_code == 0, result.output
        time.sleep(0.05)  # distinct start times
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


def test_runs_table_newest_first(runs):
    result = CliRunner().invoke(app, ["runs", str(runs)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    out = result.output
    lines = [line for line in out.splitlines() if "tiny-" in line or "killed" in line or "broken" in line]
    order = [next(n for n in ("tiny-dlr", "tiny-s4d", "killed", "broken") if n in line) for line in lines]
    assert order == ["tiny-dlr", "tiny-s4d", "killed", "broken"], out
    dlr = next(line for line in lines if "tiny-dlr" in line)
    summary = json.loads((runs / "tiny-dlr" / "summary.json").read_text())
    assert "shift" in dlr and "dlr" in dlr and "finished" in dlr and " 6 " in dlr
    assert f"r2 {summary['best']:.4g}" in dlr  # the best value of the task's main metric, as summary.json has it
    killed = next(line for line in lines if "killed" in line)
    assert "unfinished" in killed and " 3 " in killed  # the last logged step
    broken = next(line for line in lines if "broken" in line)
    assert "unreadable" in broken  # listed with the reason, not hiding the other runs


def test_runs_of_an_empty_or_missing_folder(tmp_path):
    result = CliRunner().invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0 and "no run directories" in result.output
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no runs folder" in result.stderr


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
