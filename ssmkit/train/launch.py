"""``ssmkit train --processes N``: N local processes without an accelerate config.

This is torchrun (``torch.distributed.run``) started from Python with ``--standalone``; each process runs
``python -m ssmkit ...`` and Accelerate picks up the torchrun environment (RANK, WORLD_SIZE, ...). On a
machine without a GPU the processes use gloo over the loopback interface with one thread each; with GPUs
each process takes one device (LOCAL_RANK). (``accelerate launch --cpu --num_processes N`` would start one
process only, hence torchrun.) For several machines use ``accelerate launch`` or ``torchrun`` directly
(see docs/distributed.md).
"""
from __future__ import annotations

import os

import torch

from ssmkit.errors import UserError


def end_distributed_worker(barrier: bool = True) -> bool:
    """Tears the process group (and gloo's threads) down after all ranks meet (``barrier``); returns
    whether there was one. Call :func:`leave_distributed_worker` once the worker's output is written."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if barrier:
        dist.barrier()
    dist.destroy_process_group()
    return True


def leave_distributed_worker(exit_code: int = 0) -> None:
    """Flushes streams and logs, then leaves through ``os._exit``, skipping interpreter finalization.

    A finished gloo worker aborts in finalization about one exit in ten on a loaded 2-core machine
    ("terminate called without an active exception", with no Python frame left, after
    ``destroy_process_group``); the launcher then reports a failed run although every file was written.
    """
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(exit_code)


def launch_local(processes: int, ssmkit_args: list[str]) -> int:
    """Runs ``python -m ssmkit *ssmkit_args`` in ``processes`` local processes; returns an exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise UserError("--processes inside an already distributed launch (torchrun / accelerate launch); drop --processes")
    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise UserError(f"--processes {processes} but only {torch.cuda.device_count()} GPU(s) are visible; "
                        "use at most that many (one process per GPU)")
    if not torch.cuda.is_available():
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc_per_node", str(processes), "--module", "ssmkit", *ssmkit_args]
    )
    try:
        run(args)
    except ChildFailedError as e:
        failures = e.failures
        codes = sorted({f.exitcode for f in failures.values()})
        # A user error (exit code 2) was already printed by the process that hit it.
        return 2 if codes == [2] else (codes[0] or 1)
    return 0
