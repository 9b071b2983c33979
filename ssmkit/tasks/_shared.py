"""Pieces shared by the real-data tasks: classification loss/metrics, option checks, progress bars.

Kept private (``_shared``): task modules import from here, users import the task classes.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from ssmkit.errors import DataError, read_utf8
from ssmkit.tasks.base import Task, data_root

IGNORE_INDEX = -100
PAD_ID = 0


def check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"task option {name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")


def check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"task option {name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} number")


def check_fraction(name: str, value) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"task option {name}={value!r} must be a number in [0, 1)")


def check_split(split: str) -> None:
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose one of train, val, test")


def require_files(paths: Iterable[Path], what: str, how: str) -> None:
    """Raises one DataError listing every missing path in ``paths``."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        shown = ", ".join(missing[:4]) + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else "")
        raise DataError(f"{what}: missing {shown}; {how}")


def user_path(text: str) -> Path:
    """A data path a user wrote in a recipe: absolute as given (``~`` expanded); relative, from the current
    directory when it exists there, else under ``$SSMKIT_DATA`` (where a missing path is then reported)."""
    path = Path(text).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return data_root() / path


def read_text(path: Path) -> str:
    """A data file as UTF-8 text; binary or non-UTF-8 bytes are one DataError naming the file."""
    return read_utf8(path, DataError, fix="the file is corrupt or not the expected one: replace it")


def split_indices(n: int, fractions: Sequence[float], seed: int = 42) -> list[list[int]]:
    """A fixed random partition of range(n) into len(fractions) parts (the last part takes the rest)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start = [], 0
    for i, f in enumerate(fractions):
        stop = n if i == len(fractions) - 1 else start + int(round(f * n))
        parts.append(perm[start:stop])
        start = stop
    return parts


class ClassificationTask(Task):
    """One label per sequence: cross-entropy, accuracy. Output (B, C), target (B,)."""

    main_metric = "accuracy"
    main_mode = "max"
    pool = "mean"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.float(), target)

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(output.float(), target, reduction="none")  # (B,)
        correct = (output.argmax(-1) == target).float()  # (B,)
        return {"loss": loss.detach(), "correct": correct, "count": torch.ones_like(correct)}

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(totals["count"].sum())
        return {"loss": float(totals["loss"].sum()) / n, "accuracy": float(totals["correct"].sum()) / n}

    def lengths(self, x: torch.Tensor) -> torch.Tensor | None:
        """Valid length of each padded sample, for ``SequenceModel.forward(x, lengths=...)``; None if unpadded."""
        return None


def token_lengths(x: torch.Tensor) -> torch.Tensor:
    """Lengths of suffix-padded token ids (pad id 0): (..., L) -> (...)."""
    return (x != PAD_ID).sum(-1)


def _call(args):
    fn, item = args
    return fn(item)


def parallel_map(fn: Callable, items: Sequence, workers: int, description: str) -> list:
    """``[fn(i) for i in items]`` over ``workers`` processes with a rich progress bar; order is kept,
    so results depend only on ``items`` (each carries its own seed), never on the worker count."""
    results = []
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=False) as progress:
        bar = progress.add_task(description, total=len(items))
        if workers <= 1:
            for item in items:
                results.append(fn(item))
                progress.advance(bar)
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for r in pool.imap(_call, [(fn, i) for i in items]):
                    results.append(r)
                    progress.advance(bar)
    return results
