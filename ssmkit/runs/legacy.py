"""Runs saved before the mixer redesign (issue #23): their recipe and weights in today's layout, or one line why not.

A run directory written before the redesign (``tests/fixtures/legacy_v0/runs/*`` are real ones) holds

- a resolved ``recipe.yaml`` with ``model.layer: {kernel: NAME, ...}`` (the old ``SequenceLayer``'s options and
  the kernel's, flat) and the length as ``task.L`` / ``task.l_max``;
- a ``model.safetensors`` whose block keys go through the old layer: ``X.layer.kernel.*``, ``X.layer.D``,
  ``X.layer.mixer.*`` (a token mixer) and ``X.layer.out.*`` (the layer's output map).

``upgrade_recipe`` maps the recipe to today's vocabulary (``model.mixer: {name: NAME, ...}``, ``model.rate``,
``task.seq_len``) so that it means the same model: options the old layer filled in by default are written out
where today's mixer has another default (attention's output map was a GLU, today's attention has none unless
asked), and old defaults that today's mixer has no place for (a Mamba layer followed by the old layer's GLU or
an activation) are refused in one line. ``upgrade_state_dict`` renames the weights (design of issue #23):

    X.layer.mixer.Y  -> X.mixer.Y            X.layer.kernel.Y -> X.mixer.kernel.Y
    X.layer.out.Y    -> X.mixer.post.out.Y   X.layer.D        -> X.mixer.D

Any other key under an old layer is refused in one line. The run loader (``ssmkit/runs/load.py``) calls both
for a run whose saved recipe ``needs_upgrade``; a user's own recipe with an old key is refused by the recipe
check instead (``ssmkit.recipe.LEGACY_KEYS``), since a recipe is edited once, by hand, and a run never is.
"""
from __future__ import annotations

import copy
import re

from ssmkit.errors import RecipeError, UserError
from ssmkit.mixers import MIXERS, mixer_parameters

#: task length keys before the redesign
OLD_LENGTH_KEYS = ("L", "l_max")
#: the old layer's arguments that are neither a mixer option nor a kernel option
OLD_LAYER_ONLY = ("rate", "transposed")
#: the old SequenceLayer's defaults where they differ by mixer: ``activation: auto`` meant GELU except after
#: attention and Mamba; ``output`` was ``glu`` after every mixer
OLD_NO_ACTIVATION = ("attn", "mamba")
OLD_OUTPUT = "glu"
#: state-dict renames: (old part after ``X.layer.``, new part after ``X.``)
STATE_DICT_MAP = (("mixer.", "mixer."), ("kernel.", "mixer.kernel."), ("out.", "mixer.post.out."), ("D", "mixer.D"))
HOW_TO_CONVERT = ("retrain it with ssmkit today, or load it with ssmkit from before the redesign "
                  "(commit 6977abb) to export what you need")
_OLD_LAYER = re.compile(r"(^|.*\.)(\d+)\.layer(\.|$)")


def needs_upgrade(data: dict) -> bool:
    """Whether saved recipe data (a mapping) has a key of the layout before the redesign."""
    model, task = data.get("model"), data.get("task")
    return (isinstance(model, dict) and "layer" in model) or \
        (isinstance(task, dict) and any(k in task for k in OLD_LENGTH_KEYS))


def upgrade_recipe(data: dict) -> tuple[dict, list[str]]:
    """An old resolved run recipe -> (the same experiment in today's layout, what changed, one line each).

    Raises ``RecipeError`` (one line) when the old model has no equivalent today."""
    data = copy.deepcopy(data)
    changes: list[str] = []
    task = data.get("task")
    if isinstance(task, dict):
        data["task"] = _upgrade_task(task, changes)
    model = data.get("model")
    if isinstance(model, dict) and "layer" in model:
        data["model"] = _upgrade_model(model, changes)
    return data, changes


def _upgrade_task(task: dict, changes: list[str]) -> dict:
    present = [k for k in OLD_LENGTH_KEYS if k in task]
    if len(present) > 1 or (present and "seq_len" in task):
        raise RecipeError(f"the old run's task has {', '.join('task.' + k for k in present)} and a length already; "
                          "keep one of them as task.seq_len in its recipe.yaml")
    if not present:
        return task
    old = present[0]
    changes.append(f"task.{old} -> task.seq_len")
    return {("seq_len" if k == old else k): v for k, v in task.items()}


def _upgrade_model(model: dict, changes: list[str]) -> dict:
    layer = model["layer"]
    if not isinstance(layer, dict):
        raise RecipeError(f"the old run's model.layer is {layer!r}, not a mapping of options; its recipe.yaml is damaged")
    options = dict(layer)
    name = options.pop("kernel", "s4d")
    if not isinstance(name, str) or name not in MIXERS:
        raise RecipeError(f"the old run's model.layer.kernel {name!r} is not a mixer today (mixers: "
                          f"{', '.join(MIXERS.names())}); {HOW_TO_CONVERT}")
    changes.append(f"model.layer -> model.mixer, model.layer.kernel: {name} -> model.mixer.name: {name}")
    rate = options.pop("rate", None)
    options.pop("transposed", None)  # the block's layout today; never part of a saved recipe
    mixer = {"name": name, **_mixer_options(name, options, changes)}
    out = {}
    for key, value in model.items():
        if key == "layer":
            out["mixer"] = mixer
            if rate is not None:
                out["rate"] = rate
                changes.append(f"model.layer.rate: {rate} -> model.rate: {rate}")
        elif key != "rate" or rate is None:
            out[key] = value
    return out


def _mixer_options(name: str, options: dict, changes: list[str]) -> dict:
    """The old layer's options for ``name`` as today's mixer options, with the old defaults written out where
    today's differ (attention's GLU output map), dropped where they did nothing (Mamba's ``output: null``), and
    refused where today's mixer has no place for them."""
    params = mixer_parameters(name)
    old_defaults = {"activation": None if name in OLD_NO_ACTIVATION else "gelu", "output": OLD_OUTPUT}
    for key, old_default in old_defaults.items():
        given = key in options and options[key] != "auto"
        value = options.pop(key) if given else old_default
        options.pop(key, None)  # activation: auto
        if key in params:
            if given or value != params[key].default:
                options[key] = value
            if not given and value != params[key].default:
                changes.append(f"model.mixer.{key}: {value} (the old layer's default, written out: today's "
                               f"{name} default is {params[key].default})")
        elif value not in (None, "id"):
            raise RecipeError(f"the old run's {name} layers end in the old layer's {key} {value!r}, which today's "
                              f"{name} mixer has no place for (its own projection ends it); {HOW_TO_CONVERT}")
        elif given:
            changes.append(f"model.layer.{key}: {value} dropped ({name} has no {key} option; it did nothing)")
    for key, idle in (("dropout", 0.0), ("tie_dropout", False)):
        if key in options and key not in params:
            if options[key] != idle:
                raise RecipeError(f"the old run's {name} layers have model.layer.{key}={options[key]!r}, which today's "
                                  f"{name} mixer has no place for; {HOW_TO_CONVERT}")
            del options[key]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise RecipeError(f"the old run's model.layer.{unknown[0]} has no option in today's mixer {name!r} "
                          f"(its options: {', '.join(sorted(params))}); {HOW_TO_CONVERT}")
    return options


def upgrade_state_dict(sd: dict) -> dict:
    """Old block weights (``X.N.layer.*``) under today's names (see the module docstring); other keys unchanged.

    Raises ``UserError`` (one line) for a key under an old layer that has no place today."""
    out = {}
    for key, value in sd.items():
        new = _new_key(key)
        if new in out:
            raise UserError(f"old weights {key!r} and another key both map to {new!r}; the checkpoint mixes the old "
                            f"and today's layout, {HOW_TO_CONVERT}")
        out[new] = value
    return out


def _new_key(key: str) -> str:
    match = _OLD_LAYER.match(key)
    if match is None:
        return key
    head, rest = key[: match.end(2)], key[match.end():]
    for old, new in STATE_DICT_MAP:
        if (rest.startswith(old) and len(rest) > len(old)) if old.endswith(".") else rest == old:
            return f"{head}.{new}{rest[len(old):]}"
    raise UserError(f"old weights {key!r}: the old layer's {rest!r} has no place in today's model (known: "
                    f"layer.kernel.*, layer.mixer.*, layer.out.*, layer.D); {HOW_TO_CONVERT}")
