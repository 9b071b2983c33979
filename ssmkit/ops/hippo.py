"""HiPPO transition matrices and their normal / diagonal plus low-rank forms.

HiPPO (Gu et al. 2020) defines x'(t) = A x(t) + B u(t) whose state x holds the coefficients of an
optimal polynomial projection of the input's history. S4 (Gu et al. 2022, Sec. 3.2, Thm. 1) writes each A
as normal plus low rank (NPLR), A = V (Lambda - P_V P_V^*) V^* with V unitary, so that in the eigenbasis
of the normal part the SSM is diagonal plus low rank (DPLR): Lambda - P_V P_V^*.

Measures (float64 closed forms, n, k = 0..N-1, r_n = sqrt(2n+1)):

* ``legs`` (scaled Legendre, HiPPO eq. 2): A_nk = -r_n r_k (n > k), -(n+1) (n = k), 0 (n < k); B_n = r_n.
  P_n = sqrt(n + 1/2) (rank 1): A + P P^T = -I/2 + skew.
* ``legt`` (translated Legendre, the LMU, halved for timescale): A_nk = -r_n r_k / 2 for n >= k and
  -(-1)^(n-k) r_n r_k / 2 for n < k; B_n = r_n / 2. Rank 2: P_0 = r/sqrt(2) on even n, P_1 = r/sqrt(2) on odd n.
* ``lagt`` (translated Laguerre): A = I/2 - tril(ones), B = 1; P = 1/sqrt(2) (rank 1).
* ``fourier`` / ``fout`` (FouT, "How to Train Your HiPPO"): rotation blocks A[2k, 2k+1] = -pi k,
  A[2k+1, 2k] = pi k, minus b b^T with b_0 = 1, b_2k = sqrt(2) (k >= 1), b_odd = 0; B = b; P = b (rank 1).

Conjugate symmetry: A is real, so its eigenvalues come in conjugate pairs; only the N/2 with positive
imaginary part are stored, and every state vector in the eigenbasis is [x; conj(x)].
"""
from __future__ import annotations

import math

import torch

MEASURES = ("legs", "legt", "lagt", "fourier", "fout")
ALIASES = {"fout": "fourier"}
#: the smallest rank that makes A + P^T P normal
MIN_RANK = {"legs": 1, "legt": 2, "lagt": 1, "fourier": 1}


def _canonical(measure: str) -> str:
    if measure not in MEASURES:
        raise ValueError(f"unknown HiPPO measure {measure!r}; choose one of {', '.join(MEASURES)}")
    return ALIASES.get(measure, measure)


def _fourier_b(N: int) -> torch.Tensor:
    b = torch.zeros(N, dtype=torch.float64)
    b[0::2] = math.sqrt(2)
    b[0] = 1.0
    return b


def transition(measure: str, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HiPPO (A, B) for ``measure`` in float64: A (N, N), B (N,)."""
    measure = _canonical(measure)
    n = torch.arange(N, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    if measure == "legs":
        A = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)
        return A, r.clone()
    if measure == "legt":
        i, j = n[:, None], n[None, :]
        sign = torch.where(i >= j, torch.ones_like(i - j), (-1.0) ** (i - j))
        return -0.5 * r[:, None] * sign * r[None, :], 0.5 * r
    if measure == "lagt":
        A = 0.5 * torch.eye(N, dtype=torch.float64) - torch.tril(torch.ones(N, N, dtype=torch.float64))
        return A, torch.ones(N, dtype=torch.float64)
    # fourier
    A = torch.zeros(N, N, dtype=torch.float64)
    k = torch.arange(N // 2, dtype=torch.float64)
    even = torch.arange(0, 2 * (N // 2), 2)
    A[even, even + 1] = -math.pi * k
    A[even + 1, even] = math.pi * k
    b = _fourier_b(N)
    return A - b[:, None] * b[None, :], b


def rank_correction(measure: str, N: int, rank: int | None = None) -> torch.Tensor:
    """P (rank, N) float64 such that A + P^T P is normal (a multiple of I plus a skew-symmetric matrix).

    ``rank`` above the measure's minimum pads with zero rows; below it is an error.
    """
    measure = _canonical(measure)
    n = torch.arange(N, dtype=torch.float64)
    if measure == "legs":
        P = torch.sqrt(n + 0.5).unsqueeze(0)
    elif measure == "legt":
        r = torch.sqrt(2 * n + 1) / math.sqrt(2)
        P = torch.stack([torch.where(n % 2 == 0, r, 0.0), torch.where(n % 2 == 1, r, 0.0)])
    elif measure == "lagt":
        P = torch.full((1, N), 0.5**0.5, dtype=torch.float64)
    else:
        P = _fourier_b(N).unsqueeze(0)
    if rank is None:
        return P
    if rank < P.shape[0]:
        raise ValueError(f"HiPPO-{measure} needs rank >= {P.shape[0]} for its low-rank correction, got rank={rank}")
    return torch.cat([P, torch.zeros(rank - P.shape[0], N, dtype=torch.float64)])


def _eigenbasis(S: torch.Tensor, tol: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues with Im >= 0 and orthonormal eigenvectors V (N, N/2) of a real normal S = m I + skew,
    such that [V, conj V] is unitary. The zero-frequency eigenspace (e.g. FouT's constant term) gets a
    basis (u_1 + i u_2)/sqrt(2) from a real orthonormal basis u of it, so that its conjugate completes it."""
    N = S.shape[0]
    mean = torch.diagonal(S).mean()
    skew = S - mean * torch.eye(N, dtype=S.dtype)
    # -i * skew is Hermitian: eigh is exact and stable.
    w, V = torch.linalg.eigh(-1j * skew)
    scale = max(1.0, w.abs().max().item())
    pos = w > tol * scale
    zero = w.abs() <= tol * scale
    Vz = V[:, zero]
    m = Vz.shape[1] // 2
    if Vz.shape[1] % 2 or pos.sum().item() + m != N // 2:
        raise RuntimeError("the normal part of this HiPPO matrix has no conjugate-symmetric eigenbasis")
    if m:
        # A real orthonormal basis of the (conjugation-closed) null space.
        U, _, _ = torch.linalg.svd(torch.cat([Vz.real, Vz.imag], dim=1), full_matrices=False)
        U = U[:, : 2 * m]
        Vz = (U[:, 0::2] + 1j * U[:, 1::2]) / math.sqrt(2)
    order = torch.argsort(w[pos], descending=True)
    lam_imag = torch.cat([w[pos][order], torch.zeros(m, dtype=w.dtype)])
    V = torch.cat([V[:, pos][:, order], Vz.to(V.dtype)], dim=1)
    return torch.complex(torch.full_like(lam_imag, mean.item()), lam_imag), V


def conj_basis(V: torch.Tensor) -> torch.Tensor:
    """[V, conj V]: (N, N/2) -> (N, N), the unitary basis of the full (conjugate-completed) state."""
    return torch.cat([V, V.conj()], dim=-1)


def clip_imag(B: torch.Tensor, B_clip: float | None) -> torch.Tensor:
    """Re B + i clamp(Im B, -B_clip, B_clip); B unchanged for ``B_clip`` None. The symmetric clamp commutes
    with conjugation, so it does not depend on which eigenvalue of each conjugate pair is stored."""
    if B_clip is None:
        return B
    if B_clip <= 0:
        raise ValueError(f"B_clip must be positive or null, got {B_clip}")
    return torch.complex(B.real, B.imag.clamp(-B_clip, B_clip))


def nplr(
    measure: str, N: int, rank: int | None = None, B_clip: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normal plus low-rank form with conjugate symmetry (S4, Thm. 1), computed in float64.

    Returns (Lambda (N/2,), P (rank, N/2), B (N/2,), V (N, N/2)) complex128 such that, with
    W = [V, conj V], Lambda_f = [Lambda, conj Lambda], P_f = [P, conj P]:

        A = W (diag(Lambda_f) - P_f^T conj(P_f)) W^*,   B = W [B, conj B]   (B_clip None).

    The reconstruction is checked (relative error < 1e-9) and an error is raised if it fails.
    ``B_clip`` clamps Im(B) (the HiPPO B in the eigenbasis) to [-B_clip, B_clip], as the reference code
    does with its default 2 (state-spaces ``models/s4/s4.py`` ``nplr(..., B_clip=2.0)``); B = W [B, conj B]
    then holds only for the entries left unclipped.
    """
    if N % 2 or N <= 0:
        raise ValueError(f"the HiPPO NPLR form needs an even, positive d_state, got {N}")
    A, B = transition(measure, N)
    P = rank_correction(measure, N, rank)
    Lambda, V = _eigenbasis(A + P.T @ P)
    Vh = V.conj().T
    P_v = (Vh @ P.T.to(V.dtype)).T  # (rank, N/2)
    B_v = Vh @ B.to(V.dtype)
    err = (dplr_reconstruct(Lambda, P_v, V) - A).abs().max() / A.abs().max()
    if not err < 1e-9:
        raise RuntimeError(f"NPLR reconstruction of HiPPO-{measure} (N={N}) failed: relative error {err:.2e}")
    return Lambda, P_v, clip_imag(B_v, B_clip), V


def dplr_dense(Lambda: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """The full DPLR matrix diag(Lambda_f) - P_f^T conj(P_f) of the conjugate-completed state.

    Lambda (..., n), P (rank, ..., n) -> (..., 2n, 2n) complex, with Lambda_f = [Lambda, conj Lambda].
    """
    lam = torch.cat([Lambda, Lambda.conj()], dim=-1)  # (..., 2n)
    Pf = torch.cat([P, P.conj()], dim=-1)  # (r, ..., 2n)
    low = torch.einsum("r...i,r...j->...ij", Pf, Pf.conj())
    return torch.diag_embed(lam) - low


def dplr_reconstruct(Lambda: torch.Tensor, P: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """W (Lambda_f - P_f^T conj P_f) W^* with W = [V, conj V]: back to the HiPPO basis (real part)."""
    W = conj_basis(V)
    return (W @ dplr_dense(Lambda, P) @ W.conj().T).real


def legs_diagonal(N: int, B_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D-LegS: the diagonal part of HiPPO-LegS's NPLR form. Returns (A (N/2,), B (N/2,)) complex128,
    Im(B) clamped to [-B_clip, B_clip] unless ``B_clip`` is None (see ``nplr``)."""
    Lambda, _, B, _ = nplr("legs", N, B_clip=B_clip)
    return Lambda, B


def s4d_inverse_imag(N: int) -> torch.Tensor:
    """S4D-Inv imaginary parts N/pi (N/(2n+1) - 1), n < N/2 (Gu et al. 2022, S4D, eq. 11)."""
    n = torch.arange(N // 2, dtype=torch.float64)
    return N / math.pi * (N / (2 * n + 1) - 1)
