"""``ssmkit doctor [--build]``: the checks of ``ssmkit/doctor.py`` as one table."""
from __future__ import annotations

import typer

from ssmkit.console import console as make_console
from ssmkit.doctor import OK, render, run_checks


def doctor_command(
    build: bool = typer.Option(False, "--build", help="compile the C++/CUDA Cauchy extension now (once per torch "
                               "version) if it is not installed or cached"),
) -> None:
    """Check the installation: torch, CUDA, optional packages, the compiled extension, backends."""
    rows = run_checks(build)
    console = make_console()  # off a terminal: rows never cut at 80 columns
    console.print(render(rows))
    missing = [r for r in rows if r.status != OK]
    console.print(f"{len(rows) - len(missing)} ok, {len(missing)} to look at" if missing else "all ok")
