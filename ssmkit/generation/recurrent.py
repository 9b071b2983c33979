"""What generation and streaming need from a model: a prediction per position and a recurrence in every mixer."""
from __future__ import annotations

import torch.nn as nn

from ssmkit.errors import UserError
from ssmkit.mixers.base import Mixer


def mixers(model: nn.Module) -> list[Mixer]:
    """Every token mixer in the model, in order (any backbone)."""
    return [m for m in model.modules() if isinstance(m, Mixer)]


def check_recurrent(model: nn.Module, what: str) -> None:
    """UserError (one line) unless the model predicts per position and every mixer has a recurrence."""
    pool = getattr(model, "pool", None)
    if pool is not None:
        raise UserError(f"{what} needs a model with a prediction per position, but this one pools (pool={pool!r}) "
                        "into one prediction per sequence (a classification model)")
    if not hasattr(model, "step"):
        raise UserError(f"{what} needs a model with a recurrent step; {type(model).__name__} has none")
    for i, mixer in enumerate(mixers(model)):
        if not mixer.has_state:
            raise UserError(f"{what} needs a recurrent step in every layer, but layer {i} (mixer {mixer.name!r}) has "
                            f"none: {mixer.no_state_reason()}; train a causal recurrent mixer (s4, s4d, dss, dlr, lssl, "
                            "s5, lru, mamba, attn) without max_kernel_length")
