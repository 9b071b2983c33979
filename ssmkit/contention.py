"""A background CPU load for benchmarks: K busy processes that compete for the cores while something is timed.

    with BusyLoad(2):
        ...  # timed under two spinning processes

    load = BusyLoad(2)
    load.start(); ...; load.stop()  # switched on and off between rounds (idle and loaded rounds interleaved)

Each busy process is a fresh Python interpreter (``python -I -S``, no site packages, nothing imported) running
a pure-Python spin loop at normal priority, the way data-loader workers or other jobs on a shared node hold cores.
They are stopped (SIGTERM, then SIGKILL) by :meth:`BusyLoad.stop`, on leaving the ``with`` block (also on Ctrl-C
or an exception), at interpreter exit, and on their own within about 50 ms when the benchmark that started them
is gone (each checks that its parent is still its parent), so a benchmark killed with SIGKILL leaves nothing
spinning.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time

from ssmkit.errors import UserError

# Spins in bursts of ~10-50 ms of pure-Python work, checking between bursts that the parent is alive.
_SPIN = """
import os, sys
parent = int(sys.argv[1])
x = 0
while os.getppid() == parent:
    for i in range(200000):
        x += i
"""


def check_k(k: int, option: str = "--contention") -> int:
    if not isinstance(k, int) or k < 0:
        raise UserError(f"{option} must be a whole number of busy processes >= 0, got {k!r}")
    if k > 64:
        raise UserError(f"{option} {k}: at most 64 busy processes (it is a load for a benchmark, not a stress test)")
    return k


class BusyLoad:
    """K busy background processes; ``k = 0`` is no load (start/stop do nothing)."""

    def __init__(self, k: int):
        self.k = check_k(k)
        self.procs: list[subprocess.Popen] = []
        self._atexit = False

    @property
    def running(self) -> bool:
        return bool(self.procs)

    def start(self, settle_s: float = 0.2) -> BusyLoad:
        """Starts the K processes (if not running) and waits ``settle_s`` so that they are spinning."""
        if self.procs or self.k == 0:
            return self
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            for _ in range(self.k):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _SPIN, str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        except BaseException:
            self.stop()
            raise
        time.sleep(settle_s)
        dead = [p.returncode for p in self.procs if p.poll() is not None]
        if dead:
            self.stop()
            raise RuntimeError(f"a busy background process exited at once (exit code {dead[0]})")
        return self

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> BusyLoad:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> str:
        return "no background load" if self.k == 0 else (
            f"{self.k} busy background process{'es' if self.k > 1 else ''} (pure-Python spin loops) on "
            f"{os.cpu_count()} cores")
