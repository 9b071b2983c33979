"""The mamba2 mixer (ssmkit/mixers/mamba2.py) against the Mamba-2 block written out as a float64 loop over tokens
and heads (in_proj, causal conv + SiLU, softplus(dt + dt_bias), h_t = exp(dt A) h_{t-1} + dt x_t B_t^T,
y = h C + D x, RMSNorm per group of y * silu(z), out_proj), independent of the chunked SSD code."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import MaxTensor
from mixer_refs import assert_grads_match, assert_lengths_match, run_chunks, run_steps

import ssmkit.mixers.mamba2 as mamba2_module
from ssmkit.mixers.mamba2 import Mamba2
from ssmkit.train.optim import param_groups


def reference_branch(m, branch, in_w, in_b, u, h0=None, conv0=None):
    """One SSD branch, token by token: u (B, H, L) -> y (B, E, L) before the gate, final (conv, ssm) state."""
    Bsz, _, L = u.shape
    E, G, N, P, nh, K = m.d_inner, m.ngroups, branch.d_state, branch.headdim, branch.nheads, branch.d_conv
    conv_dim = E + 2 * G * N
    W = branch.conv1d.weight.double().squeeze(1)                      # (conv_dim, K)
    cb = branch.conv1d.bias.double() if branch.conv1d.bias is not None else torch.zeros(conv_dim, dtype=torch.float64)
    A = -torch.exp(branch.A_log.double())
    hist = [torch.zeros(Bsz, conv_dim, dtype=torch.float64) for _ in range(K - 1)] if conv0 is None else \
        [conv0[..., k].double() for k in range(K - 1)]
    h = torch.zeros(Bsz, nh, P, N, dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(L):
        proj = u[..., t].double() @ in_w.double().T + (0 if in_b is None else in_b.double())
        xBC_raw, dt_raw = proj[:, :conv_dim], proj[:, conv_dim:]
        hist.append(xBC_raw)
        window = torch.stack(hist[-K:], -1)                             # (B, conv_dim, K)
        xBC = F.silu((window * W).sum(-1) + cb)
        x, Bv, Cv = xBC[:, :E], xBC[:, E:E + G * N], xBC[:, E + G * N:]
        dt = F.softplus(dt_raw + branch.dt_bias.double())
        y, h_new = [], []
        for head in range(nh):
            grp = head // (nh // G)
            xh = x[:, head * P:(head + 1) * P]
            Bg, Cg = Bv[:, grp * N:(grp + 1) * N], Cv[:, grp * N:(grp + 1) * N]
            hh = torch.exp(dt[:, head] * A[head])[:, None, None] * h[:, head] + \
                (dt[:, head, None] * xh)[:, :, None] * Bg[:, None, :]
            h_new.append(hh)
            y.append((hh * Cg[:, None, :]).sum(-1) + branch.D[head].double() * xh)
        h = torch.stack(h_new, 1)
        ys.append(torch.cat(y, 1))
    conv_state = torch.stack(hist[-(K - 1):], -1) if K > 1 else torch.zeros(Bsz, conv_dim, 0, dtype=torch.float64)
    return torch.stack(ys, -1), (conv_state, h)


def gate_out(m, y, z):
    """RMSNorm over each group of E / G channels of y * silu(z), times the weight, then out_proj; (B, E, L)."""
    g = y * F.silu(z)
    out = torch.zeros_like(g)
    size = m.d_inner // m.ngroups
    for k in range(m.ngroups):
        part = g[:, k * size:(k + 1) * size]
        out[:, k * size:(k + 1) * size] = part / torch.sqrt(part.square().mean(1, keepdim=True) + m.norm_eps)
    out = out * m.norm_weight.double()[:, None]
    b = 0 if m.out_proj.bias is None else m.out_proj.bias.double()[None, :, None]
    return torch.einsum("oe,bel->bol", m.out_proj.weight.double(), out) + b


def reference(m, u, h0=None, conv0=None):
    E = m.d_inner
    W, b = m.in_proj.weight, m.in_proj.bias
    z = torch.einsum("ed,bdl->bel", W[:E].double(), u.double()) + (0 if b is None else b[:E].double()[None, :, None])
    y, state = reference_branch(m, m.ssd, W[E:], None if b is None else b[E:], u, h0, conv0)
    if m.bidirectional:
        y_r, _ = reference_branch(m, m.ssd_reverse, m.in_proj_reverse.weight, m.in_proj_reverse.bias, u.flip(-1))
        y = y + y_r.flip(-1)
    return gate_out(m, y, z), state


def build(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(d_state=5, headdim=4, expand=2, chunk_size=8)
    opts.update(kw)
    m = Mamba2(8, **opts).double()
    with torch.no_grad():  # move D and the norm weight off their initial 1 so that a wrong use shows
        for p in (m.ssd.D, m.norm_weight):
            p.add_(torch.randn_like(p) * 0.3)
    return m


@pytest.mark.parametrize("kw", [dict(), dict(ngroups=2), dict(ngroups=4, bias=True), dict(d_conv=1),
                                dict(chunk_size=64), dict(bidirectional=True, ngroups=2)])
def test_forward_matches_loop(kw):
    m = build(**kw)
    u = torch.randn(2, 8, 19, dtype=torch.float64)
    y_ref, _ = reference(m, u)
    torch.testing.assert_close(m(u), y_ref, rtol=1e-10, atol=1e-10)


def test_step_and_state_passing_match_loop():
    m = build(ngroups=2)
    u = torch.randn(2, 8, 23, dtype=torch.float64)
    y_ref, (conv_ref, h_ref) = reference(m, u)
    # token by token
    ys, state = run_steps(m, u, m.default_state(2))
    torch.testing.assert_close(ys, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.ssm, h_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.conv, conv_ref, rtol=1e-10, atol=1e-10)
    # forward in chunks passing the state (pieces shorter than the convolution too)
    yc, state = run_chunks(m, u, (2, 13, 14))
    torch.testing.assert_close(yc, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.ssm, h_ref, rtol=1e-10, atol=1e-10)
    # a non-zero start state is read the same way by the loop
    y2_ref, _ = reference(m, u[..., :7], h0=state.ssm, conv0=state.conv)
    torch.testing.assert_close(m(u[..., :7], state=state), y2_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding(bidirectional):
    m = build(bidirectional=bidirectional)
    lengths = torch.tensor([19, 6, 11])
    u = torch.randn(3, 8, 19, dtype=torch.float64)
    assert_lengths_match(m, u, lengths, m)


def test_gradients_match_loop():
    u = torch.randn(2, 8, 13, dtype=torch.float64, requires_grad=True)
    assert_grads_match(build(ngroups=2, bias=True), reference, u)


def test_bf16_autocast_finite():
    torch.manual_seed(0)
    m = Mamba2(16, d_state=8, headdim=8, chunk_size=16)
    u = torch.randn(2, 16, 50, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(u)
        state = m.default_state(2)
        y_t, _ = m.step(u[..., 0], state)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(y_t).all() and torch.isfinite(u.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    ref = Mamba2(16, d_state=8, headdim=8, chunk_size=16)
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(y.float(), ref(u.detach()), rtol=0.1, atol=0.05)


def test_long_sequence_forward_backward():
    torch.manual_seed(0)
    m = Mamba2(16, d_state=16, headdim=8)
    u = torch.randn(2, 16, 4096, requires_grad=True)
    y = m(u)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(u.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_memory_bounded():
    """Forward and backward never hold an (L x L) matrix or a state per position: the largest tensor is the
    in_proj output or O(B heads L Q)."""
    torch.manual_seed(0)
    Bsz, H, L, Q = 1, 16, 2048, 32
    m = Mamba2(H, d_state=32, headdim=8, chunk_size=Q)
    u = torch.randn(Bsz, H, L, requires_grad=True)
    with MaxTensor() as mt:
        m(u).sum().backward()
    nh, P, N = m.nheads, 8, 32
    bound = max(Bsz * m.in_proj.out_features * L, Bsz * nh * L * Q, Bsz * nh * P * N * L // Q)
    assert mt.max_numel <= bound, (mt.max_numel, bound)
    assert bound < Bsz * nh * L * L // 8 and bound < Bsz * nh * P * N * L // 4


def test_init_and_param_groups():
    m = Mamba2(32, d_state=16, headdim=8, lr=1e-3, dt_min=0.01, dt_max=0.05)
    A = torch.exp(m.ssd.A_log)
    assert A.min() >= 1 and A.max() <= 16 and m.ssd.A_log.shape == (m.nheads,) == (8,)
    dt = F.softplus(m.ssd.dt_bias)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6
    assert torch.equal(m.ssd.D, torch.ones(8))
    groups = param_groups(m, lr=0.01, weight_decay=0.1)
    ssm = [g for g in groups if g["lr"] == 1e-3]
    assert len(ssm) == 1 and ssm[0]["weight_decay"] == 0.0
    assert sorted(n.split(".")[-1] for n in ssm[0]["names"]) == ["A_log", "D", "dt_bias"]
    wd = {n for g in groups if g["weight_decay"] == 0.1 for n in g["names"]}
    assert {"in_proj.weight", "out_proj.weight"} <= wd


def test_bidirectional_has_no_state():
    m = build(bidirectional=True)
    assert not m.has_state
    with pytest.raises(ValueError, match="no recurrent state.*bidirectional"):
        m.default_state(2)
    with pytest.raises(ValueError, match="bidirectional"):
        m(torch.randn(1, 8, 5, dtype=torch.float64), return_state=True)


@pytest.mark.parametrize("kw, match", [
    (dict(headdim=5), "headdim=5 must divide E = expand \\* d_model = 16"),
    (dict(headdim=4, ngroups=3), "ngroups=3 must divide the number of heads"),
    (dict(backend="cuda"), "unknown SSD backend 'cuda'"),
    (dict(chunk_size=0), "chunk_size must be a positive integer"),
    (dict(dt_min=0.1, dt_max=0.01), "dt_min <= dt_max"),
    (dict(A_init_range=(0, 4)), "A_init_range"),
    (dict(lr=-1), "lr must be >= 0"),
    (dict(d_state=0), "d_state and d_conv must be >= 1"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        Mamba2(8, **{"headdim": 4, **kw})
    assert "\n" not in str(e.value)


def test_rate_and_shape_refused():
    m = build()
    with pytest.raises(ValueError, match="computes its step size from the input.*use rate=1"):
        m(torch.randn(1, 8, 5, dtype=torch.float64), rate=2.0)
    with pytest.raises(ValueError, match="expects"):
        m(torch.randn(1, 7, 5, dtype=torch.float64))
    assert math.isclose(m.nheads * 4, m.d_inner)


def test_chunk_size_and_backend_reach_the_scan(monkeypatch):
    """chunk_size and backend change no result beyond rounding, so check that they reach the SSD scan and the
    convolution (backend torch pins both), in forward and in the reversed branch."""
    mod = mamba2_module
    calls = []
    real_scan, real_conv = mod.ssd_scan, mod.causal_conv1d_silu
    monkeypatch.setattr(mod, "ssd_scan", lambda *a, **kw: calls.append(("ssd", kw["chunk"], kw["backend"]))
                        or real_scan(*a, **kw))
    monkeypatch.setattr(mod, "causal_conv1d_silu", lambda *a, **kw: calls.append(("conv", kw["backend"]))
                        or real_conv(*a, **kw))
    build(chunk_size=3, backend="torch", bidirectional=True)(torch.randn(1, 8, 10, dtype=torch.float64))
    assert calls == [("conv", "torch"), ("ssd", 3, "torch")] * 2
    calls.clear()
    build(chunk_size=16)(torch.randn(1, 8, 10, dtype=torch.float64))
    assert calls == [("conv", "auto"), ("ssd", 16, "auto")]
