"""Every mixer at long lengths and at the extremes of its parameters: value and gradients finite, in float32 and
float64, and equal to an independent float64 computation (a step-by-step recurrence or cumulative products,
never the code under test) where one fits.

Ranges covered (each test names its own):
- step sizes dt_min/dt_max from 1e-6 (|dA| -> 1) to 1e4 (dA underflows to 0), and a spread 1e-6 .. 1e4:
  s4d (every init, zoh and bilinear, every real_transform), s4 (nplr/dplr/diag, legs/legt/lagt/fourier/fout),
  dss (exp and softmax, Re Lambda > 0 included), dlr (its dt only sets the initial decay: every version),
  lssl (every measure, learn 0/1/2), s5 (zoh/bilinear, scan/conv, clip_eigs, bidirectional), mamba (dt_init_floor
  below dt_min so the range is the one asked for);
- LRU's ring: r_min 0 (decays to 0), r_max 1 with r_min 0.999999 (|lambda| -> 1), a radius <= 1e-6 with
  max_phase 100, and a tiny max_phase; scan and conv;
- SGConv: decay_min/max and alpha_min/max 1e-6 and 1e4 (powers past float32's range), learnable polynomial decay;
- attention: full at L = 8,192 (its cost is L^2), local chunks at 65,536.
Lengths: 65,536 (B 1, H 2, small state) except where said. ``ops/scan.py`` itself is covered over every |a| in
[0, 1] by tests/ops/test_scan.py.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ssmkit.mixers import build_mixer
from ssmkit.mixers.kernels.dlr import DLRKernel
from ssmkit.mixers.kernels.dss import DSSKernel
from ssmkit.mixers.kernels.s4d import S4DKernel
from ssmkit.mixers.lru import LRU
from ssmkit.mixers.s5 import S5
from ssmkit.ops.selective_scan import selective_scan

L = 65536
DTS = {"dt1e-6": (1e-6, 1e-6), "dt1e4": (1e4, 1e4), "dt1e-6..1e4": (1e-6, 1e4)}


def _cases():
    """(id, mixer name, options, L): the mixer configurations of the finiteness test."""
    out = []
    for tag, (lo, hi) in DTS.items():
        dt = dict(dt_min=lo, dt_max=hi)
        for init in ("legs", "lin", "inv", "real"):
            out.append((f"s4d-{init}-zoh-{tag}", "s4d", dict(init=init, d_state=8, **dt), L))
        out.append((f"s4d-bilinear-relu-{tag}", "s4d", dict(disc="bilinear", real_transform="relu", d_state=8, **dt), L))
        out.append((f"s4d-none-{tag}", "s4d", dict(real_transform="none", d_state=8, **dt), L))
        for mode, init, rank in (("nplr", "legs", 1), ("nplr", "legt", 2), ("dplr", "lagt", 1), ("dplr", "fourier", 2),
                                 ("nplr", "fout", 2), ("diag", "legs", 1)):
            out.append((f"s4-{mode}-{init}-{tag}", "s4", dict(mode=mode, init=init, rank=rank, d_state=8, **dt), L))
        for version, init in (("exp", "hippo"), ("softmax", "randn"), ("softmax", "lin")):
            out.append((f"dss-{version}-{init}-{tag}", "dss", dict(version=version, Lambda_init=init, d_state=8, **dt), L))
        out.append((f"dss-softmax-sep-{tag}", "dss", dict(version="softmax", Lambda_init="randn", sep_dt_re_im=True,
                                                          d_state=8, **dt), L))
        for version in ("", "Lambda_imag", "Lambda_real_W_real"):
            out.append((f"dlr-{version or 'complex'}-{tag}", "dlr", dict(version=version, d_state=8, **dt), L))
        for init in ("legs", "legt", "lagt", "fourier"):
            out.append((f"lssl-{init}-{tag}", "lssl", dict(init=init, learn=2, d_state=8, **dt), L))
        for disc in ("zoh", "bilinear"):
            for mode in ("scan", "conv"):
                out.append((f"s5-{disc}-{mode}-{tag}", "s5", dict(disc=disc, mode=mode, d_state=8, **dt), L))
        out.append((f"mamba-{tag}", "mamba", dict(d_state=8, dt_init_floor=1e-7, **dt), L))
    out.append(("s5-clip-bidirectional", "s5", dict(clip_eigs=True, d_state=8, bidirectional=True), L))
    out.append(("lssl-fixed-dt1e-6..1e4", "lssl", dict(learn=0, d_state=8, dt_min=1e-6, dt_max=1e4), L))
    out.append(("dlr-prod-dt1e-6..1e4", "dlr", dict(kernel_to_real="prod", d_state=8, dt_min=1e-6, dt_max=1e4), L))
    for mode in ("scan", "conv"):
        out.append((f"lru-rmin0-{mode}", "lru", dict(r_min=0.0, mode=mode, d_state=8), L))
        out.append((f"lru-ring-to-1-{mode}", "lru", dict(r_min=0.999999, r_max=1.0, mode=mode, d_state=8,
                                                          bidirectional=True), L))
        out.append((f"lru-radius-1e-6-{mode}", "lru", dict(r_min=0.0, r_max=1e-6, max_phase=100.0, mode=mode, d_state=8), L))
        out.append((f"lru-phase-1e-3-{mode}", "lru", dict(r_min=0.999, r_max=1.0, max_phase=1e-3, mode=mode, d_state=8), L))
    for name, opts in (("decay1e-6", dict(decay_min=1e-6, decay_max=1e-6)), ("decay1e4", dict(decay_min=1e4, decay_max=1e4)),
                       ("alpha1e-6", dict(alpha_min=1e-6, alpha_max=1e-6)), ("alpha1e4", dict(alpha_min=1e4, alpha_max=1e4)),
                       ("learnable1e4", dict(mode="cat_randn_learnable", decay_min=1e4, decay_max=1e4)),
                       ("sum-cos", dict(mode="sum_cos_nearest"))):
        out.append((f"sgconv-{name}", "sgconv", dict(l_max=L, kernel_dim=32, **opts), L))
    out.append(("attn-full", "attn", dict(n_heads=1), 8192))
    out.append(("attn-full-bidirectional", "attn", dict(n_heads=1, bidirectional=True), 8192))
    out.append(("attn-local", "attn", dict(n_heads=1, chunk_size=256), L))
    return out


CASES = _cases()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_mixer_is_finite_at_long_lengths_and_extreme_parameters(case, dtype):
    _, name, options, length = case
    torch.manual_seed(0)
    mixer = build_mixer(2, {"name": name, **options}).to(dtype)
    u = torch.randn(1, 2, length, dtype=dtype, requires_grad=True)
    y = mixer(u)
    assert torch.isfinite(y).all()
    (y.square().mean() + y[..., -1].sum()).backward()
    assert torch.isfinite(u.grad).all()
    bad = [n for n, p in mixer.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


# --- accuracy against independent float64 computations ---

def _power_sum(v: torch.Tensor, dA: torch.Tensor, length: int) -> torch.Tensor:
    """sum_n v[..., n] dA[n]^l for l < length, the powers by a float64 cumulative product (a recurrence)."""
    steps = torch.cat([torch.ones_like(dA).unsqueeze(-1), dA.unsqueeze(-1).expand(*dA.shape, length - 1)], -1)
    return torch.einsum("...n,...nl->...l", v, torch.cumprod(steps, -1))


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max over rows of max |got - want| / max |want|."""
    return ((got.double() - want).abs().amax(-1) / want.abs().amax(-1).clamp(min=1e-300)).max().item()


#: float32 tolerance; |dA| -> 1 with a phase near pi (bilinear at dt 1e4) carries one float32 rounding of the phase
#: over all 65,536 powers (65,536 * 2e-7 rad), which no float32 parameterisation avoids.
TOL32, TOL32_PHASE, TOL64 = 2e-5, 3e-3, 1e-9


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("init", ["legs", "lin", "real"])
@pytest.mark.parametrize("dts", DTS, ids=list(DTS))
def test_s4d_kernel_matches_float64_powers(dts, init, disc):
    """ZOH dB = (dA - 1)/A B (before: (exp(z) - 1)/z in float32, 2.7e-2 off at dt 1e-6) and bilinear dA = (1 + z/2)/(1 - z/2)."""
    torch.manual_seed(1)
    k = S4DKernel(2, 16, init=init, disc=disc, dt_min=DTS[dts][0], dt_max=DTS[dts][1])
    k64 = copy.deepcopy(k).double()
    dt, A, B, C = k64.ssm()
    z = dt.unsqueeze(-1) * A
    if disc == "zoh":
        dA = torch.exp(z)
        dB = (dA - 1) / A * B
    else:
        dA, dB = (1 + z / 2) / (1 - z / 2), dt.unsqueeze(-1) / (1 - z / 2) * B
    want = 2 * _power_sum(C * dB, dA, L).real
    tol = TOL32_PHASE if disc == "bilinear" and dts != "dt1e-6" else TOL32
    assert _relative_error(k(L)[0], want) < tol
    assert _relative_error(k64(L)[0], want) < TOL64


@pytest.mark.parametrize("version, init", [("exp", "hippo"), ("softmax", "lin"), ("softmax", "randn")])
@pytest.mark.parametrize("dts", DTS, ids=list(DTS))
def test_dss_kernel_matches_float64_powers(dts, version, init):
    torch.manual_seed(2)
    k = DSSKernel(2, 16, version=version, Lambda_init=init, dt_min=DTS[dts][0], dt_max=DTS[dts][1])
    k64 = copy.deepcopy(k).double()
    Lam, W = k64.eigenvalues(), torch.view_as_complex(k64.W)
    z = torch.exp(k64.log_dt).unsqueeze(-1) * Lam
    if version == "exp":
        want = _power_sum(W * (torch.exp(z) - 1) / Lam, torch.exp(z), L).real
    else:  # exp(z l) / sum_k exp(z k); for Re z > 0 divided through by exp(z (L - 1)) so nothing overflows
        flip = Lam.real > 0
        w = torch.where(flip, -z, z)
        p = torch.cumprod(torch.cat([torch.ones_like(w).unsqueeze(-1), torch.exp(w).unsqueeze(-1).expand(*w.shape, L - 1)], -1), -1)
        p = torch.where(flip.unsqueeze(-1), p.flip(-1), p) / p.sum(-1, keepdim=True)
        want = torch.einsum("chn,hnl->chl", W / Lam, p).real
    assert _relative_error(k(L)[0], want) < TOL32
    assert _relative_error(k64(L)[0], want) < TOL64


@pytest.mark.parametrize("version", ["", "Lambda_imag", "Lambda_real_W_real"])
@pytest.mark.parametrize("dts", DTS, ids=list(DTS))
def test_dlr_kernel_matches_float64_powers(dts, version):
    torch.manual_seed(3)
    k = DLRKernel(2, 16, version=version, dt_min=DTS[dts][0], dt_max=DTS[dts][1])
    k64 = copy.deepcopy(k).double()
    want = _power_sum(k64.weights(), torch.exp(k64.log_lambda()), L).real
    assert _relative_error(k(L)[0], want) < TOL32
    assert _relative_error(k64(L)[0], want) < TOL64


def _mimo_recurrence(lam, Bbar, C, D, scale, u) -> torch.Tensor:
    """y = scale Re(C x) + D u with x_t = lam x_{t-1} + Bbar u_t, one step at a time in numpy complex128."""
    Bu = np.einsum("ph,hl->pl", Bbar.numpy(), u[0].numpy())
    lam = lam.numpy()
    xs, x = np.empty_like(Bu), np.zeros(Bu.shape[0], dtype=np.complex128)
    for t in range(Bu.shape[1]):
        x = lam * x + Bu[:, t]
        xs[:, t] = x
    y = scale * np.einsum("hp,pl->hl", C.numpy(), xs).real + D.numpy()[:, None] * u[0].numpy()
    return torch.from_numpy(y).unsqueeze(0)


@pytest.mark.parametrize("mode", ["scan", "conv"])
@pytest.mark.parametrize("disc, dts", [("zoh", "dt1e-6"), ("zoh", "dt1e4"), ("bilinear", "dt1e-6..1e4")])
def test_s5_matches_the_float64_recurrence(disc, dts, mode):
    """Before: mode conv formed log(exp(Lambda dt)) = log 0 at dt 1e4 (NaN), and dt 1e-6 lost B_bar to cancellation."""
    torch.manual_seed(4)
    m = S5(2, d_state=8, dt_min=DTS[dts][0], dt_max=DTS[dts][1], disc=disc, mode=mode, activation=None, output=None)
    p = copy.deepcopy(m).double()
    Lam, dt, B = torch.complex(p.Lambda_re, p.Lambda_im), torch.exp(p.log_dt), torch.view_as_complex(p.B)
    z = Lam * dt
    if disc == "zoh":
        lam = torch.exp(z)
        Bbar = ((lam - 1) / Lam).unsqueeze(-1) * B
    else:
        lam, Bbar = (1 + z / 2) / (1 - z / 2), (dt / (1 - z / 2)).unsqueeze(-1) * B
    u = torch.randn(1, 2, L, dtype=torch.float64)
    with torch.no_grad():
        want = _mimo_recurrence(lam, Bbar, torch.view_as_complex(p.C)[0], p.D, m.output_scale, u)
        got32, got64 = m(u.float()), p(u)
    assert _relative_error(got32, want) < (TOL32_PHASE if disc == "bilinear" else TOL32)
    assert _relative_error(got64, want) < TOL64


@pytest.mark.parametrize("mode", ["scan", "conv"])
@pytest.mark.parametrize("ring", [(0.0, 1.0, 6.28), (0.9, 0.999, 6.28), (0.0, 1e-6, 100.0), (0.999999, 1.0, 6.28)],
                         ids=["rmin0", "lra", "radius1e-6", "ring-to-1"])
def test_lru_matches_the_float64_recurrence(ring, mode):
    """r_min 0 (the default) was NaN for any L >= 2,048 in mode scan, and r_min 0.9 at L 4,096 in float32."""
    torch.manual_seed(5)
    m = LRU(2, d_state=8, r_min=ring[0], r_max=ring[1], max_phase=ring[2], mode=mode, activation=None, output=None)
    p = copy.deepcopy(m).double()
    lam = torch.exp(torch.complex(-torch.exp(p.nu_log), torch.exp(p.theta_log)))
    Bbar = torch.exp(p.gamma_log).unsqueeze(-1) * torch.view_as_complex(p.B)
    u = torch.randn(1, 2, L, dtype=torch.float64)
    with torch.no_grad():
        want = _mimo_recurrence(lam, Bbar, torch.view_as_complex(p.C)[0], p.D, 1.0, u)
        got32, got64 = m(u.float()), p(u)
    # |lambda| within 1e-6 of 1: lambda's float32 rounding (6e-8) compounds over 65,536 undamped steps
    assert _relative_error(got32, want) < (TOL32_PHASE if ring[0] > 0.99 else TOL32)
    assert _relative_error(got64, want) < TOL64


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("delta_range", [(1e-6, 1e-6), (1e4, 1e4), (1e-6, 1e4)], ids=["d1e-6", "d1e4", "d1e-6..1e4"])
def test_selective_scan_matches_the_float64_recurrence_at_extreme_steps(delta_range, backend):
    """Mamba's scan, h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t . h_t + D u_t, with delta log-uniform in
    the range and A = -(1 .. 1000): value and gradients finite, value equal to the float64 loop (L = 1,024; 256 for the torch
    scan at delta 1e4, which halves its chunks down to single steps there: seconds per thousand positions)."""
    g = torch.Generator().manual_seed(6)
    n_len, E, N = 256 if backend == "torch" and delta_range == (1e4, 1e4) else 1024, 2, 4
    lo, hi = np.log(delta_range[0]), np.log(delta_range[1])
    delta = torch.exp(lo + (hi - lo) * torch.rand(1, E, n_len, generator=g, dtype=torch.float64))
    A = -torch.logspace(0, 3, N, dtype=torch.float64).expand(E, N).contiguous()
    u, D = torch.randn(1, E, n_len, generator=g, dtype=torch.float64), torch.randn(E, generator=g, dtype=torch.float64)
    B, C = torch.randn(1, N, n_len, generator=g, dtype=torch.float64), torch.randn(1, N, n_len, generator=g, dtype=torch.float64)
    dA, dBu = np.exp(delta[0, :, None, :].numpy() * A[:, :, None].numpy()), (delta * u)[0, :, None, :].numpy() * B.numpy()
    h, want = np.zeros((E, N)), np.empty((E, n_len))
    for t in range(n_len):
        h = dA[..., t] * h + dBu[..., t]
        want[:, t] = h @ C[0, :, t].numpy()
    want = torch.from_numpy(want + D.numpy()[:, None] * u[0].numpy()).unsqueeze(0)
    for dtype, tol in ((torch.float32, TOL32), (torch.float64, TOL64)):
        args = [t.to(dtype).requires_grad_() for t in (u, delta, A, B, C, D)]
        y, _ = selective_scan(*args, backend=backend)
        assert _relative_error(y.detach(), want) < tol, dtype
        y.square().sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in args), dtype
