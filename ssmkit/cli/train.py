"""``ssmkit train RECIPE [key.sub=value ...]`` and ``ssmkit train --resume RUN_DIR``: one run of the training loop
(``ssmkit/train/loop.py``), or ``--processes N`` local processes of it (``ssmkit/train/launch.py``).

Exit codes: 0 finished (or stopped at --max-steps), 2 bad input, 3 non-finite loss, 130/143 interrupted by
SIGINT/SIGTERM (checkpoint saved).
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
import typer

from ssmkit.cli.common import console, is_main, user_message
from ssmkit.console import number_text
from ssmkit.errors import UserError
from ssmkit.recipe import Recipe, load_recipe, validate
from ssmkit.train.guard import NonFiniteLoss
from ssmkit.train.launch import (
    PEER_LOST,
    end_distributed_worker,
    launch_local,
    leave_distributed_worker,
    lost_peer,
)
from ssmkit.train.loop import train as run_training
from ssmkit.train.progress import say
from ssmkit.train.resume import AUTO, recipe_to_resume
from ssmkit.train.signals import resume_command


def _recipe(recipe: str | None, overrides: list[str], name: str | None, run_dir: Path | None,
            resume: str | None) -> Recipe:
    """The validated recipe of a new run, of ``--resume RUN_DIR`` (train.* overrides only) or of ``--resume auto``."""
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
        return recipe_to_resume(resume, overrides)
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
    return parsed


def _launch(processes: int, parsed: Recipe, recipe: str | None, overrides: list[str], name, run_dir, max_steps,
            resume, dry_run: bool, download: bool) -> None:
    """Starts ``processes`` local processes of the same command (the recipe is valid: checked before)."""
    args = list(overrides) if resume not in (None, AUTO) else [recipe, *overrides]  # on --resume, overrides hold them all
    for flag, value in (("--name", name), ("--run-dir", run_dir), ("--max-steps", max_steps), ("--resume", resume)):
        if value is not None:
            args += [flag, str(value)]
    auto = Path(run_dir or Path(parsed.train.runs_dir) / parsed.name) if resume == AUTO else None
    hint = (None if resume in (None, AUTO) else Path(resume), run_dir or auto,
            None if resume or run_dir else str(Path(parsed.train.runs_dir) / parsed.name))
    flags = [*(["--dry-run"] if dry_run else []), *(["--download"] if download else [])]
    sys.exit(launch_local(processes, ["train", *args, *flags], run_hint=hint))


def _train_exit_code(summary: dict) -> int:
    """0, or 128 + the signal (130 SIGINT, 143 SIGTERM) for an interrupted run, so batch systems see it."""
    if summary.get("status") == "interrupted" and summary.get("signal") in signal.Signals.__members__:
        return 128 + signal.Signals[summary["signal"]]
    return 0


def _train_summary(out, summary: dict) -> None:
    final = summary["final"]
    metric = f"val/{summary['main_metric']}"
    status = {"finished": "finished"}.get(summary["status"], f"{summary['status']} (resume with: "
                                          f"{resume_command(summary['run_dir'])})")
    say(out, f"{status}: {summary['step']} steps in {summary['time_s']:.1f}s; {metric} = {number_text(final.get(metric))}")
    say(out, f"run directory: {summary['run_dir']}")
    say(out, f"evaluate it:   ssmkit eval {summary['run_dir']}")


def _run(parsed: Recipe, run_dir, resume, max_steps, dry_run: bool, download: bool) -> int:
    """This process's part of the run; the exit code (on several processes, the main one carries the outcome)."""
    out = console(err=False)
    try:
        summary = run_training(parsed, run_dir=run_dir, resume=resume, max_steps=max_steps, dry_run=dry_run,
                               console=out, download=download)
    except BaseException as e:
        if lost_peer(e):  # another rank died: the launcher says which, in one line
            leave_distributed_worker(PEER_LOST)
        together = isinstance(e, NonFiniteLoss)  # every rank stops at the same step: the main one reports
        if end_distributed_worker(barrier=together) and together:
            if is_main():
                click.echo(f"error: {user_message(e)}", err=True)
            leave_distributed_worker(e.exit_code if is_main() else 0)
        raise  # another rank may never reach a barrier
    code = _train_exit_code(summary)
    if not dry_run and is_main():
        _train_summary(out, summary)
    if end_distributed_worker(barrier=True):  # only the main process's exit code carries the outcome
        leave_distributed_worker(code if is_main() else 0)
    return code


def train_command(
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
    overrides = list(overrides or [])
    parsed = _recipe(recipe, overrides, name, run_dir, resume)
    if processes > 1:
        _launch(processes, parsed, recipe, overrides, name, run_dir, max_steps, resume, dry_run, download)
    return _run(parsed, run_dir, resume, max_steps, dry_run, download)
