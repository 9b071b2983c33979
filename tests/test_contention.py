"""The benchmarks' background load (ssmkit/contention.py): K processes that really spin, stopped on every way
out, and gone on their own when the process that started them dies."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from ssmkit import contention
from ssmkit.cli import app
from ssmkit.contention import BusyLoad, check_k
from ssmkit.errors import UserError


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """True once pid has exited (a zombie waiting for its reaper counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_k_busy_processes_spin_and_stop():
    with BusyLoad(2) as load:
        pids = [p.pid for p in load.procs]
        assert len(pids) == 2 and all(p.poll() is None for p in load.procs)
        time.sleep(1.0)
        assert all(_cpu_seconds(pid) > 0.05 for pid in pids)  # they burn CPU, not sleep
    assert not load.running and all(_gone(pid) for pid in pids)


def test_stopped_on_an_exception_and_restartable():
    load = BusyLoad(1)
    with pytest.raises(KeyboardInterrupt), load:
        pid = load.procs[0].pid
        raise KeyboardInterrupt
    assert _gone(pid)
    load.start(settle_s=0)
    assert load.running
    load.stop()
    assert not load.running
    with BusyLoad(0) as idle:  # no load: nothing started
        assert not idle.running


def test_busy_processes_exit_when_their_parent_is_killed():
    """A parent (a bare interpreter, so the test does not pay for importing torch) starts one busy process the
    way BusyLoad does, with the same spin code, and is SIGKILLed: no atexit, no finally ran."""
    code = textwrap.dedent("""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", sys.argv[1], str(os.getpid())])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-I", "-S", "-c", code, contention._SPIN], stdout=subprocess.PIPE,
                              text=True)
    try:
        child = int(parent.stdout.readline())
        assert not _gone(child, timeout=0.3)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone(child), "a busy process outlived the benchmark that started it"
    finally:
        parent.kill()


def test_bad_k_is_one_line():
    for k in (-1, 65):
        with pytest.raises(UserError, match="busy processes"):
            check_k(k)
    assert check_k(0) == 0 and check_k(3) == 3


def test_profile_times_each_point_idle_and_loaded(tmp_path):
    a = app
    refused = CliRunner().invoke(a, ["profile", "--contention", "-1"])
    assert refused.exit_code == 2 and "--contention" in refused.output and "Traceback" not in refused.output
    out = tmp_path / "p.json"
    args = ["profile", "--kernel", "s4d", "--length", "64", "--d-model", "4", "--d-state", "4", "--batch", "1",
            "--repeat", "2", "--no-isolate", "--no-floor", "--contention", "1", "--out", str(out)]
    result = CliRunner().invoke(a, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "1 busy background process" in result.output and "loaded/idle" in result.output
    (row,) = json.loads(out.read_text())["points"]
    assert row["status"] == "ok" and row["max_ms"] >= row["time_ms"] > 0
    assert row["loaded_max_ms"] >= row["loaded_ms"] > 0
    assert row["slowdown"] == pytest.approx(row["loaded_ms"] / row["time_ms"])
