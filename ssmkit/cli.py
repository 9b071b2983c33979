"""The ``ssmkit`` command line: thin; parse, call the library, print.

    ssmkit train RECIPE [key.sub=value ...] [--name N | --run-dir D] [--max-steps N] [--dry-run]
    ssmkit train --resume RUN_DIR [train.key=value ...]
    ssmkit train RECIPE --processes N     (N local processes; or: accelerate launch / torchrun -m ssmkit train)
    ssmkit eval RUN_DIR_OR_CHECKPOINT [--split val|test] [--checkpoint latest|best] [key.sub=value ...]
    ssmkit recipes [PATTERN] | recipes show NAME [--defaults] | recipes cp NAME PATH
    ssmkit --version
    ssmkit sweep RECIPE key=v1,v2 ... [--seeds N] [--processes N]   (ssmkit/sweep.py)

Every :class:`~ssmkit.errors.UserError` (and every usage error) becomes one line on stderr and exit
code 2, without a traceback. Other modules add commands through ``COMMAND_MODULES``: each exposes
``register(app: typer.Typer) -> None``.
"""
from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ssmkit.errors import UserError

#: Modules that add commands; a missing one is an ImportError (fix it, do not skip it).
COMMAND_MODULES: tuple[str, ...] = ("ssmkit.tasks.data_cli", "ssmkit.doctor", "ssmkit.profile", "ssmkit.generation_cli",
                                      "ssmkit.runs_cli", "ssmkit.sweep")


def _click_exceptions() -> list:
    """click's exception module, and typer's vendored copy of click where this typer has one."""
    modules = [click.exceptions]
    try:
        modules.append(importlib.import_module("typer._click.exceptions"))
    except ImportError:
        pass
    return modules


_EXC = _click_exceptions()
_NO_ARGS = tuple(m.NoArgsIsHelpError for m in _EXC if hasattr(m, "NoArgsIsHelpError"))
_USAGE = tuple(m.UsageError for m in _EXC if hasattr(m, "UsageError"))
_CLICK = tuple(m.ClickException for m in _EXC if hasattr(m, "ClickException"))
_ABORT = tuple(m.Abort for m in _EXC if hasattr(m, "Abort"))


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}".replace("\n", " "), err=True)
    sys.exit(code)


def _user_message(e: UserError) -> str:
    """The error's message; for one re-raised by a DataLoader worker (its text is "Caught DataError in
    DataLoader worker process 0", then the worker's traceback), the original message alone."""
    text = str(e)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        text = last.split(prefix, 1)[1] if prefix in last else last
    return text


class _Group(TyperGroup):
    """Turns user and usage errors into one line on stderr and exit code 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except UserError as e:
            _fail(_user_message(e), e.exit_code)
        except _NO_ARGS as e:
            click.echo(e.ctx.get_help(), err=True)
            sys.exit(2)
        except _USAGE as e:
            hint = f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""
            _fail(f"{e.format_message()}{hint}", 2)
        except _CLICK as e:
            _fail(e.format_message(), e.exit_code)
        except _ABORT:
            _fail("aborted", 130)
        except (MemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            _fail(f"out of memory ({detail}); lower the sizes (train.batch_size, task.L, model.d_model, --num-samples, "
                  "--n ...) or free memory", 2)
        sys.exit(rv if isinstance(rv, int) else 0)


#: How torch and the OS say that an allocation failed (also for sizes so large the size itself overflows).
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
             "storage size calculation overflowed")


def _out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: an environment failure (one line), not a bug (a traceback)."""
    return isinstance(e, MemoryError) or any(t in str(e).lower() for t in _OOM_TEXT)


app = typer.Typer(
    cls=_Group,
    help="State-space and global-convolution sequence models: train, evaluate, and explore recipes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


class _RecipesGroup(TyperGroup):
    """``ssmkit recipes PATTERN``: a first argument that is not a subcommand (show, cp) is the pattern."""

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["--pattern", args[0], *args[1:]]
        return super().parse_args(ctx, args)


recipes_app = typer.Typer(cls=_RecipesGroup, help="List (optionally only those matching PATTERN), show and copy the "
                          "shipped recipes.", invoke_without_command=True, subcommand_metavar="[PATTERN | COMMAND [ARGS]...]")
app.add_typer(recipes_app, name="recipes")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        import ssmkit

        try:
            installed = version("ssmkit")
        except PackageNotFoundError:  # run from a checkout that was never installed
            installed = ssmkit.__version__
        click.echo(f"ssmkit {installed} (torch {_torch_version()}, python {sys.version.split()[0]})")
        raise typer.Exit()


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print ssmkit's version (and torch's, python's) and exit"),
) -> None:
    """State-space and global-convolution sequence models: train, evaluate, and explore recipes."""


def _console(err: bool = False) -> Console:
    from ssmkit.console import console

    return console(stderr=err, markup=False)


@app.command()
def train(
    recipe: str = typer.Argument(None, help="recipe YAML file or shipped recipe name (see: ssmkit recipes)"),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. optimizer.lr=1e-3"),
    name: str = typer.Option(None, "--name", help="run name: the run goes to <train.runs_dir>/<name>"),
    run_dir: Path = typer.Option(None, "--run-dir", help="exact run directory (must not exist yet)"),
    max_steps: int = typer.Option(None, "--max-steps", min=1, help="a new run: its length in optimizer steps (as "
                                  "train.max_steps); on resume: stop at this step, the schedule unchanged"),
    resume: str = typer.Option(None, "--resume", help="RUN_DIR: continue it from its latest checkpoint (one without a "
                               "checkpoint starts again); auto: continue --run-dir (or <runs_dir>/<name>) if it has a "
                               "checkpoint, else start it (for requeued jobs)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, build, show the model, run one batch, exit"),
    download: bool = typer.Option(False, "--download", help="fetch the task's dataset first if its files are missing "
                                  "(as `ssmkit data download NAME`)"),
    processes: int = typer.Option(1, "--processes", min=1, help="start this many local processes (torchrun-style; "
                                  "train.batch_size is per process)"),
):
    """Train a model from a recipe. Exit codes: 0 finished (or stopped at --max-steps), 2 bad input, 3 non-finite
    loss, 130/143 interrupted by SIGINT/SIGTERM (checkpoint saved)."""
    from ssmkit.recipe import load_recipe, validate
    from ssmkit.train.loop import train as run_training
    from ssmkit.train.resume import AUTO, recipe_to_resume

    overrides = list(overrides or [])
    if resume is not None and resume != AUTO:
        if recipe is not None and "=" not in recipe:
            raise UserError(f"--resume takes the recipe from {resume}; drop {recipe!r} (only train.* overrides are allowed)")
        if recipe is not None:
            overrides.insert(0, recipe)
        bad = [o for o in overrides if not o.startswith("train.")]
        if bad:
            raise UserError(f"on --resume only train.* keys may change (the run must continue the same experiment), got {bad[0]!r}")
        if name or run_dir:
            raise UserError("--resume continues the run in place; drop --name/--run-dir")
        parsed = recipe_to_resume(resume, overrides)
    else:
        if recipe is None:
            raise UserError("missing RECIPE: give a YAML file or a shipped recipe name (list them with: ssmkit recipes)")
        if name is not None and run_dir is not None:
            raise UserError("give --name or --run-dir, not both")
        if name is not None and not name.strip():
            raise UserError("--name is empty; give a run name (letters, digits and _ . + -)")
        parsed = load_recipe(recipe, overrides)
        if name is not None:
            parsed = validate({**parsed.to_dict(), "name": name}, parsed.source)
        if resume == AUTO:  # continue the run there if it has a checkpoint (its recipe, train.* from this one)
            parsed = recipe_to_resume(AUTO, overrides, given=parsed, run_dir=run_dir)
    if processes > 1:  # the recipe is valid (checked above): start the processes
        from ssmkit.train.launch import launch_local

        args = list(overrides) if resume not in (None, AUTO) else [recipe, *overrides]  # on --resume, overrides hold them all
        for flag, value in (("--name", name), ("--run-dir", run_dir), ("--max-steps", max_steps), ("--resume", resume)):
            if value is not None:
                args += [flag, str(value)]
        auto = Path(run_dir or Path(parsed.train.runs_dir) / parsed.name) if resume == AUTO else None
        hint = (None if resume in (None, AUTO) else Path(resume), run_dir or auto,
                None if resume or run_dir else str(Path(parsed.train.runs_dir) / parsed.name))
        flags = [*(["--dry-run"] if dry_run else []), *(["--download"] if download else [])]
        sys.exit(launch_local(processes, ["train", *args, *flags], run_hint=hint))
    from ssmkit.train.launch import PEER_LOST, end_distributed_worker, leave_distributed_worker, lost_peer

    console = _console(err=False)
    try:
        summary = run_training(parsed, run_dir=run_dir, resume=resume, max_steps=max_steps, dry_run=dry_run,
                               console=console, download=download)
    except BaseException as e:
        if lost_peer(e):  # another rank died: the launcher says which, in one line
            leave_distributed_worker(PEER_LOST)
        from ssmkit.train.guard import NonFiniteLoss

        together = isinstance(e, NonFiniteLoss)  # every rank stops at the same step: the main one reports
        if end_distributed_worker(barrier=together) and together:
            if _is_main():
                click.echo(f"error: {_user_message(e)}", err=True)
            leave_distributed_worker(e.exit_code if _is_main() else 0)
        raise  # another rank may never reach a barrier
    code = _train_exit_code(summary)
    if not dry_run and _is_main():
        _train_summary(console, summary)
    if end_distributed_worker(barrier=True):  # only the main process's exit code carries the outcome
        leave_distributed_worker(code if _is_main() else 0)
    return code


def _train_exit_code(summary: dict) -> int:
    """0, or 128 + the signal (130 SIGINT, 143 SIGTERM) for an interrupted run, so batch systems see it."""
    import signal

    if summary.get("status") == "interrupted" and summary.get("signal") in signal.Signals.__members__:
        return 128 + signal.Signals[summary["signal"]]
    return 0


def _train_summary(console, summary: dict) -> None:
    from ssmkit.train.progress import say
    from ssmkit.train.signals import resume_command

    final = summary["final"]
    metric = f"val/{summary['main_metric']}"
    status = {"finished": "finished"}.get(summary["status"], f"{summary['status']} (resume with: "
                                          f"{resume_command(summary['run_dir'])})")
    say(console, f"{status}: {summary['step']} steps in {summary['time_s']:.1f}s; {metric} = {_fmt(final.get(metric))}")
    say(console, f"run directory: {summary['run_dir']}")
    say(console, f"evaluate it:   ssmkit eval {summary['run_dir']}")


@app.command("eval")
def eval_command(
    path: Path = typer.Argument(..., help="a run directory or one of its checkpoints"),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. task.L=512"),
    split: str = typer.Option("val", "--split", help="val or test"),
    checkpoint: str = typer.Option("latest", "--checkpoint", help="latest or best (for a run directory)"),
):
    """Evaluate a run's checkpoint: a table, then one JSON line."""
    from ssmkit.runs.evaluate import evaluate_run
    from ssmkit.train.banner import slow_step
    from ssmkit.train.progress import EvalProgress

    if split not in ("val", "test"):
        raise UserError(f"unknown --split {split!r}; choose val or test")
    if checkpoint not in ("latest", "best"):
        raise UserError(f"unknown --checkpoint {checkpoint!r}; choose latest or best")
    notes = _console(err=True)
    result = evaluate_run(path, split, list(overrides or []), which=checkpoint,
                          slow=lambda what: slow_step(notes, what),
                          progress=lambda total: EvalProgress(notes, total, f"evaluating on {split}"))
    if not _is_main():
        return
    table = Table(title=f"{split} metrics of {result['checkpoint']} (step {result['step']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("split", "checkpoint", "step"):
        result.setdefault(key, None)
    for key, value in result.items():
        if key not in ("split", "checkpoint", "step"):
            table.add_row(key, _fmt(value))
    _console(err=True).print(table)
    click.echo(json.dumps(result))


def _recipe_matches(pattern: str, key: str, description: str) -> bool:
    """A glob (``*`` ``?`` ``[``) matches the name (``s4/lra-*``); other text is a case-insensitive substring
    of the name or the description (``cifar``, ``s4d``)."""
    import fnmatch

    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(key.rsplit("/", 1)[-1], pattern)
    return pattern.lower() in key.lower() or pattern.lower() in description.lower()


@recipes_app.callback()
def recipes_list(
    ctx: typer.Context,
    pattern: str = typer.Option(None, "--pattern", hidden=True, help="only recipes matching this (glob or text)"),
):
    """List the shipped recipes (group, name, description); ssmkit recipes PATTERN lists those whose name
    matches the glob PATTERN (s4/lra-*) or whose name or description contains it (cifar)."""
    if ctx.invoked_subcommand is not None:
        if pattern is not None:
            raise UserError(f"give a PATTERN or a subcommand ({ctx.invoked_subcommand}), not both")
        return
    from ssmkit.recipe import recipe_description, shipped_recipes

    shipped = shipped_recipes()
    if not shipped:
        raise UserError("no shipped recipes found (the package was installed without its recipes folder)")
    if pattern is not None and not pattern.strip():
        raise UserError("the recipe PATTERN is empty; give a glob such as 's4/lra-*' or text such as cifar")
    descriptions = {key: recipe_description(path) for key, path in shipped.items()}
    keys = [k for k in shipped if pattern is None or _recipe_matches(pattern, k, descriptions[k])]
    if not keys:
        from ssmkit.registry import did_you_mean

        raise UserError(f"no shipped recipe matches {pattern!r}{did_you_mean(pattern, shipped)}; "
                        "list them all with: ssmkit recipes")
    console = _console()
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.rsplit("/", 1)[0] if "/" in key else "", []).append(key)
    for group, names in sorted(groups.items()):  # a group before its subgroups (dlr, then dlr/atomic)
        table = Table(title=group or "recipes", title_justify="left", show_header=False, box=None)
        table.add_column("name", style="bold")
        table.add_column("description")
        for key in names:
            table.add_row(key, descriptions[key])
        console.print(table)
    shown = f"{len(keys)} of {len(shipped)} recipes" if pattern is not None else f"{len(keys)} recipes"
    console.print(f"{shown}; train one: ssmkit train NAME [key=value ...]; copy one: ssmkit recipes cp NAME my.yaml; "
                  "every key with its default: ssmkit recipes show NAME --defaults")


def _shipped(name: str) -> Path:
    from ssmkit.recipe import resolve_recipe_path, shipped_recipes

    key = name.removesuffix(".yaml").removeprefix("recipes/")
    if key in shipped_recipes():
        return shipped_recipes()[key]
    return resolve_recipe_path(name)


@recipes_app.command("show")
def recipes_show(
    name: str = typer.Argument(..., help="shipped recipe name, e.g. quick/s4d-shift, or a YAML file"),
    defaults: bool = typer.Option(False, "--defaults", help="every key of the resolved recipe with its value, its "
                                  "default and what it does (* marks a value that differs from the default)"),
):
    """Print a recipe's YAML, or with --defaults every key it resolves to."""
    from ssmkit.recipe import load_recipe, load_yaml, settings

    path = _shipped(name)
    load_yaml(path)  # a binary or malformed file: one line naming it
    if not defaults:
        click.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    table = Table(title=f"{name}: every key (* set by the recipe to a value other than the default)",
                  title_justify="left", box=None)
    for col in ("key", "value", "default", "help"):
        table.add_column(col)
    for row in settings(load_recipe(str(path))):
        mark = "*" if row.changed else ""
        table.add_row(f"{mark}{row.key}", _yaml_text(row.value), _yaml_text(row.default), row.help)
    _console().print(table)


def _yaml_text(value) -> str:
    """A value as a recipe spells it: null, true, 0.001, [0.9, 0.999]; a key without default: required."""
    from ssmkit.recipe import REQUIRED

    if value is REQUIRED:
        return "required"
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@recipes_app.command("cp")
def recipes_cp(
    name: str = typer.Argument(..., help="shipped recipe name"),
    dest: str = typer.Argument(..., help="where to write the copy (a file or an existing folder)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
):
    """Copy a shipped recipe to start your own."""
    from ssmkit.recipe import load_yaml

    if not dest.strip():
        raise UserError("the destination is empty; give a file name (my.yaml) or an existing folder")
    src = _shipped(name)
    load_yaml(src)  # never copy a binary or malformed file as a recipe
    folder = Path(dest)
    if dest.endswith("/") and not folder.is_dir():  # meant as a folder: never a file named like it
        raise UserError(f"folder {folder} does not exist; create it first or give a file name")
    target = folder / src.name if folder.is_dir() else folder
    if target.is_dir():
        raise UserError(f"{target} is a folder; give a file name or another folder")
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise UserError(f"folder {target.parent} does not exist")
    try:
        shutil.copyfile(src, target)
    except OSError as e:
        raise UserError(f"cannot write {target} ({e.strerror})") from None
    click.echo(f"copied {name} to {target}; train it with: ssmkit train {target}")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    """Console-script entry point. Once the command is done, a further Ctrl-C (the second of a double press that
    stopped a run) is ignored while the interpreter exits, instead of printing a traceback from an exit handler."""
    import signal

    try:
        app()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
