"""Helpers shared by several test files."""
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def run_steps(layer, x: torch.Tensor, state, rate=None):
    """Feeds x (B, H, L) through ``layer.step`` token by token: returns (outputs (B, H, L), final state)."""
    ys = []
    for t in range(x.shape[-1]):
        y_t, state = layer.step(x[..., t], state, rate=rate)
        ys.append(y_t)
    return torch.stack(ys, -1), state


class MaxTensor(TorchDispatchMode):
    """Records the largest tensor any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def np_to_real(K: np.ndarray, mode: str, feature_axis: int = -2) -> np.ndarray:
    """The DLR paper's kernel_to_real in numpy: real, imag, sum, prod, real-prod (Re on the first H//2
    features along ``feature_axis``, Re * Im on the rest)."""
    re, im = K.real, K.imag
    if mode == "real-prod":
        H = K.shape[feature_axis]
        shape = [1] * K.ndim
        shape[feature_axis] = H
        return np.where((np.arange(H) < H // 2).reshape(shape), re, re * im)
    return {"real": re, "imag": im, "sum": re + im, "prod": re * im}[mode]
