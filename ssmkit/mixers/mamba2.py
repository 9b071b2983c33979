"""Mamba-2 (Dao and Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality"): the Mamba-2 block as a token mixer, u (B, H, L) -> y (B, H, L).

    z, xBC, dt = in_proj(u)                    H -> E + (E + 2 G N) + heads,  E = expand * H, heads = E / headdim
    x, B, C = SiLU(causal depthwise conv(xBC)) kernel d_conv over the E + 2 G N channels
    dt = softplus(dt + dt_bias)                one step size per head and position
    y = SSD(x, dt, A, B, C) + D x              A = -exp(A_log): one scalar decay per head; head h reads the B, C of
                                               group h // (heads / G); D one skip per head
    y = out_proj(RMSNorm_G(y * SiLU(z)))       gated RMSNorm (eps 1e-5) over each of the G groups of E / G channels

(section 7 and Figure 6 of the paper; state-spaces/mamba ``mamba_ssm/modules/mamba2.py``: d_state 128, d_conv 4,
expand 2, headdim 64, ngroups 1, no biases in the projections, a bias in the convolution.) Initialisation as there:
dt_bias = softplus^-1(dt), dt ~ exp(U[log dt_min, log dt_max]) floored at dt_init_floor; A ~ U[A_init_range]
(1, 16), stored as A_log; D = 1; the norm's weight 1; PyTorch's default for the linear layers and the convolution.
The SSD recurrence is ``ssmkit.ops.ssd`` (chunked in plain torch, bounded memory; the Triton kernel of the
optional ``mamba_ssm`` package on CUDA where ``backend`` allows it).

Causal Mamba-2 is recurrent: the state (``Mamba2State``) is the last d_conv - 1 inputs of the convolution and the
SSM state (B, heads, headdim, N); ``step`` and ``forward(state=...)`` equal the full forward.
``bidirectional=True`` adds a second SSD branch run on the reversed sequence (reversed within each sample's length
when ``lengths`` is given) with its own input projection of (x, B, C, dt), convolution, A, dt bias and D; the two
outputs are summed before the gated norm, which shares z, the norm and out_proj (as ssmkit's bidirectional
``mamba``); it has no recurrent state. (Hydra, Hwang et al. 2024, the quasiseparable bidirectional Mamba-2, is not
implemented.)

``rate`` must be 1: the step size dt is computed from the input, there is no fixed one to rescale.

``lr`` sets the learning rate of the SSM parameters (A_log, D and dt_bias); they never get weight decay
(``ssmkit.train.optim.param_groups`` reads their ``_optim`` tag), as in the Mamba-2 code. Not implemented:
``d_ssm`` (an SSM on part of the channels, the rest a gated MLP), ``dt_limit``, learnable initial states and
per-channel D (``D_has_hdim``), all off in the paper's models.
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
from ssmkit.ops.ssd import BACKENDS, ssd_scan, ssd_step


class Mamba2State(NamedTuple):
    """conv: (*batch, E + 2 G N, d_conv - 1), the last inputs of the convolution; ssm: (*batch, heads, headdim, N)."""

    conv: torch.Tensor
    ssm: torch.Tensor


class _GatedRMSNorm(torch.autograd.Function):
    """RMSNorm_G(y * silu(z)) * weight over each of G groups of channels (dim 1), fused by hand: the forward is
    four passes over (B, E, L) (silu, gate, norm, scale) writing one buffer, the backward recomputes the gate from
    y and z (autograd's graph of this would keep five (B, E, L) temporaries and make ~20 passes).

    y, z (B, E, ...), weight (E,), rstd computed per (batch, group, position)."""

    @staticmethod
    def forward(ctx, y, z, weight, groups: int, eps: float):
        out = F.silu(z).mul_(y)                                               # g = y silu(z)
        grouped = out.unflatten(1, (groups, -1))
        n = grouped.shape[2]
        rstd = torch.linalg.vector_norm(grouped, dim=2, keepdim=True).square_().div_(n).add_(eps).rsqrt_()
        grouped.mul_(rstd)
        out.mul_(weight.view(-1, *([1] * (y.dim() - 2))))
        ctx.save_for_backward(y, z, weight, rstd)
        ctx.groups = groups
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        y, z, weight, rstd = ctx.saved_tensors
        w = weight.view(-1, *([1] * (y.dim() - 2)))
        s = F.silu(z)
        h = (y * s).unflatten(1, (ctx.groups, -1)).mul_(rstd)                 # the normalised gate
        n = h.shape[2]
        g_h = (g_out * w).unflatten(1, (ctx.groups, -1))
        g_w = (g_out * h.flatten(1, 2)).sum(dim=[d for d in range(y.dim()) if d != 1])
        # d/dg of g rstd(g) at the normalised h: rstd (g_h - h mean(g_h h))
        mean = torch.linalg.vecdot(g_h, h, dim=2).unsqueeze(2).div_(n)
        g_g = g_h.addcmul_(h, mean, value=-1).mul_(rstd).flatten(1, 2)
        del h
        g_y = g_g * s
        g_z = torch.ops.aten.silu_backward(g_g.mul_(y), z)
        return g_y, g_z, g_w, None, None


def _tag(p: nn.Parameter, lr: float | None) -> None:
    """An SSM parameter: no weight decay, and its own lr when one is given."""
    p._optim = {"weight_decay": 0.0, **({} if lr is None else {"lr": float(lr)})}


class SSDBranch(nn.Module):
    """One direction between the input projection and the gate: conv + SiLU over (x, B, C), dt, the SSD scan."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, headdim: int, ngroups: int, A_init_range,
                 dt_min: float, dt_max: float, dt_init_floor: float, conv_bias: bool, chunk_size: int,
                 lr: float | None, backend: str):
        super().__init__()
        self.d_inner, self.d_state, self.d_conv, self.headdim, self.ngroups = d_inner, d_state, d_conv, headdim, ngroups
        self.nheads, self.chunk_size, self.backend = d_inner // headdim, chunk_size, backend
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=conv_bias)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.A_log, self.D, self.dt_bias):
            _tag(p, lr)

    def _split(self, xBC: torch.Tensor):
        """(b, conv_dim, ...) -> x (b, heads, P, ...), B, C (b, G, N, ...) as views (one ``split``: its backward
        is one concatenation, where three slices would each fill a zero gradient of the whole xBC and add to it)."""
        E, GN = self.d_inner, self.ngroups * self.d_state
        x, B, C = xBC.split([E, GN, GN], dim=1)
        return (x.unflatten(1, (self.nheads, self.headdim)), B.unflatten(1, (self.ngroups, self.d_state)),
                C.unflatten(1, (self.ngroups, self.d_state)))

    def _dt(self, dt: torch.Tensor) -> torch.Tensor:
        """softplus(dt + dt_bias) in float32 at least; dt (b, heads, ...)."""
        dt = dt.float() if dt.dtype in (torch.float16, torch.bfloat16) else dt
        bias = self.dt_bias.view(-1, *([1] * (dt.dim() - 2)))
        return F.softplus(dt + bias)

    def forward(self, xBC: torch.Tensor, dt: torch.Tensor, state: Mamba2State | None, return_state: bool):
        """xBC (b, conv_dim, L), dt (b, heads, L) before the bias -> y (b, E, L) and, with ``return_state``, the
        next state."""
        prev = None if state is None else state.conv.to(xBC.dtype)
        conv_backend = "torch" if self.backend == "torch" else "auto"
        xc = causal_conv1d_silu(xBC, self.conv1d.weight.squeeze(1), self.conv1d.bias, prev, backend=conv_backend)
        x, B, C = self._split(xc)
        h0 = None if state is None else state.ssm
        y, h = ssd_scan(x, self._dt(dt), -torch.exp(self.A_log), B, C, self.D, h0, chunk=self.chunk_size,
                        backend=self.backend)
        y = y.flatten(1, 2)
        if not return_state:
            return y, None
        return y, Mamba2State(last_inputs(xBC, prev, self.d_conv - 1), h)

    def default_state(self, *batch_shape: int, device=None) -> Mamba2State:
        ref = self.A_log
        kw = dict(device=device or ref.device, dtype=torch.float64 if ref.dtype == torch.float64 else torch.float32)
        return Mamba2State(torch.zeros(*batch_shape, self.conv_dim, self.d_conv - 1, **kw),
                           torch.zeros(*batch_shape, self.nheads, self.headdim, self.d_state, **kw))

    def step(self, xBC: torch.Tensor, dt: torch.Tensor, state: Mamba2State):
        """xBC (b, conv_dim), dt (b, heads) -> y (b, E), next state."""
        window = torch.cat([state.conv.to(xBC.dtype), xBC.unsqueeze(-1)], dim=-1)  # (b, conv_dim, d_conv)
        xc = (window * self.conv1d.weight.squeeze(1)).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias
        x, B, C = self._split(F.silu(xc))
        y, h = ssd_step(x, self._dt(dt), -torch.exp(self.A_log), B, C, self.D, state.ssm)
        return y.flatten(1), Mamba2State(window[..., 1:], h)


class Mamba2(Mixer):
    """The Mamba-2 block as a token mixer: u (B, H, L) -> y (B, H, L) (see the module docstring).

    Args:
        d_model: H.
        bidirectional: add a reversed-direction SSD branch (no recurrent state then).
        d_state: N, the state size per head and head channel (128).
        d_conv: width of the causal depthwise convolution (4).
        expand: E = expand * H inner channels (2).
        headdim: P, channels per head (64); must divide E.
        ngroups: G, groups of heads sharing B and C (1); must divide the number of heads E / P.
        A_init_range: the initial decay rates A are drawn uniformly from this range (1, 16).
        dt_min, dt_max: range of the initial step size (log-uniform), dt_init_floor its floor.
        chunk_size: positions per chunk of the SSD algorithm (a computation setting: results agree up to rounding).
        conv_bias, bias: biases of the convolution and of in_proj/out_proj (True, False as in the paper's code).
        norm_eps: epsilon of the gated RMSNorm (1e-5).
        lr: learning rate of A_log, D and dt_bias (None: the optimizer's); they get no weight decay.
        backend: SSD backend ``auto`` | ``torch`` | ``mamba_ssm`` (``torch`` also pins the causal convolution to
            its torch path).
    """

    name = "mamba2"

    def __init__(
        self,
        d_model: int,
        bidirectional: bool = False,
        d_state: int = 128,
        d_conv: int = 4,
        expand: float = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] | list[float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = 64,
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        lr: float | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        d_inner = int(expand * d_model)
        if d_state < 1 or d_conv < 1:
            raise ValueError(f"d_state and d_conv must be >= 1, got d_state={d_state}, d_conv={d_conv}")
        if expand <= 0 or d_inner < 1:
            raise ValueError(f"expand must be positive (E = expand * d_model channels), got {expand}")
        if not isinstance(headdim, int) or headdim < 1 or d_inner % headdim:
            divisors = [p for p in (8, 16, 32, 64, 128) if d_inner % p == 0] or [d_inner]
            raise ValueError(f"headdim={headdim} must divide E = expand * d_model = {d_inner}; "
                             f"set headdim to a divisor of {d_inner}, e.g. {divisors[-1]}")
        nheads = d_inner // headdim
        if not isinstance(ngroups, int) or ngroups < 1 or nheads % ngroups:
            raise ValueError(f"ngroups={ngroups} must divide the number of heads E / headdim = {nheads}; "
                             "use ngroups=1 or a divisor of the number of heads")
        if len(A_init_range) != 2 or not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"A_init_range must be [low, high] with 0 < low <= high, got {A_init_range}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        if norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {norm_eps}")
        if lr is not None and lr < 0:
            raise ValueError(f"lr must be >= 0 or null, got {lr}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown SSD backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.d_model, self.d_inner, self.nheads, self.ngroups = d_model, d_inner, nheads, ngroups
        self.bidirectional, self.norm_eps = bidirectional, norm_eps
        opts = (d_inner, d_state, d_conv, headdim, ngroups, tuple(A_init_range), dt_min, dt_max, dt_init_floor,
                conv_bias, chunk_size, lr, backend)
        self.ssd = SSDBranch(*opts)
        # order as in the paper's code: [z, x, B, C, dt]
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias)
        self.ssd_reverse = SSDBranch(*opts) if bidirectional else None
        self.in_proj_reverse = (nn.Linear(d_model, d_inner + 2 * ngroups * d_state + nheads, bias=bias)
                                if bidirectional else None)
        self.norm_weight = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    @property
    def has_state(self) -> bool:
        return not self.bidirectional

    def no_state_reason(self) -> str:
        return "bidirectional=True reads the whole sequence (set bidirectional=False for a recurrence)"

    def check_rate(self, rate: float) -> None:
        if rate != 1.0:
            raise ValueError(f"mixer {self.name!r} computes its step size from the input, so a sampling-rate factor "
                             f"cannot rescale it; got rate={rate}, use rate=1")

    def _project(self, u: torch.Tensor, linear: nn.Linear, start: int):
        """in_proj rows [start:] as contiguous (xBC, dt) pieces: one GEMM each (no copy before the convolution)."""
        W, b, conv_dim = linear.weight, linear.bias, self.ssd.conv_dim
        pieces = [(start, start + conv_dim), (start + conv_dim, W.shape[0])]
        return [channels_first_linear(u, W[i:j], None if b is None else b[i:j]) for i, j in pieces]

    def _gated_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """out_proj(RMSNorm over each group of E / G channels of y * silu(z), times the weight); channel dim 1."""
        dtype = torch.float64 if y.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=y.device.type, enabled=False):
            g = _GatedRMSNorm.apply(y.to(dtype), z.to(dtype), self.norm_weight.to(dtype), self.ngroups,
                                    self.norm_eps)
        g = g.to(self.out_proj.weight.dtype)  # (autocast casts it again for the GEMM)
        if g.dim() == 2:  # one token: nn.Linear on (B, E)
            return self.out_proj(g)
        return channels_first_linear(g, self.out_proj.weight, self.out_proj.bias)

    def forward(self, u: torch.Tensor, state: Mamba2State | None = None, return_state: bool = False,
                lengths: torch.Tensor | None = None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L); causal Mamba-2 may start from a state and return the next one.

        ``lengths`` (B,) marks suffix padding (zeroed by the block): the causal branch never reads what follows a
        position; the reversed branch reverses each sample within its length."""
        self.check_call(u, state, return_state, lengths, rate)
        W, b, E = self.in_proj.weight, self.in_proj.bias, self.d_inner
        z = channels_first_linear(u, W[:E], None if b is None else b[:E])
        xBC, dt = self._project(u, self.in_proj, E)
        y, next_state = self.ssd(xBC, dt, state, return_state)
        if self.ssd_reverse is not None:
            flip = (lambda t: t.flip(-1)) if lengths is None else (lambda t: flip_valid(t, lengths))  # noqa: E731
            xBC_r, dt_r = (flip(t) for t in self._project(u, self.in_proj_reverse, 0))
            y = y + flip(self.ssd_reverse(xBC_r, dt_r, None, False)[0])
        y = self._gated_out(y, z)
        return (y, next_state) if return_state else y

    def default_state(self, *batch_shape: int, device=None) -> Mamba2State:
        if not self.has_state:
            raise self.refuse_state()
        return self.ssd.default_state(*batch_shape, device=device)

    def step(self, u: torch.Tensor, state: Mamba2State):
        """One token u (B, H) -> y (B, H), next state."""
        if not self.has_state:
            raise self.refuse_state("recurrent step")
        E, conv_dim = self.d_inner, self.ssd.conv_dim
        z, xBC, dt = self.in_proj(u).split([E, conv_dim, self.nheads], dim=-1)
        y, state = self.ssd.step(xBC, dt, state)
        return self._gated_out(y, z), state
