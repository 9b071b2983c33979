"""Mamba (Gu and Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"): the
selective SSM block as a token mixer, u (B, H, L) -> y (B, H, L).

    x, z = in_proj(u)                               H -> 2 E,  E = expand * H
    x = SiLU(causal depthwise conv1d(x))            kernel d_conv, one filter per channel
    dt, B, C = x_proj(x)                            E -> dt_rank + 2 N (input-dependent: "selection")
    delta = softplus(dt_proj(dt))                   dt_rank -> E, bias initialised to softplus^-1(dt),
                                                    dt ~ exp(U[log dt_min, log dt_max]) (floored at dt_init_floor)
    y = selective_scan(x, delta, A, B, C, D)        A = -exp(A_log), A_log = log(1..N) (S4D-Real init)
    y = out_proj(y * SiLU(z))                       E -> H

(section 3.4 and Figure 3 of the paper; dt_rank = ceil(H / 16), N = 16, d_conv = 4, expand = 2 by default.)
The scan is ``ssmkit.ops.selective_scan`` (on the CPU the fused C++ scan of ssmkit's extension where it is
built, else plain torch, chunked, bounded memory; the fused ``mamba_ssm`` kernel on CUDA when installed and
``backend`` allows it).

Causal Mamba is recurrent: the state is the last d_conv - 1 inputs of the convolution and the SSM state
h (B, E, N) (``MambaState``); ``step`` and ``forward(state=...)`` equal the full forward.
``bidirectional=True`` adds a second SSM branch (its own conv, projections, A, D) run on the reversed
sequence and summed with the forward branch before the gate, sharing in_proj and out_proj (as the
bidirectional Mamba of Vision Mamba, Zhu et al. 2024); it has no recurrent state.

Mamba's output map is its own out_proj (no ``activation``/``output`` options: nothing follows the block).

``rate`` must be 1: the step size is computed from the input, there is no fixed one to rescale.

``lr`` sets the learning rate of the SSM parameters (A_log, D and the dt bias); they never get weight
decay (``ssmkit.train.optim.param_groups`` reads their ``_optim`` tag), as in the Mamba code.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.mixers.base import Mixer
from ssmkit.ops.causal_conv import causal_conv1d_silu, last_inputs
from ssmkit.ops.linear import channels_first_linear
from ssmkit.ops.padding import flip_valid
from ssmkit.ops.selective_scan import BACKENDS, selective_scan, selective_step


class MambaState(NamedTuple):
    """conv: (*batch, E, d_conv - 1), the last inputs of the convolution; ssm: (*batch, E, N)."""

    conv: torch.Tensor
    ssm: torch.Tensor


def _tag(p: nn.Parameter, lr: float | None) -> None:
    """An SSM parameter: no weight decay, and its own lr when one is given."""
    p._optim = {"weight_decay": 0.0, **({} if lr is None else {"lr": float(lr)})}


class SelectiveSSM(nn.Module):
    """The part of the block between in_proj and the gate, for one direction: conv, SiLU, selective SSM.

    Works on (B, E, L) channels-first: the projections are batched GEMMs with the Linear weights
    (``ssmkit.ops.linear``, 2-3x faster forward+backward on CPU than the same map as a 1x1 convolution).
    """

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int, dt_min: float, dt_max: float,
                 dt_init_floor: float, conv_bias: bool, lr: float | None, backend: str):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv, self.dt_rank, self.backend = d_inner, d_state, d_conv, dt_rank, backend
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        std = dt_rank**-0.5  # keeps the variance of dt_proj's output at initialisation (dt_scale 1)
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        for p in (self.A_log, self.D, self.dt_proj.bias):
            _tag(p, lr)

    def _ssm_inputs(self, x: torch.Tensor):
        """x (B, E, L) after conv + SiLU -> delta (B, E, L) float32+, B, C (B, N, L)."""
        dbc = channels_first_linear(x, self.x_proj.weight)
        dt, B, C = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=1)
        dt = channels_first_linear(dt, self.dt_proj.weight, self.dt_proj.bias)
        return F.softplus(dt.float() if dt.dtype in (torch.float16, torch.bfloat16) else dt), B, C

    def forward(self, x: torch.Tensor, state: MambaState | None = None, return_state: bool = False,
                z: torch.Tensor | None = None):
        """x (B, E, L) -> y (B, E, L) (times silu(z) when a gate z is given: fused into the scan where the
        backend can) and, with ``return_state``, the next state."""
        prev = None if state is None else state.conv.to(x.dtype)
        conv_backend = self.backend if self.backend in ("torch", "extension") else "auto"
        xc = causal_conv1d_silu(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, prev, backend=conv_backend)
        delta, B, C = self._ssm_inputs(xc)
        h0 = None if state is None else state.ssm
        y, h = selective_scan(xc, delta, -torch.exp(self.A_log), B, C, self.D, h0=h0, backend=self.backend, z=z)
        if not return_state:
            return y, None
        return y, MambaState(last_inputs(x, prev, self.d_conv - 1), h)

    def default_state(self, *batch_shape: int, device=None) -> MambaState:
        ref = self.A_log
        kw = dict(device=device or ref.device, dtype=torch.float64 if ref.dtype == torch.float64 else torch.float32)
        return MambaState(torch.zeros(*batch_shape, self.d_inner, self.d_conv - 1, **kw),
                          torch.zeros(*batch_shape, self.d_inner, self.d_state, **kw))

    def step(self, x: torch.Tensor, state: MambaState):
        """x (B, E) -> y (B, E), next state."""
        window = torch.cat([state.conv.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (B, E, d_conv)
        xc = (window * self.conv1d.weight.squeeze(1)).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        xc = F.silu(xc)
        delta, B, C = self._ssm_inputs(xc.unsqueeze(-1))
        y, h = selective_step(xc, delta[..., 0], -torch.exp(self.A_log), B[..., 0], C[..., 0], self.D, state.ssm)
        return y.to(x.dtype), MambaState(window[..., 1:], h)


class Mamba(Mixer):
    """The Mamba block as a token mixer: u (B, H, L) -> y (B, H, L) (see the module docstring).

    Args:
        d_model: H.
        bidirectional: add a reversed-direction SSM branch (no recurrent state then).
        d_state: N, states per channel (16).
        d_conv: width of the causal depthwise convolution (4).
        expand: E = expand * H inner channels (2).
        dt_rank: rank of the dt projection; ``auto`` is ceil(H / 16).
        dt_min, dt_max: range of the initial step size (log-uniform), dt_init_floor its floor.
        conv_bias, bias: biases of the convolution and of in_proj/out_proj (True, False as in the paper's code).
        lr: learning rate of A_log, D and the dt bias (None: the optimizer's); they get no weight decay.
        backend: selective-scan backend ``auto`` | ``torch`` | ``extension`` | ``mamba_ssm``; ``torch`` and
            ``extension`` also name the backend of the causal convolution (``ssmkit.ops.causal_conv``), else ``auto``.
    """

    name = "mamba"

    def __init__(
        self,
        d_model: int,
        bidirectional: bool = False,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        lr: float | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        if d_state < 1 or d_conv < 1:
            raise ValueError(f"d_state and d_conv must be >= 1, got d_state={d_state}, d_conv={d_conv}")
        if expand <= 0 or int(expand * d_model) < 1:
            raise ValueError(f"expand must be positive (E = expand * d_model channels), got {expand}")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"dt_rank must be a positive integer or 'auto', got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if lr is not None and lr < 0:
            raise ValueError(f"lr must be >= 0 or null, got {lr}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.d_model, self.d_inner = d_model, int(expand * d_model)
        self.bidirectional, self.causal = bidirectional, not bidirectional
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        opts = (self.d_inner, d_state, d_conv, dt_rank, dt_min, dt_max, dt_init_floor, conv_bias, lr, backend)
        self.ssm = SelectiveSSM(*opts)
        self.ssm_reverse = SelectiveSSM(*opts) if bidirectional else None

    @property
    def has_state(self) -> bool:
        return self.causal

    def no_state_reason(self) -> str:
        return "a bidirectional mixer sees the future"

    def check_rate(self, rate: float) -> None:
        if rate != 1.0:
            raise ValueError(f"mixer 'mamba' computes its step size from the input, so a sampling-rate factor cannot "
                             f"rescale it; got rate={rate}, use rate=1")

    def forward(self, u: torch.Tensor, state: MambaState | None = None, return_state: bool = False,
                lengths: torch.Tensor | None = None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L); causal Mamba may start from a state and return the next one.

        ``lengths`` (B,) marks suffix padding: the causal branch never reads what follows a position, and the
        reversed branch reverses each sample within its length, so it starts at the true end and never reads
        the padding."""
        self.check_call(u, state, return_state, lengths, rate)
        # in_proj as two GEMMs, one per half of its weight: x and z come out contiguous (no copy before the
        # convolution and the scan, no concatenation of their gradients in backward)
        E, weight, bias = self.d_inner, self.in_proj.weight, self.in_proj.bias
        x = channels_first_linear(u, weight[:E], None if bias is None else bias[:E])  # (B, E, L)
        z = channels_first_linear(u, weight[E:], None if bias is None else bias[E:])
        if self.ssm_reverse is None:  # the gate goes into the scan
            y, next_state = self.ssm(x, state, return_state, z=z)
        else:  # the two directions are summed before the gate
            y, next_state = self.ssm(x, state, return_state)
            flip = (lambda t: t.flip(-1)) if lengths is None else (lambda t: flip_valid(t, lengths))  # noqa: E731
            y = y + flip(self.ssm_reverse(flip(x))[0])
            y = y.to(z.dtype) * F.silu(z)
        y = channels_first_linear(y, self.out_proj.weight, self.out_proj.bias)
        return (y, next_state) if return_state else y

    def default_state(self, *batch_shape: int, device=None) -> MambaState:
        if not self.has_state:
            raise self.refuse_state()
        return self.ssm.default_state(*batch_shape, device=device)

    def step(self, x: torch.Tensor, state: MambaState):
        """One token x (B, H) -> y (B, H), next state."""
        if not self.has_state:
            raise self.refuse_state("recurrent step")
        x_in, z = self.in_proj(x).chunk(2, dim=-1)
        y, state = self.ssm.step(x_in, state)
        return self.out_proj(y * F.silu(z)), state
