"""`ssmkit train my.yaml > my.log`: off a terminal every log_every steps is one plain, flushed, unwrapped line with
step, epoch, loss, lr, tokens/s, elapsed and ETA, after a start banner; `ssmkit eval` reports its progress."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.runs.rundir import read_metrics

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^step (\d+)/(\d+) \((\d+)%\) epoch (\d+) \| loss ([0-9.e+-]+) \| lr ([0-9.e+-]+) \| ([0-9,]+) tok/s \| "
                  r"elapsed \d+:\d\d:\d\d \| eta \d+:\d\d:\d\d$")


def recipe(tmp_path, **train) -> dict:
    return {
        # a long run name and path, so a wrapped line would show
        "name": "a-run-name-long-enough-that-an-80-column-console-would-have-to-wrap-every-line-of-it",
        "task": {"name": "cumsum", "seq_len": 16, "samples_per_epoch": 64, "val_samples": 16},
        "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 8}},
        "optimizer": {"lr": 1e-2},
        "train": {"max_steps": 12, "batch_size": 8, "eval_every": 6, "log_every": 3, "runs_dir": str(tmp_path / "runs"),
                  **train},
    }


def test_a_piped_run_logs_a_line_every_log_every_steps(tmp_path):
    """In-process (stdout is not a terminal, 80 columns); the next test checks the flushing in a real process."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe(tmp_path)))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "r.yaml")], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    run_dir = tmp_path / "runs" / recipe(tmp_path)["name"]
    banner = lines[:6]
    assert banner[0] == f"run      {run_dir} (new)"  # whole, however long
    assert [b.split()[0] for b in banner] == ["run", "recipe", "model", "device", "steps", "data"]
    assert "parameters" in banner[2] and "cpu, precision no, 1 process(es)" in banner[3]
    assert banner[4].startswith("steps    12 (train.max_steps") and banner[5] == "data     train 64 samples, val 16 samples"

    logged = [LINE.match(line) for line in lines if " tok/s " in line]
    assert all(logged), [line for line in lines if " tok/s " in line]
    assert [int(m[1]) for m in logged] == [3, 6, 9, 12] and all(m[2] == "12" for m in logged)
    assert [int(m[3]) for m in logged] == [25, 50, 75, 100]
    # the loss on each line is the mean of the window's steps, as in metrics.jsonl
    records = {r["step"]: r for r in read_metrics(run_dir) if r["loss"] is not None}
    for m in logged:
        step = int(m[1])
        assert float(m[5]) == float(f"{records[step]['loss']:.4g}")
        assert float(m[6]) == float(f"{records[step]['lr']:.3g}")
    assert sum(line.startswith("step 6/12 epoch") and "| val mse" in line for line in lines) == 1
    assert lines[-3].startswith("finished: 12 steps") and lines[-2] == f"run directory: {run_dir}"


def test_lines_arrive_while_the_run_is_going(tmp_path):
    """`> my.log`: the lines are in the file while the run goes (a redirected stdout is block-buffered unless each
    line is flushed)."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe(tmp_path, max_steps=100_000, eval_every=0, log_every=1,
                                                           epochs=1000)))
    log = tmp_path / "my.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ssmkit", "train", "r.yaml"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 120
            while sum(bool(LINE.match(line)) for line in log.read_text().splitlines()) < 3:
                assert proc.poll() is None and time.time() < deadline, proc.communicate()
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.communicate(timeout=60)
    assert proc.returncode == 143


def test_eval_reports_progress_off_a_terminal(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path, max_steps=2, eval_every=0)))
    run = tmp_path / "run"
    assert CliRunner().invoke(app, ["train", str(path), "--run-dir", str(run)]).exit_code == 0
    result = CliRunner().invoke(app, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if line.startswith("evaluating on val:")]
    assert progress and progress[-1].startswith("evaluating on val: 2/2 batches | elapsed"), result.stderr


def test_trackers_missing_package_is_one_line_and_tensorboard_writes_into_the_run(tmp_path, monkeypatch):
    import ssmkit.train.trackers as trackers

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path, max_steps=3, eval_every=0, log_every=1, log_with=["tensorboard"])))
    with monkeypatch.context() as m:  # as on a machine without the package
        m.setattr(trackers, "_installed", lambda name: False)
        for args in ([], ["--dry-run"]):
            result = CliRunner().invoke(app, ["train", str(path), "--run-dir", str(tmp_path / "no"), *args])
            assert result.exit_code == 2 and not (tmp_path / "no").exists()
            assert result.stderr.strip().endswith("train.log_with has tensorboard, but tensorboard is not installed; "
                                                  "pip install 'ssmkit[tensorboard]', or drop tensorboard from train.log_with")

    pytest.importorskip("tensorboard", reason="the tensorboard extra (part of ssmkit[all]) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(path), "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(next(run.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    records = {r["step"]: r["loss"] for r in read_metrics(run) if r["loss"] is not None}
    assert sorted(logged) == [1, 2, 3] and all(abs(logged[s] - records[s]) < 1e-6 for s in logged)
    assert {e.step for e in events.Scalars("val/mse")} == {3}


def test_the_bar_shows_a_running_loss_from_step_1():
    import io

    from rich.console import Console

    from ssmkit.train.progress import Progress

    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    with Progress(True, 10, 0, console, log_every=5) as progress:
        progress.update(1, 0, 0.5, 1e-3)
        assert progress._bar.tasks[0].fields["loss"] == "0.5"  # not "-" until step 5
        progress.update(2, 0, 0.25, 1e-3)
        assert progress._bar.tasks[0].fields["loss"] == "0.375"  # the mean since the last log line
        progress.update(5, 0, 1.0, 1e-3, tokens_per_s=10.0, logged=True)
        progress.update(6, 0, 2.0, 1e-3)
        assert progress._bar.tasks[0].fields["loss"] == "2"  # a new window after the log line


def test_a_slow_set_up_step_says_what_it_is_doing():
    import io

    from rich.console import Console

    from ssmkit.train.banner import slow_step

    out = io.StringIO()
    console = Console(file=out, width=80)
    with slow_step(console, "reading the listops training split", after=0.05):
        pass  # quick: nothing said
    assert out.getvalue() == ""
    with slow_step(console, "reading the listops training split", after=0.05):
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "reading the listops training split..." and len(lines) == 2
    assert re.fullmatch(r"reading the listops training split: done in \d+\.\d s", lines[1])


def _slow(fn, seconds: float = 0.3):
    def slowed(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)
    return slowed


def test_the_loop_says_what_a_slow_data_step_is_doing(tmp_path, monkeypatch):
    """The training loop's data reading goes through slow_step: a split that takes longer than the threshold
    (here 0 s, with reading slowed by 0.3 s) gets its "reading..." and "done in" lines before the banner."""
    import functools

    import ssmkit.train.loop as loop
    from ssmkit.train.banner import slow_step

    monkeypatch.setattr(loop, "slow_step", functools.partial(slow_step, after=0.0))
    monkeypatch.setattr(loop, "make_loader", _slow(loop.make_loader))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe(tmp_path, max_steps=1, eval_every=0)))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "r.yaml")], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    banner = next(i for i, line in enumerate(lines) if line.startswith("run      "))
    for split in ("training", "validation"):
        start = lines.index(f"reading the cumsum {split} split...")
        done = next(i for i, line in enumerate(lines)
                    if re.fullmatch(rf"reading the cumsum {split} split: done in \d+\.\d s", line))
        assert start < done < banner, lines


def test_data_generate_listops_says_what_a_slow_write_is_doing(tmp_path, monkeypatch):
    """`ssmkit data generate listops`: writing the files over the threshold (0 s here) is announced on stderr."""
    import functools

    import ssmkit.cli.data as data_cli
    import ssmkit.train.banner as banner
    from ssmkit.tasks import listops

    monkeypatch.setattr(data_cli, "slow_step", functools.partial(banner.slow_step, after=0.0))
    monkeypatch.setattr(listops, "write_listops", _slow(listops.write_listops))
    out = tmp_path / "lo"
    result = CliRunner().invoke(app, ["data", "generate", "listops", "--n", "6", "--val", "2", "--test", "2",
                                      "--min-length", "0", "--max-length", "200", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert f"writing 6 expressions to {out}..." in lines, result.stderr
    assert any(re.fullmatch(rf"writing 6 expressions to {re.escape(str(out))}: done in \d+\.\d s", line)
               for line in lines), result.stderr
    assert (out / "basic_train.tsv").is_file()
