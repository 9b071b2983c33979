"""The contract every convolution kernel follows.

A kernel is an ``nn.Module`` that makes a (C, H, L) convolution kernel for a given length and, where
its math has a recurrence, steps that recurrence one token at a time. ``SequenceLayer`` does the rest
(FFT convolution, skip, activation, output projection).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

# A per-parameter setting: a float, or a dict {param_name: float | None}.
LrSpec = "float | dict[str, float | None] | None"


def log_uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Samples exp(U[log low, log high])."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={low}, dt_max={high}")
    r = torch.rand(shape, generator=generator)
    return torch.exp(r * (math.log(high) - math.log(low)) + math.log(low))


def _lookup(spec, key: str, default):
    if isinstance(spec, dict):
        return spec.get(key, default)
    return default if spec is None else spec


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


def _dense_grad(grad: torch.Tensor) -> torch.Tensor:
    """The gradient with the parameter's row-major strides. A (C=1, H, N, 2) parameter read through
    ``view_as_complex`` gets a gradient whose size-1 dimension has another stride; DDP then warns on every
    step ("grad strides do not match bucket view strides") and copies it into its bucket the slow way."""
    expected, step = [], 1
    for size in reversed(grad.shape):
        expected.append(step)
        step *= size
    if grad.stride() == tuple(reversed(expected)):
        return grad
    return grad.new_empty(grad.shape).copy_(grad)


class Kernel(nn.Module):
    """Base class: parameter registration with per-parameter lr / weight decay, and the step API.

    Subclasses implement ``forward(L, rate=1.0, state=None) -> (K (C, H, L), K_state (B, C, H, L) | None)``.
    Recurrent kernels also implement ``default_state``, ``setup_step``, ``step`` and ``forward_state``.
    """

    #: the kernel has a recurrence: step(), default_state(), and forward from a state
    has_state: bool = False
    #: the names accepted in ``lr`` / ``wd`` dicts
    param_keys: tuple[str, ...] = ()

    def __init__(self, d_model: int, channels: int = 1, lr=None, wd=None):
        super().__init__()
        if d_model <= 0 or channels <= 0:
            raise ValueError(f"d_model and channels must be positive, got d_model={d_model}, channels={channels}")
        for name, spec in (("lr", lr), ("wd", wd)):
            if isinstance(spec, dict):
                unknown = sorted(set(spec) - set(self.param_keys))
                if unknown:
                    raise ValueError(
                        f"unknown {name} key(s) {unknown} for kernel {type(self).__name__}; "
                        f"allowed: {', '.join(self.param_keys)}"
                    )
            elif spec is not None and not isinstance(spec, (int, float)):
                raise ValueError(f"{name} must be a number or a dict, got {spec!r}")
            elif isinstance(spec, (int, float)) and spec < 0:
                raise ValueError(f"{name} must be >= 0, got {spec}")
        self.H = d_model
        self.channels = channels
        self._lr = lr
        self._wd = wd

    def register(self, name: str, tensor: torch.Tensor, key: str, ssm: bool = True) -> None:
        """Registers ``tensor`` as a parameter with its own lr/wd, or as a buffer if frozen.

        The lr for ``key`` is looked up in this kernel's ``lr`` setting: a key absent (or a plain ``lr``
        of None) means the optimizer's lr; an explicit 0 or null in an lr dict freezes the tensor.
        SSM parameters (``ssm=True``: A, B, dt, ...) get weight decay 0 unless ``wd`` says otherwise;
        output-side parameters (``ssm=False``: C, W, ...) follow the optimizer unless told otherwise.
        """
        lr = _lookup(self._lr, key, "default")
        if lr == 0 or (isinstance(self._lr, dict) and key in self._lr and lr is None):
            self.register_buffer(name, tensor)
            return
        self.register_parameter(name, nn.Parameter(tensor))
        getattr(self, name).register_hook(_dense_grad)
        optim = {}
        wd = _lookup(self._wd, key, 0.0 if ssm else None)
        if wd is not None:
            optim["weight_decay"] = float(wd)
        if lr != "default" and (ssm or isinstance(self._lr, dict)):
            optim["lr"] = float(lr)
        if optim:
            getattr(self, name)._optim = optim  # read by ssmkit.train.optim.param_groups

    # --- recurrent API (overridden by kernels that have a recurrence) ---
    def default_state(self, *batch_shape: int, device=None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent state")

    def setup_step(self, rate: float = 1.0) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent step")

    def step(self, u: torch.Tensor, state: torch.Tensor):
        raise NotImplementedError(f"{type(self).__name__} has no recurrent step")

    def forward_state(self, u: torch.Tensor, state: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no recurrent state")

    # --- caching of derived tensors (step matrices, kernels) ---
    def cache_key(self, *extra) -> tuple:
        """Changes whenever a parameter or buffer changes in place (optimizer step, load_state_dict),
        moves device or dtype, or ``extra`` (e.g. the rate) changes."""
        return tuple((id(t), t._version, t.dtype, t.device) for t in (*self.parameters(), *self.buffers())) + extra
