"""Initialisations identical to the reference code (state-spaces/s4, SGConv), each stated as a formula.

- HiPPO B in the eigenbasis: B = Re(V^* B_hippo) + i clamp(Im(V^* B_hippo), -2, 2)   (``nplr(..., B_clip=2.0)``),
  for S4 NPLR/DPLR with a HiPPO init and for S4D-LegS (whose B is not halved).
- S4D ``init: real``: K_l = 2 sum_n C_n dB_n dA_n^l and y_t = 2 C x_t (the reference's 2 Re(...) for every init).
- ``real_transform: relu``: Re A = -(relu(p) + 1e-4), p initialised at max(-Re A_0, 1e-4).
- SGConv in float64: the initial kernel divided by its exact norm, so ||K[c, h, :]|| = 1 to float64 precision.
"""
import copy
import math

import numpy as np
import pytest
import torch
from helpers import run_steps

from ssmkit.mixers import build_mixer
from ssmkit.mixers.kernels.s4 import S4Kernel
from ssmkit.mixers.kernels.s4d import S4DKernel
from ssmkit.mixers.kernels.sgconv import SGConvKernel
from ssmkit.ops.hippo import nplr


def cplx(t) -> np.ndarray:
    t = t.detach().double().numpy()
    return t[..., 0] + 1j * t[..., 1]


def hippo_b(measure: str, N: int) -> np.ndarray:
    n = np.arange(N)
    return {"legs": np.sqrt(2 * n + 1), "legt": 0.5 * np.sqrt(2 * n + 1), "lagt": np.ones(N)}[measure]


def clipped(V: np.ndarray, B: np.ndarray, c: float = 2.0) -> np.ndarray:
    """The reference's B: V^* B with its imaginary part clamped to [-c, c]."""
    Bv = V.conj().T @ B
    return Bv.real + 1j * np.clip(Bv.imag, -c, c)


@pytest.mark.parametrize("measure,rank", [("legs", 1), ("legt", 2), ("lagt", 1)])
def test_s4_hippo_b_is_clipped_to_two(measure, rank):
    N = 64
    V = nplr(measure, N, rank)[3].numpy()  # the eigenbasis (unitary, checked in tests/ops/test_hippo.py)
    k = S4Kernel(3, d_state=N, init=measure, rank=rank)
    want = clipped(V, hippo_b(measure, N))
    np.testing.assert_allclose(cplx(k.B), np.broadcast_to(want, (3, N // 2)), rtol=1e-6, atol=1e-6)
    exact = S4Kernel(3, d_state=N, init=measure, rank=rank, B_clip=None)
    np.testing.assert_allclose(cplx(exact.B)[0], V.conj().T @ hippo_b(measure, N), rtol=1e-5, atol=1e-5)
    # the clamp only touches B: Lambda and P are those of the exact form
    assert torch.equal(k.A_imag, exact.A_imag) and torch.equal(k.P, exact.P)


def test_clip_changes_legs_b_by_91_percent_at_n64():
    N = 64
    V = nplr("legs", N)[3].numpy()
    Bv = V.conj().T @ hippo_b("legs", N)
    assert np.abs(Bv.imag).max() > 40  # the exact B is far outside [-2, 2]
    change = np.linalg.norm(clipped(V, hippo_b("legs", N)) - Bv) / np.linalg.norm(Bv)
    assert 0.90 < change < 0.92


def test_s4d_legs_b_is_the_clipped_unhalved_hippo_b():
    N = 32
    V = nplr("legs", N)[3].numpy()
    k = S4DKernel(2, d_state=N, init="legs")
    np.testing.assert_allclose(cplx(k.B)[0], clipped(V, hippo_b("legs", N)), rtol=1e-6, atol=1e-6)
    s4_diag = S4Kernel(2, d_state=N, mode="diag", init="legs")
    np.testing.assert_allclose(cplx(s4_diag.diag.B)[0], clipped(V, hippo_b("legs", N)), rtol=1e-6, atol=1e-6)
    for init in ("lin", "inv"):  # B = 1: nothing to clip
        np.testing.assert_array_equal(cplx(S4DKernel(2, d_state=N, init=init).B), 1.0)


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_s4d_real_kernel_and_step_are_twice_the_real_sum(disc):
    torch.manual_seed(0)
    H, N, L = 2, 6, 20
    k = S4DKernel(H, d_state=N, init="real", disc=disc).double()
    np.testing.assert_allclose(-np.exp(k.A_real.detach().numpy()), -(np.arange(N) + 1.0)[None].repeat(H, 0), rtol=1e-6)  # log stored in float32
    np.testing.assert_array_equal(k.B.detach().numpy(), 1.0)
    a, C = -np.exp(k.A_real.detach().numpy()), k.C.detach().numpy()[0]  # (H, N)
    dt = np.exp(k.log_dt.detach().numpy())[:, None]
    if disc == "zoh":
        dA, dB = np.exp(dt * a), (np.exp(dt * a) - 1) / a
    else:
        dA, dB = (1 + dt * a / 2) / (1 - dt * a / 2), dt / (1 - dt * a / 2)
    want = 2 * np.einsum("hn,hnl->hl", C * dB, dA[..., None] ** np.arange(L))
    np.testing.assert_allclose(k(L)[0][0].detach().numpy(), want, rtol=1e-12, atol=1e-14)
    # the recurrence: y_t = 2 C x_t, x_t = dA x_{t-1} + dB u_t
    mixer = build_mixer(H, dict(name="s4d", d_state=N, init="real", disc=disc, D=False, activation="id", output=None)).double()
    mixer.kernel.load_state_dict(k.state_dict())
    u = torch.randn(1, H, L, dtype=torch.float64)
    ys, _ = run_steps(mixer, u, mixer.default_state(1))
    x, ref = np.zeros((H, N)), []
    for t in range(L):
        x = dA * x + dB * u[0, :, t].numpy()[:, None]
        ref.append(2 * (C * x).sum(-1))
    np.testing.assert_allclose(ys[0].detach().numpy(), np.stack(ref, -1), rtol=1e-11, atol=1e-13)


def test_relu_real_transform_keeps_re_a_strictly_negative():
    torch.manual_seed(0)
    k = S4DKernel(2, d_state=8, init="lin", real_transform="relu").double()
    np.testing.assert_allclose(k.A_real.detach().numpy(), 0.5)  # p = max(-Re A_0, 1e-4)
    np.testing.assert_allclose(k.ssm()[1].real.detach().numpy(), -(0.5 + 1e-4))
    with torch.no_grad():
        k.A_real[0, 0] = -3.0  # relu(p) = 0: Re A = -1e-4, not 0
    assert k.ssm()[1].real[0, 0].item() == pytest.approx(-1e-4, rel=1e-12)
    dt = math.exp(k.log_dt[0].item())
    dA = k.discretize()[0].real[0, 0].item()  # log dA = dt A under zoh
    assert dA == pytest.approx(-dt * 1e-4, rel=1e-12)


@pytest.mark.parametrize("mode", ["cat_randn", "sum_cos", "cat_randn_learnable"])
def test_sgconv_float64_kernel_is_divided_by_its_exact_norm(mode):
    torch.manual_seed(0)
    k = SGConvKernel(3, channels=2, l_max=64, kernel_dim=8, mode=mode)
    assert k.kernel_norm.dtype == torch.float64
    for k64 in (copy.deepcopy(k).double(), copy.deepcopy(k).float().double()):
        assert k64.kernel_norm.dtype == torch.float64
        K = k64(k.length)[0]
        np.testing.assert_allclose(K.norm(dim=-1).detach().numpy(), 1.0, rtol=0, atol=1e-14)
    K32 = k(k.length)[0]  # float32 stays float32 (the norm is cast where it is used)
    assert K32.dtype == torch.float32
    np.testing.assert_allclose(K32.norm(dim=-1).detach().numpy(), 1.0, atol=1e-6)
