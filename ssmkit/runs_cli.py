"""``ssmkit runs [DIR]`` (a table of run directories, newest first) and ``ssmkit plot RUN [RUN...]`` (their
loss and metric curves on shared axes).

A run directory is what ``ssmkit train`` writes (``ssmkit/train/rundir.py``): ``recipe.yaml``,
``metrics.jsonl``, ``checkpoints/`` and, once the run ends, ``summary.json``. Everything is read from those
files; nothing is loaded into a model. A run without ``summary.json`` is still running or was killed
("unfinished"); one whose files cannot be read is listed with the reason instead of hiding the others.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import typer

from ssmkit.errors import UserError

MAX_DEPTH = 3  # runs/<name>, runs/<group>/<name>, runs/<group>/<sub>/<name>
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


@dataclass
class RunInfo:
    path: Path
    name: str
    task: str
    kernel: str
    status: str
    step: int | None
    best: float | None
    main_metric: str | None
    time_s: float | None
    started: float


def _json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({type(e).__name__}); fix or delete it") from None


def _recipe(run: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load((run / "recipe.yaml").read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{run / 'recipe.yaml'}: not a readable recipe ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{run / 'recipe.yaml'}: not a recipe mapping")
    return data


def is_run_dir(path: Path) -> bool:
    return (path / "recipe.yaml").is_file() and ((path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir()
                                                 or (path / "summary.json").is_file())


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
    from ssmkit.train.rundir import read_metrics

    records = read_metrics(run)
    return records[-1]["step"] if records else None


def run_info(run: Path) -> RunInfo:
    """What ``ssmkit runs`` shows for one run directory; a file that cannot be read raises UserError."""
    recipe = _recipe(run)
    task = recipe.get("task") if isinstance(recipe.get("task"), dict) else {}
    layer = (recipe.get("model") or {}).get("layer") if isinstance(recipe.get("model"), dict) else None
    started = (run / "recipe.yaml").stat().st_mtime
    for early in (run / "metrics.jsonl", run / "checkpoints"):  # recipe.yaml is rewritten on resume
        if early.exists():
            started = min(started, early.stat().st_mtime)
    info = RunInfo(path=run, name=str(recipe.get("name") or run.name), task=str(task.get("name", "-")),
                   kernel=str(layer.get("kernel", "-")) if isinstance(layer, dict) else "-", status="unfinished",
                   step=None, best=None, main_metric=None, time_s=None, started=started)
    if (run / "summary.json").is_file():
        summary = _json(run / "summary.json")
        if not isinstance(summary, dict):
            raise UserError(f"{run / 'summary.json'}: expected a JSON object")
        info.status = str(summary.get("status", "-"))
        info.step, info.best = summary.get("step"), summary.get("best")
        info.main_metric, info.time_s = summary.get("main_metric"), summary.get("time_s")
    else:
        info.step = _last_step(run)
        best = run / "checkpoints" / "best"
        if best.is_file():
            pointer = _json(best)
            info.best = pointer.get("metric") if isinstance(pointer, dict) else None
    if info.main_metric is None:
        info.main_metric = _main_metric_from_checkpoints(run)
    return info


def _main_metric_from_checkpoints(run: Path) -> str | None:
    for state in sorted((run / "checkpoints").glob("step-*/state.json"), reverse=True):
        try:
            return json.loads(state.read_text()).get("main_metric")
        except (OSError, ValueError, AttributeError):
            continue
    return None


def _fmt(value, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def runs_table(root: Path):
    """(rich Table, number of runs) of every run under ``root``, newest first."""
    from rich.table import Table

    rows = []
    for run in find_runs(root):
        try:
            rows.append(run_info(run))
        except UserError as e:
            rows.append(RunInfo(path=run, name=run.name, task="-", kernel="-", status=f"unreadable: {e}", step=None,
                                best=None, main_metric=None, time_s=None, started=run.stat().st_mtime))
    rows.sort(key=lambda r: r.started, reverse=True)
    table = Table(title=f"runs in {root}", title_justify="left")
    for col in ("run", "task", "kernel", "status", "step", "best", "time", "started"):
        table.add_column(col, justify="right" if col in ("step", "best", "time") else "left")
    for r in rows:
        best = "-" if r.best is None else f"{r.main_metric or 'metric'} {_fmt(r.best)}"
        table.add_row(str(r.path.relative_to(root)) if r.path != root else r.path.name, r.task, r.kernel, r.status,
                      _fmt(r.step), best, _duration(r.time_s), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)))
    return table, len(rows)


# --- curves ----------------------------------------------------------------------------------------
def curves(run: Path) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """(training loss by step, {metric name: [(step, value)]}) from a run's metrics.jsonl."""
    from ssmkit.train.rundir import read_metrics

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
    main = None
    if (run / "summary.json").is_file():
        summary = _json(run / "summary.json")
        main = summary.get("main_metric") if isinstance(summary, dict) else None
    main = main or _main_metric_from_checkpoints(run)
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
    ) -> None:
        """A table of runs (task, kernel, status, step, best metric, time), newest first."""
        from rich.console import Console

        table, n = runs_table(folder)
        console = Console(highlight=False)
        if n == 0:
            console.print(f"no run directories under {folder} (train one with: ssmkit train RECIPE)")
            return
        console.print(table)
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
