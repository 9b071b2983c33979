"""Experiment trackers (``train.log_with``: tensorboard, wandb) through Accelerate.

Accelerate silently drops a tracker whose package is missing, and refuses one that needs a logging directory
when none was given at construction, before a run directory exists. So :func:`check_trackers` refuses a missing
package up front (one line, exit 2, naming the install command), and :func:`start_trackers` points Accelerate at
the run directory (``<run>/<name>/`` for TensorBoard's event files) once it exists. The loop logs
``train/loss`` and ``lr`` every ``log_every`` steps and ``val/*`` at each evaluation.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from accelerate.tracking import filter_trackers

from ssmkit.errors import RecipeError

#: tracker -> (importable packages, any of which will do; how to install one)
PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'ssmkit[tensorboard]'"),
    "wandb": (("wandb",), "pip install wandb"),
}


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_trackers(names, source: str) -> None:
    """Each tracker in ``names`` has its package installed, else one RecipeError naming the fix."""
    for name in names:
        packages, fix = PACKAGES[name]
        if not any(_installed(p) for p in packages):
            raise RecipeError(f"{source}: train.log_with has {name}, but {packages[0]} is not installed; {fix}, "
                              f"or drop {name} from train.log_with")


def start_trackers(accelerator, recipe, run_dir: Path) -> None:
    """Starts ``recipe.train.log_with``'s trackers, writing under ``run_dir`` (call on every process)."""
    names = list(recipe.train.log_with)
    if not names:
        return
    accelerator.project_configuration.set_directories(str(run_dir))
    accelerator.log_with = filter_trackers(names, str(run_dir))
    accelerator.init_trackers(recipe.name, config=_flat(recipe.to_dict()))


def finish_trackers(accelerator) -> None:
    for tracker in accelerator.trackers:  # not end_training(): that also ends the process group
        tracker.finish()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out
