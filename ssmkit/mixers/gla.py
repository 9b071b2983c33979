"""Gated linear attention (Yang, Wang, Shen, Panda, Kim 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training"; the layer of fla-org/flash-linear-attention ``fla/layers/gla.py``) as a token mixer,
u (B, H, L) -> y (B, H, L):

    q, k = u W_q, u W_k                  H -> dk total (expand_k 0.5), split into n_heads heads
    v    = u W_v                         H -> dv total (expand_v 1)
    log alpha = logsigmoid(u W_1 W_2 + b) / tau       low rank gate_low_rank_dim (16), tau = gate_logit_normalizer (16)
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,  o_t = q_t S_t / sqrt(dk)       per head (the state is (dk, dv))
    y = W_o (RMSNorm(o) * swish(u W_g))  RMSNorm over each head's dv features (one weight shared by the heads)

The recurrence runs chunked (``ssmkit.ops.linear_attention.chunk_gla``: chunks of ``chunk_size`` 64 with
nested blocks, every exponential <= 1, memory linear in L); ``step`` is the recurrence itself, on the state
(B, n_heads, dk, dv). Causal only. The gate's bias b is the decay parameter: ``lr`` sets its learning rate and it
gets no weight decay (its ``_optim`` tag, as Mamba's dt bias). Projections keep ``nn.Linear``'s initialisation,
like ssmkit's other mixers (fla's model classes re-draw them N(0, 0.02)). Not implemented: fla's optional short
convolutions, feature maps, grouped key/value heads and ``clamp_min`` beyond the plain clamp given here.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.mixers.base import Mixer
from ssmkit.ops.linear import channels_first_linear
from ssmkit.ops.linear_attention import SUB_CHUNK, chunk_gla, gla_step


def head_rms_norm(o: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension (each head's features), in float32 (float64 for float64)."""
    x = o.float() if o.dtype not in (torch.float32, torch.float64) else o
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def head_output(m: nn.Module, o: torch.Tensor, out_gate: torch.Tensor | None) -> torch.Tensor:
    """The end of GLA and Gated DeltaNet, channels first: the heads' outputs o (B, n, L, dv) -> per-head RMSNorm
    (``m.norm_weight``, ``m.norm_eps``) -> times swish(out_gate (B, value_dim, L)) when there is one -> ``m.o_proj``
    -> (B, H, L)."""
    o = head_rms_norm(o, m.norm_weight, m.norm_eps).transpose(-1, -2)  # (B, n, dv, L)
    if out_gate is not None:
        o = o * F.silu(out_gate.unflatten(1, (m.n_heads, -1)).to(o.dtype))
    o = o.reshape(o.shape[0], m.value_dim, o.shape[-1])
    return channels_first_linear(o.to(m.o_proj.weight.dtype) if not torch.is_autocast_enabled() else o,
                                 m.o_proj.weight)


def check_heads(d_model: int, n_heads, expand_k: float, expand_v: float) -> tuple[int, int]:
    """(dk total, dv total), each a positive multiple of n_heads, or a one-line ValueError."""
    if not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
    dims = []
    for name, expand in (("expand_k", expand_k), ("expand_v", expand_v)):
        dim = int(d_model * expand) if expand > 0 else 0
        if dim < n_heads or dim % n_heads or dim != d_model * expand:
            raise ValueError(f"{name}={expand} gives {d_model * expand} features for d_model={d_model}, which must be "
                             f"a positive multiple of n_heads={n_heads}; choose {name} so that d_model * {name} is")
        dims.append(dim)
    return dims[0], dims[1]


def check_chunk(chunk_size, multiple: int | None = None) -> None:
    ok = isinstance(chunk_size, int) and chunk_size >= 1 and (multiple is None or chunk_size <= multiple
                                                              or chunk_size % multiple == 0)
    if not ok:
        need = f"at most {multiple} or a multiple of {multiple}" if multiple else "a positive integer"
        raise ValueError(f"chunk_size must be {need} (positions solved in parallel), got {chunk_size!r}")


class GatedLinearAttention(Mixer):
    """GLA as a mixer (module docstring).

    Args:
        d_model: H.
        n_heads: heads (4); dk = H expand_k / n_heads and dv = H expand_v / n_heads per head.
        expand_k, expand_v: total key and value widths over H (0.5, 1, as the paper and fla).
        gate_low_rank_dim: rank of the gate projection W_1 W_2 (16).
        gate_logit_normalizer: tau in alpha = sigmoid(.)^(1/tau) (16).
        clamp_min: optional floor of log alpha (a negative number; null: none).
        output_gate: multiply the normalised output by swish(u W_g) (True).
        norm_eps: the output RMSNorm's epsilon (1e-5).
        chunk_size: positions per chunk of the chunked form (64; at most 16 or a multiple of 16).
        lr: learning rate of the gate bias (null: the optimizer's); it never gets weight decay.
    """

    name = "gla"

    def __init__(self, d_model: int, n_heads: int = 4, expand_k: float = 0.5, expand_v: float = 1.0,
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16, clamp_min: float | None = None,
                 output_gate: bool = True, norm_eps: float = 1e-5, chunk_size: int = 64, lr: float | None = None):
        super().__init__()
        key_dim, value_dim = check_heads(d_model, n_heads, expand_k, expand_v)
        if not isinstance(gate_low_rank_dim, int) or gate_low_rank_dim < 1:
            raise ValueError(f"gate_low_rank_dim must be a positive integer, got {gate_low_rank_dim!r}")
        if not gate_logit_normalizer > 0:
            raise ValueError(f"gate_logit_normalizer (tau) must be positive, got {gate_logit_normalizer}")
        if clamp_min is not None and not clamp_min < 0:
            raise ValueError(f"clamp_min is a floor of log alpha, so it must be negative or null, got {clamp_min}")
        if not norm_eps > 0:
            raise ValueError(f"norm_eps must be positive, got {norm_eps}")
        check_chunk(chunk_size, SUB_CHUNK)
        if lr is not None and lr < 0:
            raise ValueError(f"lr must be >= 0 or null, got {lr}")
        self.d_model, self.n_heads, self.key_dim, self.value_dim = d_model, n_heads, key_dim, value_dim
        self.d_key, self.d_value = key_dim // n_heads, value_dim // n_heads
        self.gate_logit_normalizer, self.clamp_min, self.norm_eps = gate_logit_normalizer, clamp_min, norm_eps
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(d_model, key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, value_dim, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d_model, gate_low_rank_dim, bias=False),
                                     nn.Linear(gate_low_rank_dim, key_dim, bias=True))
        self.g_proj = nn.Linear(d_model, value_dim, bias=False) if output_gate else None
        self.norm_weight = nn.Parameter(torch.ones(self.d_value))
        self.o_proj = nn.Linear(value_dim, d_model, bias=False)
        bias = self.gk_proj[1].bias
        bias._optim = {"weight_decay": 0.0, **({} if lr is None else {"lr": float(lr)})}

    @property
    def has_state(self) -> bool:
        return True

    def default_state(self, *batch_shape: int, device=None) -> torch.Tensor:
        ref = self.norm_weight
        dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
        return torch.zeros(*batch_shape, self.n_heads, self.d_key, self.d_value, dtype=dtype,
                           device=device or ref.device)

    def _log_gate(self, x: torch.Tensor) -> torch.Tensor:
        g = F.logsigmoid(self.gk_proj(x).float() if x.dtype in (torch.float16, torch.bfloat16) else self.gk_proj(x))
        g = g / self.gate_logit_normalizer
        return g if self.clamp_min is None else g.clamp(min=self.clamp_min)

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o (..., n_heads, dv) per head, x (..., H) the input -> (..., H)."""
        o = head_rms_norm(o, self.norm_weight, self.norm_eps).flatten(-2)
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x).to(o.dtype))
        return self.o_proj(o.to(self.o_proj.weight.dtype) if not torch.is_autocast_enabled() else o)

    def forward(self, u: torch.Tensor, state=None, return_state: bool = False, lengths=None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L); causal, so ``lengths`` (the block zeroes the padding) needs nothing here.

        Channels first (``ops/linear.channels_first_linear``): q, k, v, the gate's low-rank input and the output
        gate by one GEMM on u as it is, the output map by one more, no transposed copies of the activations."""
        self.check_call(u, state, return_state, lengths, rate)
        gate_in, gate_out = self.gk_proj
        weights = [self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, gate_in.weight]
        sizes = [self.key_dim, self.key_dim, self.value_dim, gate_in.out_features]
        if self.g_proj is not None:
            weights.append(self.g_proj.weight)
            sizes.append(self.value_dim)
        q, k, v, z, *out_gate = channels_first_linear(u, torch.cat(weights)).split(sizes, dim=1)  # (B, ., L)
        a = channels_first_linear(z, gate_out.weight, gate_out.bias)  # (B, key_dim, L)
        g = F.logsigmoid(a.float() if a.dtype in (torch.float16, torch.bfloat16) else a) / self.gate_logit_normalizer
        g = g if self.clamp_min is None else g.clamp(min=self.clamp_min)
        heads = lambda t: t.unflatten(1, (self.n_heads, -1)).transpose(-1, -2)  # noqa: E731  (B, n, L, d), a view
        o, next_state = chunk_gla(heads(q), heads(k), heads(v), heads(g), initial_state=state,
                                  chunk_size=self.chunk_size)  # (B, n, L, dv)
        y = head_output(self, o, out_gate[0] if out_gate else None)  # (B, H, L)
        return (y, next_state) if return_state else y

    def step(self, u: torch.Tensor, state: torch.Tensor):
        """One token u (B, H) -> y (B, H), next state (B, n_heads, dk, dv)."""
        split = lambda t: t.unflatten(-1, (self.n_heads, -1))  # noqa: E731
        q, k, v = (split(p(u)) for p in (self.q_proj, self.k_proj, self.v_proj))
        o, state = gla_step(q, k, v, split(self._log_gate(u)), state)
        return self._output(o, u).to(u.dtype), state
