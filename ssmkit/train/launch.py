"""``ssmkit train --processes N``: N local processes without an accelerate config.

This is torchrun (``torch.distributed.run``) started from Python with ``--standalone``; each process runs
``python -m ssmkit ...`` and Accelerate picks up the torchrun environment (RANK, WORLD_SIZE, ...). On a
machine without a GPU the processes use gloo over the loopback interface with one thread each; with GPUs
each process takes one device (LOCAL_RANK). (``accelerate launch --cpu --num_processes N`` would start one
process only, hence torchrun.) For several machines use ``accelerate launch`` or ``torchrun`` directly
(see docs/distributed.md).
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run

from ssmkit.errors import UserError
from ssmkit.runs.checkpoint import has_checkpoint
from ssmkit.train.signals import PROCESSES_ENV, exit_code, resume_command


def end_distributed_worker(barrier: bool = True) -> bool:
    """Tears the process group (and gloo's threads) down after all ranks meet (``barrier``); returns
    whether there was one. Call :func:`leave_distributed_worker` once the worker's output is written."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if barrier:
        dist.barrier()
    dist.destroy_process_group()
    return True


def leave_distributed_worker(code: int = 0) -> None:
    """Flushes streams and logs, then leaves through ``os._exit``, skipping interpreter finalization.

    A finished gloo worker aborts in finalization about one exit in ten on a loaded 2-core machine
    ("terminate called without an active exception", with no Python frame left, after
    ``destroy_process_group``); the launcher then reports a failed run although every file was written.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


#: A worker that lost its peers (another rank died) leaves quietly with this code; the launcher names the dead rank.
PEER_LOST = 75
_PEER_LOST_TEXT = ("connection reset by peer", "connection closed by peer", "broken pipe", "connection refused",
                   "gloo", "nccl", "socket timeout", "timed out")


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another process of the launch is gone (its own
    one-line report comes from the launcher, so this worker's traceback would only hide it)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(t in text for t in _PEER_LOST_TEXT)


def _how(failure) -> str:
    code = failure.exitcode
    if code is not None and code < 0:
        return f"was killed by {failure.signal_name()} (exit code {code})"
    return f"exited with code {code}"


def describe_failure(failures: dict, resume_hint: str) -> str:
    """One line: which rank(s) died and how (the ranks that only lost their peers are not the cause),
    and how to continue."""
    cause = {r: f for r, f in failures.items() if f.exitcode != PEER_LOST} or failures
    # torch elastic sends SIGTERM to the ranks still running once one has failed: those are not the cause either
    cause = {r: f for r, f in cause.items() if f.exitcode != -signal.SIGTERM} or cause
    parts = [f"rank {rank} (pid {f.pid}) {_how(f)}" for rank, f in sorted(cause.items())]
    return f"{'; '.join(parts)}, so the launch stopped; {resume_hint}"


def _run_of_launch(run_hint: tuple[Path | None, Path | None, str | None], started: float) -> Path | None:
    """The run directory the launch was writing: ``--resume``/``--run-dir``, else the newest ``<name>[-N]``
    made since the launch started."""
    resume, run_dir, pattern = run_hint
    if resume is not None or run_dir is not None:
        return Path(resume or run_dir)
    if pattern is not None:
        root, name = Path(pattern).parent, Path(pattern).name
        if root.is_dir():
            made = sorted((p for p in root.iterdir() if p.is_dir() and re.fullmatch(re.escape(name) + r"(-\d+)?", p.name)
                           and p.stat().st_mtime >= started - 1), key=lambda p: p.stat().st_mtime, reverse=True)
            return made[0] if made else None
    return None


def _resume_hint(run_hint: tuple[Path | None, Path | None, str | None], started: float, processes: int = 1) -> str:
    """The ``--resume`` command of the run the launch was writing (with ``--processes N``); a run without a
    checkpoint is started again by the same command."""
    run = _run_of_launch(run_hint, started)
    if run is None:
        return "no checkpoint was written; start the run again"
    if has_checkpoint(run):
        return f"continue from its last checkpoint with: {resume_command(run, processes)}"
    return f"{run} has no checkpoint yet; start it again with: {resume_command(run, processes)}"


#: Exit codes whose one line the main worker has already printed (a user error, a non-finite loss, an
#: interruption saved by the workers): the launcher only passes them on.
REPORTED_BY_WORKER = (2, 3, 130, 143)


def _after_signal(signum: int, run_hint, started: float, processes: int) -> str | None:
    """The launcher got SIGINT/SIGTERM and passed it to the workers, which have stopped: None when the run
    recorded its own stop (its summary.json says interrupted; rank 0 printed the resume command), else one line."""
    run = _run_of_launch(run_hint, started)
    summary = run / "summary.json" if run is not None else None
    try:
        if summary is not None and summary.stat().st_mtime >= started - 1 and \
                json.loads(summary.read_text()).get("status") == "interrupted":
            return None
    except (OSError, ValueError):
        pass
    name = signal.Signals(signum).name
    return f"stopped by {name} before the workers could save; {_resume_hint(run_hint, started, processes)}"


def launch_local(processes: int, ssmkit_args: list[str],
                 run_hint: tuple[Path | None, Path | None, str | None] = (None, None, None)) -> int:
    """Runs ``python -m ssmkit *ssmkit_args`` in ``processes`` local processes; returns an exit code.

    ``run_hint``: (``--resume`` dir, ``--run-dir``, or ``<runs_dir>/<name>`` of a new run), so that a
    rank that dies is reported in one line with the ``--resume`` command that continues the run."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise UserError("--processes inside an already distributed launch (torchrun / accelerate launch); drop --processes")
    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise UserError(f"--processes {processes} but only {torch.cuda.device_count()} GPU(s) are visible; "
                        "use at most that many (one process per GPU)")
    cpu_limit = 4 * (os.cpu_count() or 1)
    if not torch.cuda.is_available() and processes > cpu_limit:
        raise UserError(f"--processes {processes} on a machine with {os.cpu_count()} CPU cores and no GPU; use at most "
                        f"{cpu_limit} (more processes only wait for each other)")
    if not torch.cuda.is_available():
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc_per_node", str(processes), "--module", "ssmkit", *ssmkit_args]
    )
    # The workers' resume hint keeps --processes N; on SIGINT/SIGTERM the launcher passes the signal on and
    # gives them this long to save before SIGKILL (below the ~120 s grace period of cluster schedulers).
    os.environ[PROCESSES_ENV] = str(processes)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "100")
    # torch elastic's per-failure and per-signal log lines and tracebacks: we report in one line. Its modules'
    # loggers carry their own levels, so each is silenced, not only the parent.
    started = time.time()
    elastic = [logging.getLogger(name) for name in ("torch.distributed.elastic", *logging.root.manager.loggerDict)
               if name.startswith("torch.distributed.elastic")]
    levels = [(log, log.level) for log in elastic]
    for log in elastic:
        log.setLevel(logging.CRITICAL)
    try:
        run(args)
    except SignalException as e:  # Ctrl-C or SIGTERM on the launcher: the workers got it too and saved
        line = _after_signal(e.sigval, run_hint, started, processes)
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
        return exit_code(e.sigval)
    except ChildFailedError as e:
        failures = e.failures
        codes = sorted({f.exitcode for f in failures.values()})
        main = failures.get(0)
        if main is not None and main.exitcode in REPORTED_BY_WORKER or len(codes) == 1 and codes[0] in REPORTED_BY_WORKER:
            return (main or next(iter(failures.values()))).exitcode  # the main worker printed its one line
        print(f"error: {describe_failure(failures, _resume_hint(run_hint, started, processes))}", file=sys.stderr)
        code = next((f.exitcode for f in failures.values() if f.exitcode != PEER_LOST), codes[0])
        return 128 - code if code < 0 else (code or 1)
    finally:
        for log, level in levels:
            log.setLevel(level)
        os.environ.pop(PROCESSES_ENV, None)
    return 0
