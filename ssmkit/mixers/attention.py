"""Multi-head attention with rotary position embeddings: the attention baseline of the DLR paper.

Full attention (softmax(Q K^T * tau) V, Vaswani et al. 2017, eq. 1, with tau = d_head^-1/2 at
initialisation and learned, as in the DLR reference) or local attention: the sequence is cut into chunks
of ``chunk_size`` positions (aligned to multiples of chunk_size from position 0) and every query attends
to the keys of its own chunk and of the previous chunk, plus the next chunk when bidirectional (the DLR
paper's LocalAttention, look_backward = 1, look_forward = 1 or 0). Causal attention also masks every key
after the query. Queries and keys are rotated by their absolute position (RoPE, Su et al. 2021, eq. 34,
base 10000, rotate-half layout), so the logits depend on relative position only.

Causal attention has a key-value cache: ``step`` reads one token at a time, and ``forward`` continues
from a cache; both equal the full forward. With ``chunk_size`` the cache keeps only the keys that later
queries can still see (at most 2 * chunk_size), so generation runs in constant memory.

After its own output projection (``self.out``) the mixer ends in the ``OutputMap`` every mixer shares
(``ssmkit/mixers/output.py``, ``self.post``): activation -> dropout -> Linear/GLU, by default none of them
(activation None, output None); the DLR recipes add ``output: linear`` as their layer did.

The DLR reference also adds ``attn_ff`` position-wise MLP blocks inside the layer; in ssmkit those belong
to the model: set ``SequenceModel(mlp_ratio=...)`` (recipe key ``model.mlp_ratio``), which adds a pre- or
post-norm MLP residual sub-block after every token mixer, whatever the mixer.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.mixers.base import Mixer
from ssmkit.mixers.output import OutputMap


class KVCache(NamedTuple):
    """The keys and values seen so far (rotary already applied to the keys), and how many tokens were read.

    k, v: (*batch, n_heads, T, d_head) for the last T positions pos - T, ..., pos - 1.
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: int


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotates x (..., T, d) by its positions (T,): pairs (x_j, x_{j+r/2}) turn by angle pos * base^(-2j/r).

    Only the first r = d rounded down to even features are rotated (all of them when d is even).
    """
    r = x.shape[-1] // 2 * 2
    if r == 0:
        return x
    half = r // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2 / r)  # (r/2,)
    angle = positions.to(torch.float64).unsqueeze(-1) * inv_freq  # (T, r/2), float64: exact at large positions
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:r], x[..., r:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


class Attention(Mixer):
    """Multi-head (local) attention as a token mixer: u (B, H, L) -> y (B, H, L).

    Args:
        d_model: H, the number of features (split into ``n_heads`` heads of H / n_heads features).
        bidirectional: attend to the whole sequence (or the neighbouring chunks on both sides); False is
            causal attention, which also has a recurrent ``step`` through a key-value cache.
        n_heads: the number of heads; must divide d_model.
        chunk_size: None for full attention, or the chunk length of local attention.
        attn_dropout: dropout on the attention weights (training only); ``dropout`` is another one, on the
            features before the output map ``post``.
        learn_temperature: learn the logit scale tau (initialised to d_head^-1/2), as the DLR reference.
        rotary_base: the RoPE base (10000).
        attn_ff: not part of the mixer: must be 0 (use the model's ``mlp_ratio``; see the module docstring).
        activation, output, dropout, tie_dropout: the ``OutputMap`` after the attention's own projection
            (``self.post``): activation None, output None (glu | linear), dropout 0 by default.
    """

    name = "attn"

    def __init__(
        self,
        d_model: int,
        bidirectional: bool = False,
        n_heads: int = 4,
        chunk_size: int | None = None,
        attn_dropout: float = 0.0,
        learn_temperature: bool = True,
        rotary_base: float = 10000.0,
        attn_ff: float = 0,
        activation: str | None = None,
        output: str | None = None,
        dropout: float = 0.0,
        tie_dropout: bool = False,
    ):
        super().__init__()
        if attn_ff:
            raise ValueError(
                "attn_ff is not an attention option in ssmkit: position-wise MLP blocks belong to the model; "
                f"set model.mlp_ratio={attn_ff} instead"
            )
        if not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
            raise ValueError(f"n_heads must be a positive divisor of d_model={d_model}, got {n_heads!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or null (full attention), got {chunk_size!r}")
        if not 0 <= attn_dropout < 1:
            raise ValueError(f"attn_dropout must be in [0, 1), got {attn_dropout}")
        if rotary_base <= 1:
            raise ValueError(f"rotary_base must be > 1, got {rotary_base}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.bidirectional, self.causal = bidirectional, not bidirectional
        self.chunk_size, self.attn_dropout, self.rotary_base = chunk_size, attn_dropout, rotary_base
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        tau = torch.tensor(self.d_head**-0.5)
        if learn_temperature:
            self.temperature = nn.Parameter(tau)
        else:
            self.register_buffer("temperature", tau)
        self.post = OutputMap(d_model, d_model, activation, output, dropout, tie_dropout)

    @property
    def has_state(self) -> bool:
        return self.causal

    def no_state_reason(self) -> str:
        return "bidirectional attention sees the future (its KV cache exists only for causal attention)"

    # --- projections ---
    def _heads(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (*batch, T, H) -> q, k, v (*batch, n_heads, T, d_head), rotary applied; q carries tau."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        split = lambda t: t.unflatten(-1, (self.n_heads, self.d_head)).transpose(-2, -3)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        q = rotary(q, positions, self.rotary_base) * self.temperature.to(q.dtype)
        k = rotary(k, positions, self.rotary_base)
        return q, k, v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        """(*batch, n_heads, T, d_head) -> output projection -> (*batch, T, H)."""
        return self.out(y.transpose(-2, -3).flatten(-2))

    def _attend(self, q, k, v, mask=None, is_causal=False):
        p = self.attn_dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal, scale=1.0)

    # --- whole sequences ---
    def _local(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, k_start: int,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Chunked attention of queries at positions q_start.. to keys at positions k_start.. (k_start <= q_start,
        k_start a multiple of chunk_size, keys ending where queries end). Returns (*batch, heads, Tq, d_head).
        ``lengths`` (B,): keys at positions >= lengths[b] are masked (suffix padding)."""
        w = self.chunk_size
        end = q_start + q.shape[-2]
        n = math.ceil((end - k_start) / w)  # chunks from k_start
        pad_q = (q_start - k_start, n * w - (end - k_start))
        q = F.pad(q, (0, 0, *pad_q))  # (*, heads, n*w, d): aligned to the key chunks
        k = F.pad(k, (0, 0, 0, n * w - k.shape[-2]))
        v = F.pad(v, (0, 0, 0, n * w - v.shape[-2]))
        before, after = 1, (1 if self.bidirectional else 0)

        def around(t):  # (*, heads, n*w, d) -> (*, heads, n, (before+1+after)*w, d)
            t = F.pad(t.unflatten(-2, (n, w)), (0, 0, 0, 0, before, after))  # (*, heads, n+before+after, w, d)
            return torch.cat([t[..., j : j + n, :, :] for j in range(before + 1 + after)], dim=-2)

        qc = q.unflatten(-2, (n, w))  # (*, heads, n, w, d)
        kc, vc = around(k), around(v)
        dev = q.device
        q_pos = k_start + torch.arange(n * w, device=dev).view(n, w, 1)  # absolute positions
        k_pos = k_start + (torch.arange(n, device=dev).view(n, 1) - before) * w + torch.arange((before + 1 + after) * w, device=dev)
        k_pos = k_pos.unsqueeze(1)  # (n, 1, kw)
        mask = (k_pos >= k_start) & (k_pos < end)
        if self.causal:
            mask = mask & (k_pos <= q_pos)  # (n, w, kw)
        # padding queries (outside [q_start, end)) may see no key: let them see all (their output is dropped)
        real_q = (q_pos >= q_start) & (q_pos < end)
        if lengths is not None:  # (B, 1, n, w | 1, kw): per sample, broadcast over heads
            valid = lambda pos: pos < lengths.to(dev).view(-1, 1, 1, 1, 1)  # noqa: E731
            mask, real_q = mask & valid(k_pos), real_q & valid(q_pos)
        mask = mask | ~real_q
        y = self._attend(qc, kc, vc, mask=mask)  # (*, heads, n, w, d)
        y = y.flatten(-3, -2)
        return y[..., pad_q[0] : pad_q[0] + end - q_start, :]

    def forward(self, u: torch.Tensor, state: KVCache | None = None, return_state: bool = False,
                lengths: torch.Tensor | None = None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L); causal attention may start from a KV cache and return the next one.

        ``lengths`` (B,) marks suffix padding: keys at positions >= lengths[b] are masked (full and local,
        both directions), so the valid outputs equal the sample run alone (not with a cache)."""
        self.check_call(u, state, return_state, lengths, rate)
        x = u.transpose(-1, -2)  # (B, L, H)
        L = x.shape[-2]
        if state is None and return_state:
            state = self.default_state(*x.shape[:-2], device=x.device)
        pos = 0 if state is None else state.pos
        q, k, v = self._heads(x, torch.arange(pos, pos + L, device=x.device))  # (B, heads, L, d)
        if state is not None:
            k = torch.cat([state.k.to(k.dtype), k], dim=-2)
            v = torch.cat([state.v.to(v.dtype), v], dim=-2)
        k_start = pos + L - k.shape[-2]
        if self.chunk_size is not None:
            y = self._local(q, k, v, pos, k_start, lengths)
        elif lengths is not None:
            y = self._attend(q, k, v, mask=self._key_mask(lengths, L, x.device))
        elif state is None or k_start == pos:
            y = self._attend(q, k, v, is_causal=self.causal)
        else:
            q_pos = torch.arange(pos, pos + L, device=x.device).unsqueeze(-1)
            k_pos = torch.arange(k_start, pos + L, device=x.device)
            y = self._attend(q, k, v, mask=k_pos <= q_pos)
        y = self.post(self._merge(y).transpose(-1, -2))  # (B, H, L)
        if not return_state:
            return y
        return y, self._trim(KVCache(k, v, pos + L))

    def _key_mask(self, lengths: torch.Tensor, L: int, device) -> torch.Tensor:
        """(B, 1, L, L) boolean for full attention on suffix-padded sequences: key s < lengths[b] (and s <= t when
        causal); a padded query (t >= lengths[b]) sees every key, so it has one, and its output is dropped."""
        pos = torch.arange(L, device=device)
        n = lengths.to(device).view(-1, 1, 1, 1)
        mask = pos < n  # keys, (B, 1, 1, L)
        if self.causal:
            mask = mask & (pos.unsqueeze(-1) >= pos)
        return mask | (pos.unsqueeze(-1) >= n)

    # --- recurrent mode (causal only) ---
    def _trim(self, cache: KVCache) -> KVCache:
        """Drops the keys no later query can see (local attention keeps the previous and current chunk)."""
        if self.chunk_size is None:
            return cache
        w = self.chunk_size
        keep_from = max(0, (cache.pos // w - 1) * w)
        drop = max(0, cache.k.shape[-2] - (cache.pos - keep_from))
        return KVCache(cache.k[..., drop:, :], cache.v[..., drop:, :], cache.pos)

    def default_state(self, *batch_shape: int, device=None) -> KVCache:
        """An empty cache for ``batch_shape`` sequences."""
        if not self.has_state:
            raise self.refuse_state()
        ref = self.qkv.weight
        empty = torch.zeros(*batch_shape, self.n_heads, 0, self.d_head, dtype=ref.dtype, device=device or ref.device)
        return KVCache(empty, empty.clone(), 0)

    def step(self, x: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One token x (*batch, H) at position state.pos -> y (*batch, H), the cache with it appended."""
        if not self.has_state:
            raise self.refuse_state("recurrent step")
        q, k, v = self._heads(x.unsqueeze(-2), torch.tensor([state.pos], device=x.device))  # (*, heads, 1, d)
        k_all = torch.cat([state.k.to(k.dtype), k], dim=-2)  # (*, heads, T+1, d)
        v_all = torch.cat([state.v.to(v.dtype), v], dim=-2)
        if self.chunk_size is not None:
            # the query at position p sees the keys from chunk p // w - 1 on
            first = max(0, (state.pos // self.chunk_size - 1) * self.chunk_size)
            k_start = state.pos + 1 - k_all.shape[-2]
            y = self._attend(q, k_all[..., first - k_start :, :], v_all[..., first - k_start :, :])
        else:
            y = self._attend(q, k_all, v_all)  # (*, heads, 1, d)
        return self.post.step(self._merge(y).squeeze(-2)), self._trim(KVCache(k_all, v_all, state.pos + 1))
