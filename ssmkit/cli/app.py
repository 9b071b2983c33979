"""The ``ssmkit`` command line: thin; parse, call the library, print. Every command is a module-level function
of a file of this folder (one file per command group) and is registered here, in one place:

    ssmkit train RECIPE [key.sub=value ...] [--name N | --run-dir D] [--max-steps N] [--dry-run]   (train.py)
    ssmkit train --resume RUN_DIR [train.key=value ...]
    ssmkit train RECIPE --processes N     (N local processes; or: accelerate launch / torchrun -m ssmkit train)
    ssmkit eval RUN_DIR_OR_CHECKPOINT [--split val|test] [--checkpoint latest|best] [key.sub=value ...]  (eval.py)
    ssmkit doctor | profile | generate RUN | runs [DIR] | plot RUN... | sweep RECIPE key=v1,v2 ...
    ssmkit recipes [PATTERN] | recipes show NAME [--defaults] | recipes cp NAME PATH                 (recipes.py)
    ssmkit data generate KIND | data check TASK | data download NAME                                  (data.py)
    ssmkit --version

Every :class:`~ssmkit.errors.UserError` (and every usage error) becomes one line on stderr and exit
code 2, without a traceback; an allocation that failed, one line "out of memory (...)" and exit code 2.
"""
from __future__ import annotations

import importlib
import signal
import sys
from importlib.metadata import PackageNotFoundError, version

import click
import typer
from typer.core import TyperGroup

from ssmkit._version import __version__
from ssmkit.cli import data, doctor, eval, generate, profile, recipes, runs, sweep, train
from ssmkit.cli.common import user_message
from ssmkit.errors import UserError, first_line


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

#: How torch and the OS say that an allocation failed (also for sizes so large the size itself overflows).
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
             "storage size calculation overflowed")


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}".replace("\n", " "), err=True)
    sys.exit(code)


def _out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: an environment failure (one line), not a bug (a traceback)."""
    return isinstance(e, MemoryError) or any(t in str(e).lower() for t in _OOM_TEXT)


class _Group(TyperGroup):
    """Turns user and usage errors into one line on stderr and exit code 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except UserError as e:
            _fail(user_message(e), e.exit_code)
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
            _fail(f"out of memory ({first_line(e, 160)}); lower the sizes (train.batch_size, task.seq_len, "
                  "model.d_model, --num-samples, --n ...) or free memory", 2)
        sys.exit(rv if isinstance(rv, int) else 0)


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _version(value: bool) -> None:
    if value:
        installed = _installed("ssmkit") or __version__  # a checkout that was never installed: its own version
        click.echo(f"ssmkit {installed} (torch {_installed('torch') or 'not installed'}, python {sys.version.split()[0]})")
        raise typer.Exit()


def _main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print ssmkit's version (and torch's, python's) and exit"),
) -> None:
    """State-space and global-convolution sequence models: train, evaluate, and explore recipes."""


app = typer.Typer(
    cls=_Group,
    help="State-space and global-convolution sequence models: train, evaluate, and explore recipes.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.callback()(_main_options)

recipes_app = typer.Typer(cls=recipes.RecipesGroup, help="List (optionally only those matching PATTERN), show and "
                          "copy the shipped recipes.", invoke_without_command=True,
                          subcommand_metavar="[PATTERN | COMMAND [ARGS]...]")
recipes_app.callback()(recipes.recipes_list)
recipes_app.command("show")(recipes.recipes_show)
recipes_app.command("cp")(recipes.recipes_cp)

data_app = typer.Typer(help="Generate, download or check datasets under $SSMKIT_DATA (default ./data).",
                       no_args_is_help=True)
data_app.command("generate")(data.generate_cmd)
data_app.command("check")(data.check_cmd)
data_app.command("download")(data.download_cmd)

# The commands, in the order `ssmkit --help` lists them.
app.command("train")(train.train_command)
app.command("eval")(eval.eval_command)
app.command("doctor")(doctor.doctor_command)
app.command("profile")(profile.profile_command)
app.command("generate")(generate.generate_command)
app.command("runs")(runs.runs_command)
app.command("plot")(runs.plot_command)
app.command("sweep")(sweep.sweep_command)
app.add_typer(recipes_app, name="recipes")
app.add_typer(data_app, name="data")


def main() -> None:
    """Console-script entry point. Once the command is done, a further Ctrl-C (the second of a double press that
    stopped a run) is ignored while the interpreter exits, instead of printing a traceback from an exit handler."""
    try:
        app()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
