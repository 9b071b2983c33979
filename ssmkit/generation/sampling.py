"""Choosing the next token from a model's scores: temperature, top-k, top-p (nucleus), seeded.

Scores may be logits or log-probabilities (they differ by a constant per row, which the softmax
removes). Every random draw goes through an explicit ``torch.Generator``, so a seed gives the same
samples on every call and the global RNG is never touched.
"""
from __future__ import annotations

import torch

from ssmkit.errors import UserError


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> tuple[torch.Generator, int]:
    """A generator on ``device`` seeded with ``seed`` (a fresh random seed when None), and that seed."""
    generator = torch.Generator(device=device)
    if seed is None:
        seed = generator.seed()
    else:
        generator.manual_seed(seed)
    return generator, seed


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """UserError naming the bad option (temperature < 0, top_k < 1, top_p outside (0, 1])."""
    if temperature < 0:
        raise UserError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k must be a positive number of tokens (or None for all), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1] (or None for no nucleus cut), got {top_p}")


def filter_scores(scores: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """scores (B, V) with the tokens outside the top-k and outside the top-p nucleus set to -inf.

    top-k keeps the k highest scores (ties at the k-th score are all kept). top-p keeps the smallest set
    of highest-probability tokens whose probabilities sum to at least p (the token that crosses p is in).
    """
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(sorted_scores.to(torch.float64 if scores.dtype == torch.float64 else torch.float32), -1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= top_p  # the first token always stays (before = 0 < p)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def sample_next(
    scores: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token ids (B,) from scores (B, V): argmax when temperature is 0, otherwise a draw from
    softmax(scores / temperature) restricted to the top-k / top-p tokens."""
    if temperature == 0:
        return scores.argmax(dim=-1)
    scores = filter_scores(scores.to(torch.promote_types(scores.dtype, torch.float32)) / temperature, top_k, top_p)
    # Inverse-CDF draw: the first token whose cumulative probability exceeds u ~ U[0, total). Twice as fast
    # as torch.multinomial for one row on the CPU (~50 vs ~110 us), which matters next to a ~90 us step.
    cdf = torch.cumsum(torch.softmax(scores, dim=-1, dtype=torch.float64), dim=-1)  # (B, V)
    u = torch.rand((cdf.shape[0], 1), generator=generator, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
