"""LSSL against an independent float64 computation: the HiPPO matrices written out entry by entry
(tests/helpers.py), the bilinear transform by numpy, and the kernel by L sequential matrix-vector products."""
import math

import numpy as np
import pytest
import torch
from helpers import hippo_closed_form, run_steps

from ssmkit.mixers import build_mixer
from ssmkit.mixers.kernels.lssl import LSSLKernel
from ssmkit.ops.hippo import MEASURES
from ssmkit.ops.krylov import krylov, power_series


def np64(t):
    return t.detach().double().numpy()


def discrete_np(k: LSSLKernel, g: int, h: int, rate: float = 1.0):
    """(dA, dB) of system (g, h) from the raw parameters by numpy's inverse."""
    A = np64(k.A)[h] if k.A.dim() == 3 else np64(k.A)
    B = np64(k.B)[h] if k.B.dim() == 2 else np64(k.B)
    dt = math.exp(np64(k.log_dt)[g, h]) * rate
    eye = np.eye(A.shape[0])
    inv = np.linalg.inv(eye - dt / 2 * A)
    return inv @ (eye + dt / 2 * A), inv @ (dt * B)


def reference_kernel(k: LSSLKernel, L: int, rate: float = 1.0) -> np.ndarray:
    """K[c, h, l] = C[c, h] dA^l dB by repeated multiplication."""
    C = np64(k.C)
    K = np.zeros((k.channels, k.H, L))
    for c in range(k.channels):
        for h in range(k.H):
            dA, dB = discrete_np(k, c if k.dt_per_channel else 0, h, rate)
            x = dB
            for l in range(L):
                K[c, h, l] = C[c, h] @ x
                x = dA @ x
    return K


def rel(a, b) -> float:
    a = np64(a) if torch.is_tensor(a) else a
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("measure", MEASURES)
def test_frozen_a_b_are_the_hippo_matrices(measure):
    k = LSSLKernel(2, d_state=6, init=measure, learn=0).double()
    A, B = hippo_closed_form(measure, 6)
    np.testing.assert_allclose(np64(k.A), A, rtol=1e-6, atol=1e-6)  # stored in float32, then cast
    np.testing.assert_allclose(np64(k.B), B, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw,L", [(dict(init="legs", learn=1), 100), (dict(init="legt", learn=2), 65),
                                  (dict(init="lagt", learn=0), 33), (dict(init="fourier", dt_per_channel=True), 40)])
def test_float64_kernel_equals_sequential_products(kw, L):
    torch.manual_seed(0)
    k = LSSLKernel(3, d_state=8, channels=2, **kw).double()
    K, _ = k(L)
    assert K.shape == (2, 3, L)
    assert rel(K, reference_kernel(k, L)) < 1e-11


def test_float32_kernel_at_length_4096_stays_close():
    torch.manual_seed(0)
    k = LSSLKernel(2, d_state=32, init="legs")
    K, _ = k(4096)
    assert rel(K, reference_kernel(k, 4096)) < 1e-4


def test_krylov_doubling_equals_the_power_series():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(2, 5, 5, dtype=torch.float64, generator=gen) / 3
    v = torch.randn(2, 5, dtype=torch.float64, generator=gen)
    for L in (1, 2, 3, 8, 13):
        X = krylov(M, v, L).numpy()
        ref = np.stack([np.stack([np.linalg.matrix_power(M[b].numpy(), j) @ v[b].numpy() for j in range(L)], -1) for b in range(2)])
        np.testing.assert_allclose(X, ref, rtol=1e-12, atol=1e-13)


def test_blocked_power_series_equals_explicit_powers():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(3, 5, 5, dtype=torch.float64, generator=gen) / 3
    left = torch.randn(2, 1, 5, dtype=torch.float64, generator=gen)  # broadcast against M's batch
    right = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    for L in (1, 2, 3, 7, 16, 33):
        got = power_series(M, left, right, L).numpy()
        assert got.shape == (2, 3, L)
        Mn, ln, rn = M.numpy(), left.numpy(), right.numpy()
        ref = np.array([[[ln[i, 0] @ np.linalg.matrix_power(Mn[b], j) @ rn[b] for j in range(L)] for b in range(3)] for i in range(2)])
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("rate", [0.5, 2.0])
def test_rate_equals_scaled_step_size(rate):
    torch.manual_seed(0)
    k = LSSLKernel(3, d_state=8).double()
    assert rel(k(40, rate=rate)[0], reference_kernel(k, 40, rate)) < 1e-11


@pytest.mark.parametrize("kw", [dict(), dict(dt_per_channel=True, channels=2), dict(learn=2, init="legt"), dict(learn=0, channels=2)])
def test_conv_step_and_state_passing_agree(kw):
    torch.manual_seed(0)
    H, L, T = 3, 30, 11
    mixer = build_mixer(H, dict(name="lssl", d_state=8, **kw)).double().eval()
    x = torch.randn(2, H, L, dtype=torch.float64)
    y = mixer(x)
    ys, s_step = run_steps(mixer, x, mixer.default_state(2))
    assert rel(ys, np64(y)) < 1e-10
    y1, s = mixer(x[..., :T], return_state=True)
    y2, s_end = mixer(x[..., T:], state=s, return_state=True)
    assert rel(torch.cat([y1, y2], -1), np64(y)) < 1e-10
    assert rel(s_end, np64(s_step)) < 1e-10


def test_forward_state_is_the_recurrence():
    torch.manual_seed(0)
    k = LSSLKernel(2, d_state=6, dt_per_channel=True, channels=2).double()
    u = torch.randn(3, 2, 9, dtype=torch.float64)
    s0 = torch.randn(3, 2, 2, 6, dtype=torch.float64)
    got = np64(k.forward_state(u, s0))
    for c in range(2):
        for h in range(2):
            dA, dB = discrete_np(k, c, h)
            x = np64(s0)[:, c, h]
            for t in range(9):
                x = x @ dA.T + np64(u)[:, h, t, None] * dB
            np.testing.assert_allclose(got[:, c, h], x, rtol=1e-11, atol=1e-12)


def test_learn_modes_and_frozen_parameters():
    fixed = LSSLKernel(4, d_state=8, learn=0)
    assert set(dict(fixed.named_parameters())) == {"C"}
    assert {"A", "B", "log_dt"} <= set(dict(fixed.named_buffers()))
    shared = LSSLKernel(4, d_state=8, learn=1, lr={"A": 1e-4, "B": 1e-4, "dt": 1e-3})
    assert shared.A.shape == (8, 8) and shared.A._optim == {"lr": 1e-4, "weight_decay": 0.0}
    assert shared.log_dt._optim == {"lr": 1e-3, "weight_decay": 0.0}
    per_feature = LSSLKernel(4, d_state=8, learn=2)
    assert per_feature.A.shape == (4, 8, 8) and per_feature.B.shape == (4, 8)
    for k in (shared, per_feature):
        k(16)[0].square().sum().backward()
        for name, p in k.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fixed_kernel_reuses_its_krylov_matrix_until_a_buffer_changes():
    torch.manual_seed(0)
    k = LSSLKernel(2, d_state=8, channels=2, learn=0).double()
    K1, _ = k(20)
    X = k._krylov_cache[1]
    k(20)[0].sum().backward()  # C still trains
    assert k._krylov_cache[1] is X and k.C.grad.abs().sum() > 0
    with torch.no_grad():
        k.log_dt += 0.1
    K2, _ = k(20)
    assert k._krylov_cache[1] is not X
    assert rel(K2, reference_kernel(k, 20)) < 1e-11 and rel(K1, np64(K2)) > 1e-3


def test_dt_is_log_uniform_in_range():
    k = LSSLKernel(2000, d_state=2, dt_min=1e-3, dt_max=1e-1)
    dt = torch.exp(k.log_dt)
    assert dt.shape == (1, 2000) and dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
    assert abs(torch.log(dt).median().item() - math.log(1e-2)) < 0.2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(init="legx"), "unknown init 'legx'; choose one of legs"),
        (dict(learn=3), "unknown learn 3; choose 0"),
        (dict(d_state=0), "d_state must be positive"),
        (dict(dt_min=0.1, dt_max=0.01), "dt_min <= dt_max"),
        (dict(lr={"P": 1.0}), "unknown lr key"),
        (dict(learn=0, lr={"dt": 1e-3}), r"learn=0 \(LSSL-fixed\) freezes A, B and dt, so lr/wd for \['dt'\]"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LSSLKernel(4, **kwargs)
