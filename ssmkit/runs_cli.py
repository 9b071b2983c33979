"""``ssmkit runs [DIR]`` (a table of run directories, newest first) and ``ssmkit plot RUN [RUN...]`` (their
loss and metric curves on shared axes).

A run directory is what ``ssmkit train`` writes (``ssmkit/runs/rundir.py``): ``recipe.yaml``,
``metrics.jsonl``, ``checkpoints/`` (step folders, the ``latest`` and ``best`` pointers) and, once the run
ends, ``summary.json``. Everything is read from those files and the run's lock (``ssmkit/runs/lock.py``);
nothing is loaded into a model. The status of a run:

- ``running``: a live process holds the run's lock (its pid and host are shown);
- ``finished`` / ``interrupted``: what ``summary.json`` says (interrupted: stopped by a signal, checkpoint saved);
- ``crashed``: nobody holds the lock and there is no ``summary.json`` (killed, or it died);
- ``unreadable``: one of its files cannot be read; the row says which and why, and the other runs are still listed.

``--columns`` adds any dotted recipe key (``model.mixer.name``, ``optimizer.lr``, ``task.seq_len``; keys the recipe
left at their default show the default), ``--filter KEY=GLOB`` / ``--filter NAME_GLOB`` keeps the matching
runs, ``--json`` prints the same rows as JSON (every column, raw values).
"""
from __future__ import annotations

import fnmatch
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from ssmkit.errors import UserError

MAX_DEPTH = 3  # runs/<name>, runs/<group>/<name>, runs/<group>/<sub>/<name>
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
#: The table's own columns, in order; ``--columns`` adds recipe keys after them.
COLUMNS = ("run", "task", "mixer", "status", "step", "best", "time", "started")
_MISSING = object()


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
    from ssmkit.recipe import load_yaml

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
    from ssmkit.runs.rundir import read_metrics

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
    from ssmkit.runs.checkpoint import read_state

    pointer = _pointer(run, "latest")
    ckpt = run / "checkpoints" / pointer["checkpoint"] if pointer else None
    if ckpt is None or not (ckpt / "state.json").is_file():  # as find_checkpoint: the newest complete one
        complete = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / "state.json").is_file())
        ckpt = complete[-1] if complete else None
    return read_state(ckpt, {"step": int}) if ckpt is not None else {}


def _lock_holder(run: Path) -> dict | None:
    """{pid, host, started (epoch seconds or None), command} of the trainer holding the run's lock, None when
    no live process holds it (``ssmkit/train/lock.py``)."""
    import datetime

    from ssmkit.runs.lock import is_locked

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
    from ssmkit.recipe import settings, validate

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
    from ssmkit.runs.rundir import read_summary

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


def _fmt(value, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _value_text(value) -> str:
    """A recipe value as its YAML spelling: null, true, 0.001, [0.9, 0.999]."""
    if value is _MISSING:
        return "-"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _label(r: RunInfo, root: Path) -> str:
    return str(r.path.relative_to(root)) if r.path != root else r.path.name


def _status_text(r: RunInfo) -> str:
    if r.status == "unreadable":
        return "unreadable (see below)"
    if r.status == "running" and r.holder:
        host = f" on {r.holder['host']}" if r.holder.get("host") else ""
        return f"running (pid {r.holder.get('pid')}{host})"
    return r.status


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
    return {"run": _label(r, root), "name": r.name, "task": r.task, "mixer": r.mixer, "status": r.status}[key]


def _known_keys(rows: list[RunInfo]) -> set[str]:
    return {k for r in rows for k in r.settings}


def _unknown_key(key: str, rows: list[RunInfo], what: str) -> UserError:
    from ssmkit.registry import did_you_mean

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
    from ssmkit.recipe import parse_value

    if not any(c in pattern for c in "*?["):
        parsed = parse_value(pattern)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (parsed, value))
        if (numbers or type(parsed) is type(value)) and parsed == value:
            return True
    return fnmatch.fnmatchcase(_value_text(value), pattern)


def make_filter(spec: str, rows: list[RunInfo], root: Path):
    """``--filter KEY=GLOB`` (a recipe key or run/name/task/mixer/status) or ``--filter GLOB`` (the run's
    name or folder; text without * ? [ matches as a substring) -> predicate on a RunInfo."""
    if not spec.strip():
        raise UserError("--filter is empty; give KEY=VALUE (e.g. --filter model.mixer.name=s4d) or a run name glob")
    if "=" not in spec:
        glob = spec if any(c in spec for c in "*?[") else f"*{spec}*"
        return lambda r: fnmatch.fnmatchcase(r.name, glob) or fnmatch.fnmatchcase(_label(r, root), glob)
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


# --- output --------------------------------------------------------------------------------------
def runs_table(root: Path, rows: list[RunInfo] | None = None, columns: list[str] = ()):
    """(rich Table, number of runs) of ``rows`` (default: every run under ``root``), newest first."""
    from rich.table import Table

    rows = collect_runs(root) if rows is None else rows
    table = Table(title=f"runs in {root}", title_justify="left")
    for col in (*COLUMNS, *columns):
        table.add_column(col, justify="right" if col in ("step", "best", "time") else "left")
    for r in rows:
        best = "-" if r.best is None else f"{r.main_metric or 'metric'} {_fmt(r.best)}"
        table.add_row(_label(r, root), r.task, r.mixer, _status_text(r), _fmt(r.step), best, _duration(r.time_s),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)),
                      *(_value_text(r.settings.get(c, _MISSING)) for c in columns))
    return table, len(rows)


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
    import datetime

    return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def run_record(r: RunInfo, root: Path, columns: list[str] = ()) -> dict:
    """One row of ``ssmkit runs --json``: every table column (raw values: seconds, epoch times as ISO 8601,
    the metric's value) plus path, main_metric, reason (unreadable) and lock (running)."""
    record = {
        "run": _label(r, root), "task": r.task, "mixer": r.mixer, "status": r.status, "step": r.step,
        "best": r.best, "time": r.time_s, "started": _iso(r.started),
        "path": str(r.path), "name": r.name, "main_metric": r.main_metric, "reason": r.reason, "lock": r.holder,
    }
    for key in columns:
        record[key] = r.settings.get(key)
    return _plain(record)


# --- curves ----------------------------------------------------------------------------------------
def curves(run: Path) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """(training loss by step, {metric name: [(step, value)]}) from a run's metrics.jsonl."""
    from ssmkit.runs.rundir import read_metrics

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


def plot_runs(runs: list[Path], out: Path, metric: str | None = None) -> str:
    """Writes the loss and metric curves of ``runs`` to ``out``; returns the metric plotted."""
    data = [(run, *curves(run)) for run in runs]
    if metric is None:
        metric = default_metric(data[0][0], data[0][2])
    elif not any(metric in m for _, _, m in data):
        known = sorted({k for _, _, m in data for k in m})
        from ssmkit.registry import did_you_mean

        raise UserError(f"no metric {metric!r} in these runs{did_you_mean(metric, known)}; logged: {', '.join(known) or 'none'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UserError(f"ssmkit plot needs matplotlib ({e}); install it with: pip install 'ssmkit[plot]'") from None
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    names = _labels(runs)
    for (_run, loss, metrics), label in zip(data, names):
        line = None
        if loss:
            (line,) = ax_loss.plot(*zip(*loss), label=label, linewidth=1.4)
        points = metrics.get(metric) if metric else None
        if points:
            ax_metric.plot(*zip(*points), "o-", label=label, markersize=3, linewidth=1.4,
                           color=line.get_color() if line is not None else None)
    ax_loss.set_title("training loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    values = [v for _, loss, _ in data for _, v in loss]
    if values and min(values) > 0 and max(values) / min(values) > 30:  # log only where the loss spans decades
        ax_loss.set_yscale("log")
    ax_metric.set_title(metric or "no evaluation metric logged")
    ax_metric.set_xlabel("optimizer step")
    ax_metric.set_ylabel(metric or "")
    for ax in (ax_loss, ax_metric):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return metric


def _labels(runs: list[Path]) -> list[str]:
    """Each run's folder name, or its last two parts where names repeat."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{r.parent.name}/{r.name}" for r in runs]


def register(app: typer.Typer) -> None:
    @app.command("runs")
    def runs_command(
        folder: Path = typer.Argument(Path("runs"), help="folder of run directories (default: ./runs)"),
        columns: str = typer.Option(None, "--columns", help="recipe keys to add as columns, comma-separated, "
                                    "e.g. model.mixer.name,model.d_model,optimizer.lr"),
        filters: list[str] = typer.Option(None, "--filter", help="keep runs whose KEY matches: KEY=VALUE or "
                                          "KEY=GLOB (a recipe key, or run/name/task/mixer/status), or a run name "
                                          "GLOB; repeat to require several"),
        as_json: bool = typer.Option(False, "--json", help="print the rows as a JSON list (every column, raw values)"),
    ) -> None:
        """A table of runs (task, mixer, status, step, best metric, time), newest first."""
        import click

        from ssmkit.console import console as make_console

        rows = collect_runs(folder)
        keys = parse_columns(columns, rows)
        shown = select(rows, list(filters or []), folder)
        if as_json:
            click.echo(json.dumps([run_record(r, folder, keys) for r in shown], indent=2, allow_nan=False))
            return
        console = make_console(markup=False)
        if not rows:
            console.print(f"no run directories under {folder} (train one with: ssmkit train RECIPE)")
            return
        if not shown:
            console.print(f"none of the {len(rows)} runs under {folder} matches --filter {' --filter '.join(filters)}")
            return
        table, _ = runs_table(folder, shown, keys)
        console.print(table)
        for r in shown:
            if r.status == "unreadable":
                console.print(f"unreadable {_label(r, folder)}: {r.reason}")
        if any(r.status == "crashed" for r in shown):
            console.print("crashed: no process holds the run and it wrote no summary.json; continue one with: "
                          "ssmkit train --resume RUN")
        console.print("look at one: ssmkit plot RUN [RUN...]; evaluate it: ssmkit eval RUN")

    @app.command("plot")
    def plot_command(
        runs: list[Path] = typer.Argument(None, help="one or more run directories"),
        metric: str = typer.Option(None, "--metric", help="evaluation metric to plot, e.g. val/accuracy "
                                   "(default: the task's main metric)"),
        out: Path = typer.Option(None, "--out", help="image to write (.png, .pdf or .svg; default curves.png, "
                                 "with --sweep SWEEP_DIR/<y>-vs-<x>.png)"),
        force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
        sweep: Path = typer.Option(None, "--sweep", help="a sweep folder (ssmkit sweep): plot --y against --x"),
        x: str = typer.Option(None, "--x", help="with --sweep: the swept key on the x axis, e.g. model.layer.d_state"),
        y: str = typer.Option(None, "--y", help="with --sweep: the final metric, e.g. val/accuracy"),
    ) -> None:
        """Loss and metric curves of one or several runs on shared axes; or, with --sweep, a metric against a swept value."""
        if sweep is not None or x is not None or y is not None:  # the sweep plot lives with the sweep (ssmkit/sweep.py)
            from ssmkit.sweep import plot_sweep_command

            plot_sweep_command(sweep, x, y, out, force, runs, metric)
            return
        if not runs:
            raise UserError("missing RUN: ssmkit plot RUN [RUN...] (or: ssmkit plot --sweep DIR --x KEY --y METRIC)")
        out = Path("curves.png") if out is None else out
        if out.suffix.lower() not in PLOT_SUFFIXES:
            raise UserError(f"--out must end in {', '.join(PLOT_SUFFIXES)}, got {out}")
        if out.exists() and not force:
            raise UserError(f"{out} already exists; pass --force to overwrite it or choose another --out")
        if not out.parent.is_dir():
            raise UserError(f"folder {out.parent} does not exist (for --out {out})")
        shown = plot_runs(list(runs), out, metric)
        typer.echo(f"wrote {out} (training loss and {shown or 'no metric'} of {len(runs)} run(s))")
