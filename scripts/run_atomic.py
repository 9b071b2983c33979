"""Runs the CPU-scale atomic-task grid of docs/results.md: every (kernel, task) cell is one
``ssmkit train recipes/quick/atomic-<kernel>.yaml task.name=<task> --max-steps N`` run.

    OMP_NUM_THREADS=1 python scripts/run_atomic.py --jobs 2 --steps 400 --runs runs/atomic
    python scripts/run_atomic.py --kernels dlr attn --tasks shift context_shift

A cell whose run directory already holds ``summary.json`` is skipped, so the script can be re-run to
fill gaps. Each run directory also gets ``command.txt``: the exact command (docs/results.md prints it).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KERNELS = ("dlr", "s4d", "dss", "sgconv", "attn", "s5", "lru", "mamba", "mamba2", "hyena", "gla", "gated_deltanet", "rglru")
#: The ten atomic tasks of the DLR paper, then MIPS; the first three carry the paper's finding.
TASKS = ("shift", "context_shift", "masked_select", "cumsum", "cummax", "reverse", "sort",
         "masked_select_fixed", "solve", "solve_fixed", "mips")
ROOT = Path(__file__).resolve().parent.parent


def command(kernel: str, task: str, steps: int, run_dir: Path, extra: list[str]) -> list[str]:
    """The ssmkit command of one cell."""
    return ["ssmkit", "train", f"recipes/quick/atomic-{kernel}.yaml", f"task.name={task}", *extra,
            "--max-steps", str(steps), "--run-dir", str(run_dir)]


def run_cell(kernel: str, task: str, steps: int, runs: Path, extra: list[str], threads: int) -> str:
    run_dir = runs / f"{kernel}-{task}"
    if (run_dir / "summary.json").is_file():
        return f"skip {run_dir.name} (done)"
    if run_dir.exists():  # an interrupted earlier attempt: start it again
        for p in sorted(run_dir.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        run_dir.rmdir()
    cmd = command(kernel, task, steps, run_dir, extra)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    exe = [sys.executable, "-m", "ssmkit", *cmd[1:]]
    start = time.time()
    proc = subprocess.run(exe, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return f"FAIL {run_dir.name}: {tail[0]}"
    (run_dir / "command.txt").write_text(f"OMP_NUM_THREADS={threads} " + shlex.join(cmd) + "\n")
    return f"done {run_dir.name} in {time.time() - start:.0f}s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per cell")
    p.add_argument("--runs", type=Path, default=Path("runs/atomic"), help="parent of the run directories")
    p.add_argument("--jobs", type=int, default=1, help="cells trained at the same time")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per run")
    p.add_argument("extra", nargs="*", help="more key=value overrides for every cell, e.g. task.seq_len=256")
    args = p.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    cells = [(k, t) for t in args.tasks for k in args.kernels]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_cell, k, t, args.steps, args.runs.resolve(), args.extra, args.threads) for k, t in cells]
        for f in futures:
            print(f.result(), flush=True)


if __name__ == "__main__":
    main()
