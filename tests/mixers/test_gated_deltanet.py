"""The gated_deltanet mixer (ssmkit/mixers/gated_deltanet.py) against the Gated DeltaNet layer of Yang, Kautz and
Hatamizadeh 2025 (and fla-org/flash-linear-attention ``fla/layers/gated_deltanet.py``) written out as a float64 loop
over tokens and heads, independent of the chunked WY code in ``ssmkit/ops/linear_attention.py``:

    q, k, v = SiLU(causal depthwise conv(u W_q), (u W_k), (u W_v))       conv_size taps, one filter per channel
    q, k    = q / sqrt(|q|^2 + 1e-6), k / sqrt(|k|^2 + 1e-6)               per head
    alpha_t = exp(-exp(A_log) softplus(u W_a + dt_bias)),  beta_t = sigmoid(u W_b) (x2 with allow_neg_eigval)
    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(dk)
    y = W_o (RMSNorm_head(o) * swish(u W_g))                             one RMSNorm weight (dv) shared by the heads

The paper writes the state transposed (S_t = S_{t-1} alpha_t (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, (dv, dk));
here and in fla it is (dk, dv). As fla: the output read from S_t (after the update), the scale 1/sqrt(dk) on the
L2-normalised q, the epsilon inside the root of the L2 norm."""
import math

import pytest
import torch
import torch.nn.functional as F
from mixer_refs import assert_grads_match, assert_lengths_match, run_chunks, run_steps

from ssmkit.mixers.gated_deltanet import GatedDeltaNet
from ssmkit.train.optim import param_groups

H = 8


def reference(m, u, S0=None, conv0=None):
    """u (B, H, L) -> y (B, H, L), final (conv (B, E, K-1), ssm (B, n_heads, dk, dv)), token by token in float64."""
    Bsz, _, L = u.shape
    n, dk, dv, K = m.n_heads, m.d_key, m.d_value, m.conv_size
    Wq, Wk, Wv, Wo, Wa, Wb = (p.weight.double() for p in (m.q_proj, m.k_proj, m.v_proj, m.o_proj, m.a_proj, m.b_proj))
    Wg = None if m.g_proj is None else m.g_proj.weight.double()
    E = 2 * n * dk + n * dv
    conv_w = m.conv1d.weight.double()[:, 0]                                  # (E, K)
    conv_b = torch.zeros(E, dtype=torch.float64) if m.conv1d.bias is None else m.conv1d.bias.double()
    A = torch.exp(m.A_log.double())
    w = m.norm_weight.double()
    hist = [torch.zeros(Bsz, E, dtype=torch.float64) for _ in range(K - 1)] if conv0 is None else \
        [conv0[..., j].double() for j in range(K - 1)]
    S = torch.zeros(Bsz, n, dk, dv, dtype=torch.float64) if S0 is None else S0.double().clone()
    ys = []
    for t in range(L):
        x = u[..., t].double()                                               # (B, H)
        hist.append(torch.cat([x @ Wq.T, x @ Wk.T, x @ Wv.T], 1))            # (B, E)
        c = sum(hist[-K + j] * conv_w[:, j] for j in range(K)) + conv_b     # oldest tap first
        c = c / (1 + torch.exp(-c))                                          # SiLU
        q_all, k_all, v_all = c[:, :n * dk], c[:, n * dk:2 * n * dk], c[:, 2 * n * dk:]
        a = x @ Wa.T + m.dt_bias.double()                                    # (B, n)
        alpha = torch.exp(-A * torch.log(1 + torch.exp(a)))
        beta = 1 / (1 + torch.exp(-(x @ Wb.T)))
        if m.allow_neg_eigval:
            beta = 2 * beta
        gate = None if Wg is None else x @ Wg.T
        S_new, y_heads = [], []
        for h in range(n):
            q, k = q_all[:, h * dk:(h + 1) * dk], k_all[:, h * dk:(h + 1) * dk]
            v = v_all[:, h * dv:(h + 1) * dv]
            q = q / torch.sqrt(q.square().sum(-1, keepdim=True) + 1e-6)
            k = k / torch.sqrt(k.square().sum(-1, keepdim=True) + 1e-6)
            al, be = alpha[:, h, None, None], beta[:, h, None, None]
            I = torch.eye(dk, dtype=torch.float64)                          # noqa: E741
            transition = al * (I - be * k[:, :, None] * k[:, None, :])       # (B, dk, dk)
            Sh = transition @ S[:, h] + be * k[:, :, None] * v[:, None, :]   # (B, dk, dv)
            S_new.append(Sh)
            o = (Sh * q[:, :, None]).sum(1) / math.sqrt(dk)                 # S^T q, (B, dv)
            o = o / torch.sqrt(o.square().mean(-1, keepdim=True) + m.norm_eps) * w
            if gate is not None:
                g = gate[:, h * dv:(h + 1) * dv]
                o = o * g / (1 + torch.exp(-g))
            y_heads.append(o)
        S = torch.stack(S_new, 1)
        ys.append(torch.cat(y_heads, 1) @ Wo.T)
    conv = torch.stack(hist[len(hist) - (K - 1):], -1) if K > 1 else torch.zeros(Bsz, E, 0, dtype=torch.float64)
    return torch.stack(ys, -1), (conv, S)


def build(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(n_heads=2, head_dim=3, chunk_size=4)
    opts.update(kw)
    m = GatedDeltaNet(H, **opts).double()
    with torch.no_grad():  # move the norm weight off its initial 1 so that a wrong use shows
        m.norm_weight.add_(torch.randn_like(m.norm_weight) * 0.3)
        if m.conv1d.bias is not None:
            m.conv1d.bias.add_(torch.randn_like(m.conv1d.bias) * 0.3)
    return m


@pytest.mark.parametrize("kw", [
    dict(),
    dict(n_heads=1, head_dim="auto", chunk_size=64),                  # head_dim 6, one chunk (L=19 < 64)
    dict(n_heads=4, head_dim=2, expand_v=1.5, chunk_size=5),
    dict(expand_v=1.0, conv_size=1, output_gate=False, chunk_size=16),
    dict(conv_size=3, conv_bias=True, allow_neg_eigval=True, norm_eps=0.5),
    dict(dt_min=0.1, dt_max=1.0, chunk_size=1),                       # strong decays, one position per chunk
])
def test_forward_matches_loop(kw):
    m = build(**kw)
    u = torch.randn(2, H, 19, dtype=torch.float64)
    torch.testing.assert_close(m(u), reference(m, u)[0], rtol=1e-10, atol=1e-10)


def test_step_and_state_passing_match_loop():
    m = build(conv_bias=True, allow_neg_eigval=True)
    u = torch.randn(2, H, 23, dtype=torch.float64)
    y_ref, (conv_ref, S_ref) = reference(m, u)
    ys, state = run_steps(m, u, m.default_state(2))
    torch.testing.assert_close(ys, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.ssm, S_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.conv, conv_ref, rtol=1e-10, atol=1e-10)
    # forward in chunks passing the state (pieces shorter than the convolution too)
    yc, state = run_chunks(m, u, (2, 13, 14))
    torch.testing.assert_close(yc, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.ssm, S_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.conv, conv_ref, rtol=1e-10, atol=1e-10)
    # a non-zero start state is read the same way by the loop
    y2_ref, (conv2_ref, S2_ref) = reference(m, u[..., :7], S0=state.ssm, conv0=state.conv)
    y2, state2 = m(u[..., :7], state=state, return_state=True)
    torch.testing.assert_close(y2, y2_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state2.ssm, S2_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state2.conv, conv2_ref, rtol=1e-10, atol=1e-10)


def test_padding():
    m = build()
    lengths = torch.tensor([19, 6, 11])
    u = torch.randn(3, H, 19, dtype=torch.float64)
    assert_lengths_match(m, u, lengths, lambda x: reference(m, x)[0])


@pytest.mark.parametrize("kw", [dict(conv_bias=True), dict(output_gate=False, allow_neg_eigval=True, expand_v=1.0)])
def test_gradients_match_loop(kw):
    """Every parameter takes part (the GLA floor clamps about half the gates) and its gradient is the loop's."""
    u = torch.randn(2, H, 13, dtype=torch.float64, requires_grad=True)
    assert_grads_match(build(**kw), reference, u, every_parameter=True)


def test_init_shapes_and_param_groups():
    m = GatedDeltaNet(16, n_heads=4, lr=1e-3, dt_min=0.01, dt_max=0.05)
    assert (m.d_key, m.d_value) == (3, 6)                                   # auto: 0.75 * 16 / 4, expand_v 2
    assert m.conv1d.weight.shape == (2 * 12 + 24, 1, 4) and m.conv1d.bias is None
    state = m.default_state(3)
    assert state.conv.shape == (3, 48, 3) and state.ssm.shape == (3, 4, 3, 6)
    A, dt = torch.exp(m.A_log), F.softplus(m.dt_bias)
    assert A.min() >= 1e-4 and A.max() <= 16 and m.A_log.shape == (4,)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6
    for p in (m.A_log, m.dt_bias):
        assert p._optim == {"weight_decay": 0.0, "lr": 1e-3}
    groups = param_groups(m, lr=0.01, weight_decay=0.1)
    own = [g for g in groups if g["lr"] == 1e-3]
    assert len(own) == 1 and own[0]["weight_decay"] == 0.0 and sorted(own[0]["names"]) == ["A_log", "dt_bias"]
    wd = {n for g in groups if g["weight_decay"] == 0.1 for n in g["names"]}
    assert {f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj", "o_proj")} <= wd
    # without lr A_log and dt_bias keep the optimizer's lr, and no weight decay
    m = GatedDeltaNet(16)
    assert m.A_log._optim == m.dt_bias._optim == {"weight_decay": 0.0}
    nowd = [g for g in param_groups(m, lr=0.01, weight_decay=0.1) if g["weight_decay"] == 0.0]
    assert len(nowd) == 1 and nowd[0]["lr"] == 0.01
    assert {"A_log", "dt_bias", "norm_weight"} <= set(nowd[0]["names"])


@pytest.mark.parametrize("kw, match", [
    (dict(n_heads=0), "n_heads must be a positive integer"),
    (dict(n_heads=7, head_dim="auto"), "head_dim auto \\(0.75 d_model / n_heads\\) is 0 for d_model=8, n_heads=7"),
    (dict(head_dim=0), "head_dim must be a positive integer or 'auto'"),
    (dict(expand_v=0.5, head_dim=3), "expand_v=0.5 must make head_dim \\* expand_v a positive integer"),
    (dict(expand_v=0), "expand_v=0 must make"),
    (dict(conv_size=0), "conv_size must be a positive integer"),
    (dict(dt_min=0.1, dt_max=0.01), "need 0 < dt_min <= dt_max"),
    (dict(dt_min=0), "need 0 < dt_min <= dt_max"),
    (dict(norm_eps=0), "norm_eps must be positive"),
    (dict(chunk_size=0), "chunk_size must be a positive integer"),
    (dict(lr=-1), "lr must be >= 0"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        GatedDeltaNet(H, **{"n_heads": 2, "head_dim": 3, **kw})
    assert "\n" not in str(e.value)
