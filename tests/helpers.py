"""Helpers shared by several test files."""
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def run_steps(mixer, x: torch.Tensor, state):
    """Feeds x (B, H, L) through ``mixer.step`` token by token (at the rate of its last ``setup_step``): returns
    (outputs (B, H, L), final state)."""
    ys = []
    for t in range(x.shape[-1]):
        y_t, state = mixer.step(x[..., t], state)
        ys.append(y_t)
    return torch.stack(ys, -1), state


def run_chunks(mixer, x: torch.Tensor, cuts, **kwargs):
    """x (B, H, L) through ``mixer.forward`` in pieces cut at ``cuts``, passing the state (``kwargs``, e.g. ``rate``,
    go to every call): returns (outputs (B, H, L), final state)."""
    bounds = [0, *cuts, x.shape[-1]]
    parts, state = [], None
    for a, b in zip(bounds[:-1], bounds[1:]):
        y, state = mixer(x[..., a:b], state=state, return_state=True, **kwargs)
        parts.append(y)
    return torch.cat(parts, -1), state


#: small options per mixer for the tests that run every registered mixer (tests/mixers/test_contract.py at length 24,
#: tests/models/test_padding.py): every part of each mixer matters at length 24, e.g. all of SGConv's scales
SMALL_MIXER_OPTIONS = {
    "s4": {"d_state": 4}, "s4d": {"d_state": 4}, "dss": {"d_state": 4}, "dlr": {"d_state": 4}, "lssl": {"d_state": 4},
    "sgconv": {"l_max": 24, "kernel_dim": 4}, "s5": {"d_state": 4}, "lru": {"d_state": 4}, "mamba": {"d_state": 4},
    "attn": {"n_heads": 2}, "gla": {"n_heads": 1, "chunk_size": 8}, "gated_deltanet": {"n_heads": 1, "chunk_size": 8},
    "mamba2": {"d_state": 4, "headdim": 4, "chunk_size": 8},
}


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


def hippo_closed_form(measure: str, N: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry by entry from the papers' definitions (HiPPO eq. 2 / App. D; HTTYH for FouT)."""
    A, B = np.zeros((N, N)), np.zeros(N)
    for n in range(N):
        for k in range(N):
            if measure == "legs":
                A[n, k] = -math.sqrt((2 * n + 1) * (2 * k + 1)) if n > k else (-(n + 1) if n == k else 0.0)
            elif measure == "legt":
                sign = 1.0 if n >= k else (-1.0) ** (n - k)
                A[n, k] = -0.5 * sign * math.sqrt((2 * n + 1) * (2 * k + 1))
            elif measure == "lagt":
                A[n, k] = -0.5 if n == k else (-1.0 if n > k else 0.0)
        B[n] = {"legs": math.sqrt(2 * n + 1), "legt": 0.5 * math.sqrt(2 * n + 1), "lagt": 1.0}.get(measure, 0.0)
    if measure in ("fourier", "fout"):
        b = np.array([1.0] + [math.sqrt(2) if n % 2 == 0 else 0.0 for n in range(1, N)])
        for j in range(N // 2):
            A[2 * j, 2 * j + 1], A[2 * j + 1, 2 * j] = -math.pi * j, math.pi * j
        A, B = A - np.outer(b, b), b
    return A, B


def _mamba_kernels():
    from ssmkit.ops import backends

    ext = backends.probe_extension()
    ok = ext.ok and all(hasattr(ext.module, f) for f in ("selective_scan_fwd", "causal_conv_silu_fwd"))
    return ok, ext.reason


#: whether the compiled extension with Mamba's fused CPU kernels is here, and a mark that skips a test if not
EXT_OK, _why = _mamba_kernels()
needs_ext = pytest.mark.skipif(not EXT_OK, reason=f"the compiled extension (with the Mamba kernels) is not built here: {_why}")
