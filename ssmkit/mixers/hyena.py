"""Hyena (Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon, Re 2023, "Hyena Hierarchy: Towards Larger
Convolutional Language Models"): order-N gated long convolutions as a token mixer, u (B, H, L) -> y (B, H, L).

    v, x_1, ..., x_N (, x_pre) = split(ShortConv(in_proj(u)))        in_proj: H -> P H, P = N + 1 (+ 1)
    v <- x_pre * v                                                   only with ``pre_gate``
    for n = 1..N:  v_t <- x_n,t * ( sum_{s <= t} h_n[t - s] v_s  +  D_n v_t )
    y = out_proj(activation(v))                                      ``self.post``, an OutputMap

(Definition 3.1 and Algorithm 3 of the paper: N long filters h_n, each convolution followed by its gate.)
ShortConv is a causal depthwise convolution of width ``short_filter_order`` (3) over all P H channels, with a
bias; D_n (the reference's filter ``bias``, drawn from N(0, 1)) is the skip of each long convolution. The long
convolutions run in ``ssmkit.ops.fftconv.fftconv`` (float32, or float64 for float64 inputs, never in half
precision). The reference code (HazyResearch/safari ``src/models/sequence/hyena.py``, and zoology's
``zoology/mixers/hyena.py``) gates *before* each of its order - 1 convolutions and once after the last, so its
``order: 2`` is ours with ``order: 1, pre_gate: true`` (the same map, same parameter count).

Filters (``filter``; their options in the nested ``filter_options`` dict):

- ``implicit`` (default; ``ImplicitFilter``): h_n(t) = Window(t) FFN(PositionalEncoding(t)) as the reference's
  ``HyenaFilter``: the encoding is [t, cos(f_k w_t), -sin(f_k w_t)] with t = linspace(0, 1, l_max),
  w_t = 2 pi t' / l_max for t' = 0..l_max-1, and (emb_dim - 1)/2 bands f_k = linspace(1e-4, bands - 1, bands)
  (learned at ``lr_pos_emb``, 1e-5); the FFN is Linear(emb_dim, filter_order), Sin, ``num_inner_mlps`` x
  (Linear, Sin), Linear(filter_order, N H, no bias), with one Sin shared by every layer, sin(freq * x), freq
  initialised to ``w`` (1) and learned; the window multiplies channel c by exp(-t |delta_c|) + shift with
  delta = linspace(ln(target)/slow_decay_pct, ln(target)/fast_decay_pct, N H) (frozen unless ``modulation_lr``).
  Channel c of the FFN's output is filter n = c mod N of feature h = c div N, as the reference lays it out. The
  filter has ``l_max`` taps: h_n[t] = 0 for t >= l_max (a longer input is convolved with the zero-extended
  filter, with a one-time warning).
- ``s4d`` / ``sgconv``: one kernel per order from ``ssmkit.mixers.kernels.KERNELS`` (``S4DKernel`` /
  ``SGConvKernel``), each with d_model = H and one channel; ``filter_options`` are that kernel's options
  (d_state, init, lr, l_max, ...). ``rate`` rescales the S4D filters' step size.

Streaming (``step`` and ``forward(state=..., return_state=True)``) is exact for every filter; the state is a
``HyenaState`` (the short convolution's last P H inputs, and the long convolutions' memory):

- ``implicit`` and ``sgconv``: the memory is the input *prefix* of each order's long convolution, the last
  min(t, S - 1) inputs (S = the filter's taps: ``l_max``, or the SGConv kernel's length), shape
  (B, N, H, T). A step convolves the prefix with the filter: O(N H min(t, S)) work per token and O(N H min(t, S))
  memory per sequence, so it grows with the context until S and stays there. ``forward`` from a state convolves
  [prefix, chunk] by FFT and keeps its last S - 1 inputs.
- ``s4d``: the memory is each order's S4D state (B, N, H, d_state/2) complex, stepped by the S4D recurrence
  (``S4DKernel.step``): O(N H d_state) work per token and constant memory; ``forward`` from a state adds the
  state's free response (``S4DKernel.forward(L, state=...)``) and carries it with ``forward_state``.

The filters' parameters get no weight decay (``param._optim``, read by ``ssmkit.train.optim.param_groups``) and
their own learning rate where ``filter_options.lr`` is set, as the reference's; in_proj, the short convolution
and out_proj follow the optimizer. Hyena is causal: ``lengths`` is accepted and not needed (the block zeroes the
padding, and no valid output reads a later position). Not implemented: the reference's multi-head and
``outer_mixing``/``post_order_ffn`` variants, ``num_blocks`` and the bidirectional filter (none is in the paper's
main results); the reference's dropout inside the recurrence is here the output map's ``dropout``.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.mixers.base import Mixer
from ssmkit.mixers.kernels import KERNELS
from ssmkit.mixers.output import OutputMap
from ssmkit.ops.fftconv import fftconv
from ssmkit.ops.linear import channels_first_linear
from ssmkit.registry import check_options, did_you_mean

FILTERS = ("implicit", "s4d", "sgconv")
#: kernel options that Hyena sets itself (one kernel per order, H features, one channel)
_SET_BY_HYENA = ("d_model", "channels")


class HyenaState(NamedTuple):
    """conv: (*batch, P H, short_filter_order - 1), the short convolution's last inputs; memory: the long
    convolutions' memory, (*batch, N, H, T) input prefixes (implicit, sgconv) or (*batch, N, H, n) complex S4D
    states (s4d)."""

    conv: torch.Tensor
    memory: torch.Tensor


def _tag(p: nn.Parameter, lr: float | None) -> None:
    """A filter parameter: no weight decay, and its own lr when one is given."""
    p._optim = {"weight_decay": 0.0, **({} if lr is None else {"lr": float(lr)})}


def _check_lr(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        raise ValueError(f"hyena filter option {name} must be a number >= 0 or null, got {value!r}")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"hyena option {name} must be an integer >= {low}, got {value!r}")


class Sin(nn.Module):
    """sin(freq * x) with a learned frequency per feature (the reference's periodic activation)."""

    def __init__(self, width: int, w: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((width,), float(w)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """Hyena's implicit long filters: N filters of H features from one FFN over a positional encoding, times an
    exponential window (see the module docstring for the formulas).

    Args:
        d_model: H. n_filters: N (set by ``Hyena``).
        l_max: the filter's taps (positions 0..l_max-1; zero beyond). The encoding is normalised to it.
        emb_dim: features of the positional encoding (t, then (emb_dim - 1)/2 cosine and sine bands); odd, >= 3.
        filter_order: width of the FFN. num_inner_mlps: its hidden (Linear, Sin) layers after the first.
        w: initial frequency of the Sin activations.
        fast_decay_pct, slow_decay_pct, target: the window's decay rates run from ln(target)/slow_decay_pct to
            ln(target)/fast_decay_pct over the N H channels. shift: added to the window. modulate: apply it.
        lr: learning rate of the FFN and Sin frequencies (None: the optimizer's); lr_pos_emb: of the positional
            encoding (0 freezes it); modulation_lr: of the window's decay rates (0, the default, freezes them).
            None of them gets weight decay.
    """

    def __init__(self, d_model: int, n_filters: int, l_max: int = 1024, emb_dim: int = 3, filter_order: int = 64,
                 num_inner_mlps: int = 2, w: float = 1.0, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 target: float = 1e-2, shift: float = 0.0, modulate: bool = True, lr: float | None = None,
                 lr_pos_emb: float | None = 1e-5, modulation_lr: float | None = 0.0):
        super().__init__()
        _check_int("filter_options.l_max", l_max, 1)
        _check_int("filter_options.filter_order", filter_order, 1)
        _check_int("filter_options.num_inner_mlps", num_inner_mlps, 0)
        if isinstance(emb_dim, bool) or not isinstance(emb_dim, int) or emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"hyena filter option emb_dim must be an odd integer >= 3 (t, then cosine and sine "
                             f"bands), got {emb_dim!r}")
        if not 0 < target < 1:
            raise ValueError(f"hyena filter option target must be in (0, 1) (the window's value at t = its decay "
                             f"pct), got {target}")
        if not (fast_decay_pct > 0 and slow_decay_pct > 0):
            raise ValueError(f"hyena filter options fast_decay_pct and slow_decay_pct must be positive, got "
                             f"{fast_decay_pct}, {slow_decay_pct}")
        for name, value in (("lr", lr), ("lr_pos_emb", lr_pos_emb), ("modulation_lr", modulation_lr)):
            _check_lr(name, value)
        self.d_model, self.n_filters, self.l_max, self.modulate = d_model, n_filters, l_max, modulate
        self.shift = float(shift)
        width = d_model * n_filters

        t = torch.linspace(0, 1, l_max, dtype=torch.float64).unsqueeze(-1)  # (S, 1)
        bands = (emb_dim - 1) // 2
        angle = 2 * math.pi * torch.arange(l_max, dtype=torch.float64).unsqueeze(-1) / l_max  # (S, 1)
        f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)  # (bands,)
        z = torch.cat([t, torch.cos(f * angle), -torch.sin(f * angle)], dim=-1).float()  # exp(-i f w) = cos - i sin
        self.register_buffer("t", t.float())
        self._register("z", z, lr_pos_emb)
        deltas = torch.linspace(math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct, width)
        self._register("deltas", deltas, modulation_lr)

        self.act = Sin(filter_order, w)  # one activation, shared by every layer (as the reference's)
        dims = [emb_dim] + [filter_order] * (num_inner_mlps + 1)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(filter_order, width, bias=False)
        for p in (*self.act.parameters(), *self.linears.parameters(), *self.out.parameters()):
            _tag(p, lr)
        self._warned_long = False

    def _register(self, name: str, tensor: torch.Tensor, lr: float | None) -> None:
        if lr == 0:
            self.register_buffer(name, tensor)
            return
        self.register_parameter(name, nn.Parameter(tensor))
        _tag(getattr(self, name), lr)

    @property
    def support(self) -> int:
        """Taps of the filter (zero beyond)."""
        return self.l_max

    def forward(self, L: int) -> torch.Tensor:
        """The N filters' first min(L, l_max) taps, (N, H, min(L, l_max)), in the parameters' dtype."""
        if L > self.l_max and not self._warned_long:
            warnings.warn(f"hyena's implicit filter has l_max={self.l_max} taps but the input has L={L}; "
                          "positions further apart do not interact. Raise filter_options.l_max to cover L.",
                          stacklevel=3)
            self._warned_long = True
        n = min(L, self.l_max)
        with torch.autocast(device_type=self.t.device.type, enabled=False):
            h = self.z[:n]
            for linear in self.linears:
                h = self.act(linear(h))
            h = self.out(h)  # (n, N H)
            if self.modulate:
                h = h * (torch.exp(-self.t[:n] * self.deltas.abs()) + self.shift)
        return h.view(n, self.d_model, self.n_filters).permute(2, 1, 0)  # channel h N + k -> filter k, feature h


class Hyena(Mixer):
    """The Hyena operator as a token mixer (see the module docstring).

    Args:
        d_model: H.
        order: N, the number of long convolutions (and gates); 2 as the paper's Hyena.
        filter: ``implicit`` (an FFN over a positional encoding, windowed), ``s4d`` or ``sgconv`` (a convolution
            kernel from ``ssmkit.mixers.kernels`` per order).
        filter_options: the filter's own options (``ImplicitFilter``'s, or the kernel's), e.g.
            ``{l_max: 2048, emb_dim: 33}`` or ``{d_state: 64, lr: 0.001}``.
        short_filter_order: width of the causal depthwise convolution after in_proj (3).
        pre_gate: gate v by one more projection before the first long convolution (the reference code's form:
            its ``order: 2`` is ``order: 1, pre_gate: true``).
        D: learn the skip D_n v of each long convolution (the reference's filter ``bias``).
        activation, output, dropout, tie_dropout: the end, an ``OutputMap`` (``self.post``): activation (None, the
            reference's identity) -> dropout -> ``linear`` out_proj (or ``glu``, or None).
    """

    name = "hyena"

    def __init__(self, d_model: int, order: int = 2, filter: str = "implicit", filter_options: dict | None = None,
                 short_filter_order: int = 3, pre_gate: bool = False, D: bool = True, activation: str | None = None,
                 output: str | None = "linear", dropout: float = 0.0, tie_dropout: bool = False):
        super().__init__()
        _check_int("d_model", d_model, 1)
        _check_int("order", order, 1)
        _check_int("short_filter_order", short_filter_order, 1)
        if filter not in FILTERS:
            raise ValueError(f"unknown hyena filter {filter!r}{did_you_mean(filter, FILTERS)}; choose one of "
                             f"{', '.join(FILTERS)}")
        if filter_options is None:
            filter_options = {}
        if not isinstance(filter_options, dict):
            raise ValueError(f"hyena option filter_options must be a mapping of the {filter} filter's options, "
                             f"got {filter_options!r}")
        self.d_model, self.order, self.filter_name, self.pre_gate = d_model, order, filter, bool(pre_gate)
        self.short_filter_order = short_filter_order
        self.n_proj = order + 1 + self.pre_gate
        width = self.n_proj * d_model
        self.in_proj = nn.Linear(d_model, width)
        self.short_filter = nn.Conv1d(width, width, short_filter_order, groups=width)
        if filter == "implicit":
            check_options(ImplicitFilter, filter_options, "hyena's implicit filter (filter_options)",
                          skip=("d_model", "n_filters"))
            self.filters = ImplicitFilter(d_model, order, **filter_options)
        else:
            cls = KERNELS.get(filter)
            shadowed = [k for k in _SET_BY_HYENA if k in filter_options]
            if shadowed:
                raise ValueError(f"hyena sets the {filter} filter's {shadowed[0]} itself (H features, one channel "
                                 f"per order); drop filter_options.{shadowed[0]}")
            check_options(cls, filter_options, f"hyena's {filter} filter (filter_options)", skip=_SET_BY_HYENA)
            self.filters = nn.ModuleList(cls(d_model, channels=1, **filter_options) for _ in range(order))
        self.recurrent = filter == "s4d"  # the memory is SSM states, not input prefixes
        self.has_rate = self.recurrent
        self.D = nn.Parameter(torch.randn(order, d_model)) if D else None
        if self.D is not None:
            self.D._optim = {"weight_decay": 0.0}  # a skip, as every mixer's D (param_groups: names ending in .D)
        self.post = OutputMap(d_model, d_model, activation, output, dropout, tie_dropout)
        self._step_cache = (None, None)

    # --- what this mixer can do ---
    @property
    def has_state(self) -> bool:
        return True

    @property
    def support(self) -> int | None:
        """Taps of the long filters (None: an S4D filter, whose memory is its state)."""
        if self.recurrent:
            return None
        return self.filters.support if self.filter_name == "implicit" else self.filters[0].length

    # --- the pieces ---
    def filter_kernels(self, L: int, rate: float = 1.0) -> torch.Tensor:
        """The N long filters (N, H, Lk) for inputs of length L (Lk = min(L, support)), without D."""
        self.check_rate(rate)
        if self.filter_name == "implicit":
            return self.filters(L)
        return torch.stack([k(L, rate=rate)[0][0] for k in self.filters])

    def _short_conv(self, z: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise convolution of z (B, P H, L) after ``prev`` (B, P H, w - 1) (zeros when None);
        returns the output and the next ``prev``."""
        w = self.short_filter_order
        if prev is None:
            prev = z.new_zeros(*z.shape[:-1], w - 1)
        full = torch.cat([prev.to(z.dtype), z], dim=-1)
        out = F.conv1d(full, self.short_filter.weight, self.short_filter.bias, groups=z.shape[1])
        return out, full[..., full.shape[-1] - (w - 1):]

    def _keep(self, full: torch.Tensor) -> torch.Tensor:
        """The last min(len, support - 1) inputs: all a later position's convolution still reads."""
        keep = min(self.support - 1, full.shape[-1])
        return full[..., full.shape[-1] - keep:]

    def _skip(self, n: int, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.D is None:
            return y
        D = self.D[n].to(y.dtype)
        return y + (D.unsqueeze(-1) if v.dim() == 3 else D) * v

    # --- the contract ---
    def forward(self, u: torch.Tensor, state: HyenaState | None = None, return_state: bool = False,
                lengths: torch.Tensor | None = None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L); with ``return_state`` also the state after the last position."""
        self.check_call(u, state, return_state, lengths, rate)
        L = u.shape[-1]
        z = channels_first_linear(u, self.in_proj.weight, self.in_proj.bias)  # (B, P H, L)
        zc, conv_state = self._short_conv(z, None if state is None else state.conv)
        parts = zc.split(self.d_model, dim=1)
        v, gates = parts[0], parts[1: self.order + 1]
        if self.pre_gate:
            v = parts[-1] * v
        memory = []
        if self.recurrent:
            for n, kernel in enumerate(self.filters):
                s = None if state is None else state.memory.select(-3, n)
                K, K_state = kernel(L, rate=rate, state=s)
                y = fftconv(v, K[:1])[:, 0]
                if K_state is not None:
                    y = y + K_state[:, 0].to(y.dtype)
                if return_state:
                    memory.append(kernel.forward_state(v, self._ssm_state(s, v), rate))
                v = gates[n] * self._skip(n, v, y)
        else:
            T = 0 if state is None else state.memory.shape[-1]
            K = self.filter_kernels(T + L, rate)  # (N, H, min(T + L, support))
            for n in range(self.order):
                full = v if state is None else torch.cat([state.memory.select(-3, n).to(v.dtype), v], dim=-1)
                y = fftconv(full, K[n: n + 1])[:, 0, :, T:]
                if return_state:
                    memory.append(self._keep(full))
                v = gates[n] * self._skip(n, v, y)
        y = self.post(v)
        if not return_state:
            return y
        return y, HyenaState(conv_state, torch.stack(memory, dim=-3))

    def _ssm_state(self, s: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
        if s is not None:
            return s
        return self.filters[0].default_state(v.shape[0], device=v.device)

    def default_state(self, *batch_shape: int, device=None) -> HyenaState:
        ref = self.in_proj.weight
        device = device or ref.device
        conv = torch.zeros(*batch_shape, self.n_proj * self.d_model, self.short_filter_order - 1, dtype=ref.dtype,
                           device=device)
        if self.recurrent:
            memory = torch.stack([k.default_state(*batch_shape, device=device) for k in self.filters], dim=-3)
        else:
            memory = torch.zeros(*batch_shape, self.order, self.d_model, 0, dtype=ref.dtype, device=device)
        return HyenaState(conv, memory)

    def _step_key(self, rate: float) -> tuple:
        return tuple((id(t), t._version, t.dtype, t.device) for t in (*self.parameters(), *self.buffers())) + (rate,)

    def setup_step(self, rate: float = 1.0) -> None:
        """Computes the filters for ``step``: the flipped taps (N, H, support) for implicit/sgconv, the S4D
        step matrices for s4d. ``step`` calls it again whenever a parameter changed."""
        self.check_rate(rate)
        with torch.no_grad():
            if self.recurrent:
                for kernel in self.filters:
                    kernel.setup_step(rate)
                flipped = None
            else:
                flipped = self.filter_kernels(self.support, rate).flip(-1).contiguous()
        self._step_cache = (self._step_key(rate), flipped)
        self._step_rate = rate

    def step(self, u: torch.Tensor, state: HyenaState):
        """One token u (B, H) -> y (B, H), next state. Equals ``forward`` token by token; costs O(N H min(t,
        support)) for implicit/sgconv filters, O(N H d_state) for s4d (module docstring)."""
        rate = getattr(self, "_step_rate", 1.0)
        if self._step_cache[0] != self._step_key(rate):
            self.setup_step(rate)
        flipped = self._step_cache[1]
        z = F.linear(u, self.in_proj.weight, self.in_proj.bias)  # (B, P H)
        window = torch.cat([state.conv.to(z.dtype), z.unsqueeze(-1)], dim=-1)  # (B, P H, w)
        zc = (window * self.short_filter.weight.squeeze(1)).sum(-1) + self.short_filter.bias
        parts = zc.split(self.d_model, dim=-1)
        v, gates = parts[0], parts[1: self.order + 1]
        if self.pre_gate:
            v = parts[-1] * v
        memory = []
        for n in range(self.order):
            if self.recurrent:
                y, s = self.filters[n].step(v, state.memory.select(-3, n))
                y = y[..., 0, :]
                memory.append(s)
            else:
                full = torch.cat([state.memory.select(-3, n).to(v.dtype), v.unsqueeze(-1)], dim=-1)  # (B, H, T + 1)
                taps = flipped[n, :, flipped.shape[-1] - min(full.shape[-1], flipped.shape[-1]):]
                y = (full[..., full.shape[-1] - taps.shape[-1]:] * taps.to(v.dtype)).sum(-1)
                memory.append(self._keep(full))
            v = gates[n] * self._skip(n, v, y.to(v.dtype))
        return self.post.step(v), HyenaState(window[..., 1:], torch.stack(memory, dim=-3))
