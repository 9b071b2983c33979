"""The rich consoles the CLI prints through: terminal width on a terminal, never cut or wrapped otherwise.

Rich sizes a console that is not a terminal (a pipe, a file, ``| less``, ``> out.txt``) to 80 columns (or
``$COLUMNS``) and cuts or folds every table row to fit. Output that goes to a program or a file must keep
its lines whole, so there the console is given a width no table reaches and text is not wrapped
(``soft_wrap``); tables still take only their natural width.
"""
from __future__ import annotations

from rich.console import Console

#: The width of a console that is not a terminal: wider than any table row ssmkit prints.
UNCUT_WIDTH = 100_000


def console(stderr: bool = False, **options) -> Console:
    """A ``rich.console.Console`` on stdout (or stderr) with ``options``; uncut when not a terminal."""
    options.setdefault("highlight", False)
    out = Console(stderr=stderr, **options)
    if out.is_terminal:
        return out
    return Console(stderr=stderr, width=UNCUT_WIDTH, soft_wrap=True, **options)


def number_text(value, spec: str = ".6g") -> str:
    """A value for a table cell or a log line: ``-`` for None, a float in ``spec``, anything else as text."""
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def duration_text(seconds: float | None) -> str:
    """Seconds as ``12.3s``, ``4.5m`` or ``1.2h`` (``-`` for None)."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
