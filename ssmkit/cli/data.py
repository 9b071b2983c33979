"""``ssmkit data generate KIND``, ``ssmkit data check TASK`` and ``ssmkit data download NAME``.

The work is in the tasks' floor: ``generate_data`` and ``check_task`` (``ssmkit/tasks/datasets.py``),
``download`` (``ssmkit/tasks/download.py``).
"""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ssmkit.console import console as make_console
from ssmkit.errors import UserError
from ssmkit.recipe import parse_value
from ssmkit.tasks.datasets import GENERATORS, check_task, generate_data
from ssmkit.tasks.download import download, list_lines
from ssmkit.train.banner import slow_step


def _parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"task option {item!r} must look like key=value, e.g. resolution=64")
        key, value = item.split("=", 1)
        options[key.strip()] = parse_value(value)  # as a recipe override: malformed YAML stays text
    return options


def generate_cmd(
    kind: str = typer.Argument(..., help=f"one of {', '.join(GENERATORS)}"),
    n: int = typer.Option(None, "--n", help="number of samples (default 100000, as published; text: training paragraphs, default 4000)"),
    resolution: int = typer.Option(None, "--resolution", help="pathfinder image size: 32, 64, 128, 256 or 512"),
    out: Path = typer.Option(None, "--out", help="output folder (default: where the task looks for it)"),
    seed: int = typer.Option(0, "--seed", help="random seed; output is deterministic in it"),
    workers: int = typer.Option(1, "--workers", help="worker processes (pathfinder)"),
    val: int = typer.Option(None, "--val", help="listops: validation samples (default 2000)"),
    test: int = typer.Option(None, "--test", help="listops: test samples (default 2000)"),
    min_length: int = typer.Option(None, "--min-length", help="listops: fewest tokens (exclusive)"),
    max_length: int = typer.Option(None, "--max-length", help="listops: most tokens (exclusive)"),
    force: bool = typer.Option(False, "--force", help="replace the files already there (refused without it)"),
) -> None:
    """Writes a generated dataset in the official file layout (never over existing files without --force)."""
    notes = Console(stderr=True, highlight=False)
    folder = generate_data(kind, n, resolution, out, seed, workers, val, test, min_length, max_length, force,
                           slow=lambda what: slow_step(notes, what))
    Console().print(f"[green]wrote[/green] {kind} data to {folder}")


def check_cmd(
    task: str = typer.Argument(..., help="task name, e.g. listops, pathfinder, sc10"),
    option: list[str] = typer.Option([], "--option", "-o", help="task option key=value (repeatable)"),
) -> None:
    """Says whether TASK's files are present and readable, with the sample count per split."""
    for line in check_task(task, _parse_options(option)):
        Console().print(f"[green]ok[/green] {line}")


def download_cmd(
    name: str = typer.Argument(None, help="dataset to fetch, e.g. mnist, cifar10, speechcommands, wikitext-103, "
                                           "lra-listops, ett (all: --list)"),
    root: Path = typer.Option(None, "--root", help="data root to unpack into (default: $SSMKIT_DATA, or ./data)"),
    force: bool = typer.Option(False, "--force", help="fetch and unpack again, replacing the files already there"),
    list_: bool = typer.Option(False, "--list", help="list the datasets: size, folder under the data root, tasks"),
) -> None:
    """Fetches a dataset from its official release (resumable, checksum-verified) into the layout the tasks read.
    Mirrors: SSMKIT_MIRROR_<NAME> for one release, SSMKIT_DATA_MIRROR for all."""
    if list_:
        if name is not None or root is not None or force:
            raise UserError("--list takes no NAME, --root or --force")
        table = Table("name", "size", "unpacks to (under the data root)", "for tasks")
        for row in list_lines():
            table.add_row(*row)
        make_console(markup=False).print(table)  # off a terminal: rows never cut at 80 columns
        return
    if name is None:
        raise UserError("missing NAME: give the dataset to fetch (list them with: ssmkit data download --list)")
    download(name, root, force)
