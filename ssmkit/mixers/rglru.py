"""Griffin's recurrent block with the Real-Gated Linear Recurrent Unit (De et al. 2024, "Griffin: Mixing Gated
Linear Recurrences with Local Attention for Efficient Language Models", section 2.4 and Figure 2) as a token
mixer, u (B, H, L) -> y (B, H, L):

    g = GeLU(W_y u)                              H -> E  (the gate branch; E = lru_width = expand * H)
    x = Conv1D(W_x u)                            H -> E, then a causal depthwise convolution of width d_conv (4),
                                                 no activation
    r_t = sigmoid(W_a x_t + b_a)                 recurrence gate  } block-diagonal: n_heads blocks of E / n_heads
    i_t = sigmoid(W_i x_t + b_i)                 input gate       }
    log a_t = -c softplus(Lambda) r_t            c = 8; one Lambda per channel
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)
    y = W_out (h * g)                            E -> H

(google-deepmind/recurrentgemma, ``recurrentgemma/torch/modules.py`` ``RecurrentBlock`` and ``layers.py``
``RGLRU``, ``Conv1D``, ``BlockDiagonalLinear``.) Initialisation as there: a_0 = exp(-softplus(Lambda)) with a_0^2
uniform in [a_min^2, a_max^2] = [0.9^2, 0.999^2] (uniform on the ring's area; the paper's text says a^c there, the
code a itself, so a_t = a_0^(c r_t)); the gates' blocks N(0, 1 / block width) and zero biases; W_x, W_y N(0, 1 / H),
W_out N(0, 1 / E), zero biases; the convolution N(0, 0.01 / d_conv), zero bias; GeLU with the tanh approximation
(JAX's default, as the official code).

The recurrence is ``ssmkit.ops.scan.linear_scan`` (time-varying a: a doubling scan per chunk, its own adjoint
backward, float32 under autocast). sqrt(1 - a_t^2) is computed from log a_t as sqrt(-expm1(2 log a_t)), which
keeps its digits when a_t is close to 1 (1 - a^2 formed from a float32 a = 0.9999 keeps three); its derivative is
clipped where 1 - a^2 < 2.5e-7 (1/(2 sqrt) capped at 1000, as the official ``SqrtBoundDerivative``).

Causal RG-LRU is recurrent: the state (``RGLRUState``) is the last d_conv - 1 inputs of the convolution and h
(B, E); ``step`` and ``forward(state=...)`` equal the full forward. One difference from the official code: there
the first token of a document (``segment_pos == 0``) takes its input unscaled (multiplier 1, not sqrt(1 - a^2)) and
resets h; here every position follows the paper's equation (4), so a sequence and its continuation from a state
are the same computation. ``bidirectional=True`` adds a second conv + RG-LRU branch (its own W_x, convolution,
gates and Lambda) on the reversed sequence (within each sample's length), summed before the gate; it has no
recurrent state. ``lr`` sets the learning rate of Lambda (no weight decay, as the other SSMs' decay parameters).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.mixers.base import Mixer
from ssmkit.ops.causal_conv import last_inputs
from ssmkit.ops.linear import channels_first_linear
from ssmkit.ops.padding import flip_valid
from ssmkit.ops.scan import linear_scan

#: the largest derivative of sqrt(w) used in backward (recurrentgemma's _MAX_SQRT_GRADIENT)
MAX_SQRT_GRADIENT = 1000.0


class RGLRUState(NamedTuple):
    """conv: (*batch, E, d_conv - 1), the last inputs of the convolution; h: (*batch, E)."""

    conv: torch.Tensor
    h: torch.Tensor


class _InputScale(torch.autograd.Function):
    """sqrt(1 - a^2) from log a, as sqrt(-expm1(2 log a)), with the derivative of the sqrt clipped at 1000."""

    @staticmethod
    def forward(ctx, log_a):
        w = -torch.expm1(2 * log_a)
        ctx.save_for_backward(log_a, w)
        return torch.sqrt(w)

    @staticmethod
    def backward(ctx, grad):
        log_a, w = ctx.saved_tensors
        dsqrt = torch.rsqrt(torch.clamp(4 * w, min=1 / MAX_SQRT_GRADIENT**2))   # 1 / (2 sqrt(w)), capped
        return grad * dsqrt * (-2 * torch.exp(2 * log_a))


def input_scale(log_a: torch.Tensor) -> torch.Tensor:
    """sqrt(1 - a^2) for a = exp(log_a) <= 1 (see the module docstring)."""
    return _InputScale.apply(log_a)


class BlockDiagonal(nn.Module):
    """n_heads independent (E / n_heads)-square linear maps with biases, channels first: (B, E, ...) -> (B, E, ...)."""

    def __init__(self, width: int, n_heads: int):
        super().__init__()
        self.n_heads, self.block = n_heads, width // n_heads
        self.weight = nn.Parameter(torch.randn(n_heads, self.block, self.block) * math.sqrt(1 / self.block))
        self.bias = nn.Parameter(torch.zeros(n_heads, self.block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.unflatten(1, (self.n_heads, self.block))                          # (B, heads, i, ...)
        y = torch.einsum("bhi...,hij->bhj...", xs, self.weight.to(x.dtype))
        bias = self.bias.to(x.dtype).view(*self.bias.shape, *([1] * (x.dim() - 2)))
        return (y + bias).flatten(1, 2)


class RGLRUBranch(nn.Module):
    """One direction of the recurrent branch: W_x, Conv1D, RG-LRU. (B, H, L) -> h (B, E, L)."""

    def __init__(self, d_model: int, width: int, n_heads: int, d_conv: int, c: float, a_min: float, a_max: float,
                 bias: bool, lr: float | None):
        super().__init__()
        self.width, self.d_conv, self.c = width, d_conv, c
        self.linear_x = nn.Linear(d_model, width, bias=bias)
        nn.init.normal_(self.linear_x.weight, std=math.sqrt(1 / d_model))
        self.conv1d = nn.Conv1d(width, width, d_conv, groups=width, bias=True)
        nn.init.normal_(self.conv1d.weight, std=math.sqrt(0.01 / d_conv))
        nn.init.zeros_(self.conv1d.bias)
        self.input_gate = BlockDiagonal(width, n_heads)
        self.a_gate = BlockDiagonal(width, n_heads)
        # a_0 = exp(-softplus(Lambda)), a_0^2 ~ U[a_min^2, a_max^2]; Lambda = softplus^-1(-log a_0)
        neg_log_a = -0.5 * torch.log(torch.empty(width).uniform_(a_min**2, a_max**2))
        self.a_param = nn.Parameter(neg_log_a + torch.log(-torch.expm1(-neg_log_a)))
        self.a_param._optim = {"weight_decay": 0.0, **({} if lr is None else {"lr": float(lr)})}
        if bias:
            nn.init.zeros_(self.linear_x.bias)

    def _conv(self, x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """Causal depthwise convolution of x (B, E, L) after prev (B, E, d_conv - 1) (zeros when None)."""
        k1 = self.d_conv - 1
        prev = x.new_zeros(*x.shape[:2], k1) if prev is None else prev.to(x.dtype)
        w, b = self.conv1d.weight, self.conv1d.bias
        return F.conv1d(torch.cat([prev, x], dim=-1), w.to(x.dtype), b.to(x.dtype), groups=self.width)

    def _gates(self, x: torch.Tensor):
        """x (B, E, ...) after the convolution -> log a, the normalised input sqrt(1 - a^2) i x; float32 at least."""
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        with torch.autocast(device_type=x.device.type, enabled=False):
            r = torch.sigmoid(self.a_gate(x))
            i = torch.sigmoid(self.input_gate(x))
            softplus = F.softplus(self.a_param.to(x.dtype)).view(-1, *([1] * (x.dim() - 2)))
            log_a = -self.c * softplus * r
            return log_a, input_scale(log_a) * (i * x)

    def forward(self, u: torch.Tensor, state: RGLRUState | None = None, return_state: bool = False):
        x = channels_first_linear(u, self.linear_x.weight, self.linear_x.bias)
        prev = None if state is None else state.conv
        log_a, b = self._gates(self._conv(x, prev))
        h, h_last = linear_scan(torch.exp(log_a), b, None if state is None else state.h)
        if not return_state:
            return h, None
        return h, RGLRUState(last_inputs(x, None if prev is None else prev.to(x.dtype), self.d_conv - 1), h_last)

    def default_state(self, *batch_shape: int, device=None) -> RGLRUState:
        ref = self.a_param
        kw = dict(device=device or ref.device, dtype=torch.float64 if ref.dtype == torch.float64 else torch.float32)
        return RGLRUState(torch.zeros(*batch_shape, self.width, self.d_conv - 1, **kw),
                          torch.zeros(*batch_shape, self.width, **kw))

    def step(self, u: torch.Tensor, state: RGLRUState):
        """u (B, H) -> h (B, E), next state."""
        x = self.linear_x(u)
        window = torch.cat([state.conv.to(x.dtype), x.unsqueeze(-1)], dim=-1)   # (B, E, d_conv)
        xc = (window * self.conv1d.weight.squeeze(1).to(x.dtype)).sum(-1) + self.conv1d.bias.to(x.dtype)
        log_a, b = self._gates(xc)
        h = torch.exp(log_a) * state.h.to(log_a.dtype) + b
        return h, RGLRUState(window[..., 1:], h)


class RGLRU(Mixer):
    """Griffin's recurrent block (RG-LRU) as a token mixer: u (B, H, L) -> y (B, H, L) (see the module docstring).

    Args:
        d_model: H.
        bidirectional: add a reversed-direction conv + RG-LRU branch (no recurrent state then).
        expand: E = lru_width = expand * H recurrent channels (1, recurrentgemma's lru_width = width).
        n_heads: blocks of the block-diagonal gate maps (1: dense gates); must divide E.
        d_conv: temporal width of the causal convolution (4).
        c: the constant in log a_t = -c softplus(Lambda) r_t (8).
        a_min, a_max: the initial a_0 = exp(-softplus(Lambda)) lies on this ring, a_0^2 uniform (0.9, 0.999).
        bias: biases of W_x, W_y and W_out (True, as the official code).
        lr: learning rate of Lambda (None: the optimizer's); it gets no weight decay.
    """

    name = "rglru"

    def __init__(
        self,
        d_model: int,
        bidirectional: bool = False,
        expand: float = 1,
        n_heads: int = 1,
        d_conv: int = 4,
        c: float = 8.0,
        a_min: float = 0.9,
        a_max: float = 0.999,
        bias: bool = True,
        lr: float | None = None,
    ):
        super().__init__()
        width = int(expand * d_model)
        if expand <= 0 or width < 1:
            raise ValueError(f"expand must be positive (lru_width = expand * d_model channels), got {expand}")
        if not isinstance(n_heads, int) or n_heads < 1 or width % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide lru_width = expand * d_model = {width}; "
                             f"use n_heads=1 or a divisor of {width}")
        if not isinstance(d_conv, int) or d_conv < 1:
            raise ValueError(f"d_conv must be a positive integer (the convolution's temporal width), got {d_conv}")
        if not c > 0:
            raise ValueError(f"c must be > 0 (log a_t = -c softplus(Lambda) r_t), got {c}")
        if not 0 < a_min <= a_max < 1:
            raise ValueError(f"need 0 < a_min <= a_max < 1 (the initial decays), got a_min={a_min}, a_max={a_max}")
        if lr is not None and lr < 0:
            raise ValueError(f"lr must be >= 0 or null, got {lr}")
        self.d_model, self.width, self.bidirectional = d_model, width, bidirectional
        opts = (d_model, width, n_heads, d_conv, float(c), a_min, a_max, bias, lr)
        self.linear_y = nn.Linear(d_model, width, bias=bias)
        nn.init.normal_(self.linear_y.weight, std=math.sqrt(1 / d_model))
        self.rglru = RGLRUBranch(*opts)
        self.rglru_reverse = RGLRUBranch(*opts) if bidirectional else None
        self.linear_out = nn.Linear(width, d_model, bias=bias)
        nn.init.normal_(self.linear_out.weight, std=math.sqrt(1 / width))
        for lin in (self.linear_y, self.linear_out):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    @property
    def has_state(self) -> bool:
        return not self.bidirectional

    def no_state_reason(self) -> str:
        return "bidirectional=True reads the whole sequence (set bidirectional=False for a recurrence)"

    def forward(self, u: torch.Tensor, state: RGLRUState | None = None, return_state: bool = False,
                lengths: torch.Tensor | None = None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L); causal RG-LRU may start from a state and return the next one.

        ``lengths`` (B,) marks suffix padding (zeroed by the block): the causal branch never reads what follows a
        position; the reversed branch reverses each sample within its length."""
        self.check_call(u, state, return_state, lengths, rate)
        g = F.gelu(channels_first_linear(u, self.linear_y.weight, self.linear_y.bias), approximate="tanh")
        h, next_state = self.rglru(u, state, return_state)
        if self.rglru_reverse is not None:
            flip = (lambda t: t.flip(-1)) if lengths is None else (lambda t: flip_valid(t, lengths))  # noqa: E731
            h = h + flip(self.rglru_reverse(flip(u))[0])
        y = (h * g).to(self.linear_out.weight.dtype)  # (autocast casts it again for the GEMM)
        y = channels_first_linear(y, self.linear_out.weight, self.linear_out.bias)
        return (y, next_state) if return_state else y

    def default_state(self, *batch_shape: int, device=None) -> RGLRUState:
        if not self.has_state:
            raise self.refuse_state()
        return self.rglru.default_state(*batch_shape, device=device)

    def step(self, u: torch.Tensor, state: RGLRUState):
        """One token u (B, H) -> y (B, H), next state."""
        if not self.has_state:
            raise self.refuse_state("recurrent step")
        g = F.gelu(self.linear_y(u), approximate="tanh")
        h, state = self.rglru.step(u, state)
        return self.linear_out((h * g).to(self.linear_out.weight.dtype)), state
