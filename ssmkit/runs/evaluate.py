"""Evaluation: a split's metrics, exact across processes, for the training loop and for a saved run.

``evaluate`` is the one evaluation (the loop's during training, ``evaluate_run``'s for ``ssmkit eval``): each
batch's per-sample statistics go through ``gather_for_metrics`` (which drops the padding duplicates), are summed in
float64 and the task turns the sums into numbers. ``make_loader`` gives every split its own seeded generator, so an
evaluation never draws from the global RNG (a resumed run stays bit-exact).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

from ssmkit.errors import UserError
from ssmkit.recipe import Recipe
from ssmkit.runs.accelerator import make_accelerator
from ssmkit.runs.load import load
from ssmkit.runs.model import forward

SPLITS = ("val", "test")


def make_loader(task, split: str, recipe: Recipe, seed: int) -> torch.utils.data.DataLoader:
    """The ``split`` loader: shuffled with whole batches for ``train``, in order (``eval_batch_size``) otherwise."""
    train = split == "train"
    batch = recipe.train.batch_size if train else (recipe.train.eval_batch_size or recipe.train.batch_size)
    dataset = task.dataset(split, seed=seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=train, drop_last=train, num_workers=recipe.train.num_workers,
        # Every split gets its own generator: a loader without one draws its base seed from the global RNG
        # at each pass, so an evaluation would shift the dropout stream and a resumed run would diverge.
        generator=torch.Generator().manual_seed(seed),
    )


@torch.no_grad()
def evaluate(model, loader, task, accelerator: Accelerator) -> dict[str, float]:
    """The task's metrics over the whole split, exact across processes; also ``samples`` counted."""
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    samples = 0
    for x, y in loader:
        stats = accelerator.gather_for_metrics(task.metric_stats(forward(model, task, x), y))  # each (B_all,)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value.double().sum(0)
        samples += next(iter(stats.values())).shape[0]
    model.train(was_training)
    metrics = task.compute_metrics({k: v.cpu() for k, v in totals.items()})
    return {**metrics, "samples": samples}


class StopAware:
    """An evaluation loader that reports each batch (``on_batch``, a progress display) and ends early
    (``interrupted``) once ``stop`` (``ssmkit.train.signals.StopFlag``: ``requested(accelerator)``) says a signal
    reached any process: all processes check after every batch, so they leave the evaluation together."""

    def __init__(self, loader, stop, accelerator: Accelerator, on_batch: Callable[[], None] | None = None):
        self.loader, self.stop, self.accelerator, self.on_batch = loader, stop, accelerator, on_batch
        self.interrupted = False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            if self.on_batch is not None:
                self.on_batch()
            if self.stop is not None and self.stop.requested(self.accelerator):
                self.interrupted = True
                return


def _quiet(what: str):
    return contextlib.nullcontext()


def _no_progress(total: int):
    return contextlib.nullcontext(None)


def evaluate_run(path: str | Path, split: str = "val", overrides: list[str] | tuple[str, ...] = (),
                 which: str = "latest", slow: Callable[[str], contextlib.AbstractContextManager] = _quiet,
                 progress: Callable[[int], contextlib.AbstractContextManager] = _no_progress) -> dict:
    """Loads a run's recipe and checkpoint (``ssmkit.load``) and evaluates it on ``split``:
    {split, checkpoint, step, rate, metrics..., samples}.

    The display is the caller's (``ssmkit eval``): ``slow(what)`` wraps each set-up step that may take a while
    (loading, reading the split); ``progress(total_batches)`` is entered around the evaluation and what it gives is
    called after every batch (None: nothing)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose val or test")
    with slow(f"loading {path}"):
        run = load(path, which, overrides, check_data=True)
    recipe, task = run.recipe, run.task
    accelerator = make_accelerator(recipe)
    if not accelerator.is_main_process:  # one display, the main process's
        slow, progress = _quiet, _no_progress
    with slow(f"reading the {recipe.task['name']} {split} split"):
        loader = make_loader(task, split, recipe, recipe.train.seed)
    model, loader = accelerator.prepare(run.model, loader)
    with progress(len(loader)) as on_batch:
        metrics = evaluate(model, StopAware(loader, None, accelerator, on_batch=on_batch), task, accelerator)
    return {"split": split, "checkpoint": str(run.checkpoint), "step": run.step,
            "rate": float(getattr(task, "rate", 1.0) or 1.0), **metrics}
