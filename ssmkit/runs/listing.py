"""What ``ssmkit runs`` and ``ssmkit plot`` read from run directories, without loading a model.

A run directory is what ``ssmkit train`` writes (``ssmkit/runs/rundir.py``): ``recipe.yaml``,
``metrics.jsonl``, ``checkpoints/`` (step folders, the ``latest`` and ``best`` pointers) and, once the run
ends, ``summary.json``. Everything is read from those files and the run's lock (``ssmkit/runs/lock.py``).
The status of a run:

- ``running``: a live process holds the run's lock (its pid and host are shown);
- ``finished`` / ``interrupted``: what ``summary.json`` says (interrupted: stopped by a signal, checkpoint saved);
- ``crashed``: nobody holds the lock and there is no ``summary.json`` (killed, or it died);
- ``unreadable``: one of its files cannot be read; the row says which and why, and the other runs are still listed.

Columns are any dotted recipe key (``model.mixer.name``, ``optimizer.lr``, ``task.seq_len``; keys the recipe
left at their default show the default); filters are ``KEY=GLOB`` or a run name glob (``make_filter``);
``run_record`` is one row as JSON. ``curves`` reads a run's loss and metric curves from ``metrics.jsonl``.
The commands that print them are in ``ssmkit/cli/runs.py``.
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ssmkit.errors import UserError
from ssmkit.recipe import load_yaml, parse_value, settings, validate
from ssmkit.registry import did_you_mean
from ssmkit.runs.checkpoint import read_state
from ssmkit.runs.lock import is_locked
from ssmkit.runs.rundir import read_metrics, read_summary

MAX_DEPTH = 3  # runs/<name>, runs/<group>/<name>, runs/<group>/<sub>/<name>
#: The table's own columns, in order; ``--columns`` adds recipe keys after them.
COLUMNS = ("run", "task", "mixer", "status", "step", "best", "time", "started")
MISSING = object()  # a column the run's recipe does not have


@dataclass
class RunInfo:
    path: Path
    name: str
    task: str
    mixer: str  # model.mixer.name (model.layer.kernel in a run saved before the mixer redesign)
    status: str  # running, finished, interrupted, crashed, unreadable
    step: int | None
    best: float | None
    main_metric: str | None
    time_s: float | None
    started: float
    settings: dict = field(default_factory=dict)  # dotted recipe key -> value (defaults filled in)
    reason: str | None = None  # why an unreadable run is unreadable
    holder: dict | None = None  # the live process of a running run: pid, host, started


def _json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{path}: not readable JSON ({type(e).__name__}); fix or delete it") from None


def _recipe(run: Path) -> dict:
    return load_yaml(run / "recipe.yaml")  # binary, malformed, too deep, not a mapping: one RecipeError naming it


def is_run_dir(path: Path) -> bool:
    try:
        return (path / "recipe.yaml").is_file() and ((path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir()
                                                     or (path / "summary.json").is_file())
    except OSError:  # a folder we may not look into
        return False


def find_runs(root: Path) -> list[Path]:
    """Run directories at or under ``root`` (up to MAX_DEPTH levels), not looking inside a run."""
    if not root.exists():
        raise UserError(f"no runs folder {root}; train one with: ssmkit train RECIPE (runs go to train.runs_dir, default ./runs)")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder of run directories")
    found, frontier = [], [root]
    for _ in range(MAX_DEPTH + 1):
        nxt = []
        for d in frontier:
            if is_run_dir(d):
                found.append(d)
                continue
            try:
                nxt += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
        frontier = nxt
    return found


def _last_step(run: Path) -> int | None:
    records = read_metrics(run)
    return records[-1]["step"] if records else None


def _number(value, path: Path, key: str, kind=(int, float)):
    """``value`` if it is a number of ``kind`` (or null); otherwise a UserError naming the file and key."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise UserError(f"{path}: {key} must be a {'whole ' if kind is int else ''}number, got {value!r}; fix or delete it")
    return value


def _pointer(run: Path, name: str) -> dict | None:
    """The ``checkpoints/<name>`` pointer ({checkpoint, step, metric}), None if absent; malformed: UserError."""
    path = run / "checkpoints" / name
    if not path.is_file():
        return None
    pointer = _json(path)
    if not isinstance(pointer, dict) or not isinstance(pointer.get("checkpoint"), str):
        raise UserError(f"{path}: expected a JSON object naming a checkpoint, e.g. "
                        '{"checkpoint": "step-00000100", "step": 100}; fix or delete it')
    _number(pointer.get("step"), path, "step", int)
    _number(pointer.get("metric"), path, "metric")
    return pointer


def _latest_state(run: Path) -> dict:
    """``state.json`` of the latest checkpoint ({} without one); a malformed pointer or state: UserError."""
    pointer = _pointer(run, "latest")
    ckpt = run / "checkpoints" / pointer["checkpoint"] if pointer else None
    if ckpt is None or not (ckpt / "state.json").is_file():  # as find_checkpoint: the newest complete one
        complete = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / "state.json").is_file())
        ckpt = complete[-1] if complete else None
    return read_state(ckpt, {"step": int}) if ckpt is not None else {}


def _lock_holder(run: Path) -> dict | None:
    """{pid, host, started (epoch seconds or None), command} of the trainer holding the run's lock, None when
    no live process holds it (``ssmkit/train/lock.py``)."""
    holder = is_locked(run)
    if holder is None:
        return None
    try:
        started = datetime.datetime.fromisoformat(str(holder.get("since"))).timestamp()
    except ValueError:  # held, but the holder has not written who it is yet
        started = None
    return {"pid": holder.get("pid"), "host": holder.get("host"), "started": started, "command": holder.get("command")}


def flatten(data: dict, prefix: str = "") -> dict:
    """{"model": {"mixer": {"name": "s4d"}}} -> {"model.mixer.name": "s4d"} (lists stay values)."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _settings(recipe: dict) -> dict:
    """Every dotted key of a run's recipe with its value, the keys it left at their default included
    (``recipe.settings``); a recipe this version no longer validates gives its own keys only."""
    own = flatten(recipe)
    try:
        full = {row.key: row.value for row in settings(validate(dict(recipe), "recipe.yaml"))}
    except (UserError, ValueError, TypeError):
        return own
    return {**full, **own}


def run_info(run: Path) -> RunInfo:
    """What ``ssmkit runs`` shows for one run directory; a file that cannot be read raises UserError. The time is
    summary.json's ``time_s`` (every finished segment of a resumed run), plus the live segment of a running one."""
    recipe = _recipe(run)
    task = recipe.get("task") if isinstance(recipe.get("task"), dict) else {}
    model = recipe.get("model") if isinstance(recipe.get("model"), dict) else {}
    mixer, layer = model.get("mixer"), model.get("layer")  # layer.kernel: a run saved before the mixer redesign
    mixer = mixer.get("name", "-") if isinstance(mixer, dict) else layer.get("kernel", "-") if isinstance(layer, dict) else "-"
    started = (run / "recipe.yaml").stat().st_mtime
    for early in (run / "metrics.jsonl", run / "checkpoints"):  # recipe.yaml is rewritten on resume
        if early.exists():
            started = min(started, early.stat().st_mtime)
    info = RunInfo(path=run, name=str(recipe.get("name") or run.name), task=str(task.get("name", "-")),
                   mixer=str(mixer), status="crashed",
                   step=None, best=None, main_metric=None, time_s=None, started=started, settings=_settings(recipe))
    try:
        _read_progress(run, info)
    except UserError as e:  # the recipe was read: keep its name, task and mixer on the row
        info.status, info.reason = "unreadable", str(e)
        info.step = info.best = info.time_s = None
    return info


def _read_progress(run: Path, info: RunInfo) -> None:
    """Status, step, best value and time from summary.json, the checkpoints, metrics.jsonl and the lock."""
    state = _latest_state(run)
    best_pointer = _pointer(run, "best")
    last_logged = _last_step(run)
    info.holder = _lock_holder(run)
    summary_path = run / "summary.json"
    summary = read_summary(run)  # malformed: one UserError naming it
    if summary is not None:
        if not isinstance(summary.get("status"), str):
            raise UserError(f"{summary_path}: status must be a string, got {summary.get('status')!r}; fix or delete it")
        info.status = summary["status"]
        info.step = _number(summary.get("step"), summary_path, "step", int)
        info.best = _number(summary.get("best"), summary_path, "best")
        info.time_s = _number(summary.get("time_s"), summary_path, "time_s")  # the total over resumed segments
        main = summary.get("main_metric")
        info.main_metric = main if isinstance(main, str) else None
    steps = [s for s in (last_logged, state.get("step")) if s is not None]
    beyond = bool(steps) and max(steps) > (info.step or 0)  # a later segment (a resume) got further
    if info.holder is not None or summary is None or beyond:
        # live, or dead without a summary of its own: a resumed run keeps the summary of its earlier segments
        info.status = "running" if info.holder is not None else "crashed"
        steps += [info.step] if info.step is not None else []
        info.step = max(steps) if steps else None
        info.best = best_pointer.get("metric") if best_pointer else info.best
        if info.holder is not None and info.holder.get("started") is not None:
            info.time_s = (info.time_s or 0.0) + max(0.0, time.time() - info.holder["started"])
    if info.main_metric is None and isinstance(state.get("main_metric"), str):
        info.main_metric = state["main_metric"]


def _unreadable(run: Path, error: UserError) -> RunInfo:
    try:
        started = run.stat().st_mtime
    except OSError:
        started = 0.0
    return RunInfo(path=run, name=run.name, task="-", mixer="-", status="unreadable", step=None, best=None,
                   main_metric=None, time_s=None, started=started, reason=str(error))


def value_text(value) -> str:
    """A recipe value as its YAML spelling: null, true, 0.001, [0.9, 0.999]."""
    if value is MISSING:
        return "-"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def run_label(r: RunInfo, root: Path) -> str:
    return str(r.path.relative_to(root)) if r.path != root else r.path.name


def collect_runs(root: Path) -> list[RunInfo]:
    """Every run under ``root``, newest first; an unreadable one is listed with the reason."""
    rows = []
    for run in find_runs(root):
        try:
            rows.append(run_info(run))
        except UserError as e:
            rows.append(_unreadable(run, e))
    rows.sort(key=lambda r: r.started, reverse=True)
    return rows


# --- columns and filters ---------------------------------------------------------------------------
def _builtin(r: RunInfo, key: str, root: Path) -> str:
    return {"run": run_label(r, root), "name": r.name, "task": r.task, "mixer": r.mixer, "status": r.status}[key]


def _known_keys(rows: list[RunInfo]) -> set[str]:
    return {k for r in rows for k in r.settings}


def _unknown_key(key: str, rows: list[RunInfo], what: str) -> UserError:
    known = sorted(_known_keys(rows))
    old = key.startswith("model.layer") or key in ("kernel", "layer", "mixer")  # the vocabulary before issue 23
    hint = " (the token mixer of a recipe is model.mixer.name)" if old else did_you_mean(key, known)
    if not hint:  # match the last part: "d_state" -> model.mixer.d_state
        tail = [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
        hint = f" (did you mean {tail[0]!r}?)" if tail else ""
    return UserError(f"{what}: no run has the recipe key {key!r}{hint}; keys are dotted recipe paths such as "
                     "model.mixer.name, model.d_model, optimizer.lr, task.seq_len")


def parse_columns(text: str | None, rows: list[RunInfo]) -> list[str]:
    """``--columns a.b,c.d``: recipe keys, each found in at least one readable run."""
    if text is None:
        return []
    keys = [k.strip() for k in text.split(",")]
    if not all(keys):
        raise UserError(f"--columns {text!r}: an empty key; give dotted recipe keys separated by commas, "
                        "e.g. --columns model.mixer.name,model.d_model")
    for key in keys:
        if key in COLUMNS:
            raise UserError(f"--columns {key}: already a column of the table; name a recipe key such as "
                            f"{'task.seq_len' if key == 'task' else 'model.mixer.name'}")
        if keys.count(key) > 1:
            raise UserError(f"--columns names {key!r} twice")
        if rows and key not in _known_keys(rows) and not all(r.status == "unreadable" for r in rows):
            raise _unknown_key(key, rows, f"--columns {key}")
    return keys


def _matches(value, pattern: str) -> bool:
    """A value matches a glob on its YAML spelling; a pattern without * ? [ is also read as a YAML value, so
    ``optimizer.lr=1e-3`` matches 0.001 and ``model.d_model=128`` matches 128."""
    if not any(c in pattern for c in "*?["):
        parsed = parse_value(pattern)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (parsed, value))
        if (numbers or type(parsed) is type(value)) and parsed == value:
            return True
    return fnmatch.fnmatchcase(value_text(value), pattern)


def make_filter(spec: str, rows: list[RunInfo], root: Path):
    """``--filter KEY=GLOB`` (a recipe key or run/name/task/mixer/status) or ``--filter GLOB`` (the run's
    name or folder; text without * ? [ matches as a substring) -> predicate on a RunInfo."""
    if not spec.strip():
        raise UserError("--filter is empty; give KEY=VALUE (e.g. --filter model.mixer.name=s4d) or a run name glob")
    if "=" not in spec:
        glob = spec if any(c in spec for c in "*?[") else f"*{spec}*"
        return lambda r: fnmatch.fnmatchcase(r.name, glob) or fnmatch.fnmatchcase(run_label(r, root), glob)
    key, _, pattern = spec.partition("=")
    key = key.strip()
    if not key:
        raise UserError(f"--filter {spec!r}: no key before '='; e.g. --filter model.mixer.name=s4d")
    if key in ("run", "name", "task", "mixer", "status"):
        return lambda r: fnmatch.fnmatchcase(_builtin(r, key, root), pattern)
    if rows and key not in _known_keys(rows) and not all(r.status == "unreadable" for r in rows):
        raise _unknown_key(key, rows, f"--filter {spec}")
    return lambda r: key in r.settings and _matches(r.settings[key], pattern)


def select(rows: list[RunInfo], filters: list[str], root: Path) -> list[RunInfo]:
    predicates = [make_filter(spec, rows, root) for spec in filters]
    return [r for r in rows if all(p(r) for p in predicates)]


# --- JSON rows and curves ---------------------------------------------------------------------
def _plain(value):
    """JSON-safe: NaN/inf become null, anything else JSON cannot hold becomes its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def run_record(r: RunInfo, root: Path, columns: list[str] = ()) -> dict:
    """One row of ``ssmkit runs --json``: every table column (raw values: seconds, epoch times as ISO 8601,
    the metric's value) plus path, main_metric, reason (unreadable) and lock (running)."""
    record = {
        "run": run_label(r, root), "task": r.task, "mixer": r.mixer, "status": r.status, "step": r.step,
        "best": r.best, "time": r.time_s, "started": _iso(r.started),
        "path": str(r.path), "name": r.name, "main_metric": r.main_metric, "reason": r.reason, "lock": r.holder,
    }
    for key in columns:
        record[key] = r.settings.get(key)
    return _plain(record)


# --- curves ----------------------------------------------------------------------------------------
def curves(run: Path) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """(training loss by step, {metric name: [(step, value)]}) from a run's metrics.jsonl."""
    if not run.is_dir() or not is_run_dir(run):
        raise UserError(f"{run} is not a run directory (expected recipe.yaml and metrics.jsonl written by ssmkit train)")
    records = read_metrics(run)
    if not records:
        raise UserError(f"{run / 'metrics.jsonl'}: no metrics logged yet")
    loss, metrics = [], {}
    for r in records:
        if isinstance(r.get("loss"), (int, float)):
            loss.append((r["step"], float(r["loss"])))
        for k, v in (r.get("metrics") or {}).items() if isinstance(r.get("metrics"), dict) else ():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics.setdefault(k, []).append((r["step"], float(v)))
    return loss, metrics


def default_metric(run: Path, metrics: dict) -> str | None:
    """The task's main metric (from summary.json or the latest state.json) if logged, else the first logged one.
    A damaged summary or checkpoint does not stop a plot of metrics.jsonl."""
    main = None
    for source in (lambda: _json(run / "summary.json") if (run / "summary.json").is_file() else None, lambda: _latest_state(run)):
        try:
            data = source()
        except UserError:
            continue
        main = data.get("main_metric") if isinstance(data, dict) else None
        if main:
            break
    if main and f"val/{main}" in metrics:
        return f"val/{main}"
    return next((k for k in metrics if k != "val/samples"), None)


