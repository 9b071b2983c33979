"""Suffix padding: which positions are valid, and time reversal within each sample's valid part."""
from __future__ import annotations

import torch


def padding_mask(lengths: torch.Tensor, L: int, device=None) -> torch.Tensor:
    """(B, L) boolean: True at the valid positions t < lengths[b] of suffix-padded sequences."""
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-d tensor (one length per sample), got shape {tuple(lengths.shape)}")
    return torch.arange(L, device=device) < lengths.to(device).unsqueeze(-1)


def flip_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x (B, ..., L) with each sample's first lengths[b] positions reversed and its padding left in place.

    A reversed-direction scan over ``flip_valid(x)`` starts at each sample's true end, so its valid outputs
    never read the padding; the map is its own inverse, so ``flip_valid`` also turns them back."""
    L = x.shape[-1]
    t = torch.arange(L, device=x.device)
    n = lengths.to(x.device).unsqueeze(-1)  # (B, 1)
    index = torch.where(t < n, n - 1 - t, t)  # (B, L)
    index = index.view(x.shape[0], *([1] * (x.dim() - 2)), L).expand_as(x)
    return x.gather(-1, index)
