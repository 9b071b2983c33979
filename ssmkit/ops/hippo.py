"""HiPPO transition matrices and their normal / diagonal plus low-rank forms.

HiPPO (Gu et al. 2020) defines x'(t) = A x(t) + B u(t) whose state x holds the coefficients of an
optimal polynomial projection of the input's history. S4 (Gu et al. 2022, Sec. 3.2) writes each A as
normal plus low rank, A = V (Lambda - P_V Q_V^*) V^*, which gives the diagonal-plus-low-rank forms.
"""
from __future__ import annotations

import math

import torch

MEASURES = ("legs",)


def transition(measure: str, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO (A, B) for ``measure`` in float64: A (N, N), B (N,)."""
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legs":
        # A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 above the diagonal.
        r = torch.sqrt(2 * n + 1)
        A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)
        B = r.clone()
        return A, B
    raise ValueError(f"unknown HiPPO measure {measure!r}; choose one of {', '.join(MEASURES)}")


def rank_correction(measure: str, N: int) -> torch.Tensor:
    """P (rank, N) such that A + P^T P is normal (here: -1/2 I plus skew-symmetric)."""
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legs":
        return torch.sqrt(n + 0.5).unsqueeze(0)
    raise ValueError(f"unknown HiPPO measure {measure!r}; choose one of {', '.join(MEASURES)}")


def nplr(measure: str, N: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normal plus low-rank form with conjugate symmetry.

    Returns (Lambda (N/2,), P (rank, N/2), B (N/2,), V (N, N/2)) complex128, where only the eigenvalues
    with positive imaginary part are kept (their conjugates complete the spectrum) and P, B are expressed
    in the eigenbasis V.
    """
    if N % 2:
        raise ValueError(f"the HiPPO NPLR form needs an even d_state, got {N}")
    A, B = transition(measure, N)
    P = rank_correction(measure, N)
    S = A + P.T @ P  # normal: diag(-1/2) + skew
    diag_mean = torch.diagonal(S).mean()
    # S - mean*I is skew-symmetric, so -i(S - mean I) is Hermitian: eigh is exact and stable.
    w, V = torch.linalg.eigh(-1j * (S - diag_mean * torch.eye(N, dtype=torch.float64)))
    Lambda = diag_mean + 1j * w  # eigenvalues of S
    keep = torch.argsort(w, descending=True)[: N // 2]  # positive imaginary parts
    Lambda, V = Lambda[keep], V[:, keep]
    Vh = V.conj().T
    return Lambda, Vh @ P.T.to(V.dtype), Vh @ B.to(V.dtype), V


def legs_diagonal(N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D-LegS: the diagonal part of HiPPO-LegS's NPLR form. Returns (A (N/2,), B (N/2,)) complex128."""
    Lambda, _, B, _ = nplr("legs", N)
    return Lambda, B


def s4d_inverse_imag(N: int) -> torch.Tensor:
    """S4D-Inv imaginary parts N/pi (N/(2n+1) - 1), n < N/2 (Gu et al. 2022, S4D, eq. 11)."""
    n = torch.arange(N // 2, dtype=torch.float64)
    return N / math.pi * (N / (2 * n + 1) - 1)
