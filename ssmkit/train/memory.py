"""Out of memory is one line, not a traceback.

Absurd sizes (``model.d_model=1e9``) are refused before anything is allocated, by the recipe's size estimate
(``recipe._check_size``). What the estimate lets through can still fail to allocate: the model's weights,
the optimizer state, or a step's activations (batch x length x width x layers). :func:`one_line_out_of_memory`
turns such a failure (the CPU allocator's RuntimeError, CUDA's ``OutOfMemoryError``, ``MemoryError``) into one
UserError naming what was being done and the keys that size it; exit code 2.
"""
from __future__ import annotations

import contextlib

import torch

from ssmkit.errors import UserError, first_line

_MARKS = ("can't allocate memory", "out of memory", "cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _MARKS)


def _what_failed(error: BaseException) -> str:
    text = str(error)
    for line in text.splitlines():
        if "tried to allocate" in line.lower():
            start = line.lower().index("tried to allocate")
            return line[start:].split(".")[0].strip()
    return first_line(error, 160)


@contextlib.contextmanager
def one_line_out_of_memory(recipe, doing):
    """Runs the body; an allocation failure inside becomes one UserError (``doing``: "building the model", or a
    function that says it at the time of the failure)."""
    try:
        yield
    except BaseException as e:  # noqa: BLE001 - only out-of-memory errors are converted; the rest re-raised
        if not is_out_of_memory(e):
            raise
        m, t = recipe.model, recipe.train
        doing = doing() if callable(doing) else doing
        raise UserError(f"{recipe.source}: out of memory while {doing} ({_what_failed(e)}); lower train.batch_size="
                        f"{t.batch_size}, the sequence length, model.d_model={m.d_model} or model.n_layers={m.n_layers}, "
                        "or set model.checkpoint=true (recomputes activations)") from None
