"""Per-parameter learning rate and weight decay, shared by the convolution kernels and the MIMO mixers.

SSM papers train their recurrent parameters (A, B, dt, Lambda, ...) at their own learning rate and without
weight decay. A module that says so mixes in :class:`OwnParams`: it names the keys its ``lr`` / ``wd``
settings accept (``param_keys``), checks the settings once (``set_param_settings``) and registers each such
tensor with ``register(name, tensor, key, ssm)``, which tags the parameter with ``param._optim`` (read by
``ssmkit.train.optim.param_groups``) or, for an lr of 0 / null, makes it a frozen buffer. ``Kernel``
(``ssmkit/mixers/kernels/base.py``) and ``DiagonalMIMO`` (``ssmkit/mixers/mimo.py``, S5 and LRU) both use it.

``cache_key`` changes whenever a parameter or buffer changes in place, so derived tensors (step matrices,
kernels) can be cached safely.
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


def check_param_settings(lr, wd, param_keys: tuple[str, ...], owner: str) -> None:
    """``lr`` and ``wd``: None, a number >= 0, or a dict whose keys are among ``param_keys``."""
    for name, spec in (("lr", lr), ("wd", wd)):
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - set(param_keys))
            if unknown:
                raise ValueError(f"unknown {name} key(s) {unknown} for {owner}; allowed: {', '.join(param_keys)}")
        elif spec is not None and not isinstance(spec, (int, float)):
            raise ValueError(f"{name} must be a number or a dict, got {spec!r}")
        elif isinstance(spec, (int, float)) and spec < 0:
            raise ValueError(f"{name} must be >= 0, got {spec}")


class OwnParams:
    """Mixin for an ``nn.Module`` whose parameters carry their own lr / weight decay (module docstring)."""

    #: the names accepted in ``lr`` / ``wd`` dicts
    param_keys: tuple[str, ...] = ()

    def set_param_settings(self, lr, wd) -> None:
        """Checks and keeps the ``lr`` / ``wd`` settings; call before the first ``register``."""
        check_param_settings(lr, wd, self.param_keys, type(self).__name__)
        self._lr = lr
        self._wd = wd

    def register(self, name: str, tensor: torch.Tensor, key: str, ssm: bool = True) -> None:
        """Registers ``tensor`` as a parameter with its own lr/wd, or as a buffer if frozen.

        The lr for ``key`` is looked up in this module's ``lr`` setting: a key absent (or a plain ``lr``
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

    def cache_key(self, *extra) -> tuple:
        """Changes whenever a parameter or buffer changes in place (optimizer step, load_state_dict),
        moves device or dtype, or ``extra`` (e.g. the rate) changes."""
        return tuple((id(t), t._version, t.dtype, t.device) for t in (*self.parameters(), *self.buffers())) + extra
