"""A worker of ``ssmkit train --processes 2`` killed mid-run: the launch stops within seconds and says, in
one line and without any traceback, which rank died and how, and the ``--resume`` command that continues it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = """\
name: slow
task: {name: shift, seq_len: 64, samples_per_epoch: 100000, val_samples: 8}
model: {d_model: 8, n_layers: 1, mixer: {name: s4d, d_state: 4}}
train: {batch_size: 4, epochs: 1, log_every: 1, save_every: 2, runs_dir: runs}
"""


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _rank(pid: int) -> int:
    env = dict(kv.split("=", 1) for kv in (Path("/proc") / str(pid) / "environ").read_text().split("\0") if "=" in kv)
    return int(env["RANK"])


@pytest.mark.distributed
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through Linux /proc")
def test_killed_worker_is_one_line_naming_rank_signal_and_resume(tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "ssmkit", "train", "r.yaml", "--processes", "2"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "runs" / "slow" / "checkpoints" / "latest").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        workers = {_rank(p): p for p in _children(proc.pid)}
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        killed_at = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.time() - killed_at < 30  # stops within seconds, no hang
    assert proc.returncode == 128 + signal.SIGKILL
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err + out and "[rank" not in err
    assert lines[0].startswith(f"error: rank 1 (pid {workers[1]}) was killed by SIGKILL"), lines[0]
    assert lines[0].endswith("continue from its last checkpoint with: ssmkit train --resume runs/slow --processes 2"), lines[0]
