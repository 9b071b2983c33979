"""Real signals to real `ssmkit train` processes: SIGINT exits 130 and SIGTERM 143 after saving; SIGTERM during a
long evaluation stops within seconds; a second Ctrl-C stops at once with one line; Ctrl-C on the `--processes`
launcher passes the signal to the workers, which save, and the resume hint keeps `--processes N`."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ssmkit.runs.checkpoint import find_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def recipe(**train) -> dict:
    return {
        "name": "sig",
        "task": {"name": "cumsum", "seq_len": 16, "samples_per_epoch": 64, "val_samples": 24},
        "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 8}},
        "train": {"max_steps": 100_000, "epochs": 1000, "batch_size": 8, "eval_every": 0, "log_every": 1,
                  "runs_dir": "runs", **train},
    }


def start(tmp_path, data: dict, *args) -> subprocess.Popen:
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.Popen([sys.executable, "-m", "ssmkit", "train", "r.yaml", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_ctrl_c_saves_and_exits_130(tmp_path):
    """(SIGTERM's 143: the long-evaluation test below, and test_loop's SIGTERM test.)"""
    sig = signal.SIGINT
    proc = start(tmp_path, recipe(), "--run-dir", "run")
    wait_for(tmp_path / "run" / "metrics.jsonl", proc)
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err  # 130 / 143
    assert err.strip() == "" and "Traceback" not in out
    name = signal.Signals(sig).name
    assert f"stopped by {name} at step" in out and "Continue with: ssmkit train --resume run" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == name
    assert load_checkpoint(find_checkpoint(tmp_path / "run")).state.step == summary["step"] > 0


def test_sigterm_during_a_long_evaluation_stops_within_seconds(tmp_path):
    # an evaluation of 2,000,000 samples in batches of 8 takes many minutes; it starts right after step 2
    data = recipe(eval_every=2, eval_batch_size=8)
    data["task"]["val_samples"] = 2_000_000
    data["task"]["seq_len"] = 256
    proc = start(tmp_path, data, "--run-dir", "run")
    metrics = tmp_path / "run" / "metrics.jsonl"
    wait_for(metrics, proc)
    while '"step": 2' not in metrics.read_text():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # inside the evaluation
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    out, err = proc.communicate(timeout=120)
    assert time.time() - sent < 15, "the evaluation was not abandoned"
    assert proc.returncode == 143, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == 2 and summary["final"] == {}
    saved = load_checkpoint(find_checkpoint(tmp_path / "run"))
    assert saved.state.step == 2 and saved.state.metric is None  # no metric from half an evaluation
    assert not (tmp_path / "run" / "checkpoints" / "best").exists()


def test_a_second_ctrl_c_stops_at_once_in_one_line(tmp_path, monkeypatch):
    """Two real SIGINTs to this process inside step 3 (in-process, so they land inside the step, whatever the
    machine's speed): the first asks for a stop after the step, the second stops at once, in one line, exit 130."""
    from typer.testing import CliRunner

    from ssmkit.cli import app
    from ssmkit.tasks.synthetic import SyntheticTask

    real_loss = SyntheticTask.loss
    calls = []

    def loss(self, output, target):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C: finish the step, save, stop
            signal.raise_signal(signal.SIGINT)  # Ctrl-C again: stop now
        return real_loss(self, output, target)

    monkeypatch.setattr(SyntheticTask, "loss", loss)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe(save_every=1, runs_dir=str(tmp_path / "runs"))))
    before = signal.getsignal(signal.SIGINT)
    result = CliRunner().invoke(app, ["train", str(tmp_path / "r.yaml"), "--run-dir", str(tmp_path / "run")])
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are put back
    assert result.exit_code == 130, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert lines[0] == ("error: stopped at once by a second Ctrl-C at step 2, without saving; continue from the last "
                        f"checkpoint with: ssmkit train --resume {tmp_path / 'run'}")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "aborted"
    assert load_checkpoint(find_checkpoint(tmp_path / "run")).state.step == 2  # step 3 was never saved


@pytest.mark.distributed
def test_ctrl_c_on_the_processes_launcher(tmp_path):
    proc = start(tmp_path, recipe(), "--run-dir", "run", "--processes", "2")
    wait_for(tmp_path / "run" / "metrics.jsonl", proc, timeout=180)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # the launcher only: its workers run in their own sessions
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in out + err and err.strip() == "", err
    assert "stopped by SIGINT at step" in out
    assert "Continue with: ssmkit train --resume run --processes 2" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["processes"] == 2
    assert load_checkpoint(find_checkpoint(tmp_path / "run")).state.step == summary["step"]


def test_the_resume_hint_is_one_whole_line_on_a_narrow_pipe(tmp_path, monkeypatch):
    """A long run directory, output piped, COLUMNS=80: the stop note and the summary's resume hint are each one
    line (copy-pastable, never folded at 80 columns) and keep ``--processes N`` from the launcher."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from ssmkit.cli.train import _train_summary
    from ssmkit.train.loop import _Run
    from ssmkit.train.progress import Progress
    from ssmkit.train.signals import PROCESSES_ENV

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv(PROCESSES_ENV, "2")
    run = tmp_path / ("experiments-" + "a" * 60) / ("sweep-" + "b" * 50) / "run-with-a-long-name"
    assert len(str(run)) > 120
    buf = io.StringIO()
    console = Console(file=buf, width=80, highlight=False)
    assert not console.is_terminal
    command = f"ssmkit train --resume {run} --processes 2"

    fake = SimpleNamespace(status="interrupted", _check_weights=lambda: None, checkpoint=lambda: None,
                           stop=SimpleNamespace(name="SIGTERM"), progress=Progress(True, 10, 3, console),
                           state=SimpleNamespace(step=3), run_path=run, signal=None)
    _Run._finish(fake, stop_at=10)  # the loop's stop note
    _train_summary(console, {"final": {"val/loss": 1.0}, "main_metric": "loss", "status": "interrupted",
                             "run_dir": str(run), "step": 3, "time_s": 1.0})
    lines = buf.getvalue().splitlines()
    assert lines[0] == f"stopped by SIGTERM at step 3; checkpoint saved. Continue with: {command}", lines
    assert lines[1] == f"interrupted (resume with: {command}): 3 steps in 1.0s; val/loss = 1", lines
    assert lines[2] == f"run directory: {run}"
    # the launcher's line when the workers did not save (printed with print(), never wrapped)
    from ssmkit.train.launch import _after_signal

    line = _after_signal(signal.SIGINT, (None, run, None), time.time(), 2)
    assert line == f"stopped by SIGINT before the workers could save; {run} has no checkpoint yet; start it again " \
                   f"with: {command}"
