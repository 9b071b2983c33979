"""S4 against an independent float64 computation: materialise the bilinear (dA, dB, C) and power it."""

import numpy as np
import pytest
import torch
from helpers import run_steps

from ssmkit.mixers import build_mixer
from ssmkit.mixers.kernels.s4 import DPLR_INITS, HIPPO_INITS, MODES, PRECISIONS, STEP_MODES, S4Kernel
from ssmkit.mixers.kernels.s4d import INITS as DIAG_INITS


def _np(t):
    return t.detach().double().numpy()


def _cplx(t):
    return _np(t)[..., 0] + 1j * _np(t)[..., 1]


def dense_ssm(k: S4Kernel, rate: float = 1.0):
    """Per feature h: the full-state bilinear (dA, dB) and C, from the raw parameters, in numpy."""
    v = k.H // k.n_ssm
    lam = np.tile(-np.exp(_np(k.A_real)) + 1j * _np(k.A_imag), (v, 1))
    P, B, Ct = np.tile(_cplx(k.P), (1, v, 1)), np.tile(_cplx(k.B), (v, 1)), _cplx(k.C)
    dt = np.exp(_np(k.log_dt))
    out = []
    for h in range(k.H):
        Pf = np.concatenate([P[:, h], P[:, h].conj()], axis=-1)  # (r, N)
        A = np.diag(np.concatenate([lam[h], lam[h].conj()])) - Pf.T @ Pf.conj()
        eye = np.eye(A.shape[0])
        dA1 = np.linalg.solve(eye - dt[h] / 2 * A, eye + dt[h] / 2 * A)
        inv = np.linalg.inv(eye - rate * dt[h] / 2 * A)
        dA, dB = inv @ (eye + rate * dt[h] / 2 * A), inv @ (rate * dt[h] * np.concatenate([B[h], B[h].conj()]))
        Lk = int(k.l_kernel)
        Ctf = np.concatenate([Ct[:, h], Ct[:, h].conj()], axis=-1)  # (C, N)
        # C~ = C (I - dA^Lk) at rate 1, so C = C~ (I - dA^Lk)^{-1}
        C = np.linalg.solve((eye - np.linalg.matrix_power(dA1, Lk)).T, Ctf.T).T if Lk else Ctf
        out.append((dA, dB, C))
    return out


def reference_kernel(k: S4Kernel, L: int, rate: float = 1.0) -> np.ndarray:
    """K[c, h, l] = C dA^l dB by repeated multiplication."""
    K = np.zeros((k.C.shape[0], k.H, L))
    for h, (dA, dB, C) in enumerate(dense_ssm(k, rate)):
        x = dB
        for l in range(L):
            K[:, h, l] = (C @ x).real
            x = dA @ x
    return K


def rel(a, b) -> float:
    a = a.detach().double().numpy() if torch.is_tensor(a) else a
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
    "init,rank,N,L",
    [("legs", 1, 64, 1024), ("legs", 2, 16, 100), ("legt", 2, 64, 1024), ("lagt", 1, 32, 257), ("fout", 1, 64, 512)],
)
def test_float32_kernel_matches_dense_float64(init, rank, N, L):
    torch.manual_seed(0)
    k = S4Kernel(2, d_state=N, channels=2, init=init, rank=rank)
    K, _ = k(L)
    assert K.shape == (2, 2, L) and K.dtype == torch.float32
    assert rel(K, reference_kernel(k, L)) < 1e-4


def test_hippo_legs_kernel_is_the_hippo_ssm():
    """deterministic: C = e_0, so K_l = e_0^T dA^l dB with the real HiPPO-LegS (A, B) of the paper
    (B_clip null: the reference's clamp of Im(B) would change B)."""
    N, L = 8, 64
    k = S4Kernel(2, d_state=N, init="legs", deterministic=True, dt_min=0.01, dt_max=0.1, B_clip=None).double()
    K, _ = k(L)
    n = np.arange(N)
    r = np.sqrt(2 * n + 1)
    A = -np.tril(np.outer(r, r), -1) - np.diag(n + 1)
    for h, dt in enumerate([0.01, 0.1]):
        eye = np.eye(N)
        dA = np.linalg.solve(eye - dt / 2 * A, eye + dt / 2 * A)
        x = np.linalg.solve(eye - dt / 2 * A, dt * r)
        ref = []
        for _ in range(L):
            ref.append(x[0])
            x = dA @ x
        np.testing.assert_allclose(K[0, h].detach().numpy(), ref, rtol=1e-6, atol=1e-9)  # parameters were rounded to float32


@pytest.mark.parametrize("rate", [0.5, 2.5])
def test_rate_equals_scaled_step_size(rate):
    torch.manual_seed(0)
    k = S4Kernel(3, d_state=8, rank=2).double()
    k(32)  # fixes l_kernel = 32 at rate 1
    K, _ = k(40, rate=rate)
    assert rel(K, reference_kernel(k, 40, rate=rate)) < 1e-9


def test_length_doubling_equals_direct_length_and_is_saved():
    torch.manual_seed(0)
    a = S4Kernel(3, d_state=16).double()
    b = S4Kernel(3, d_state=16).double()
    b.load_state_dict(a.state_dict())
    a(48)
    assert int(a.l_kernel) == 48
    Ka, _ = a(150)  # 48 -> 96 -> 192
    assert int(a.l_kernel) == 192
    Kb, _ = b(192)
    assert rel(Ka, Kb[..., :150].detach().numpy()) < 1e-10
    assert rel(Ka, reference_kernel(a, 150)) < 1e-10
    c = S4Kernel(3, d_state=16).double()
    c.load_state_dict(a.state_dict())
    assert int(c.l_kernel) == 192
    assert rel(c(150)[0], Ka.detach().numpy()) < 1e-12


@pytest.mark.parametrize("step_mode", STEP_MODES)
@pytest.mark.parametrize("kw", [dict(), dict(init="legt", rank=2, n_ssm=2), dict(mode="dplr", init="inv", rank=3)])
def test_conv_equals_step_from_zero_and_nonzero_state(step_mode, kw):
    torch.manual_seed(0)
    H, L, T = 4, 40, 17
    mixer = build_mixer(H, dict(name="s4", d_state=16, step_mode=step_mode, **kw)).eval()
    x = torch.randn(2, H, L)
    y = mixer(x)
    ys, _ = run_steps(mixer, x, mixer.default_state(2))
    assert rel(ys, y.detach().double().numpy()) < 1e-4
    # non-zero state: the first T tokens by convolution, the rest by stepping and by forward-with-state
    y1, s = mixer(x[..., :T], return_state=True)
    y2, s_end = mixer(x[..., T:], state=s, return_state=True)
    ys, s = run_steps(mixer, x[..., T:], s)
    ref = y[..., T:].detach().double().numpy()
    assert rel(ys, ref) < 1e-4
    assert rel(y2, ref) < 1e-4
    assert rel(torch.cat([y1, y2], -1), y.detach().double().numpy()) < 1e-4
    # the final state of forward-with-state equals the stepped one
    assert rel(torch.view_as_real(s_end), torch.view_as_real(s).detach().double().numpy()) < 1e-4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_bidirectional_sees_the_future_causal_does_not(mode, bidirectional):
    torch.manual_seed(0)
    H, L = 3, 20
    mixer = build_mixer(H, dict(name="s4", d_state=8, mode=mode, bidirectional=bidirectional)).double()
    x = torch.randn(1, H, L, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 11:] += 1.0
    changed = (mixer(x)[..., :11] - mixer(x2)[..., :11]).abs().max().item()
    assert (changed > 1e-6) if bidirectional else (changed < 1e-12)


def test_gradients_reach_trainable_and_not_frozen_parameters():
    k = S4Kernel(4, d_state=8, lr={"A": 1e-3, "B": 0.0, "dt": 1e-3}, wd={"C": 0.1})
    params, buffers = dict(k.named_parameters()), dict(k.named_buffers())
    assert "B" in buffers and "B" not in params
    assert params["P"]._optim == params["A_real"]._optim == {"lr": 1e-3, "weight_decay": 0.0}  # P follows A
    assert params["C"]._optim == {"weight_decay": 0.1}
    K, _ = k(16)
    K.square().sum().backward()
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not buffers["B"].requires_grad
    k2 = S4Kernel(4, d_state=8, lr={"P": 0.0})
    assert "P" in dict(k2.named_buffers()) and "A_real" in dict(k2.named_parameters())


OPTION_CASES = (
    [dict(mode="nplr", init=i) for i in HIPPO_INITS]
    + [dict(mode="dplr", init=i) for i in DPLR_INITS]
    + [dict(mode="diag", init=i) for i in DIAG_INITS]
    + [dict(rank=r) for r in (1, 2, 3)]
    + [dict(n_ssm=n) for n in (None, 1, 2, 4)]
    + [dict(deterministic=d) for d in (False, True)]
    + [dict(mode="diag", deterministic=True), dict(mode="diag", init="real", deterministic=True)]
    + [dict(step_mode=s) for s in STEP_MODES]
    + [dict(precision=p) for p in PRECISIONS]
    + [dict(dt_min=1e-2, dt_max=1e-2), dict(lr=1e-3, wd=0.0), dict(lr={"P": 1e-4, "C": 0.0}), dict(backend="torch")]
    + [dict(B_clip=None), dict(B_clip=0.5), dict(mode="diag", B_clip=None)]
)


@pytest.mark.parametrize("kw", OPTION_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_every_option_value_builds_a_correct_kernel(kw):
    torch.manual_seed(0)
    H, L = 4, 12
    k = S4Kernel(H, d_state=8, channels=2, **({"rank": 2} if kw.get("init") == "legt" else {}), **kw).double()
    K, _ = k(L)
    assert K.shape == (2, H, L) and torch.isfinite(K).all()
    if k.mode == "diag":
        d = k.diag  # the S4D code path: check against an explicit ZOH sum
        lam = -np.exp(_np(d.A_real)) + (0 if d.is_real else 1j * _np(d.A_imag))
        B, C = (_np(d.B), _np(d.C)) if d.is_real else (_cplx(d.B), _cplx(d.C))
        dtA = np.exp(_np(d.log_dt))[:, None] * lam
        ell = np.arange(L)
        ref = np.einsum("chn,hnl->chl", C * (np.exp(dtA) - 1) / lam * B, np.exp(dtA[..., None] * ell)).real
        ref = ref * 2  # S4D-Real too: the reference's 2 Re(...)
    else:
        ref = reference_kernel(k, L)
    assert rel(K, ref) < 1e-9
    state = k.default_state(2)
    u = torch.randn(2, H, L, dtype=torch.float64)
    ys = []
    for t in range(L):
        y_t, state = k.step(u[..., t], state)
        ys.append(y_t)
    conv = torch.einsum("chl,bhl->bch", K.flip(-1), u)  # output at the last position
    assert rel(ys[-1], conv.detach().numpy()) < 1e-9


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="s4"), "unknown mode 's4'; choose one of nplr, dplr, diag"),
        (dict(init="lin"), "unknown init 'lin'; choose one of legs"),
        (dict(mode="diag", init="legt"), "unknown init 'legt'"),
        (dict(init="legt", rank=1), "needs rank >= 2"),
        (dict(rank=0), "rank must be a positive integer"),
        (dict(d_state=7), "d_state must be even"),
        (dict(n_ssm=3), "n_ssm must divide d_model=4"),
        (dict(mode="diag", n_ssm=2), "not available with mode='diag'"),
        (dict(step_mode="fast"), "unknown step_mode"),
        (dict(precision="half"), "unknown precision"),
        (dict(lr={"Q": 1.0}), "unknown lr key"),
        (dict(dt_min=0.1, dt_max=0.01), "dt_min <= dt_max"),
        (dict(B_clip=0.0), "B_clip must be positive or null, got 0.0"),
        (dict(mode="dplr", init="lin", B_clip=-1.0), "B_clip must be positive or null"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4Kernel(4, **kwargs)
