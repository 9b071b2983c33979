"""Never select on test: a task without a validation split says so and never hands out its test split as ``val``
(ssmkit/tasks/base.py ``validation_missing``); the loop then evaluates nothing during training and keeps the last
step as ``best``."""
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.errors import RecipeError, UserError
from ssmkit.tasks import TASKS
from ssmkit.tasks.base import no_validation_note
from ssmkit.tasks.density import MnistDensity
from ssmkit.tasks.images import SMnist
from ssmkit.tasks.lra_text import Imdb

sys.path.insert(0, str(Path(__file__).parent))
from test_images import write_mnist  # noqa: E402


def write_imdb(root: Path) -> None:
    for split in ("train", "test"):
        for cls in ("pos", "neg"):
            (root / "imdb" / "aclImdb" / split / cls).mkdir(parents=True)
            for i in range(4):
                (root / "imdb" / "aclImdb" / split / cls / f"{i}_7.txt").write_text(f"{split} {cls} review {i}")


def test_no_validation_split_is_never_the_test_split(tmp_path):
    write_mnist(tmp_path, n=20)
    write_imdb(tmp_path)
    for task in (SMnist(data_dir=str(tmp_path), val_fraction=0.0), MnistDensity(data_dir=str(tmp_path), val_fraction=0.0),
                 Imdb(data_dir=str(tmp_path))):
        assert not task.has_validation and "val_fraction is 0" in task.validation_missing()
        with pytest.raises(UserError, match="has no validation split.*task.val_fraction.*--split test") as e:
            task.dataset("val")
        assert "\n" not in str(e.value) and task.name in str(e.value)
        assert len(task.dataset("test")) > 0 and len(task.dataset("train")) > 0


def test_a_held_out_validation_split_comes_from_train(tmp_path):
    write_mnist(tmp_path, n=20)
    task = SMnist(data_dir=str(tmp_path), val_fraction=0.25)
    assert task.has_validation and task.validation_missing() is None
    train, val, test = (task.dataset(s) for s in ("train", "val", "test"))
    official_train = task.load("train")[0].reshape(20, -1)
    rows = {bytes(r) for r in official_train}
    assert len(val.images) == 5 and len(train.images) == 15
    assert all(bytes(img.reshape(-1)) in rows for img in val.images)  # held out of train, never test images
    assert {bytes(i.reshape(-1)) for i in val.images}.isdisjoint(bytes(i.reshape(-1)) for i in train.images)
    assert not np.array_equal(val.images, test.images[:5])
    write_imdb(tmp_path)
    imdb = Imdb(data_dir=str(tmp_path), val_fraction=0.25)
    texts = [imdb.dataset("val").rows[i][0] for i in range(len(imdb.dataset("val")))]
    assert imdb.has_validation and texts and all(t.startswith("train ") for t in texts)


def test_every_task_with_a_val_fraction_of_zero_has_no_validation():
    """A task whose val split is a fraction of train: at 0 it must say it has none (never fall back to test)."""
    checked = []
    for name in TASKS.names():
        cls = TASKS.get(name)
        if "val_fraction" not in inspect.signature(cls).parameters:
            continue
        try:
            task = cls(val_fraction=0.0)
        except (ValueError, TypeError):
            continue  # zero refused by the task itself (pathfinder: val_fraction in (0, 0.5))
        assert not task.has_validation, name
        checked.append(name)
    assert {"smnist", "scifar", "imdb", "mnist-density"} <= set(checked)


def test_the_loop_note_and_the_plateau_refusal(tmp_path):
    task = Imdb(data_dir=str(tmp_path))
    note = no_validation_note(task, "cosine")
    assert "\n" not in note and "`best` is the last step" in note and "--split test" in note
    with pytest.raises(RecipeError, match="plateau.*no validation split"):
        no_validation_note(task, "plateau")
    assert no_validation_note(Imdb(data_dir=str(tmp_path), val_fraction=0.1), "plateau") is None


def test_data_check_says_there_is_no_validation_split(tmp_path, monkeypatch):
    write_mnist(tmp_path, n=20)
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    result = CliRunner().invoke(app, ["data", "check", "smnist", "-o", "val_fraction=0"])
    assert result.exit_code == 0, result.output
    assert "smnist val: none" in result.output and "smnist test: 20 samples" in result.output


def test_training_without_validation_keeps_the_last_step_and_never_reads_test(tmp_path, monkeypatch):
    """sMNIST with val_fraction 0: no evaluation during training, best = latest, `ssmkit eval` asks for --split test."""
    write_mnist(tmp_path / "data", n=16)
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))
    read = []
    original = SMnist.load
    monkeypatch.setattr(SMnist, "load", lambda self, source: (read.append(source), original(self, source))[1])
    recipe = {"name": "noval", "task": {"name": "smnist", "val_fraction": 0.0},
              "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"epochs": 2, "batch_size": 8, "log_every": 1, "runs_dir": str(tmp_path / "runs")}}
    path = tmp_path / "noval.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "smnist has no validation split" in result.output and "`best` is the last step" in result.output
    assert "test" not in read  # the test images were never loaded during training
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(not r["metrics"] for r in records)
    latest, best = (json.loads((run / "checkpoints" / p).read_text()) for p in ("latest", "best"))
    assert latest["checkpoint"] == best["checkpoint"] == "step-00000004"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best"] is None
    bad = CliRunner().invoke(app, ["eval", str(run)])
    assert bad.exit_code == 2 and "no validation split" in bad.stderr and "--split test" in bad.stderr
    good = CliRunner().invoke(app, ["eval", str(run), "--split", "test", "--checkpoint", "best"])
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout.strip().splitlines()[-1])["samples"] == 16


def test_an_empty_validation_file_is_one_line(tmp_path, monkeypatch):
    from ssmkit.tasks.listops import generate, write_listops

    write_listops(tmp_path / "listops", generate(8, seed=0, max_depth=3, max_args=3, min_length=5, max_length=40),
                  n_val=0, n_test=2)  # basic_val.tsv: the header only
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    recipe = {"name": "empty-val", "task": {"name": "listops", "seq_len": 40},
              "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"epochs": 1, "batch_size": 2, "runs_dir": str(tmp_path / "runs")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "r.yaml")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "listops: the validation split is empty" in lines[0]
