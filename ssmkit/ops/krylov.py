"""Krylov matrices of dense state matrices, by doubling.

The Krylov matrix of M (N, N) and v (N,) for length L is [v, M v, M^2 v, ..., M^(L-1) v] (N, L). The LSSL
kernel is C times it (Gu et al. 2021, "Combining Recurrent, Convolutional, and Continuous-time Models with
Linear State-Space Layers", Sec. 4.1). Instead of L sequential matrix-vector products it is built in
ceil(log2 L) doublings: with X_k the first 2^k columns and M^(2^k) obtained by squaring,

    X_(k+1) = [X_k, M^(2^k) X_k]

so the work is O(N^3 log L) for the squarings plus O(N^2 L) for the products, each one batched GEMM.

A kernel needs only the scalars left^T M^l right, not the N x L Krylov matrix. ``power_series`` splits
l = a m + b with m ~ sqrt(L): the m vectors M^b right and the L/m vectors (M^m)^(aT) left (two Krylov
matrices by doubling), then one GEMM of the two, (L/m x N) @ (N x m). That is O(N^3 log L + N^2 sqrt(L) + N L)
work and O(N sqrt(L) + L) memory (forward and backward) instead of O(N^2 L) and O(N L).
"""
from __future__ import annotations

import math

import torch


def krylov(M: torch.Tensor, v: torch.Tensor, L: int) -> torch.Tensor:
    """[v, M v, ..., M^(L-1) v] for M (..., N, N) and v (..., N) (broadcast together) -> (..., N, L)."""
    if L <= 0:
        raise ValueError(f"the Krylov length must be positive, got {L}")
    shape = torch.broadcast_shapes(M.shape[:-2], v.shape[:-1])
    X = v.expand(*shape, v.shape[-1]).unsqueeze(-1)  # (..., N, 1)
    power = M
    while X.shape[-1] < L:
        need = min(X.shape[-1], L - X.shape[-1])
        X = torch.cat([X, power @ X[..., :need]], dim=-1)
        if X.shape[-1] < L:
            power = power @ power
    return X


def power_series(M: torch.Tensor, left: torch.Tensor, right: torch.Tensor, L: int) -> torch.Tensor:
    """left^T M^l right for l < L, M (..., N, N), left (..., N), right (..., N) (broadcast) -> (..., L)."""
    if L <= 0:
        raise ValueError(f"the series length must be positive, got {L}")
    m = 1 << math.ceil(math.log2(L) / 2)  # the block, ~ sqrt(L), a power of two <= L
    X, power = right.unsqueeze(-1), M
    while X.shape[-1] < m:
        X = torch.cat([X, power @ X], dim=-1)
        power = power @ power
    # X = [M^b right] (..., N, m) and power = M^m
    Y = krylov(power.transpose(-1, -2), left, -(-L // m))  # (..., N, L/m): (M^m)^(aT) left
    return (Y.transpose(-1, -2) @ X).flatten(-2)[..., :L]  # (..., L/m, m) -> (..., L)
