"""What a run says before its first step: the start banner, and a note for set-up steps that take a while.

The banner (main process only, plain unwrapped lines, so it reads the same in a terminal and in ``run.log``):

    run      runs/tiny (new)
    recipe   r.yaml (tiny): task cumsum, s4d x 1 layer(s), d_model 8
    model    1,234 parameters
    device   cpu, precision no, 1 process(es)
    steps    24 (3 epochs x 8 steps; batch 8 x grad_accum 1 x 1 process(es) = 8 samples per step)
    data     train 64 samples, val 24 samples

:func:`slow_step` prints nothing for a quick set-up step; one that takes longer than ``after`` seconds (reading
a 600 MB ListOps split, say) gets a line saying what is going on when that time has passed, and a line with
its duration at the end.
"""
from __future__ import annotations

import contextlib
import threading
import time

import torch

from ssmkit.train.progress import say


def banner_lines(*, run_dir, new: bool, start_step: int, recipe, parameters: int, accelerator, total_steps: int,
                 steps_per_epoch: int, data: dict[str, int]) -> list[str]:
    cfg, model = recipe.train, recipe.model
    processes = accelerator.num_processes
    state = "new" if new else (f"resumed at step {start_step}" if start_step else "restarted from step 0")
    mixer = model.mixer.get("name", "-") if isinstance(model.mixer, dict) else "-"
    device = accelerator.device.type
    if device == "cuda":
        device = f"cuda ({torch.cuda.get_device_name(accelerator.device)})"
    if cfg.max_steps:
        plan = f"{total_steps} (train.max_steps; {steps_per_epoch} steps per epoch)"
    else:
        plan = f"{total_steps} ({cfg.epochs} epochs x {steps_per_epoch} steps)"
    per_step = cfg.batch_size * cfg.grad_accum * processes
    return [
        f"run      {run_dir} ({state})",
        f"recipe   {recipe.source} ({recipe.name}): task {recipe.task['name']}, {mixer} x {model.n_layers} layer(s), "
        f"d_model {model.d_model}",
        f"model    {parameters:,} parameters",
        f"device   {device}, precision {cfg.mixed_precision}, {processes} process(es)"
        + (f", {cfg.distributed}" if processes > 1 else ""),
        f"steps    {plan}; batch {cfg.batch_size} x grad_accum {cfg.grad_accum} x {processes} process(es) = "
        f"{per_step} samples per step",
        "data     " + ", ".join(f"{split} {n:,} samples" for split, n in data.items()),
    ]


def print_banner(console, **fields) -> None:
    for line in banner_lines(**fields):
        say(console, line)


@contextlib.contextmanager
def slow_step(console, what: str, after: float = 2.0):
    """Runs the body; if it takes longer than ``after`` seconds, says ``what...`` then, and ``what: done in N s``
    at the end. ``console`` None: silent."""
    said = threading.Event()
    lock = threading.Lock()

    def announce():
        with lock:
            if not finished:
                say(console, f"{what}...")
                said.set()

    finished = False
    timer = threading.Timer(after, announce) if console is not None else None
    t0 = time.time()
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        with lock:
            finished = True
        if timer is not None:
            timer.cancel()
        if said.is_set():
            say(console, f"{what}: done in {time.time() - t0:.1f} s")
