"""``ssmkit runs [DIR]`` (a table of run directories, newest first) and ``ssmkit plot RUN [RUN...]`` (their
loss and metric curves on shared axes; with ``--sweep``, a metric against a swept value).

What a run directory holds and how its status is read is ``ssmkit/runs/listing.py``; this file prints it.
``--columns`` adds any dotted recipe key (``model.mixer.name``, ``optimizer.lr``, ``task.seq_len``; keys the
recipe left at their default show the default), ``--filter KEY=GLOB`` / ``--filter NAME_GLOB`` keeps the
matching runs, ``--json`` prints the same rows as JSON (every column, raw values).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import typer
from rich.table import Table

from ssmkit.console import console as make_console
from ssmkit.console import duration_text, number_text
from ssmkit.errors import UserError
from ssmkit.registry import did_you_mean
from ssmkit.runs.listing import (
    COLUMNS,
    MISSING,
    RunInfo,
    collect_runs,
    curves,
    default_metric,
    parse_columns,
    run_label,
    run_record,
    select,
    value_text,
)
from ssmkit.sweep import plot_sweep, read_sweep, value_label

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _status_text(r: RunInfo) -> str:
    if r.status == "unreadable":
        return "unreadable (see below)"
    if r.status == "running" and r.holder:
        host = f" on {r.holder['host']}" if r.holder.get("host") else ""
        return f"running (pid {r.holder.get('pid')}{host})"
    return r.status


def runs_table(root: Path, rows: list[RunInfo] | None = None, columns: list[str] = ()):
    """(rich Table, number of runs) of ``rows`` (default: every run under ``root``), newest first."""
    rows = collect_runs(root) if rows is None else rows
    table = Table(title=f"runs in {root}", title_justify="left")
    for col in (*COLUMNS, *columns):
        table.add_column(col, justify="right" if col in ("step", "best", "time") else "left")
    for r in rows:
        best = "-" if r.best is None else f"{r.main_metric or 'metric'} {number_text(r.best, '.4g')}"
        table.add_row(run_label(r, root), r.task, r.mixer, _status_text(r), number_text(r.step, ".4g"), best,
                      duration_text(r.time_s), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)),
                      *(value_text(r.settings.get(c, MISSING)) for c in columns))
    return table, len(rows)


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
            console.print(f"unreadable {run_label(r, folder)}: {r.reason}")
    if any(r.status == "crashed" for r in shown):
        console.print("crashed: no process holds the run and it wrote no summary.json; continue one with: "
                      "ssmkit train --resume RUN")
    console.print("look at one: ssmkit plot RUN [RUN...]; evaluate it: ssmkit eval RUN")


# --- plots ---------------------------------------------------------------------------------------
def _labels(runs: list[Path]) -> list[str]:
    """Each run's folder name, or its last two parts where names repeat."""
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{r.parent.name}/{r.name}" for r in runs]


def plot_runs(runs: list[Path], out: Path, metric: str | None = None) -> str:
    """Writes the loss and metric curves of ``runs`` to ``out``; returns the metric plotted."""
    data = [(run, *curves(run)) for run in runs]
    if metric is None:
        metric = default_metric(data[0][0], data[0][2])
    elif not any(metric in m for _, _, m in data):
        known = sorted({k for _, _, m in data for k in m})
        raise UserError(f"no metric {metric!r} in these runs{did_you_mean(metric, known)}; logged: {', '.join(known) or 'none'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UserError(f"ssmkit plot needs matplotlib ({e}); install it with: pip install 'ssmkit[plot]'") from None
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for (_run, loss, metrics), label in zip(data, _labels(runs)):
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


def _check_plot_out(out: Path, force: bool) -> None:
    """An image file ssmkit plot may write: a known suffix, not there yet (or ``--force``), in an existing folder."""
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"--out must end in {', '.join(PLOT_SUFFIXES)}, got {out}")
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to overwrite it or choose another --out")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist (for --out {out})")


def plot_sweep_command(sweep: Path | None, x: str | None, y: str | None, out: Path | None, force: bool,
                       runs: list[Path] | None, metric: str | None) -> None:
    """``ssmkit plot --sweep DIR --x KEY --y METRIC [--out F] [--force]``: ``plot_sweep`` of ``ssmkit/sweep.py``."""
    if sweep is None:
        raise UserError("--x/--y go with --sweep: ssmkit plot --sweep SWEEP_DIR --x KEY --y METRIC")
    if runs:
        raise UserError("give run directories or --sweep, not both")
    if metric is not None:
        raise UserError("with --sweep the metric is --y (e.g. --y val/accuracy), not --metric")
    if x is None or y is None:
        raise UserError(f"--sweep needs --x KEY (a swept key) and --y METRIC (a final metric); see: ssmkit sweep --table --dir {sweep}")
    read_sweep(sweep)  # a missing or broken sweep folder first
    if out is None:
        out = Path(sweep) / f"{value_label(y.replace('/', '-'))}-vs-{value_label(x)}.png"
    _check_plot_out(out, force)
    shown = plot_sweep(Path(sweep), x, y, out)
    typer.echo(f"wrote {out} ({y} against {x}: {shown['lines']} line(s), {shown['points']} point(s))")


def plot_command(
    runs: list[Path] = typer.Argument(None, help="one or more run directories"),
    metric: str = typer.Option(None, "--metric", help="evaluation metric to plot, e.g. val/accuracy "
                               "(default: the task's main metric)"),
    out: Path = typer.Option(None, "--out", help="image to write (.png, .pdf or .svg; default curves.png, "
                             "with --sweep SWEEP_DIR/<y>-vs-<x>.png)"),
    force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
    sweep: Path = typer.Option(None, "--sweep", help="a sweep folder (ssmkit sweep): plot --y against --x"),
    x: str = typer.Option(None, "--x", help="with --sweep: the swept key on the x axis, e.g. model.mixer.d_state"),
    y: str = typer.Option(None, "--y", help="with --sweep: the final metric, e.g. val/accuracy"),
) -> None:
    """Loss and metric curves of one or several runs on shared axes; or, with --sweep, a metric against a swept value."""
    if sweep is not None or x is not None or y is not None:
        plot_sweep_command(sweep, x, y, out, force, runs, metric)
        return
    if not runs:
        raise UserError("missing RUN: ssmkit plot RUN [RUN...] (or: ssmkit plot --sweep DIR --x KEY --y METRIC)")
    out = Path("curves.png") if out is None else out
    _check_plot_out(out, force)
    shown = plot_runs(list(runs), out, metric)
    typer.echo(f"wrote {out} (training loss and {shown or 'no metric'} of {len(runs)} run(s))")
