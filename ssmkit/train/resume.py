"""Where a run starts: a new run directory, a checkpoint to continue, or a run to (re)start in place.

- ``resume=None``: a new run directory (``--run-dir``, or ``<train.runs_dir>/<name>`` with a ``-2`` suffix if taken).
- ``resume=RUN_DIR`` (or a checkpoint folder): continue from its latest checkpoint. A run killed before its first
  checkpoint (``recipe.yaml``, no checkpoint) starts again from step 0 in the same directory.
- ``resume="auto"`` (requeued batch jobs: the same command line every time): the run directory is ``--run-dir``, or
  ``<train.runs_dir>/<name>`` exactly; continue it if it has a checkpoint, else start it there. Continuing needs the
  given recipe to be the run's experiment (only ``train.*`` may differ, as on any resume).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssmkit.errors import RecipeError, UserError
from ssmkit.recipe import validate
from ssmkit.runs.checkpoint import find_checkpoint, has_checkpoint
from ssmkit.runs.load import read_run_recipe

AUTO = "auto"


@dataclass(frozen=True)
class Start:
    """``run_dir``: an existing (or, for ``auto``, to be made) run directory to train in; None: make a new one.
    ``checkpoint``: the checkpoint to continue from; None: step 0."""

    run_dir: Path | None = None
    checkpoint: Path | None = None

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None


def _restartable(path: Path) -> bool:
    """An empty folder, or a run killed before its first checkpoint (its ``recipe.yaml`` and no checkpoint)."""
    return path.is_dir() and (not any(path.iterdir()) or ((path / "recipe.yaml").is_file() and not has_checkpoint(path)))


def plan_start(recipe, run_dir: str | Path | None = None, resume: str | Path | None = None) -> Start:
    """Where ``train(recipe, run_dir, resume)`` starts (see the module docstring). Reads, never writes."""
    if resume is None:
        return Start()
    if str(resume) == AUTO:
        target = Path(run_dir) if run_dir is not None else Path(recipe.train.runs_dir) / recipe.name
        if has_checkpoint(target):
            return Start(target, find_checkpoint(target))
        if target.exists() and not _restartable(target):
            raise UserError(f"--resume auto: {target} exists but is neither a run with a checkpoint nor a run that "
                            "stopped before its first one; pick another --run-dir/--name")
        return Start(target)
    path = Path(resume)
    if (path / "model.safetensors").is_file() or has_checkpoint(path):
        ckpt = find_checkpoint(path)
        return Start(ckpt.parent.parent, ckpt)
    if _restartable(path) and (path / "recipe.yaml").is_file():
        return Start(path)  # killed before its first checkpoint: start it again, in place
    return Start(find_checkpoint(path))  # raises: no run directory or checkpoint there


def run_recipe_source(start: Start) -> Path:
    """The ``recipe.yaml`` a resumed (or restarted) run takes its recipe from."""
    return (start.checkpoint or start.run_dir) / "recipe.yaml"


def check_same_experiment(given, saved, run_dir: Path) -> None:
    """``--resume auto`` continuing a run: the given recipe must be the run's, apart from ``train.*``."""
    a, b = given.to_dict(), saved.to_dict()
    for section in ("task", "model", "optimizer", "scheduler"):
        diff = _first_difference(a[section], b[section], section)
        if diff is not None:
            key, new, old = diff
            raise RecipeError(f"{given.source}: --resume auto would continue {run_dir}, but {key} is {new!r} here and "
                              f"{old!r} in that run; only train.* may change when a run continues: restore it, or start "
                              "a new run with another --run-dir/--name")


def _first_difference(new, old, where: str):
    if isinstance(new, dict) and isinstance(old, dict):
        for key in sorted(set(new) | set(old)):
            diff = _first_difference(new.get(key), old.get(key), f"{where}.{key}")
            if diff is not None:
                return diff
        return None
    return None if new == old else (where, new, old)


def recipe_to_resume(resume, overrides, given=None, run_dir=None):
    """The recipe ``ssmkit train --resume`` trains.

    ``resume=RUN_DIR``: the run's own recipe (its latest checkpoint's ``recipe.yaml``, or the run's when it has no
    checkpoint yet; a run saved in the layout before the mixer redesign is upgraded, ``ssmkit/runs/load.py``) with
    ``overrides`` (``train.*``). ``resume="auto"``: ``given`` (the command line's recipe,
    overrides applied) when the run has no checkpoint; else the run's recipe with ``given``'s ``train`` section
    (but the run's length: ``max_steps``, ``epochs``), after checking that the rest is the same experiment."""
    if str(resume) == AUTO:
        start = plan_start(given, run_dir, AUTO)
        if not start.resuming:
            return given
        saved = read_run_recipe(run_recipe_source(start))
        check_same_experiment(given, saved, start.run_dir)
        # The run's length (and so its schedule) stays the run's: --max-steps is then only a stop point.
        length = {k: getattr(saved.train, k) for k in ("max_steps", "epochs")}
        return validate({**saved.to_dict(), "train": {**given.to_dict()["train"], **length}}, given.source)
    return read_run_recipe(run_recipe_source(plan_start(None, None, resume)), overrides)
