"""Recipes: a YAML file plus ``key.sub=value`` overrides become a typed, validated :class:`Recipe`.

A recipe has five sections (``task``, ``model``, ``optimizer``, ``scheduler``, ``train``) and an optional
``name`` and ``description``. It names only registered things (``TASKS``, ``MIXERS``, ``BACKBONES``); it cannot
import code. Every key is checked: an unknown key, a wrong type or an impossible value raises
:class:`~ssmkit.errors.RecipeError` naming the file, the key, the bad value and the allowed ones.

Task options are checked against the task class's signature, ``model.mixer`` options against
``ssmkit.mixers.mixer_parameters(name)`` (the mixer's constructor; the types come from the defaults), once,
here; the values by building them (``build_task``, ``build_model``). Keys of the vocabulary before issue #23
(``model.layer``, ``task.L``, ``task.l_max``, ...) are refused in one line naming the new key
(``LEGACY_KEYS``); ``ssmkit/runs/legacy.py`` upgrades the saved recipes of old runs instead.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssmkit.errors import DataError, RecipeError, UserError, first_line, read_utf8
from ssmkit.mixers import MIXERS, mixer_parameters
from ssmkit.models import BACKBONES
from ssmkit.registry import did_you_mean
from ssmkit.tasks import TASKS
from ssmkit.tasks.download import download
from ssmkit.tasks.task_sources import source_for_task

SECTIONS = ("name", "description", "task", "model", "optimizer", "scheduler", "train")
MIXED_PRECISION = ("no", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("constant", "cosine", "linear", "plateau")
TRACKERS = ("tensorboard", "wandb")
DISTRIBUTED = ("ddp", "fsdp")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _meta(help: str, choices: tuple | None = None, low: float | None = None, low_open: bool = False,
          high: float | None = None, high_open: bool = False) -> dict:
    return {"help": help, "choices": choices, "low": low, "low_open": low_open, "high": high, "high_open": high_open}


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=_meta(help, **kw))
    return field(default=default, metadata=_meta(help, **kw))


@dataclass
class ModelConfig:
    """The backbone; the task decides the encoder, pooling and output size."""

    d_model: int = _f(128, "width H of every block", low=1)
    n_layers: int = _f(4, "number of residual blocks", low=1)
    prenorm: bool = _f(True, "normalise before each sub-block (else after the residual sum)")
    norm: str | None = _f("layer", "layer, batch or null", choices=("layer", "batch", None))
    dropout: float = _f(0.0, "dropout after each sub-block", low=0.0, high=1.0, high_open=True)
    mlp_ratio: float = _f(0.0, "width of a position-wise MLP per block (0: none)", low=0.0)
    checkpoint: bool = _f(False, "recompute activations in the backward pass to save memory")
    mixer: dict = _f({"name": "s4d"}, "the token mixer: its name plus its options (ssmkit/mixers; list them with "
                     "ssmkit recipes show RECIPE --defaults)")
    rate: float = _f(1.0, "default sampling-rate factor: multiplies the step size of every discretised mixer",
                     low=0.0, low_open=True)
    backbone: str = _f("sequence", "sequence (a stack of residual blocks) or sashimi (a causal multi-scale U-Net)")
    pool_factors: list = _f([4, 4], "sashimi: the down-pooling factor of each level, outer first")
    expand: int = _f(2, "sashimi: width factor from one level to the next", low=1)
    unet: bool = _f(False, "sashimi: also blocks before each down-pool, with U-Net skips to the up path")


@dataclass
class OptimizerConfig:
    name: str = _f("adamw", "adamw or sgd", choices=OPTIMIZERS)
    lr: float = _f(1e-3, "learning rate (kernels may set their own per parameter)", low=0.0, low_open=True)
    weight_decay: float = _f(0.0, "decoupled weight decay (AdamW) / L2 (SGD) of weight matrices", low=0.0)
    betas: list = _f([0.9, 0.999], "AdamW betas")
    eps: float = _f(1e-8, "AdamW epsilon", low=0.0, low_open=True)
    momentum: float = _f(0.9, "SGD momentum", low=0.0, high=1.0, high_open=True)
    nesterov: bool = _f(False, "SGD Nesterov momentum")


@dataclass
class SchedulerConfig:
    name: str = _f("constant", "constant, cosine, linear (all with warmup) or plateau", choices=SCHEDULERS)
    warmup_steps: int = _f(0, "linear warmup from 0 over this many optimizer steps", low=0)
    min_lr_ratio: float = _f(0.0, "cosine/linear decay ends at lr * min_lr_ratio", low=0.0, high=1.0)
    interval: str = _f("step", "step: the decay moves every optimizer step; epoch: once per epoch (warmup stays per step)",
                       choices=("step", "epoch"))
    factor: float = _f(0.5, "plateau: multiply lr by this when the metric stalls", low=0.0, low_open=True, high=1.0, high_open=True)
    patience: int = _f(5, "plateau: evaluations without improvement before reducing lr", low=0)


@dataclass
class TrainConfig:
    epochs: int = _f(10, "passes over the training set", low=1)
    max_steps: int | None = _f(None, "stop after this many optimizer steps (overrides epochs for the schedule)", low=1)
    batch_size: int = _f(32, "samples per process per forward pass", low=1)
    eval_batch_size: int | None = _f(None, "default: batch_size", low=1)
    grad_accum: int = _f(1, "forward passes per optimizer step", low=1)
    mixed_precision: str = _f("no", "no, bf16 or fp16 (fp16 needs a GPU)", choices=MIXED_PRECISION)
    grad_clip: float | None = _f(None, "clip the global gradient norm to this (null: off)", low=0.0, low_open=True)
    seed: int = _f(0, "seed of model initialisation, shuffling and dropout", low=0, high=2**32 - 1)
    eval_every: int = _f(0, "evaluate every N optimizer steps (0: at the end of each epoch)", low=0)
    log_every: int = _f(50, "write a metrics.jsonl line (and a log line off a terminal) every N optimizer steps", low=1)
    save_every: int = _f(0, "also checkpoint every N optimizer steps (0: only at evaluations)", low=0)
    keep_checkpoints: int = _f(1, "newest step checkpoints kept besides the best one", low=1)
    num_workers: int = _f(0, "DataLoader worker processes per process", low=0, high=1024)
    log_with: list = _f([], "trackers through Accelerate: tensorboard, wandb")
    distributed: str = _f("ddp", "several processes: ddp (replicated model) or fsdp (sharded; GPUs only)", choices=DISTRIBUTED)
    compile: bool = _f(False, "torch.compile the model (falls back to eager with a warning if it fails)")
    on_nonfinite: str = _f("stop", "a NaN/inf training loss: stop (exit 3, nothing applied or saved) or skip the step",
                           choices=("stop", "skip"))
    runs_dir: str = _f("runs", "where new run directories are made")


@dataclass
class Recipe:
    name: str
    task: dict
    model: ModelConfig
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    train: TrainConfig
    description: str = ""
    source: str = "<recipe>"

    def to_dict(self) -> dict:
        """The resolved recipe as plain data (what ``recipe.yaml`` in a run directory holds)."""
        return {
            "name": self.name,
            "description": self.description,
            "task": copy.deepcopy(self.task),
            "model": dataclasses.asdict(self.model),
            "optimizer": dataclasses.asdict(self.optimizer),
            "scheduler": dataclasses.asdict(self.scheduler),
            "train": dataclasses.asdict(self.train),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


# --- shipped recipes ---
def recipes_root() -> Path:
    """The folder of shipped recipes: ``ssmkit/recipes`` (inside the installed package)."""
    return Path(__file__).resolve().parent / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """``group/name`` -> path of every shipped recipe."""
    root = recipes_root()
    if not root.is_dir():
        return {}
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def resolve_recipe_path(name_or_path: str) -> Path:
    """A path to an existing file, or the name of a shipped recipe (``quick/s4d-shift``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    key = name_or_path.removesuffix(".yaml").removesuffix(".yml").removeprefix("recipes/")
    if key in shipped:
        return shipped[key]
    if path.exists():
        raise RecipeError(f"recipe {name_or_path!r} is a directory, not a YAML file")
    raise RecipeError(
        f"no recipe file {name_or_path!r}{did_you_mean(key, shipped)}; give a path to a YAML file or a shipped "
        f"recipe name (list them with: ssmkit recipes)"
    )


def recipe_description(path: Path) -> str:
    """The ``description:`` key, else the first line of the header comment."""
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("description"), str) and data["description"].strip():
        return data["description"].strip().splitlines()[0]
    for line in text.splitlines():
        if line.startswith("#"):
            stripped = line.lstrip("#").strip()
            if stripped:
                return stripped
        elif line.strip():
            break
    return ""


# --- parsing ---
def parse_value(text: str):
    """An override value: YAML scalars/lists/dicts, plus floats like ``1e-3`` that YAML 1.1 reads as strings."""
    if _FLOAT_RE.match(text.strip()):
        return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else float(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str], source: str) -> dict:
    """Sets ``a.b.c=value`` in a nested dict (creating dicts on the way)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not of the form key.sub=value (e.g. optimizer.lr=1e-3)")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise RecipeError(f"override {item!r}: empty key part in {key!r}")
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"{source}: override {item!r}: {'.'.join(parts[: i + 1])} is {nxt!r}, not a section")
            node = nxt
        node[parts[-1]] = parse_value(text)
    return data


def load_yaml(path: Path) -> dict:
    """A recipe file as a mapping; binary or non-UTF-8 bytes, malformed or too deeply nested YAML, and a
    document that is not a mapping are each one RecipeError naming the file."""
    path = Path(path)
    text = read_utf8(path, RecipeError, fix="a recipe is a YAML text file",
                     missing=RecipeError(f"no recipe file {str(path)!r}"))
    if "\x00" in text:
        raise RecipeError(f"{path}: contains NUL bytes; a recipe is a YAML text file")
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise RecipeError(f"{path}: the YAML is nested too deeply to be a recipe") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise RecipeError(f"{path}: malformed YAML at{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with keys {', '.join(SECTIONS)}; got a {type(data).__name__}")
    return data


# --- validation ---
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


#: Whole numbers a recipe may hold: torch sizes, seeds and counts are signed 64-bit integers.
INT_LIMIT = 2**63 - 1


def _check_int_size(value, where: str, source: str) -> None:
    """A whole number beyond 64 bits (``task.seq_len=2**70``) is refused here, not as an overflow deep in torch."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
        raise RecipeError(f"{source}: {where}={value} is too large (whole numbers must fit in 64 bits, at most "
                          f"{INT_LIMIT:.3g}); choose a realistic value")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_int_size(v, f"{where}.{k}", source)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_int_size(v, where, source)


def _coerce(value, expected: tuple, where: str, source: str):
    """Checks/coerces ``value`` to one of the ``expected`` python types."""
    if value is None and type(None) in expected:
        return None
    _check_int_size(value, where, source)
    if float in expected and isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        value = float(value)
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if int in expected and isinstance(value, float) and value.is_integer() and float not in expected:
        return int(value)
    for tp in expected:
        if tp is type(None):
            continue
        if tp is int and isinstance(value, bool):
            continue
        if isinstance(value, tp):
            return value
    names = " or ".join("null" if t is type(None) else _type_name(t) for t in expected)
    raise RecipeError(f"{source}: {where} must be {names}, got {value!r}")


def _field_types(cls) -> dict[str, tuple]:
    out = {}
    for f in dataclasses.fields(cls):
        tp = f.type if not isinstance(f.type, str) else f.type
        parts = [p.strip() for p in str(tp).split("|")]
        names = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None), "list": list, "dict": dict}
        out[f.name] = tuple(names[p] for p in parts)
    return out


def _check_range(value, meta: dict, where: str, source: str) -> None:
    if meta["choices"] is not None and value not in meta["choices"]:
        allowed = ", ".join("null" if c is None else str(c) for c in meta["choices"])
        raise RecipeError(f"{source}: {where}={value!r} is not allowed{did_you_mean(value, [c for c in meta['choices'] if c])}; choose one of {allowed}")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"{source}: {where} must be finite, got {value}")
    low, high = meta["low"], meta["high"]
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        raise RecipeError(f"{source}: {where} must be {'>' if meta['low_open'] else '>='} {low}, got {value}")
    if high is not None and (value > high or (meta["high_open"] and value == high)):
        raise RecipeError(f"{source}: {where} must be {'<' if meta['high_open'] else '<='} {high}, got {value}")


def _build_section(cls, data, section: str, source: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: {section} must be a mapping of options, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise RecipeError(
                f"{source}: unknown key {section}.{key}{did_you_mean(key, fields)}; allowed: {', '.join(fields)}"
            )
    types = _field_types(cls)
    values = {}
    for key, value in data.items():
        where = f"{section}.{key}"
        value = _coerce(value, types[key], where, source)
        _check_range(value, fields[key].metadata, where, source)
        values[key] = value
    return cls(**values)


def _accepted_params(fn) -> dict[str, inspect.Parameter]:
    """Keyword parameters of ``fn``; for a class whose ``__init__`` takes ``**options``, also its bases'."""
    out: dict[str, inspect.Parameter] = {}
    chain = [c.__init__ for c in fn.__mro__ if "__init__" in vars(c)] if inspect.isclass(fn) else [fn]
    for f in chain:
        params = inspect.signature(f).parameters
        more = False
        for name, p in params.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                more = True
            elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
                out.setdefault(name, p)
        if not more:
            break
    return out


def _check_signature_options(fn, options: dict, prefix: str, what: str, source: str, skip: tuple = ()) -> None:
    """``_check_options`` against the keyword parameters of ``fn``."""
    _check_options(_accepted_params(fn), options, prefix, what, source, skip)


def _check_options(params: dict[str, inspect.Parameter], options: dict, prefix: str, what: str, source: str,
                   skip: tuple = ()) -> None:
    """Unknown keyword -> error; a value whose type differs from the keyword's default -> error (coerced in place
    where the type allows: 1 -> 1.0 for a float option)."""
    allowed = [p for p in params if p not in ("self", *skip)]
    for key, value in options.items():
        if key not in allowed:
            raise RecipeError(
                f"{source}: unknown option {prefix}.{key} for {what}{did_you_mean(key, allowed)}; allowed: {', '.join(sorted(allowed))}"
            )
        _check_finite(value, f"{prefix}.{key}", source)
        default = params[key].default
        if default is inspect.Parameter.empty or default is None or value is None:
            continue
        if isinstance(default, bool):
            expected: tuple = (bool,)
        elif isinstance(default, int):
            expected = (int,)
        elif isinstance(default, float):
            expected = (float,)
        elif isinstance(default, str):
            expected = (str,)
        else:
            continue
        options[key] = _coerce(value, expected, f"{prefix}.{key}", source)


def _check_finite(value, where: str, source: str) -> None:
    """NaN and infinity are never a meaningful option value (a NaN step size trains to NaN silently); nor is a whole
    number beyond 64 bits."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}", source)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(v, where, source)
    else:  # a leaf: _check_int_size walks no further, so each value is checked once
        _check_int_size(value, where, source)
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeError(f"{source}: {where} must be a finite number, got {value}")


#: Keys of the vocabulary before issue #23 -> the one line that names the new key. A user's recipe with one of
#: them is refused (``ssmkit/runs/legacy.py`` upgrades the saved recipes of old runs instead).
LEGACY_KEYS = {
    "model.layer": "model.layer is now model.mixer (its kernel: is name:, its rate: is model.rate), e.g. "
                   "model: {mixer: {name: s4d, d_state: 64}}; rename it",
    "model.mixer.kernel": "model.mixer.kernel is now model.mixer.name; rename it",
    "model.mixer.rate": "model.mixer.rate is now model.rate (the model's default sampling-rate factor); move it",
    "task.L": "task.L is now task.seq_len (one name for the length in every task); rename it",
    "task.l_max": "task.l_max is now task.seq_len (one name for the length in every task); rename it",
}


def _check_task(task, source: str) -> dict:
    if isinstance(task, str):
        task = {"name": task}
    if not isinstance(task, dict) or "name" not in task:
        raise RecipeError(f"{source}: task must be a mapping with a name, e.g. task: {{name: shift, seq_len: 256}}; "
                          f"choose a name from {', '.join(TASKS.names())}")
    task = dict(task)
    name = task["name"]
    if not isinstance(name, str) or name not in TASKS:
        raise RecipeError(f"{source}: unknown task.name {name!r}{did_you_mean(name, TASKS.names())}; choose one of {', '.join(TASKS.names())}")
    options = {k: v for k, v in task.items() if k != "name"}
    params = _accepted_params(TASKS.get(name))
    for old in ("L", "l_max"):
        if old in options and old not in params:
            if "seq_len" in params:
                raise RecipeError(f"{source}: {LEGACY_KEYS['task.' + old]}")
            raise RecipeError(f"{source}: task.{old} is gone (the length is task.seq_len), and task {name!r} has no "
                              f"length option: its options are {', '.join(sorted(k for k in params if k != 'self')) or 'none'}")
    _check_options(params, options, "task", f"task {name!r}", source)
    return {"name": name, **options}


def _check_mixer(mixer, source: str) -> dict:
    """``model.mixer``: a registered name (``s4d`` when left out; a bare name is the mapping with no options)
    and options the mixer takes (``mixer_parameters``), with their types; old keys in one line."""
    if isinstance(mixer, str):
        mixer = {"name": mixer}
    if not isinstance(mixer, dict):
        raise RecipeError(f"{source}: model.mixer must be a mapping such as {{name: s4d, d_state: 64}}, got {mixer!r}")
    options = dict(mixer)
    name = options.pop("name", "s4d")
    if not isinstance(name, str) or name not in MIXERS:
        raise RecipeError(f"{source}: unknown model.mixer.name {name!r}{did_you_mean(name, MIXERS.names())}; "
                          f"choose one of {', '.join(MIXERS.names())}")
    params = mixer_parameters(name)
    for key in ("kernel", "rate"):
        if key in options and key not in params:
            raise RecipeError(f"{source}: {LEGACY_KEYS['model.mixer.' + key]}")
    if "d_model" in options:
        raise RecipeError(f"{source}: model.mixer.d_model is set by the model; use model.d_model")
    if options.get("activation") == "auto" and "activation" in params:
        default = params["activation"].default
        raise RecipeError(f"{source}: model.mixer.activation: auto is gone; drop it for the default of mixer {name!r} "
                          f"({default}) or name an activation")
    for key in ("activation", "output"):
        if key in options and key not in params:
            raise RecipeError(f"{source}: mixer {name!r} has no {key} option (its own output projection ends it); "
                              f"drop model.mixer.{key}")
    _check_options(params, options, "model.mixer", f"mixer {name!r}", source)
    return {"name": name, **options}


def _check_backbone(model: ModelConfig, given: dict, source: str) -> None:
    """A registered backbone; no option of another backbone set to a non-default value; the backbone's own
    option check (``check_options``), if it has one."""
    if model.backbone not in BACKBONES:
        raise RecipeError(f"{source}: unknown model.backbone {model.backbone!r}{did_you_mean(model.backbone, BACKBONES.names())}; "
                          f"choose one of {', '.join(BACKBONES.names())}")
    own = BACKBONES.meta(model.backbone).get("options", ())
    defaults = ModelConfig()
    for other in BACKBONES.names():
        for key in BACKBONES.meta(other).get("options", ()):
            if key in given and key not in own and getattr(model, key) != getattr(defaults, key):
                raise RecipeError(f"{source}: model.{key} is an option of model.backbone {other!r}, not {model.backbone!r}; "
                                  f"set model.backbone: {other} or drop model.{key}")
    check = getattr(BACKBONES.get(model.backbone), "check_options", None)
    if check is not None:
        try:
            check(mixer=model.mixer, **{key: getattr(model, key) for key in own})
        except ValueError as e:
            raise RecipeError(f"{source}: model: {e}") from None


#: Python's own memory for one residual block's modules and tensors (measured: ~38 KB for a tiny S4D block),
#: so a million tiny layers are not counted as free.
BLOCK_OVERHEAD_BYTES = 38_000


def physical_memory_bytes() -> int | None:
    """This machine's physical memory, None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _mixer_default(mixer, key: str):
    """The default of option ``key`` of mixer ``mixer`` (None when it has none, or no such option)."""
    if not isinstance(mixer, str) or mixer not in MIXERS:
        return None
    p = mixer_parameters(mixer).get(key)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


#: mixers that hold at least an H x H input and an H x H output projection besides any output map (attention's
#: q/k/v/o, the gated and selective mixers' in/out projections); tests/test_bad_inputs.py checks the bound for every
#: registered mixer, so a new mixer that needs to be here fails there.
OWN_PROJECTIONS = frozenset({"attn", "mamba", "mamba2", "gla", "gated_deltanet", "rglru", "hyena"})


def parameter_estimate(model: ModelConfig) -> int:
    """A lower bound on the parameters and buffers of ``model``, without building it: per block the output map
    (2H² for GLU, H² for linear), the MLP (2·mlp_ratio·H²), the mixer's states (H·d_state·channels) and, for a
    mixer with its own input and output projections (``OWN_PROJECTIONS``), 2H²; for sashimi every level at its width
    H·expand^i. Real models hold 1-5x this (the mixers' own tensors, pooling);
    it is what refuses absurd sizes before anything is allocated."""
    mixer = model.mixer if isinstance(model.mixer, dict) else {}
    name = mixer.get("name", "s4d")
    out = {"glu": 2, "linear": 1}.get(mixer.get("output", _mixer_default(name, "output")), 0)
    out += 2 if name in OWN_PROJECTIONS else 0
    states = mixer.get("d_state", _mixer_default(name, "d_state"))
    states = states if isinstance(states, int) and not isinstance(states, bool) else 1
    channels = mixer.get("channels") if isinstance(mixer.get("channels"), int) else 1
    widths = [model.d_model]
    if model.backbone == "sashimi":
        factors = model.pool_factors if isinstance(model.pool_factors, list) else []
        widths = [model.d_model * model.expand ** i for i in range(len(factors) + 1)]
    per_block = sum((out + 2 * model.mlp_ratio) * w * w + w * max(1, states) * max(1, channels) + 2 * w for w in widths)
    return int(model.n_layers * per_block)


def _size(n: float) -> str:
    for unit, scale in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 2**10:,.1f} KiB"


def _check_size(model: ModelConfig, source: str) -> None:
    """Refuses a model whose float32 parameters alone (estimated) exceed this machine's memory, before anything
    is allocated (model.d_model=1e9 would otherwise die in the allocator or swap the machine to a halt)."""
    memory = physical_memory_bytes()
    if memory is None:
        return
    params = parameter_estimate(model)
    need = 4 * params + BLOCK_OVERHEAD_BYTES * model.n_layers * (1 if model.backbone != "sashimi" else len(model.pool_factors) + 1)
    if need <= memory:
        return
    mixer = model.mixer if isinstance(model.mixer, dict) else {}
    sizes = [f"model.d_model={model.d_model}", f"model.n_layers={model.n_layers}"]
    sizes += [f"model.mixer.{k}={mixer[k]}" for k in ("d_state", "channels") if isinstance(mixer.get(k), int) and mixer[k] > 1]
    sizes += [f"model.mlp_ratio={model.mlp_ratio:g}"] if model.mlp_ratio else []
    raise RecipeError(f"{source}: {', '.join(sizes)}: about {params:.3g} parameters, {_size(need)} in float32 before any "
                      f"training state, more than this machine's {_size(memory)} of memory; choose smaller sizes")


def validate(data: dict, source: str = "<recipe>") -> Recipe:
    """Checks plain recipe data and returns the typed :class:`Recipe`."""
    for key in data:
        if key not in SECTIONS:
            raise RecipeError(f"{source}: unknown top-level key {key!r}{did_you_mean(key, SECTIONS)}; allowed: {', '.join(SECTIONS)}")
    if "task" not in data:
        raise RecipeError(f"{source}: missing the task section, e.g. task: {{name: shift, seq_len: 256}}")
    name = data.get("name") or Path(source).stem
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise RecipeError(f"{source}: name must be letters, digits and _ . + - (it names the run directory), got {name!r}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise RecipeError(f"{source}: description must be a string, got {description!r}")
    task = _check_task(data["task"], source)
    model_data = data.get("model") or {}
    if isinstance(model_data, dict):
        if "layer" in model_data:
            raise RecipeError(f"{source}: {LEGACY_KEYS['model.layer']}")
        if "mixer" in model_data:  # checked (a bare name accepted) before the section's type check
            model_data = {**model_data, "mixer": _check_mixer(model_data["mixer"], source)}
    model = _build_section(ModelConfig, model_data, "model", source)
    if "mixer" not in model_data:
        model.mixer = _check_mixer(model.mixer, source)
    _check_backbone(model, model_data, source)
    _check_size(model, source)
    optimizer = _build_section(OptimizerConfig, data.get("optimizer"), "optimizer", source)
    if len(optimizer.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in optimizer.betas):
        raise RecipeError(f"{source}: optimizer.betas must be two numbers in [0, 1), got {optimizer.betas!r}")
    scheduler = _build_section(SchedulerConfig, data.get("scheduler"), "scheduler", source)
    if scheduler.name == "plateau" and scheduler.warmup_steps:
        raise RecipeError(f"{source}: scheduler.warmup_steps is not supported with scheduler.name=plateau; set it to 0 or pick cosine/linear/constant")
    train = _build_section(TrainConfig, data.get("train"), "train", source)
    for tracker in train.log_with:
        if tracker not in TRACKERS:
            raise RecipeError(f"{source}: train.log_with has {tracker!r}{did_you_mean(tracker, TRACKERS)}; allowed: {', '.join(TRACKERS)}")
    return Recipe(name=name, description=description, task=task, model=model, optimizer=optimizer,
                  scheduler=scheduler, train=train, source=source)


def load_recipe(path_or_name: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Reads a YAML file (or a shipped recipe by name), applies ``key.sub=value`` overrides, validates."""
    path = resolve_recipe_path(str(path_or_name))
    data = load_yaml(path)
    data = apply_overrides(data, list(overrides), str(path))
    if "name" not in data:
        data["name"] = path.stem
    return validate(data, str(path))


def build_task(recipe: Recipe):
    """The task object; its own value checks become ``RecipeError``s naming the recipe."""
    options = {k: v for k, v in recipe.task.items() if k != "name"}
    try:
        return TASKS.get(recipe.task["name"])(**options)
    except (ValueError, TypeError) as e:
        if isinstance(e, RecipeError):
            raise
        raise RecipeError(f"{recipe.source}: task {recipe.task['name']!r}: {e}") from None


def prepare_data(recipe, asked: bool = False, accelerator=None):
    """The recipe's task, built after fetching its dataset when ``asked`` (``ssmkit train --download``) or the task
    option ``download: true`` is set and its files are missing. The main process downloads first; the others then find
    the files. Called by the training loop right before ``task.check_data()``."""
    options = {k: v for k, v in recipe.task.items() if k != "name"}
    if not (asked or options.get("download") is True):
        return build_task(recipe)
    name = recipe.task["name"]
    source, root = source_for_task(name, options)
    if source is None:
        raise UserError(f"--download: task {name!r} has nothing to download: {root}")
    with accelerator.main_process_first() if accelerator is not None else nullcontext():
        task = build_task(recipe)
        try:
            task.check_data()  # the task's own files may be there (generated, or copied by hand)
            return task
        except DataError:
            download(source, root)
    return build_task(recipe)  # built again: a task may read its files when it is built


def build_model(recipe: Recipe, task):
    """The ``model.backbone`` model (``BACKBONES``) for ``task``, its blocks' mixers built from ``model.mixer``
    (``ssmkit.mixers.build_mixer``) and its default sampling-rate factor ``model.rate``; bad mixer values become
    ``RecipeError``s."""
    m = recipe.model
    options = {key: getattr(m, key) for key in BACKBONES.meta(m.backbone).get("options", ())}
    try:
        return BACKBONES.get(m.backbone)(
            d_input=task.d_input, d_output=task.d_output, d_model=m.d_model, n_layers=m.n_layers,
            mixer=dict(m.mixer), prenorm=m.prenorm, norm=m.norm, dropout=m.dropout, pool=task.pool,
            encoder=task.encoder, mlp_ratio=m.mlp_ratio, checkpoint=m.checkpoint, rate=m.rate, **options,
        )
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{recipe.source}: model: {e}") from None


@dataclass(frozen=True)
class Setting:
    """One key of a resolved recipe: its value, its default (``REQUIRED`` when it has none) and its help."""

    key: str
    value: Any
    default: Any
    help: str = ""

    @property
    def changed(self) -> bool:
        """The recipe sets this key to something other than its default (a required key never counts)."""
        if self.default is REQUIRED:
            return False
        return type(self.value) is not type(self.default) or self.value != self.default


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()


def _signature_settings(params: dict[str, inspect.Parameter], values: dict, prefix: str, skip: tuple) -> list[Setting]:
    rows = []
    for name, p in params.items():
        if name in ("self", *skip):
            continue
        default = REQUIRED if p.default is inspect.Parameter.empty else p.default
        rows.append(Setting(f"{prefix}.{name}", values.get(name, default), default))
    return rows


def _dataclass_settings(cls, obj, prefix: str, skip: tuple = ()) -> list[Setting]:
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(Setting(f"{prefix}.{f.name}", getattr(obj, f.name), default, f.metadata["help"]))
    return rows


def settings(recipe: Recipe) -> list[Setting]:
    """Every key of ``recipe`` with its value and default, in recipe order: the sections' keys from their
    dataclasses (``ModelConfig``, ...; help from the field metadata), task options from the task class's
    signature and ``model.mixer`` options from ``mixer_parameters``, which the recipe is validated against."""
    task = recipe.task["name"]
    mixer = dict(recipe.model.mixer)
    rows = [Setting("name", recipe.name, Path(recipe.source).stem, "names the run directory"),
            Setting("description", recipe.description, "", "one line shown by ssmkit recipes"),
            Setting("task.name", task, REQUIRED, "the task (see: ssmkit data)")]
    rows += _signature_settings(_accepted_params(TASKS.get(task)), recipe.task, "task", ("name",))
    for row in _dataclass_settings(ModelConfig, recipe.model, "model"):
        if row.key != "model.mixer":
            rows.append(row)
            continue
        rows.append(Setting("model.mixer.name", mixer["name"], "s4d", MIXERS.meta(mixer["name"]).get("description", "")))
        rows += _signature_settings(mixer_parameters(mixer["name"]), mixer, "model.mixer", ())
    rows += _dataclass_settings(OptimizerConfig, recipe.optimizer, "optimizer")
    rows += _dataclass_settings(SchedulerConfig, recipe.scheduler, "scheduler")
    rows += _dataclass_settings(TrainConfig, recipe.train, "train")
    return rows
