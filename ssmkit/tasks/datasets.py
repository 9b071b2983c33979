"""Datasets the tasks can make or check themselves: ``generate_data`` (ListOps, Pathfinder, a synthetic text
corpus and ETT file, in the official layouts) and ``check_task`` (what a task finds of its files). The commands
``ssmkit data generate`` / ``check`` that call them are ``ssmkit/cli/data.py``; downloads are ``download.py``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ssmkit.errors import DataError, UserError
from ssmkit.tasks import TASKS, listops, pathfinder
from ssmkit.tasks.base import data_root
from ssmkit.tasks.forecast import write_synthetic_ett
from ssmkit.tasks.lm import write_synthetic_corpus

GENERATORS = ("listops", "listops-subtrees", "pathfinder", "pathfinder-segmentation", "text", "ett")


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    """Without ``force``, one UserError naming the first of ``paths`` that exists (official data may live there)."""
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; "
                        "generating would overwrite it: pass --out to write elsewhere, or --force to replace it")


def generate_data(kind: str, n: int | None = None, resolution: int | None = None, out: Path | None = None,
                  seed: int = 0, workers: int = 1, val: int | None = None, test: int | None = None,
                  min_length: int | None = None, max_length: int | None = None, force: bool = False,
                  slow: Callable[[str], AbstractContextManager] | None = None) -> Path:
    """Generates a dataset with the published settings; returns the folder written. Existing files there are
    refused unless ``force`` (``$SSMKIT_DATA`` is also where official LRA data lives). ``slow(what)`` wraps a
    step that may take minutes (writing ListOps at LRA size), e.g. to say so on a console."""
    if kind not in GENERATORS:
        raise UserError(f"unknown dataset {kind!r} to generate; choose one of {', '.join(GENERATORS)}")
    for flag, value, low in (("--n", n, 1), ("--workers", workers, 1), ("--val", val, 1), ("--test", test, 0),
                             ("--min-length", min_length, 0), ("--max-length", max_length, 1), ("--seed", seed, 0)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    if kind == "text":  # a synthetic WikiText-layout corpus for the lm task (n: training paragraphs)
        folder = Path(out) if out else data_root() / "synthetic-text"
        raw = folder.with_name(folder.name + "-raw")
        _refuse_overwrite([d / f"wiki.{s}.{x}" for d, x in ((folder, "tokens"), (raw, "raw"))
                           for s in ("train", "valid", "test")], force)
        return write_synthetic_corpus(folder, n or 4000, seed)
    if kind == "ett":  # a synthetic ETTh1-format CSV for the forecasting tasks (n: hourly rows)
        folder = Path(out) if out else data_root() / "informer" / "synthetic"
        _refuse_overwrite([folder / "ETTh1.csv"], force)
        return write_synthetic_ett(folder / "ETTh1.csv", n or 17420, seed).parent
    if kind.startswith("listops"):
        return _generate_listops(kind, n, resolution, out, seed, val, test, min_length, max_length, force, slow)
    if min_length is not None or max_length is not None or val is not None or test is not None:
        raise UserError("--min-length/--max-length/--val/--test are for listops only (pathfinder splits 80/10/10)")
    resolution = resolution or (128 if kind == "pathfinder-segmentation" else 32)
    if resolution not in pathfinder.RESOLUTIONS:
        raise UserError(f"--resolution {resolution} is not allowed; choose one of {', '.join(map(str, pathfinder.RESOLUTIONS))}")
    root = Path(out) if out else pathfinder.dataset_dir(resolution)
    _refuse_overwrite([root / d for d in ("metadata", "imgs", "labels")], force)
    for stale in sorted((root / "metadata").glob("*.npy")) if force else ():
        stale.unlink()  # so the folder holds exactly the new batches (images of old extra batches stay unlisted)
    return pathfinder.generate(n or 100_000, resolution=resolution, out=out, seed=seed,
                               segmentation=kind == "pathfinder-segmentation", workers=workers)


def _quiet(what: str) -> AbstractContextManager:
    return contextlib.nullcontext()


def _generate_listops(kind: str, n: int | None, resolution: int | None, out: Path | None, seed: int, val: int | None,
                      test: int | None, min_length: int | None, max_length: int | None, force: bool, slow) -> Path:
    """ListOps (LRA: 96k/2k/2k, lengths 500..2000, depth 10, args 10) or its subtree variant (DLR: lengths
    7000..8180, depth 15, args 9) in the official TSV layout."""
    if resolution is not None:
        raise UserError("--resolution is for pathfinder only")
    sub = kind == "listops-subtrees"
    n = n or 100_000
    val = 2000 if val is None else val
    test = 2000 if test is None else test
    if n <= val + test:
        raise UserError(f"--n {n} must exceed --val {val} + --test {test}")
    folder = Path(out) if out else data_root() / ("listops-subtrees" if sub else "listops")
    _refuse_overwrite([folder / f"{'subtrees' if sub else 'basic'}_{s}.tsv" for s in ("train", "val", "test")], force)
    cfg = dict(max_depth=15, max_args=9, min_length=7000, max_length=8180) if sub else \
        dict(max_depth=10, max_args=10, min_length=500, max_length=2000)
    if min_length is not None:
        cfg["min_length"] = min_length
    if max_length is not None:
        cfg["max_length"] = max_length
    try:
        exprs = listops.generate(n, seed=seed, progress=True, **cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    with (slow or _quiet)(f"writing {n:,} expressions to {folder}"):  # minutes at LRA size
        (listops.write_subtrees if sub else listops.write_listops)(folder, exprs, val, test)
    return folder


def check_task(name: str, options: dict | None = None) -> list[str]:
    """Lines saying what is present for each split; raises DataError when something is missing or broken."""
    try:
        task = TASKS.get(name)(**(options or {}))
    except (ValueError, TypeError) as e:
        raise UserError(f"task {name!r}: {e}") from None
    task.check_data()
    lines = []
    for split in ("train", "val", "test"):
        if split not in getattr(task, "splits", ("train", "val", "test")):  # an optional split the user left out
            lines.append(f"{name} {split}: none given")
            continue
        if split == "val" and not task.has_validation:
            lines.append(f"{name} val: none ({task.validation_missing()}; training keeps its last step as best)")
            continue
        ds = task.dataset(split)
        n = len(ds)
        if n == 0:
            raise DataError(f"{name}: the {split} split is empty")
        ds[0]  # reads one sample, so a broken file format shows here
        ds[n - 1]
        lines.append(f"{name} {split}: {n} samples")
    if hasattr(task, "describe"):  # what the task inferred from the user's data
        lines.append(task.describe())
    return lines


