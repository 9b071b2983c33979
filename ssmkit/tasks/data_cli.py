"""``ssmkit data generate ...``, ``ssmkit data check TASK`` and ``ssmkit data download NAME`` (``tasks/download.py``)."""
from __future__ import annotations

from pathlib import Path

import typer

from ssmkit.errors import DataError, UserError

GENERATORS = ("listops", "listops-subtrees", "pathfinder", "pathfinder-segmentation", "text", "ett")


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    """Without ``force``, one UserError naming the first of ``paths`` that exists (official data may live there)."""
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; "
                        "generating would overwrite it: pass --out to write elsewhere, or --force to replace it")


def generate_data(kind: str, n: int | None = None, resolution: int | None = None, out: Path | None = None,
                  seed: int = 0, workers: int = 1, val: int | None = None, test: int | None = None,
                  min_length: int | None = None, max_length: int | None = None, force: bool = False) -> Path:
    """Generates a dataset with the published settings; returns the folder written. Existing files there are
    refused unless ``force`` (``$SSMKIT_DATA`` is also where official LRA data lives)."""
    from ssmkit.tasks import listops, pathfinder
    from ssmkit.tasks.base import data_root

    if kind not in GENERATORS:
        raise UserError(f"unknown dataset {kind!r} to generate; choose one of {', '.join(GENERATORS)}")
    for flag, value, low in (("--n", n, 1), ("--workers", workers, 1), ("--val", val, 1), ("--test", test, 0),
                             ("--min-length", min_length, 0), ("--max-length", max_length, 1), ("--seed", seed, 0)):
        if value is not None and value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    if kind == "text":  # a synthetic WikiText-layout corpus for the lm task (n: training paragraphs)
        from ssmkit.tasks.lm import write_synthetic_corpus

        folder = Path(out) if out else data_root() / "synthetic-text"
        raw = folder.with_name(folder.name + "-raw")
        _refuse_overwrite([d / f"wiki.{s}.{x}" for d, x in ((folder, "tokens"), (raw, "raw"))
                           for s in ("train", "valid", "test")], force)
        return write_synthetic_corpus(folder, n or 4000, seed)
    if kind == "ett":  # a synthetic ETTh1-format CSV for the forecasting tasks (n: hourly rows)
        from ssmkit.tasks.forecast import write_synthetic_ett

        folder = Path(out) if out else data_root() / "informer" / "synthetic"
        _refuse_overwrite([folder / "ETTh1.csv"], force)
        return write_synthetic_ett(folder / "ETTh1.csv", n or 17420, seed).parent
    if kind.startswith("listops"):
        if resolution is not None:
            raise UserError("--resolution is for pathfinder only")
        sub = kind == "listops-subtrees"
        # LRA: 96k/2k/2k, lengths 500..2000, depth 10, args 10. DLR: lengths 7000..8180, depth 15, args 9.
        n = n or 100_000
        val = 2000 if val is None else val
        test = 2000 if test is None else test
        if n <= val + test:
            raise UserError(f"--n {n} must exceed --val {val} + --test {test}")
        folder = Path(out) if out else data_root() / ("listops-subtrees" if sub else "listops")
        _refuse_overwrite([folder / f"{'subtrees' if sub else 'basic'}_{s}.tsv" for s in ("train", "val", "test")], force)
        cfg = dict(max_depth=15, max_args=9, min_length=7000, max_length=8180) if sub else \
            dict(max_depth=10, max_args=10, min_length=500, max_length=2000)
        if min_length is not None:
            cfg["min_length"] = min_length
        if max_length is not None:
            cfg["max_length"] = max_length
        try:
            exprs = listops.generate(n, seed=seed, progress=True, **cfg)
        except ValueError as e:
            raise UserError(str(e)) from None
        from rich.console import Console

        from ssmkit.train.banner import slow_step

        with slow_step(Console(stderr=True, highlight=False), f"writing {n:,} expressions to {folder}"):  # minutes at LRA size
            (listops.write_subtrees if sub else listops.write_listops)(folder, exprs, val, test)
        return folder
    if min_length is not None or max_length is not None or val is not None or test is not None:
        raise UserError("--min-length/--max-length/--val/--test are for listops only (pathfinder splits 80/10/10)")
    resolution = resolution or (128 if kind == "pathfinder-segmentation" else 32)
    if resolution not in pathfinder.RESOLUTIONS:
        raise UserError(f"--resolution {resolution} is not allowed; choose one of {', '.join(map(str, pathfinder.RESOLUTIONS))}")
    root = Path(out) if out else pathfinder.dataset_dir(resolution)
    _refuse_overwrite([root / d for d in ("metadata", "imgs", "labels")], force)
    for stale in sorted((root / "metadata").glob("*.npy")) if force else ():
        stale.unlink()  # so the folder holds exactly the new batches (images of old extra batches stay unlisted)
    return pathfinder.generate(n or 100_000, resolution=resolution, out=out, seed=seed,
                               segmentation=kind == "pathfinder-segmentation", workers=workers)


def check_task(name: str, options: dict | None = None) -> list[str]:
    """Lines saying what is present for each split; raises DataError when something is missing or broken."""
    from ssmkit.tasks import TASKS

    try:
        task = TASKS.get(name)(**(options or {}))
    except (ValueError, TypeError) as e:
        raise UserError(f"task {name!r}: {e}") from None
    task.check_data()
    lines = []
    for split in ("train", "val", "test"):
        if split not in getattr(task, "splits", ("train", "val", "test")):  # an optional split the user left out
            lines.append(f"{name} {split}: none given")
            continue
        if split == "val" and not task.has_validation:
            lines.append(f"{name} val: none ({task.validation_missing()}; training keeps its last step as best)")
            continue
        ds = task.dataset(split)
        n = len(ds)
        if n == 0:
            raise DataError(f"{name}: the {split} split is empty")
        ds[0]  # reads one sample, so a broken file format shows here
        ds[n - 1]
        lines.append(f"{name} {split}: {n} samples")
    if hasattr(task, "describe"):  # what the task inferred from the user's data
        lines.append(task.describe())
    return lines


def _parse_options(items: list[str]) -> dict:
    from ssmkit.recipe import parse_value

    options = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"task option {item!r} must look like key=value, e.g. resolution=64")
        key, value = item.split("=", 1)
        options[key.strip()] = parse_value(value)  # as a recipe override: malformed YAML stays text
    return options


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Generate, download or check datasets under $SSMKIT_DATA (default ./data).", no_args_is_help=True)

    @data_app.command("generate")
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
        from rich.console import Console

        folder = generate_data(kind, n, resolution, out, seed, workers, val, test, min_length, max_length, force)
        Console().print(f"[green]wrote[/green] {kind} data to {folder}")

    @data_app.command("check")
    def check_cmd(
        task: str = typer.Argument(..., help="task name, e.g. listops, pathfinder, sc10"),
        option: list[str] = typer.Option([], "--option", "-o", help="task option key=value (repeatable)"),
    ) -> None:
        """Says whether TASK's files are present and readable, with the sample count per split."""
        from rich.console import Console

        for line in check_task(task, _parse_options(option)):
            Console().print(f"[green]ok[/green] {line}")

    @data_app.command("download")
    def download_cmd(
        name: str = typer.Argument(None, help="dataset to fetch, e.g. mnist, cifar10, speechcommands, wikitext-103, "
                                               "lra-listops, ett (all: --list)"),
        root: Path = typer.Option(None, "--root", help="data root to unpack into (default: $SSMKIT_DATA, or ./data)"),
        force: bool = typer.Option(False, "--force", help="fetch and unpack again, replacing the files already there"),
        list_: bool = typer.Option(False, "--list", help="list the datasets: size, folder under the data root, tasks"),
    ) -> None:
        """Fetches a dataset from its official release (resumable, checksum-verified) into the layout the tasks read.
        Mirrors: SSMKIT_MIRROR_<NAME> for one release, SSMKIT_DATA_MIRROR for all."""
        from rich.table import Table

        from ssmkit.tasks.download import download, list_lines

        if list_:
            if name is not None or root is not None or force:
                raise UserError("--list takes no NAME, --root or --force")
            table = Table("name", "size", "unpacks to (under the data root)", "for tasks")
            for row in list_lines():
                table.add_row(*row)
            from ssmkit.console import console as make_console

            make_console(markup=False).print(table)  # off a terminal: rows never cut at 80 columns
            return
        if name is None:
            raise UserError("missing NAME: give the dataset to fetch (list them with: ssmkit data download --list)")
        download(name, root, force)

    app.add_typer(data_app, name="data")
