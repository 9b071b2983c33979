"""HiPPO matrices against their closed-form definitions, and the NPLR form against a numpy reconstruction."""

import numpy as np
import pytest
import torch
from helpers import hippo_closed_form as closed_form

from ssmkit.ops.hippo import MEASURES, legs_diagonal, nplr, rank_correction, transition


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [2, 6, 16])
def test_transition_matches_closed_form(measure, N):
    A, B = transition(measure, N)
    A_ref, B_ref = closed_form(measure, N)
    np.testing.assert_allclose(A.numpy(), A_ref, atol=1e-12)
    np.testing.assert_allclose(B.numpy(), B_ref, atol=1e-12)


@pytest.mark.parametrize("measure", MEASURES)
def test_rank_correction_makes_a_normal_matrix(measure):
    N = 12
    A = transition(measure, N)[0].numpy()
    P = rank_correction(measure, N).numpy()
    S = A + P.T @ P
    m = np.mean(np.diag(S))
    np.testing.assert_allclose(S - m * np.eye(N), -(S - m * np.eye(N)).T, atol=1e-12)  # skew-symmetric
    np.testing.assert_allclose(S @ S.T, S.T @ S, atol=1e-10)  # normal
    assert P.shape[0] == (2 if measure == "legt" else 1)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N,rank", [(4, None), (16, 2), (64, 3)])
def test_nplr_reconstructs_a_and_b(measure, N, rank):
    Lam, P, B, V = (t.numpy() for t in nplr(measure, N, rank))
    r = P.shape[0]
    assert Lam.shape == (N // 2,) and B.shape == (N // 2,) and V.shape == (N, N // 2)
    assert r == (rank or (2 if measure == "legt" else 1))
    W = np.concatenate([V, V.conj()], axis=1)
    np.testing.assert_allclose(W.conj().T @ W, np.eye(N), atol=1e-10)  # unitary
    Lf = np.concatenate([Lam, Lam.conj()])
    Pf = np.concatenate([P, P.conj()], axis=1)  # (r, N)
    A_ref, B_ref = closed_form(measure, N)
    A_rec = W @ (np.diag(Lf) - Pf.T @ Pf.conj()) @ W.conj().T
    scale = np.abs(A_ref).max()
    assert np.abs(A_rec - A_ref).max() / scale < 1e-11
    np.testing.assert_allclose(W @ np.concatenate([B, B.conj()]), B_ref, atol=1e-10)
    assert (Lam.imag >= -1e-12).all()  # one of each conjugate pair is kept


def test_legs_diagonal_is_the_spectrum_of_the_normal_part():
    N = 10
    A, _ = closed_form("legs", N)
    P = np.sqrt(np.arange(N) + 0.5)
    eig = np.linalg.eigvals(A + np.outer(P, P))
    got = legs_diagonal(N)[0].numpy()
    by_imag = lambda z: z[np.argsort(z.imag)]  # noqa: E731
    np.testing.assert_allclose(by_imag(got), by_imag(eig[eig.imag > 0]), atol=1e-10)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown HiPPO measure 'legx'; choose one of legs"):
        transition("legx", 4)
    with pytest.raises(ValueError, match="needs rank >= 2"):
        rank_correction("legt", 8, rank=1)
    with pytest.raises(ValueError, match="even, positive d_state"):
        nplr("legs", 7)
    padded = rank_correction("legs", 6, rank=3)
    assert padded.shape == (3, 6) and torch.all(padded[1:] == 0)
