"""Resumed runs keep resume-invariant records (ssmkit/train/rundir.py): no duplicate or missing steps in
metrics.jsonl, summary.json's time_s the sum of its segments, nothing written through a planted symlink."""
import errno
import json
import os

import pytest

import ssmkit.runs.rundir as rundir
from ssmkit.errors import UserError
from ssmkit.recipe import validate
from ssmkit.runs.rundir import append_metrics, read_metrics, read_summary, truncate_metrics, write_summary


def train_record(step: int) -> dict:
    return {"step": step, "epoch": 0, "lr": 0.1, "loss": 1.0 / step, "metrics": {}, "tokens_per_s": 10.0}


def eval_record(step: int, value: float) -> dict:
    return {"step": step, "epoch": 0, "lr": 0.1, "loss": None, "metrics": {"val/mse": value}, "tokens_per_s": None}


def kinds(run) -> list[tuple[int, str]]:
    return [(r["step"], rundir.record_kind(r)) for r in read_metrics(run)]


def test_a_step_is_recorded_once_per_kind(tmp_path):
    for step in (1, 2):
        assert append_metrics(tmp_path, train_record(step))
    assert append_metrics(tmp_path, eval_record(2, 0.5))
    assert not append_metrics(tmp_path, eval_record(2, 0.4))  # the same evaluation again (a resumed run)
    assert not append_metrics(tmp_path, train_record(2))
    nan_loss = {**train_record(3), "loss": float("nan")}  # written as null: still a training line
    assert append_metrics(tmp_path, nan_loss) and append_metrics(tmp_path, eval_record(3, 0.3))
    assert kinds(tmp_path) == [(1, "train"), (2, "train"), (2, "eval"), (3, "train"), (3, "eval")]
    assert read_metrics(tmp_path)[2]["metrics"]["val/mse"] == 0.5  # the first one stands


def test_summary_time_is_the_sum_of_its_segments(tmp_path):
    first = write_summary(tmp_path, {"step": 10, "status": "interrupted", "time_s": 4.0}, start_step=0)
    assert first["time_s"] == 4.0 and len(first["segments"]) == 1
    second = write_summary(tmp_path, {"step": 20, "status": "finished", "time_s": 2.5}, start_step=10)
    assert second["time_s"] == 6.5
    assert [(s["from_step"], s["to_step"], s["time_s"], s["status"]) for s in second["segments"]] == \
        [(0, 10, 4.0, "interrupted"), (10, 20, 2.5, "finished")]
    assert read_summary(tmp_path) == second
    # a summary written before segments existed counts as one segment of its time
    (tmp_path / "summary.json").write_text(json.dumps({"step": 5, "status": "finished", "time_s": 3.0}))
    assert write_summary(tmp_path, {"step": 5, "status": "finished", "time_s": 1.0}, start_step=5)["time_s"] == 4.0


@pytest.mark.parametrize("text,fragment", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                           ('{"segments": [{"time_s": -1}]}', "segments"),
                                           ('{"time_s": "long"}', "segments/time_s"), (b"\xff\xfe", "not valid JSON")])
def test_a_malformed_summary_is_one_line_before_training(tmp_path, text, fragment):
    path = tmp_path / "summary.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=fragment) as e:
        truncate_metrics(tmp_path, 3)  # what resuming calls first
    assert "\n" not in str(e.value) and "summary.json" in str(e.value)


def test_nothing_is_written_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    append_metrics(run, train_record(1))
    for name in ("metrics.jsonl.tmp", "summary.json.tmp", ".summary.json.tmp"):  # the old fixed temp names
        (run / name).symlink_to(victim)
    truncate_metrics(run, 1)
    write_summary(run, {"step": 1, "status": "finished", "time_s": 1.0}, start_step=0)
    rundir.write_text(run / "recipe.yaml", "name: x\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        append_metrics(run, train_record(2))
    with pytest.raises(UserError, match="symbolic link"):
        read_metrics(run)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("code,fragment", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")])
def test_a_full_or_read_only_disk_is_one_line(tmp_path, monkeypatch, code, fragment):
    append_metrics(tmp_path, train_record(1))
    before = (tmp_path / "metrics.jsonl").read_text()

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(rundir.os, "write", fail)
    with pytest.raises(UserError, match=fragment) as e:
        append_metrics(tmp_path, train_record(2))
    assert "\n" not in str(e.value) and "--resume" in str(e.value)
    monkeypatch.setattr(rundir.tempfile, "mkstemp", fail)
    with pytest.raises(UserError, match=fragment):
        write_summary(tmp_path, {"step": 1, "status": "finished", "time_s": 1.0}, start_step=0)
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text() == before and not (tmp_path / "summary.json").exists()


# --- through the training loop ------------------------------------------------------------------------
def tiny(tmp_path, **train) -> dict:
    return {
        "name": "tiny",
        "task": {"name": "cumsum", "seq_len": 8, "samples_per_epoch": 32, "val_samples": 8},
        "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "train": {"epochs": 100, "batch_size": 8, "eval_every": 3, "log_every": 1, "runs_dir": str(tmp_path / "runs"),
                  **train},
    }


def test_resuming_a_finished_run_keeps_its_records(tmp_path):
    from ssmkit.train.loop import train

    first = train(validate(tiny(tmp_path, max_steps=6)))
    run = first["run_dir"]
    records = read_metrics(run)
    expected = [(s, "train") for s in range(1, 7)]
    expected[3:3] = [(3, "eval")]
    assert kinds(run) == expected + [(6, "eval")]
    again = train(validate(tiny(tmp_path, max_steps=6)), resume=run)  # a requeued job finds it finished
    assert read_metrics(run) == records and again["step"] == 6
    summary = read_summary(run)
    assert [(s["from_step"], s["to_step"]) for s in summary["segments"]] == [(0, 6), (6, 6)]
    assert summary["time_s"] == pytest.approx(sum(s["time_s"] for s in summary["segments"]))
    assert summary["time_s"] >= first["time_s"]
    # and extended: every step once, evaluations every 3 steps once
    longer = train(validate(tiny(tmp_path, max_steps=9)), resume=run)
    assert longer["step"] == 9
    steps = kinds(run)
    assert [s for s, k in steps if k == "train"] == list(range(1, 10))
    assert [s for s, k in steps if k == "eval"] == [3, 6, 9]
    summary = read_summary(run)
    assert [(s["from_step"], s["to_step"]) for s in summary["segments"]] == [(0, 6), (6, 6), (6, 9)]
    assert summary["time_s"] == pytest.approx(sum(s["time_s"] for s in summary["segments"]))
