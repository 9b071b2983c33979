"""One trainer per run directory: an exclusive advisory lock on ``<run>/.lock``.

The training loop takes the lock (main process only) for the whole run; a second ``ssmkit train`` on the same
run directory (two ``--resume`` at once) gets one line naming the holder (pid, host, since when) and exit code 2,
instead of two processes writing the same checkpoints and ``metrics.jsonl``. The lock is ``flock`` on the open
file: the kernel releases it when the process ends however it ends (a crash or SIGKILL leaves no stale lock), and
the file itself, which only says who held it last, is never deleted. :func:`is_locked` tells ``ssmkit runs`` a
running run from a killed one.

Usage: ``hold_run_lock(run_dir, accelerator)`` inside a function decorated with :func:`releases_run_locks`,
which releases every lock taken during the call when it returns or raises (also in-process, for tests and
notebooks).
"""
from __future__ import annotations

import contextvars
import datetime
import errno
import fcntl
import functools
import json
import os
import socket
import sys
import time
from pathlib import Path

from accelerate.utils import broadcast_object_list

from ssmkit.errors import UserError

LOCK_NAME = ".lock"
#: A probe by :func:`is_locked` holds the lock for microseconds: a trainer retries this long before giving up.
RETRY_S = 1.0

_held: contextvars.ContextVar[list | None] = contextvars.ContextVar("ssmkit_run_locks", default=None)


class RunLock:
    """The exclusive lock of one run directory, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, retry_s: float = RETRY_S) -> RunLock:
        """Takes the lock, or raises a one-line UserError naming its holder."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f"{self.path} is a symbolic link; delete it (ssmkit keeps its lock file inside the "
                                "run directory)") from None
            raise UserError(f"cannot open the run lock {self.path} ({e.strerror}); the run directory must be "
                            "writable") from None
        deadline = time.monotonic() + retry_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise UserError(f"cannot lock {self.path} ({e.strerror})") from None
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise UserError(f"run directory {self.run_dir} is in use by {describe_holder(holder)}; wait for that "
                                    "run to end (or stop it), then try again") from None
                time.sleep(0.05)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join(["ssmkit", *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(holder: dict | None) -> str:
    """``ssmkit train --resume runs/x (pid 1234 on host a, since 2025-01-01T10:00:00+00:00)``."""
    if not holder:
        return "another process (its pid is not recorded yet)"
    return (f"{holder.get('command') or 'another process'} (pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, since {holder.get('since', '?')})")


def is_locked(run_dir: str | Path) -> dict | None:
    """The holder's {pid, host, since, command} while a trainer holds ``run_dir``'s lock, else None (never held,
    or its trainer ended: finished, crashed or killed). Probing takes the lock for an instant; a trainer that starts
    in that instant retries (``RETRY_S``)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def releases_run_locks(fn):
    """Decorator: every lock taken by :func:`hold_run_lock` during the call is released when it returns or raises."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _held.set([])
        try:
            return fn(*args, **kwargs)
        finally:
            for lock in reversed(_held.get()):
                lock.release()
            _held.reset(token)
    return wrapper


def hold_run_lock(run_dir: str | Path, accelerator=None) -> RunLock | None:
    """Takes ``run_dir``'s lock on the main process (the only one that writes the run directory); a refusal is
    raised on every process, so no rank waits for a peer that gave up. Must run inside :func:`releases_run_locks`
    (the lock is released with it); the main process gets the lock, the others None."""
    if _held.get() is None:
        raise RuntimeError("hold_run_lock must be called inside a function decorated with releases_run_locks")
    main = accelerator is None or accelerator.is_main_process
    lock, error = None, None
    if main:
        try:
            lock = RunLock(run_dir).acquire()
            _held.get().append(lock)
        except UserError as e:
            error = str(e)
    if accelerator is not None and accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if error is not None:
        raise UserError(error)
    return lock
