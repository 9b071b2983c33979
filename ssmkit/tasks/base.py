"""The contract between a task and the training loop.

A task says what the model sees (``d_input``, ``encoder``), what it predicts (``d_output``, ``pool``),
gives datasets per split, a loss, and metrics that stay exact across processes: ``metric_stats``
returns per-sample statistics (leading batch axis) that the loop gathers with
``accelerator.gather_for_metrics`` (which drops the padding duplicates) and sums; ``compute_metrics``
turns the sums into numbers.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ssmkit.errors import RecipeError, UserError
from ssmkit.registry import Registry

TASKS = Registry("task")


def data_root() -> Path:
    """Where datasets live: ``$SSMKIT_DATA``, default ``./data``."""
    return Path(os.environ.get("SSMKIT_DATA", "data"))


class Task:
    """Base class. Subclasses set the attributes in ``__init__`` from their recipe options."""

    name: str = ""
    d_input: int = 1  # features per position, or vocabulary size when encoder == "embedding"
    d_output: int = 1
    encoder: str = "linear"
    pool: str | None = None
    main_metric: str = "loss"
    main_mode: str = "min"  # "min" or "max": which direction of main_metric is better
    generative: bool = False  # next-token tasks (ssmkit/tasks/generative.py): causal models that can sample

    def validation_missing(self) -> str | None:
        """None when the task has a validation split; otherwise why not (e.g. ``task.val_fraction is 0``).

        Without one, ``dataset("val")`` raises :meth:`no_validation_error` and the training loop evaluates nothing
        during training and keeps the last step as ``best``: a task never evaluates ``val`` on its test split,
        so no checkpoint, schedule or early stop is ever chosen on test (``no_validation_note``)."""
        return None

    @property
    def has_validation(self) -> bool:
        return self.validation_missing() is None

    def no_validation_error(self) -> UserError:
        return UserError(f"{self.name} has no validation split ({self.validation_missing()}); hold some training data "
                         "out (task.val_fraction, e.g. 0.1), or evaluate on the test split explicitly (--split test)")

    def check_data(self) -> None:
        """Raises ``DataError`` (with the expected files and the command to make them) if data is missing."""

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        """A map-style or iterable dataset of (input, target) pairs for ``train``, ``val`` or ``test``."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample sums, each with a leading batch axis, that add up to the metrics."""
        raise NotImplementedError

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError


def no_validation_note(task: Task, scheduler: str) -> str | None:
    """The line the training loop prints at the start of a run without a validation split (None with one). A
    plateau schedule, which needs a validation metric each evaluation, is refused instead."""
    why = task.validation_missing()
    if why is None:
        return None
    if scheduler == "plateau":
        raise RecipeError(f"scheduler plateau steps on a validation metric, but {task.name} has no validation split "
                          f"({why}); hold training data out (task.val_fraction, e.g. 0.1) or pick another scheduler")
    return (f"note: {task.name} has no validation split ({why}): nothing is evaluated during training and `best` is the "
            "last step (never selected on test); evaluate it with: ssmkit eval RUN --split test")
