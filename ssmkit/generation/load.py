"""One line from a run to a model: ``run = ssmkit.load("runs/my-run")``.

The run's own recipe (``checkpoints/step-.../recipe.yaml``) builds the task and the model exactly as
training did (``build_loop_model``: the task's head and rate included); the weights come from
``model.safetensors``. Nothing is unpickled. ``ssmkit eval`` loads through this same function.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ssmkit.errors import UserError


@dataclass
class LoadedRun:
    """A trained run: ``model`` (eval mode, on ``device``), its ``task`` and ``recipe``, which checkpoint
    (``checkpoint``, a folder) at which optimizer ``step``, and the checkpoint's ``state`` (step, epoch,
    best metric, ...)."""

    model: nn.Module
    task: object
    recipe: object
    checkpoint: Path
    step: int
    state: dict

    @property
    def run_dir(self) -> Path:
        """The run directory (the checkpoint's grandparent: ``<run>/checkpoints/step-XXXXXXXX``)."""
        return self.checkpoint.parent.parent


def load(path: str | Path, which: str = "best", overrides: list[str] | tuple[str, ...] = (),
         device: str | torch.device = "cpu", check_data: bool = False) -> LoadedRun:
    """Loads a run directory's ``best`` or ``latest`` checkpoint (or a checkpoint folder itself).

    overrides: ``key.sub=value`` changes to the saved recipe (e.g. ``task.L=2048``) before building.
    check_data: make the task check its data first (evaluation needs it; generating text does not).
    """
    from ssmkit.recipe import build_task
    from ssmkit.train.checkpoint import load_checkpoint
    from ssmkit.train.loop import _load_weights, build_loop_model, load_run_recipe

    if which not in ("best", "latest"):
        raise UserError(f"unknown checkpoint {which!r}; choose best or latest")
    recipe, ckpt = load_run_recipe(path, overrides, which)
    task = build_task(recipe)
    if check_data:
        task.check_data()
    model = build_loop_model(recipe, task)
    saved = load_checkpoint(ckpt, training_state=False)  # a corrupt file: one UserError naming it
    weights, state = saved["model"], saved["state"]
    _load_weights(model, weights, ckpt)
    model.to(device).eval()
    return LoadedRun(model=model, task=task, recipe=recipe, checkpoint=Path(ckpt), step=int(state.get("step", 0)),
                     state=state)
