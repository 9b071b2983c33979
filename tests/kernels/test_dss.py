"""DSS against an independent float64 computation: explicit sums over states, numpy softmax, direct recurrence."""
import itertools
import math

import numpy as np
import pytest
import torch
from helpers import np_to_real as to_real
from helpers import run_steps

from ssmkit import param_groups
from ssmkit.mixers import build_mixer
from ssmkit.mixers.kernels.base import KERNEL_TO_REAL
from ssmkit.mixers.kernels.dss import LAMBDA_INITS, VERSIONS, DSSKernel


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def reference_kernel(k: DSSKernel, L: int, rate: float = 1.0) -> np.ndarray:
    """From the raw parameters, in numpy complex128, by a loop over features and states (no ssmkit code).

    exp:     Re W (e^z - 1)/Lambda e^{z l}
    softmax: Re W / Lambda * softmax over l < S of the complex logits z l (max-shifted by the largest real part)
    """
    re = -np.exp(_np(k.Lambda_log_neg_re)) if k.version == "exp" else _np(k.Lambda_re)
    Lam = re + 1j * _np(k.Lambda_im)
    dt = np.exp(_np(k.log_dt)) * rate
    W = _np(k.W)[..., 0] + 1j * _np(k.W)[..., 1]
    C, H, N = W.shape
    ell = np.arange(L)
    K = np.zeros((C, H, L), dtype=complex)
    for h in range(H):
        for n in range(N):
            if k.sep_dt_re_im:
                z = dt[h, 0] * Lam[n].real + 1j * dt[h, 1] * Lam[n].imag
            else:
                z = dt[h] * Lam[n]
            if k.version == "exp":
                term = (np.exp(z) - 1) / Lam[n] * np.exp(z * ell)
            else:
                S = k.softmax_length or L
                logits = z * np.arange(S)
                shift = logits.real.max()
                term = np.exp(z * ell - shift) / np.exp(logits - shift).sum() / Lam[n]
            K[:, h, :] += W[:, h, n, None] * term[None, :]
    return to_real(K, k.kernel_to_real)


def rel(a, b) -> float:
    a = a.detach().double().numpy() if isinstance(a, torch.Tensor) else a
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
    "version,Lambda_init,sep_dt_re_im", list(itertools.product(VERSIONS, LAMBDA_INITS, [False, True]))
)
def test_kernel_matches_explicit_sum(version, Lambda_init, sep_dt_re_im):
    torch.manual_seed(0)
    k = DSSKernel(3, d_state=8, channels=2, version=version, Lambda_init=Lambda_init, sep_dt_re_im=sep_dt_re_im)
    if sep_dt_re_im:  # give the two step sizes different values so that mixing them up would show
        with torch.no_grad():
            k.log_dt[:, 1] += 0.7
    k = k.double()
    K, _ = k(40)
    assert K.shape == (2, 3, 40)
    assert rel(K, reference_kernel(k, 40)) < 1e-9


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("mode", KERNEL_TO_REAL)
def test_kernel_to_real_matches_explicit_sum(version, mode):
    torch.manual_seed(0)
    k = DSSKernel(4, d_state=8, channels=2, version=version, Lambda_init="lin", kernel_to_real=mode).double()
    assert rel(k(30)[0], reference_kernel(k, 30)) < 1e-9
    assert k.has_state == (version == "exp" and mode in ("real", "imag", "sum"))


def test_product_kernels_have_no_state():
    mixer = build_mixer(4, dict(name="dss", kernel_to_real="prod"))
    assert not mixer.has_state
    with pytest.raises(ValueError, match="kernel_to_real='prod' multiplies two responses"):
        mixer.kernel.default_state(2)


@pytest.mark.parametrize("L", [10, 16, 40])
def test_softmax_length_fixes_the_normaliser(L):
    torch.manual_seed(1)
    k = DSSKernel(3, d_state=8, version="softmax", Lambda_init="randn", softmax_length=16).double()
    assert (k.Lambda_re > 0).any() and (k.Lambda_re < 0).any()  # both branches are exercised
    assert rel(k(L)[0], reference_kernel(k, L)) < 1e-9


def test_softmax_is_stable_for_positive_real_part():
    """z L = 0.5 * 0.5 * 2048 = 512: exp(z L) overflows float32, the max-shifted form must not."""
    torch.manual_seed(2)
    k = DSSKernel(2, d_state=4, version="softmax", Lambda_init="lin")
    with torch.no_grad():
        k.Lambda_re.copy_(torch.tensor([0.5, -0.5, 0.25, 2.0]))
        k.log_dt.fill_(math.log(0.5))
    K, _ = k(2048)
    assert torch.isfinite(K).all()
    assert rel(K, reference_kernel(k, 2048)) < 1e-4


def test_float32_kernel_close_to_float64_reference():
    torch.manual_seed(1)
    k = DSSKernel(8, d_state=64, version="exp", Lambda_init="hippo", dt_min=1e-4, dt_max=1e-1)
    assert rel(k(1024)[0], reference_kernel(k, 1024)) < 1e-4


@pytest.mark.parametrize("version", VERSIONS)
def test_rate_scales_the_step_size(version):
    torch.manual_seed(0)
    k = DSSKernel(3, d_state=8, version=version, Lambda_init="lin").double()
    assert rel(k(40, rate=2.5)[0], reference_kernel(k, 40, rate=2.5)) < 1e-9
    assert rel(k(40, rate=2.5)[0], reference_kernel(k, 40)) > 1e-3


def test_inits_follow_the_paper():
    N = 6
    get = lambda k: (-np.exp(_np(k.Lambda_log_neg_re)) + 1j * _np(k.Lambda_im))  # noqa: E731
    np.testing.assert_allclose(get(DSSKernel(2, d_state=N, Lambda_init="lin")), -0.5 + 1j * np.pi * np.arange(N), rtol=1e-6)
    n = np.arange(N)
    inv = -0.5 + 1j * 2 * N / np.pi * (2 * N / (2 * n + 1) - 1)
    np.testing.assert_allclose(get(DSSKernel(2, d_state=N, Lambda_init="inv")), inv, rtol=1e-5)
    # hippo: the N eigenvalues with largest imaginary part of -1/2 + the skew part of the 2N x 2N matrix
    # A_ij = sqrt((2i+1)(2j+1)) for i > j (DSS paper, Sec. 3.3), computed here with numpy.
    i = np.arange(2 * N)
    A = np.tril(np.sqrt(np.outer(2 * i + 1, 2 * i + 1)), -1)
    eig = np.linalg.eigvals((A - A.T) / 2)
    want = -0.5 + 1j * np.sort(eig.imag)[-N:]
    got = get(DSSKernel(2, d_state=N, Lambda_init="hippo"))
    np.testing.assert_allclose(np.sort_complex(got), np.sort_complex(want), rtol=1e-5, atol=1e-5)
    rnd = get(DSSKernel(2, d_state=256, Lambda_init="randn"))
    np.testing.assert_allclose(rnd.real, -0.5, rtol=1e-6)
    assert 0.8 < rnd.imag.std() < 1.2
    soft = DSSKernel(2, d_state=256, version="softmax", Lambda_init="randn")
    assert (soft.Lambda_re > 0).sum() > 50 and (soft.Lambda_re < 0).sum() > 50


def test_log_dt_is_log_uniform_and_sep_tiles_it():
    k = DSSKernel(2000, d_state=2, dt_min=1e-3, dt_max=1e-1)
    dt = torch.exp(k.log_dt)
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
    assert abs(torch.log(dt).median().item() - math.log(1e-2)) < 0.2
    sep = DSSKernel(5, d_state=2, sep_dt_re_im=True)
    assert sep.log_dt.shape == (5, 2) and torch.equal(sep.log_dt[:, 0], sep.log_dt[:, 1])


def test_per_parameter_lr_and_frozen_parameters():
    mixer = build_mixer(4, dict(name="dss", d_state=8, lr={"Lambda": 1e-3, "W": 2e-3, "log_dt": 0.0}, wd={"W": 0.1}))
    k = mixer.kernel
    assert "log_dt" in dict(k.named_buffers()) and "log_dt" not in dict(k.named_parameters())
    groups = {name: (g["lr"], g["weight_decay"]) for g in param_groups(mixer, lr=0.5, weight_decay=0.01) for name in g["names"]}
    assert groups["kernel.Lambda_log_neg_re"] == (1e-3, 0.0) and groups["kernel.Lambda_im"] == (1e-3, 0.0)
    assert groups["kernel.W"] == (2e-3, 0.1)
    mixer(torch.randn(2, 4, 16)).square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert k.log_dt.grad is None


@pytest.mark.parametrize("version", VERSIONS)
def test_gradients_reach_every_parameter(version):
    torch.manual_seed(0)
    k = DSSKernel(3, d_state=4, channels=2, version=version, sep_dt_re_im=True)
    k(16)[0].square().sum().backward()
    for name, p in k.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


STEP_CASES = [dict(version="exp"), dict(version="softmax", Lambda_init="randn", softmax_length=20),
              dict(version="exp", kernel_to_real="sum"), dict(version="exp", kernel_to_real="imag")]


def direct_recurrence(k: DSSKernel, u: np.ndarray, s0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The DSS recurrence in numpy: s_t = e^z s_{t-1} + dB u_t, y = Re W s_t, dB from the paper's formulas.

    Returns (y (B, C, H, L), final state (B, H, N)).
    """
    re = -np.exp(_np(k.Lambda_log_neg_re)) if k.version == "exp" else _np(k.Lambda_re)
    Lam = re + 1j * _np(k.Lambda_im)
    z = np.exp(_np(k.log_dt))[:, None] * Lam[None, :]  # (H, N)
    if k.version == "exp":
        dB = (np.exp(z) - 1) / Lam
    else:
        dB = (np.exp(z) - 1) / (np.exp(z * k.softmax_length) - 1) / Lam
    W = _np(k.W)[..., 0] + 1j * _np(k.W)[..., 1]
    s, ys = s0, []
    for t in range(u.shape[-1]):
        s = np.exp(z) * s + dB * u[:, :, t, None]
        ys.append(to_real(np.einsum("chn,bhn->bch", W, s), k.kernel_to_real, feature_axis=-1))
    return np.stack(ys, -1), s


@pytest.mark.parametrize("opts", STEP_CASES)
def test_kernel_with_state_equals_direct_recurrence(opts):
    torch.manual_seed(3)
    k = DSSKernel(3, d_state=6, channels=2, **opts).double()
    u = torch.randn(2, 3, 20, dtype=torch.float64)
    s0 = torch.randn(2, 3, 6, dtype=torch.complex128)
    K, K_state = k(20, state=s0)
    y = torch.stack([(K[None, :, :, : t + 1].flip(-1) * u[:, None, :, : t + 1]).sum(-1) for t in range(20)], -1)
    y_ref, s_ref = direct_recurrence(k, u.numpy(), s0.numpy())
    assert rel(y + K_state, y_ref) < 1e-9
    end = k.forward_state(u, s0).detach().numpy()
    assert np.abs(end - s_ref).max() < 1e-9 * np.abs(s_ref).max()


@pytest.mark.parametrize("opts", STEP_CASES)
@pytest.mark.parametrize("nonzero_state", [False, True])
def test_mixer_conv_equals_step(opts, nonzero_state):
    torch.manual_seed(0)
    mixer = build_mixer(4, dict(name="dss", d_state=8, **opts)).eval()
    x = torch.randn(2, 4, 24)
    s0 = mixer.default_state(2)
    if nonzero_state:
        s0 = torch.randn_like(s0)
    y, s_end = mixer(x, state=s0, return_state=True)
    ys, state = run_steps(mixer, x, s0)
    assert ((ys - y).norm() / y.norm()).item() < 1e-4
    assert ((state - s_end).abs().max() / state.abs().max()).item() < 1e-4


@pytest.mark.parametrize("opts", STEP_CASES)
def test_forward_with_state_equals_two_halves(opts):
    torch.manual_seed(0)
    mixer = build_mixer(4, dict(name="dss", d_state=8, **opts)).eval()
    x = torch.randn(2, 4, 30)
    y = mixer(x)
    y1, s1 = mixer(x[..., :13], return_state=True)
    y2 = mixer(x[..., 13:], state=s1)
    assert ((torch.cat([y1, y2], -1) - y).norm() / y.norm()).item() < 1e-4


def test_softmax_without_fixed_length_has_no_state():
    mixer = build_mixer(4, dict(name="dss", version="softmax"))
    assert not mixer.has_state
    with pytest.raises(ValueError, match="softmax_length"):
        mixer.kernel.default_state(2)
    with pytest.raises(ValueError, match="softmax_length"):
        mixer.kernel(8, state=torch.zeros(1, 4, 64, dtype=torch.complex64))
    with pytest.raises(ValueError, match="no recurrent"):
        mixer.step(torch.randn(2, 4), None)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_bidirectional_sees_the_future_causal_does_not(version, bidirectional):
    torch.manual_seed(0)
    mixer = build_mixer(4, dict(name="dss", d_state=8, version=version, bidirectional=bidirectional)).double()
    x = torch.randn(1, 4, 20, dtype=torch.float64)
    x2 = x.clone()
    x2[..., 11:] += 1.0
    change = (mixer(x) - mixer(x2))[..., :11].abs().max().item()
    assert (change > 1e-6) if bidirectional else (change < 1e-12)


OPTION_VALUES = {
    "version": list(VERSIONS),
    "Lambda_init": list(LAMBDA_INITS),
    "sep_dt_re_im": [False, True],
    "softmax_length": [None, 12],
    "kernel_to_real": list(KERNEL_TO_REAL),
    "channels": [1, 3],
    "backend": ["auto", "torch", "chunked"],
    "lr": [None, 1e-3, {"Lambda": 1e-3, "W": None, "log_dt": 0.0}],
    "wd": [None, 0.0, {"W": 0.1}],
}


@pytest.mark.parametrize("option,value", [(o, v) for o, vs in OPTION_VALUES.items() for v in vs])
def test_every_option_value_builds_and_runs(option, value):
    torch.manual_seed(0)
    opts = {option: value}
    if option == "softmax_length" and value is not None:
        opts["version"] = "softmax"
    mixer = build_mixer(4, dict(name="dss", d_state=6, **opts))
    y = mixer(torch.randn(2, 4, 16))
    assert y.shape == (2, 4, 16) and torch.isfinite(y).all()
    assert rel(mixer.kernel.double()(16)[0], reference_kernel(mixer.kernel, 16)) < 1e-9


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(version="clip"), "unknown version 'clip'"),
        (dict(Lambda_init="hippo_skew_pos_imag"), "unknown Lambda_init"),
        (dict(d_state=0), "d_state must be positive"),
        (dict(dt_min=0.1, dt_max=0.01), "dt_min <= dt_max"),
        (dict(softmax_length=8), "only applies to version='softmax'"),
        (dict(version="softmax", softmax_length=0), "softmax_length must be"),
        (dict(lr={"A": 1.0}), "unknown lr key"),
        (dict(backend="cuda"), "unknown Vandermonde backend 'cuda'"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSSKernel(4, **kwargs)(8)
