"""The contract every convolution kernel follows.

A kernel is an ``nn.Module`` that makes a (C, H, L) convolution kernel for a given length and, where
its math has a recurrence, steps that recurrence one token at a time. ``ConvMixer``
(``ssmkit/mixers/conv.py``) does the rest (FFT convolution, skip, activation, output map).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ssmkit.mixers.params import OwnParams, log_uniform  # noqa: F401  (log_uniform: the kernels import it from here)

#: How a complex kernel becomes the real one (DLR paper code, ``cast_kernel``): the real part, the
#: imaginary part, their sum, their product ("DLR-prod"), or Re for the first half of the features and
#: Re * Im for the rest. Only the first three are linear in the kernel, so only they keep a recurrence.
KERNEL_TO_REAL = ("real", "imag", "sum", "prod", "real-prod")
LINEAR_TO_REAL = ("real", "imag", "sum")


def complex_to_real(K: torch.Tensor, mode: str, feature_dim: int = -2) -> torch.Tensor:
    """Complex kernel or response -> real, by ``mode`` (one of ``KERNEL_TO_REAL``); ``feature_dim`` is
    the H dimension (used by ``real-prod``)."""
    if mode == "real":
        return K.real
    if mode == "imag":
        return K.imag
    if mode == "sum":
        return K.real + K.imag
    prod = K.real * K.imag
    if mode == "prod":
        return prod
    if mode != "real-prod":
        raise ValueError(f"unknown kernel_to_real {mode!r}; choose one of {', '.join(KERNEL_TO_REAL)}")
    half = K.shape[feature_dim] // 2
    return torch.cat([K.real.narrow(feature_dim, 0, half), prod.narrow(feature_dim, half, K.shape[feature_dim] - half)],
                     dim=feature_dim)


class Kernel(OwnParams, nn.Module):
    """Base class: parameter registration with per-parameter lr / weight decay (``OwnParams``,
    ``ssmkit/mixers/params.py``), and the step API.

    Subclasses implement ``forward(L, rate=1.0, state=None) -> (K (C, H, L), K_state (B, C, H, L) | None)``.
    Recurrent kernels also implement ``default_state``, ``setup_step``, ``step`` and ``forward_state``.
    """

    #: the kernel has a recurrence: step(), default_state(), and forward from a state
    has_state: bool = False

    def __init__(self, d_model: int, channels: int = 1, lr=None, wd=None):
        super().__init__()
        if d_model <= 0 or channels <= 0:
            raise ValueError(f"d_model and channels must be positive, got d_model={d_model}, channels={channels}")
        self.set_param_settings(lr, wd)
        self.H = d_model
        self.channels = channels

    # --- recurrent API (overridden by kernels that have a recurrence) ---
    def default_state(self, *batch_shape: int, device=None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent state")

    def setup_step(self, rate: float = 1.0) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent step")

    def step(self, u: torch.Tensor, state: torch.Tensor):
        raise NotImplementedError(f"{type(self).__name__} has no recurrent step")

    def forward_state(self, u: torch.Tensor, state: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent state")
