"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule"; the
layer of fla-org/flash-linear-attention ``fla/layers/gated_deltanet.py``) as a token mixer, u (B, H, L) -> y:

    q, k, v = SiLU(causal depthwise conv(u W_q | u W_k | u W_v))    conv_size 4; q, k: n_heads x head_dim,
                                                                    v: n_heads x head_dim * expand_v (2)
    q, k   = q / ||q||, k / ||k||                                    per head (L2, eps 1e-6 under the root)
    beta_t = sigmoid(u W_b)                                          one per head (x2 with allow_neg_eigval)
    alpha_t = exp(-exp(A_log) softplus(u W_a + dt_bias))             one per head: Mamba-2's decay
    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(head_dim)
    y = W_o (RMSNorm(o) * swish(u W_g))                              RMSNorm over each head's dv features

A = U(0, 16) and dt = exp(U[log dt_min, log dt_max]) floored at 1e-4 with dt_bias = softplus^-1(dt), as fla.
head_dim ``auto`` is 0.75 H / n_heads (fla's allocation: q and k take 0.75 H^2 parameters each, v, g and o
1.5 H^2). The recurrence runs chunked with the WY/UT representation (``ssmkit.ops.linear_attention``: a
triangular solve per chunk of ``chunk_size`` 64, the state carried chunk to chunk, memory linear in L); ``step``
is the recurrence itself. The state is ``GatedDeltaNetState(conv (B, E, conv_size - 1), ssm (B, n_heads, dk,
dv))``. Causal only. A_log and dt_bias are the decay parameters: ``lr`` sets their learning rate and they get no
weight decay (their ``_optim`` tag, as fla's ``_no_weight_decay`` and Mamba's). Projections keep ``nn.Linear``'s
initialisation, like ssmkit's other mixers. Not implemented: fla's grouped value heads (num_v_heads) and the
optional removal of the short convolution (the paper's ablation finds it needed).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.mixers.base import Mixer
from ssmkit.mixers.gla import check_chunk, head_output, head_rms_norm
from ssmkit.ops.causal_conv import causal_conv1d_silu, last_inputs
from ssmkit.ops.linear import channels_first_linear
from ssmkit.ops.linear_attention import chunk_gated_delta_rule, gated_delta_rule_step

#: fla's epsilon of the L2 normalisation of q and k (inside the square root)
L2_EPS = 1e-6


class GatedDeltaNetState(NamedTuple):
    """conv: (*batch, E, conv_size - 1), the last inputs of the short convolution (E = 2 key dim + value dim);
    ssm: (*batch, n_heads, dk, dv)."""

    conv: torch.Tensor
    ssm: torch.Tensor


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + L2_EPS)


class GatedDeltaNet(Mixer):
    """Gated DeltaNet as a mixer (module docstring).

    Args:
        d_model: H.
        n_heads: heads (4).
        head_dim: dk, the key width per head; ``auto`` is 0.75 H / n_heads.
        expand_v: dv / dk (2).
        conv_size: taps of the short causal convolution on q, k, v (4); conv_bias: its bias (False).
        output_gate: multiply the normalised output by swish(u W_g) (True).
        allow_neg_eigval: beta in (0, 2) instead of (0, 1) (fla's option; False).
        dt_min, dt_max: range of the initial step size of the decay (log-uniform, 1e-3, 1e-1).
        norm_eps: the output RMSNorm's epsilon (1e-5).
        chunk_size: positions per chunk of the chunked form (64).
        lr: learning rate of A_log and dt_bias (null: the optimizer's); they never get weight decay.
    """

    name = "gated_deltanet"

    def __init__(self, d_model: int, n_heads: int = 4, head_dim: int | str = "auto", expand_v: float = 2.0,
                 conv_size: int = 4, conv_bias: bool = False, output_gate: bool = True, allow_neg_eigval: bool = False,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, norm_eps: float = 1e-5, chunk_size: int = 64,
                 lr: float | None = None):
        super().__init__()
        if not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
        if head_dim == "auto":
            head_dim = int(0.75 * d_model) // n_heads
            if head_dim < 1:
                raise ValueError(f"head_dim auto (0.75 d_model / n_heads) is 0 for d_model={d_model}, n_heads={n_heads}; "
                                 "set head_dim or use fewer heads")
        if not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"head_dim must be a positive integer or 'auto', got {head_dim!r}")
        if not expand_v > 0 or head_dim * expand_v != int(head_dim * expand_v):
            raise ValueError(f"expand_v={expand_v} must make head_dim * expand_v a positive integer "
                             f"(head_dim={head_dim}); choose another expand_v")
        if not isinstance(conv_size, int) or conv_size < 1:
            raise ValueError(f"conv_size must be a positive integer, got {conv_size!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not norm_eps > 0:
            raise ValueError(f"norm_eps must be positive, got {norm_eps}")
        check_chunk(chunk_size)
        if lr is not None and lr < 0:
            raise ValueError(f"lr must be >= 0 or null, got {lr}")
        self.d_model, self.n_heads, self.d_key, self.d_value = d_model, n_heads, head_dim, int(head_dim * expand_v)
        self.key_dim, self.value_dim = n_heads * self.d_key, n_heads * self.d_value
        self.conv_size, self.allow_neg_eigval, self.norm_eps, self.chunk_size = conv_size, allow_neg_eigval, norm_eps, chunk_size
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        E = 2 * self.key_dim + self.value_dim
        self.conv1d = nn.Conv1d(E, E, conv_size, groups=E, bias=conv_bias)
        self.a_proj = nn.Linear(d_model, n_heads, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        A = torch.empty(n_heads).uniform_(0, 16).clamp(min=1e-4)
        self.A_log = nn.Parameter(torch.log(A))
        dt = torch.exp(torch.rand(n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        for p in (self.A_log, self.dt_bias):
            p._optim = {"weight_decay": 0.0, **({} if lr is None else {"lr": float(lr)})}
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False) if output_gate else None
        self.norm_weight = nn.Parameter(torch.ones(self.d_value))
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    @property
    def has_state(self) -> bool:
        return True

    def default_state(self, *batch_shape: int, device=None) -> GatedDeltaNetState:
        ref = self.A_log
        kw = dict(device=device or ref.device, dtype=torch.float64 if ref.dtype == torch.float64 else torch.float32)
        E = 2 * self.key_dim + self.value_dim
        return GatedDeltaNetState(torch.zeros(*batch_shape, E, self.conv_size - 1, **kw),
                                  torch.zeros(*batch_shape, self.n_heads, self.d_key, self.d_value, **kw))

    def _qkv_weight(self) -> torch.Tensor:
        return torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., H) -> log alpha, beta (..., n_heads), in float32 (float64 for float64)."""
        return self._gate_values(self.a_proj(x), self.b_proj(x))

    def _gate_values(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u W_a, u W_b (..., n_heads) -> log alpha, beta (..., n_heads)."""
        a, b = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (a, b))
        g = -torch.exp(self.A_log.to(a.dtype)) * F.softplus(a + self.dt_bias.to(a.dtype))
        beta = torch.sigmoid(b)
        return g, 2 * beta if self.allow_neg_eigval else beta

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., E) -> q, k (..., n_heads, dk) L2-normalised, v (..., n_heads, dv)."""
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q, k, v = (t.unflatten(-1, (self.n_heads, -1)) for t in (q, k, v))
        return l2_normalize(q), l2_normalize(k), v

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o (..., n_heads, dv), x (..., H) the input -> (..., H)."""
        o = head_rms_norm(o, self.norm_weight, self.norm_eps).flatten(-2)
        if self.g_proj is not None:
            o = o * F.silu(self.g_proj(x).to(o.dtype))
        return self.o_proj(o.to(self.o_proj.weight.dtype) if not torch.is_autocast_enabled() else o)

    def forward(self, u: torch.Tensor, state: GatedDeltaNetState | None = None, return_state: bool = False,
                lengths=None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L); causal, so ``lengths`` (the block zeroes the padding) needs nothing here."""
        self.check_call(u, state, return_state, lengths, rate)
        qkv_in = channels_first_linear(u, self._qkv_weight())  # (B, E, L): one GEMM for q, k and v
        prev = None if state is None else state.conv.to(qkv_in.dtype)
        bias = self.conv1d.bias
        qkv = causal_conv1d_silu(qkv_in, self.conv1d.weight.squeeze(1), bias, prev)  # (B, E, L)
        q, k, v = (t.transpose(1, 2) for t in self._split(qkv.transpose(1, 2)))  # (B, n, L, d)
        # the gates' and the output gate's maps by one more GEMM on u as it is (channels first, no transposed copy)
        weights = [self.a_proj.weight, self.b_proj.weight] + ([] if self.g_proj is None else [self.g_proj.weight])
        sizes = [self.n_heads, self.n_heads] + ([] if self.g_proj is None else [self.value_dim])
        a, b, *out_gate = channels_first_linear(u, torch.cat(weights)).split(sizes, dim=1)
        g, beta = (t.transpose(1, 2) for t in self._gate_values(a.transpose(1, 2), b.transpose(1, 2)))  # (B, n, L)
        o, S = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=None if state is None else state.ssm,
                                      chunk_size=self.chunk_size)  # (B, n, L, dv)
        y = head_output(self, o, out_gate[0] if out_gate else None)  # (B, H, L)
        if not return_state:
            return y
        return y, GatedDeltaNetState(last_inputs(qkv_in, prev, self.conv_size - 1), S)

    def step(self, u: torch.Tensor, state: GatedDeltaNetState):
        """One token u (B, H) -> y (B, H), next state."""
        x = F.linear(u, self._qkv_weight())  # (B, E)
        window = torch.cat([state.conv.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (B, E, conv_size)
        xc = (window * self.conv1d.weight.squeeze(1).to(x.dtype)).sum(-1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias.to(x.dtype)
        q, k, v = self._split(F.silu(xc))
        g, beta = self._gates(u)
        o, S = gated_delta_rule_step(q, k, v, g, beta, state.ssm)
        return self._output(o, u).to(u.dtype), GatedDeltaNetState(window[..., 1:], S)
