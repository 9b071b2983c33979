"""One trainer per run directory (ssmkit/train/lock.py)."""
import json
import multiprocessing
import os
import signal
import time

import pytest

from ssmkit.errors import UserError
from ssmkit.runs.lock import RunLock, hold_run_lock, is_locked, releases_run_locks


def _hold(run_dir, held) -> None:
    RunLock(run_dir).acquire()
    held.set()
    time.sleep(120)


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
    assert is_locked(tmp_path) is None  # never locked
    with RunLock(tmp_path):
        holder = is_locked(tmp_path)
        assert holder["pid"] == os.getpid() and holder["host"] and holder["since"]
        with pytest.raises(UserError) as e:
            RunLock(tmp_path).acquire(retry_s=0.1)
        line = str(e.value)
        assert "\n" not in line and f"pid {os.getpid()}" in line and "in use by" in line and holder["since"] in line
    assert is_locked(tmp_path) is None
    RunLock(tmp_path).acquire().release()  # free again


def test_the_lock_dies_with_its_process(tmp_path):
    """Another process holds it (refused, named); SIGKILL it and the run is free at once (no stale lock)."""
    ctx = multiprocessing.get_context("fork")  # a forked child: no second interpreter start-up
    held = ctx.Event()
    proc = ctx.Process(target=_hold, args=(tmp_path, held), daemon=True)
    proc.start()
    try:
        assert held.wait(60)
        assert is_locked(tmp_path)["pid"] == proc.pid
        with pytest.raises(UserError, match=f"pid {proc.pid}"):
            RunLock(tmp_path).acquire(retry_s=0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    assert is_locked(tmp_path) is None
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_a_probe_does_not_make_a_starting_trainer_fail(tmp_path):
    """is_locked takes the lock for an instant; a trainer starting then retries instead of refusing."""
    probe = RunLock(tmp_path).acquire()  # stands for a probe caught holding it
    start = time.monotonic()
    import threading

    threading.Timer(0.2, probe.release).start()
    with RunLock(tmp_path):
        assert time.monotonic() - start >= 0.15


def test_locks_are_released_when_the_function_raises(tmp_path):
    @releases_run_locks
    def trainer(fail: bool):
        hold_run_lock(tmp_path)
        assert is_locked(tmp_path)["pid"] == os.getpid()
        if fail:
            raise UserError("disk full")
        return "done"

    with pytest.raises(UserError, match="disk full"):
        trainer(True)
    assert is_locked(tmp_path) is None
    assert trainer(False) == "done" and is_locked(tmp_path) is None
    with pytest.raises(RuntimeError, match="releases_run_locks"):
        hold_run_lock(tmp_path)  # outside a releasing function: a programming error


def test_a_planted_symlink_lock_file_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        RunLock(run).acquire()
    assert victim.read_text() == "precious" and is_locked(run) is None


# --- through the training loop ------------------------------------------------------------------------
def tiny_run(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from ssmkit.cli import app

    recipe = {"name": "tiny", "task": {"name": "cumsum", "seq_len": 8, "samples_per_epoch": 16, "val_samples": 8},
              "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"epochs": 1, "batch_size": 8, "log_every": 1, "runs_dir": str(tmp_path / "runs")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


def test_a_second_trainer_of_a_run_is_one_line_and_changes_nothing(tmp_path):
    from typer.testing import CliRunner

    from ssmkit.cli import app

    run = tiny_run(tmp_path)
    assert is_locked(run) is None  # the first trainer ended and let go
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with RunLock(run):  # stands for a trainer still running
        result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "is in use by" in lines[0] and f"pid {os.getpid()}" in lines[0] and str(run) in lines[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == files
    again = CliRunner().invoke(app, ["train", "--resume", str(run)])  # free again: it continues
    assert again.exit_code == 0, again.output
    assert is_locked(run) is None
