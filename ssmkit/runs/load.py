"""One line from a run to a model: ``run = ssmkit.load("runs/my-run")``.

The run's own recipe (``checkpoints/step-.../recipe.yaml``) builds the task and the model exactly as training did
(``build_loop_model``: the task's head and rate included); the weights come from ``model.safetensors``. Nothing is
unpickled. ``ssmkit eval`` (``evaluate.py``), ``ssmkit generate`` and a resumed training run read runs through the
functions here.

A run saved before the mixer redesign (issue 23) has the old recipe layout (``model.layer``, ``task.L`` /
``task.l_max``) and old state-dict keys (``blocks.N.layer.*``): :func:`read_run_recipe` upgrades its recipe with
``ssmkit.runs.legacy.upgrade_recipe`` and :func:`checkpoint_weights` its weights with ``upgrade_state_dict``, so
it loads and resumes with today's models (``tests/runs/test_legacy.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from ssmkit.errors import UserError
from ssmkit.recipe import Recipe, apply_overrides, build_task, load_yaml, validate
from ssmkit.runs import legacy
from ssmkit.runs.checkpoint import Checkpoint, find_checkpoint, load_checkpoint
from ssmkit.runs.model import build_loop_model

CHECKPOINT_CHOICES = ("best", "latest")


def read_run_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """A run's saved ``recipe.yaml`` (upgraded when it has the old layout) with ``overrides`` applied, validated.
    Missing, binary, malformed or not a mapping: one RecipeError naming it."""
    source = str(path)
    data = load_yaml(Path(path))
    if legacy.needs_upgrade(data):
        data, _ = legacy.upgrade_recipe(data)
    return validate(apply_overrides(data, list(overrides), source), source)


def checkpoint_weights(ckpt: Checkpoint) -> dict:
    """The checkpoint's state dict in today's layout (upgraded when its recipe has the old layout)."""
    try:
        saved = yaml.safe_load(ckpt.recipe_yaml)
    except yaml.YAMLError:
        saved = None  # read_run_recipe names the broken file when the recipe is read
    return legacy.upgrade_state_dict(ckpt.weights) if isinstance(saved, dict) and legacy.needs_upgrade(saved) else ckpt.weights


def load_weights(model: nn.Module, weights: dict, ckpt: Path) -> None:
    """``model.load_state_dict(weights)``; a mismatch is one UserError naming the checkpoint and the first problem."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"checkpoint {ckpt} does not fit the recipe's model: {first[1].strip() if len(first) > 1 else first[0]}") from None


def load_run_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), which: str = "latest"):
    """(recipe, checkpoint dir) of a run directory or checkpoint, with ``overrides`` applied."""
    ckpt = find_checkpoint(path, which)
    return read_run_recipe(ckpt / "recipe.yaml", overrides), ckpt


@dataclass
class LoadedRun:
    """A trained run: ``model`` (eval mode, on ``device``), its ``task`` and ``recipe``, which checkpoint
    (``checkpoint``, a folder) at which optimizer ``step``, and the checkpoint's ``state`` (a
    :class:`~ssmkit.runs.checkpoint.LoopState`: step, epoch, best metric, ...)."""

    model: nn.Module
    task: object
    recipe: Recipe
    checkpoint: Path
    step: int
    state: object

    @property
    def run_dir(self) -> Path:
        """The run directory (the checkpoint's grandparent: ``<run>/checkpoints/step-XXXXXXXX``)."""
        return self.checkpoint.parent.parent


def load(path: str | Path, which: str = "best", overrides: list[str] | tuple[str, ...] = (),
         device: str | torch.device = "cpu", check_data: bool = False) -> LoadedRun:
    """Loads a run directory's ``best`` or ``latest`` checkpoint (or a checkpoint folder itself).

    overrides: ``key.sub=value`` changes to the saved recipe (e.g. ``task.seq_len=2048``) before building.
    check_data: make the task check its data first (evaluation needs it; generating text does not).
    """
    if which not in CHECKPOINT_CHOICES:
        raise UserError(f"unknown checkpoint {which!r}; choose best or latest")
    recipe, ckpt = load_run_recipe(path, overrides, which)
    task = build_task(recipe)
    if check_data:
        task.check_data()
    model = build_loop_model(recipe, task)
    saved = load_checkpoint(ckpt, training_state=False)  # a corrupt file: one UserError naming it
    load_weights(model, checkpoint_weights(saved), ckpt)
    model.to(device).eval()
    return LoadedRun(model=model, task=task, recipe=recipe, checkpoint=Path(ckpt), step=saved.state.step,
                     state=saved.state)
