"""Stopping a run from outside: SIGINT (Ctrl-C) and SIGTERM (``kill``, SLURM before its time limit, a launcher).

The first signal sets a flag that the loop checks after each optimizer step and after each evaluation batch:
every process stops at the same point (the flag is reduced across processes), rank 0 saves a checkpoint and
the run exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM), so a batch system sees an interrupted
job, not a finished one. A second Ctrl-C stops at once without saving (:class:`StoppedAtOnce`, one line);
under a launcher (``--processes``, torchrun) a repeated signal is only the launcher passing the first one on,
so it does not abort the save (the launcher itself escalates to SIGKILL after its grace period).
"""
from __future__ import annotations

import os
import signal
import threading

import torch
import torch.distributed as dist

from ssmkit.errors import UserError

#: Set by ``ssmkit train --processes N`` in its workers' environment, so their resume hint keeps ``--processes N``.
PROCESSES_ENV = "SSMKIT_PROCESSES"


def exit_code(signum: int) -> int:
    """The shell's exit status of a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def resume_command(run_dir, processes: int | None = None) -> str:
    """``ssmkit train --resume RUN_DIR``, with ``--processes N`` when the run was started that way."""
    if processes is None:
        given = os.environ.get(PROCESSES_ENV, "")
        processes = int(given) if given.isdigit() else 1
    return f"ssmkit train --resume {run_dir}" + (f" --processes {processes}" if processes > 1 else "")


class StoppedAtOnce(UserError):
    """A second Ctrl-C: the run stops where it is, without a checkpoint; exit code 130."""

    exit_code = exit_code(signal.SIGINT)


class SecondInterrupt(BaseException):
    """Raised by the signal handler on a second Ctrl-C; the loop turns it into :class:`StoppedAtOnce`."""


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag (main thread only); restores the previous handlers on exit."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}
        self._launched = "TORCHELASTIC_RUN_ID" in os.environ or PROCESSES_ENV in os.environ

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def hold(self) -> None:
        """From now on a second Ctrl-C only sets the flag (the run is already ending: let it write its summary)."""
        self._launched = True

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT and not self._launched:
            raise SecondInterrupt
        if self.signal is None:
            self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "a signal"

    def requested(self, accelerator) -> bool:
        """Whether any process got a signal (a collective under several processes: call it on all of them)."""
        if accelerator.num_processes > 1:
            t = torch.tensor([int(self.signal or 0)], device=accelerator.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # every process takes the same signal (and exit code)
            self.signal = int(t.item()) or None
        return self.signal is not None

