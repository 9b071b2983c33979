"""``ssmkit sweep RECIPE key=v1,v2 ... [--seeds N] [--processes N]``: the grid, its runs and the table of results.

The grid, the sweep folder, the runs and the aggregation over seeds are ``ssmkit/sweep.py``; this file parses
the command line, runs it and prints the table (one row per grid point, mean ± sample std over seeds).
Exit codes: 0 every run finished (or was already), 1 a run failed, 2 bad input, 130/143 stopped by SIGINT/SIGTERM.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import typer
from rich.table import Table

from ssmkit.console import console as make_console
from ssmkit.console import duration_text
from ssmkit.errors import UserError
from ssmkit.sweep import (
    SWEEP_FILE,
    build_grid,
    collect,
    default_dir,
    failed,
    list_runs,
    read_record,
    run_state,
    run_sweep,
)

#: the most seeds per grid point ``ssmkit sweep --seeds`` accepts (each seed is a full training run)
MAX_SEEDS = 1000


def _pm(s: dict) -> str:
    if not s or s["n"] == 0:
        return "-"
    text = f"{s['mean']:.4g}"
    if s["std"] is not None:
        text += f" ± {s['std']:.2g}"
    return f"{text} (n={s['n']})"


def sweep_table(results: dict) -> Table:
    """A rich Table: one row per grid point."""
    labels = results["labels"]
    metric_names = sorted({k for p in results["points"] for k in p["metrics"]})
    mains = {p["main_metric"] for p in results["points"] if p["main_metric"]}
    best_name = f"best val/{next(iter(mains))}" if len(mains) == 1 else "best"
    table = Table()
    for key in results["axes"]:
        table.add_column(labels.get(key, key))
    table.add_column("runs")
    for name in metric_names:
        table.add_column(name, justify="right")
    table.add_column(best_name, justify="right")
    table.add_column("time", justify="right")
    any_error = any(r.get("error") for p in results["points"] for r in p["runs"])
    if any_error:
        table.add_column("error")
    for p in results["points"]:
        counts = p["counts"]
        status = f"{counts.get('finished', 0)}/{len(p['runs'])} finished"
        others = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "finished")
        if others:
            status += f"; {others}"
        row = [p["values"].get(key, "-") for key in results["axes"]] + [status]
        row += [_pm(p["metrics"].get(name)) for name in metric_names]
        row += [_pm(p["best"]), duration_text(p["time_s"]["mean"]) if p["time_s"]["n"] else "-"]
        if any_error:
            errors = [f"{r['run']}: {r['error']}" for r in p["runs"] if r.get("error")]
            row.append("; ".join(errors))
        table.add_row(*row)
    return table


def print_table(results: dict, console=None) -> None:
    console = console if console is not None else make_console(markup=False)  # off a terminal: never cut
    seeds = len(results["seeds"]) or 1
    console.print(f"sweep {results['sweep_dir']} ({results['recipe']}, {seeds} seed(s) per point)")
    console.print(sweep_table(results))


def _say(line: str) -> None:
    typer.echo(line, err=True)


def _print_results(results: dict, folder: Path, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        print_table(results)
        typer.echo(f"plot: ssmkit plot --sweep {folder} --x KEY --y METRIC")


def _check_flags(recipe, seeds: int, processes: int, force: bool, list_only: bool, index, table_only: bool,
                 as_json: bool) -> None:
    """Refuses counts out of range and flags that do nothing in the chosen mode, before anything runs."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if seeds > MAX_SEEDS:
        raise UserError(f"--seeds {seeds} is more than {MAX_SEEDS} runs per point; use at most {MAX_SEEDS}")
    if processes < 1:
        raise UserError(f"--processes must be at least 1, got {processes}")
    if sum([list_only, index is not None, table_only]) > 1:
        raise UserError("give one of --list, --index and --table")
    mode = "--list" if list_only else "--table" if table_only else "--index" if index is not None else None
    unused = [flag for flag, given, modes in (
        ("--json", as_json, ("--list", "--index")), ("--force", force, ("--list", "--table")),
        ("--processes", processes != 1, ("--list", "--table", "--index")),
        ("--seeds", seeds != 1 and recipe is None, ("--table",))) if given and mode in modes]
    if unused:
        raise UserError(f"{unused[0]} does nothing with {mode}; drop it")


def sweep_command(
    recipe: str = typer.Argument(None, help="recipe YAML file or shipped recipe name"),
    overrides: list[str] = typer.Argument(None, help="key=v1,v2,... to sweep (one value: a fixed override); "
                                          "a comma inside brackets or quotes does not split"),
    sweep_dir: Path = typer.Option(None, "--dir", help="the sweep folder (default: <train.runs_dir>/sweeps/<recipe name>)"),
    seeds: int = typer.Option(1, "--seeds", help="seeds per point: train.seed, train.seed+1, ..."),
    processes: int = typer.Option(1, "--processes", help="runs at a time (one GPU each when GPUs are visible)"),
    force: bool = typer.Option(False, "--force", help="replace a different grid in --dir (runs of unchanged points are kept; "
                               "runs of another recipe are moved to .replaced/)"),
    list_only: bool = typer.Option(False, "--list", help="print the runs (index, name, state, overrides) and exit"),
    index: int = typer.Option(None, "--index", help="run only this run (0-based, see --list): one SLURM array task"),
    table_only: bool = typer.Option(False, "--table", help="do not run anything: print the table of --dir"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON instead of a table"),
) -> None:
    """Train a grid of override values x seeds, resumably; then a table of final metrics (mean ± std)."""
    _check_flags(recipe, seeds, processes, force, list_only, index, table_only, as_json)
    if recipe is None:
        if table_only and sweep_dir is not None:
            _print_results(collect(sweep_dir), sweep_dir, as_json)
            return
        raise UserError("missing RECIPE: ssmkit sweep RECIPE key=v1,v2 ... (or: ssmkit sweep --table --dir SWEEP_DIR)")
    if "=" in recipe:
        raise UserError(f"the first argument is the recipe, got the override {recipe!r}; ssmkit sweep RECIPE key=v1,v2 ...")
    grid = build_grid(recipe, list(overrides or []), seeds)
    folder = sweep_dir if sweep_dir is not None else default_dir(grid)
    if list_only:
        for line in list_runs(grid, folder if (folder / SWEEP_FILE).exists() else None):
            typer.echo(line)
        return
    if table_only:
        _print_results(collect(folder), folder, as_json)
        return
    counts = run_sweep(grid, folder, processes=processes, force=force, index=index, log=_say)
    if index is not None:
        run = grid.runs[index]
        record = read_record(folder, run.name)
        status = "finished" if run_state(folder / run.name) == "finished" else record.get("status") or "pending"
        error = f": {record.get('error')}" if status == "failed" and record.get("error") else ""
        _say(f"run {index} ({run.name}): {status}{error}")
        n_failed = int(status == "failed")
    else:
        results = collect(folder)
        _print_results(results, folder, as_json)
        n_failed = failed(results)
    if counts.get("signal"):
        _say(f"sweep stopped by {signal.Signals(counts['signal']).name}; the running trainings saved a checkpoint; "
             "the same command continues them")
        raise typer.Exit(128 + counts["signal"])
    if n_failed:
        _say(f"{n_failed} run(s) failed; their output is in {folder / 'logs'}; re-running the same command retries them")
        raise typer.Exit(1)
