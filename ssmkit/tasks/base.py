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
