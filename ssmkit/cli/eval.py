"""``ssmkit eval RUN_DIR_OR_CHECKPOINT [--split val|test] [--checkpoint latest|best] [key.sub=value ...]``: a table
of a checkpoint's metrics on stderr, then one JSON line on stdout (``evaluate_run``, ``ssmkit/runs/evaluate.py``)."""
from __future__ import annotations

import json
from pathlib import Path

import click
import typer
from rich.table import Table

from ssmkit.cli.common import console, is_main
from ssmkit.console import number_text
from ssmkit.errors import UserError
from ssmkit.runs.evaluate import evaluate_run
from ssmkit.train.banner import slow_step
from ssmkit.train.progress import EvalProgress


def eval_command(
    path: Path = typer.Argument(..., help="a run directory or one of its checkpoints"),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. task.seq_len=512"),
    split: str = typer.Option("val", "--split", help="val or test"),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="latest or best (for a run directory)"),
):
    """Evaluate a run's checkpoint: a table, then one JSON line."""
    if split not in ("val", "test"):
        raise UserError(f"unknown --split {split!r}; choose val or test")
    if checkpoint not in ("latest", "best"):
        raise UserError(f"unknown --checkpoint {checkpoint!r}; choose latest or best")
    notes = console(err=True)
    result = evaluate_run(path, split, list(overrides or []), which=checkpoint,
                          slow=lambda what: slow_step(notes, what),
                          progress=lambda total: EvalProgress(notes, total, f"evaluating on {split}"))
    if not is_main():
        return
    table = Table(title=f"{split} metrics of {result['checkpoint']} (step {result['step']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("split", "checkpoint", "step"):
        result.setdefault(key, None)
    for key, value in result.items():
        if key not in ("split", "checkpoint", "step"):
            table.add_row(key, number_text(value))
    console(err=True).print(table)
    click.echo(json.dumps(result))
