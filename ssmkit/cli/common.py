"""What several commands share: the console they print through, the main-process test, an error's message."""
from __future__ import annotations

from accelerate import PartialState
from rich.console import Console

from ssmkit.console import console as make_console
from ssmkit.errors import UserError


def console(err: bool = False) -> Console:
    """A console without markup on stdout (``err``: stderr), uncut off a terminal."""
    return make_console(stderr=err, markup=False)


def is_main() -> bool:
    """Whether this is the main process (the only one of a single-process run)."""
    return PartialState().is_main_process


def user_message(e: UserError) -> str:
    """The error's message; for one re-raised by a DataLoader worker (its text is "Caught DataError in
    DataLoader worker process 0", then the worker's traceback), the original message alone."""
    text = str(e)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        text = last.split(prefix, 1)[1] if prefix in last else last
    return text
