"""The residual block every backbone stacks: norm, one token mixer, the dropout between blocks, the residual
sum, and an optional position-wise MLP sub-block.

    prenorm:   x + drop(mixer(norm(x)))                 then, with mlp_ratio > 0:   x + mlp(norm'(x))
    postnorm:  norm(x + drop(mixer(x)))                                             norm'(x + mlp(x))

The block works on (B, L, H) features and hands the mixer (B, H, L) as a transposed view (and takes its
(B, H, L) output back as one), so no copy is made. ``lengths`` (B,) marks suffix padding: the mixer's input is
zeroed after each length and so is its output, batch norm takes its statistics from the valid positions only,
so each sample's valid outputs equal the sample run alone. The mixer is built from the recipe's ``model.mixer``
dict by ``ssmkit.mixers.build_mixer``; its options are its own, the block's are the arguments below.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ssmkit.mixers import build_mixer
from ssmkit.ops.padding import padding_mask

NORMS = ("layer", "batch", None)


class Norm(nn.Module):
    """LayerNorm or BatchNorm (or nothing) over the feature axis of (B, L, H) or (B, H) inputs."""

    def __init__(self, kind: str | None, d: int):
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"unknown norm {kind!r}; choose one of layer, batch, None")
        self.kind = kind
        self.norm = {"layer": nn.LayerNorm(d), "batch": nn.BatchNorm1d(d), None: nn.Identity()}[kind]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, L) (True = valid): batch norm takes its statistics from the valid positions only and
        leaves the padded ones as they are (layer norm is per position and ignores it)."""
        if self.kind == "batch" and x.dim() == 3:
            if mask is not None:
                return x.masked_scatter(mask.unsqueeze(-1), self.norm(x[mask]).to(x.dtype))
            return self.norm(x.transpose(-1, -2)).transpose(-1, -2)
        return self.norm(x)


class ResidualBlock(nn.Module):
    """One mixer with its norm, dropout and residual, plus an optional MLP sub-block (module docstring).

    Args:
        d_model: H, the width.
        mixer: the mixer's spec, ``{"name": "s4d", **options}`` (``ssmkit.mixers.build_mixer``).
        prenorm: normalise before each sub-block (True) or after the residual sum (False).
        norm: ``layer``, ``batch`` or None.
        dropout: after each sub-block, before the residual sum (a mixer's own ``dropout`` option is another one,
            inside the mixer).
        mlp_ratio: if > 0, a position-wise MLP of width mlp_ratio * d_model follows the mixer.
    """

    def __init__(self, d_model: int, mixer: dict, prenorm: bool = True, norm: str | None = "layer",
                 dropout: float = 0.0, mlp_ratio: float = 0):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.prenorm = prenorm
        self.norm = Norm(norm, d_model)
        self.mixer = build_mixer(d_model, mixer)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.mlp = None
        if mlp_ratio:
            hidden = int(mlp_ratio * d_model)
            self.mlp_norm = Norm(norm, d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model), self.drop)

    def _mix(self, x: torch.Tensor, mask, lengths, state, return_state: bool, rate: float):
        """(B, L, H) -> the mixer on the (B, H, L) view -> dropout -> (B, L, H), and the mixer's next state."""
        u = x.transpose(-1, -2)
        if mask is not None:
            u = u * mask.unsqueeze(1).to(u.dtype)
        out = self.mixer(u, state=state, return_state=return_state, lengths=lengths, rate=rate)
        y, next_state = out if return_state else (out, None)
        y = y.transpose(-1, -2)
        if mask is not None:
            y = y * mask.unsqueeze(-1).to(y.dtype)
        return self.drop(y), next_state

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, state=None, return_state: bool = False,
                rate: float = 1.0):
        """x (B, L, H) -> (B, L, H); with ``return_state`` also the mixer's state after the last position."""
        mask = None if lengths is None else padding_mask(lengths, x.shape[1], x.device)
        if self.prenorm:
            y, next_state = self._mix(self.norm(x, mask), mask, lengths, state, return_state, rate)
            x = x + y
        else:
            y, next_state = self._mix(x, mask, lengths, state, return_state, rate)
            x = self.norm(x + y, mask)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x, mask)) if self.prenorm else self.mlp_norm(x + self.mlp(x), mask)
        return (x, next_state) if return_state else x

    def step(self, x: torch.Tensor, state):
        """One token x (B, H) -> (B, H), the mixer's next state (at the rate of its last ``setup_step``)."""
        if self.prenorm:
            y, state = self.mixer.step(self.norm(x), state)
            x = x + self.drop(y)
        else:
            y, state = self.mixer.step(x, state)
            x = self.norm(x + self.drop(y))
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x)) if self.prenorm else self.mlp_norm(x + self.mlp(x))
        return x, state
