"""The model a run trains, evaluates and generates with: the recipe's backbone, the task's head, the rate.

``build_loop_model`` is the one place a recipe becomes the model of a run (training, ``ssmkit.load``,
``ssmkit eval``), so a loaded run is exactly the model that was trained; ``forward`` is the one way the loop and
the evaluation call it (with ``lengths`` for padded tasks).
"""
from __future__ import annotations

import torch

from ssmkit.errors import RecipeError
from ssmkit.models import BACKBONES
from ssmkit.recipe import Recipe, build_model


def build_loop_model(recipe: Recipe, task) -> torch.nn.Module:
    """The recipe's backbone model, wrapped by the task where it needs a different head (``task.wrap_model``,
    e.g. AAN's two towers), at its sampling-rate factor: ``model.rate``, or the task's ``rate`` (zero-shot
    resolution change: speech at 8 kHz with a model whose steps were learned at 16 kHz gives rate 2). Both set
    at once is a RecipeError (one would silently replace the other)."""
    model = build_model(recipe, task)
    task_rate = float(getattr(task, "rate", 1.0) or 1.0)
    if task_rate != 1.0 and recipe.model.rate != 1.0:
        raise RecipeError(f"{recipe.source}: model.rate={recipe.model.rate:g} and the task's sampling-rate factor "
                          f"{task_rate:g} both set the model's step-size factor; drop model.rate (the task sets it)")
    model.set_rate(task_rate if task_rate != 1.0 else recipe.model.rate)
    if hasattr(task, "wrap_model"):
        model = task.wrap_model(model)
    backbones = tuple(BACKBONES.get(name) for name in BACKBONES.names())
    assert any(isinstance(m, backbones) for m in model.modules())
    return model


def forward(model, task, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, passing ``lengths=task.lengths(x)`` for padded tasks (masked layers, norms and pooling)."""
    lengths = task.lengths(x) if hasattr(task, "lengths") else None
    return model(x) if lengths is None else model(x, lengths=lengths)
