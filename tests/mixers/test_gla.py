"""The gla mixer (ssmkit/mixers/gla.py) against the GLA layer of Yang et al. 2024 (and fla-org/flash-linear-attention
``fla/layers/gla.py``) written out as a float64 loop over tokens and heads, independent of the chunked code in
``ssmkit/ops/linear_attention.py``:

    q, k, v = u W_q, u W_k, u W_v                                split into n_heads heads (dk, dv each)
    log alpha = max(logsigmoid(u W_1 W_2 + b) / tau, clamp_min)  one per key feature
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(dk)     (the state read after the update)
    y = W_o (RMSNorm_head(o) * swish(u W_g))                      one RMSNorm weight (dv) shared by the heads

Conventions, as fla: the scale 1/sqrt(dk) of the chunked kernel's default, the output read from S_t (inclusive),
the gate's bias on the second low-rank map only, no bias on q, k, v, g, o."""
import math

import pytest
import torch
from mixer_refs import assert_grads_match, assert_lengths_match, run_chunks, run_steps

from ssmkit.mixers.gla import GatedLinearAttention
from ssmkit.train.optim import param_groups

H = 8


def reference(m, u, S0=None):
    """u (B, H, L) -> y (B, H, L), final state (B, n_heads, dk, dv), token by token in float64."""
    Bsz, _, L = u.shape
    n, dk, dv = m.n_heads, m.d_key, m.d_value
    Wq, Wk, Wv, Wo = (p.weight.double() for p in (m.q_proj, m.k_proj, m.v_proj, m.o_proj))
    W1, W2, b2 = m.gk_proj[0].weight.double(), m.gk_proj[1].weight.double(), m.gk_proj[1].bias.double()
    Wg = None if m.g_proj is None else m.g_proj.weight.double()
    w = m.norm_weight.double()
    S = torch.zeros(Bsz, n, dk, dv, dtype=torch.float64) if S0 is None else S0.double().clone()
    ys = []
    for t in range(L):
        x = u[..., t].double()                                              # (B, H)
        y_heads = []
        logit = (x @ W1.T) @ W2.T + b2                                      # (B, n dk)
        log_alpha = torch.log(1 / (1 + torch.exp(-logit))) / m.gate_logit_normalizer
        if m.clamp_min is not None:
            log_alpha = torch.maximum(log_alpha, torch.full_like(log_alpha, m.clamp_min))
        gate = None if Wg is None else x @ Wg.T                             # (B, n dv)
        S_new = []
        for h in range(n):
            q = x @ Wq[h * dk:(h + 1) * dk].T                               # (B, dk)
            k = x @ Wk[h * dk:(h + 1) * dk].T
            v = x @ Wv[h * dv:(h + 1) * dv].T                               # (B, dv)
            alpha = torch.exp(log_alpha[:, h * dk:(h + 1) * dk])            # (B, dk)
            Sh = alpha[:, :, None] * S[:, h] + k[:, :, None] * v[:, None, :]
            S_new.append(Sh)
            o = (q[:, :, None] * Sh).sum(1) / math.sqrt(dk)                 # (B, dv)
            o = o / torch.sqrt(o.square().mean(-1, keepdim=True) + m.norm_eps) * w
            if gate is not None:
                g = gate[:, h * dv:(h + 1) * dv]
                o = o * g / (1 + torch.exp(-g))
            y_heads.append(o)
        S = torch.stack(S_new, 1)
        ys.append(torch.cat(y_heads, 1) @ Wo.T)
    return torch.stack(ys, -1), S


def build(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(n_heads=2, gate_low_rank_dim=4, chunk_size=4)
    opts.update(kw)
    m = GatedLinearAttention(H, **opts).double()
    with torch.no_grad():  # move the norm weight off its initial 1 and widen the gate logits so that a wrong use shows
        m.norm_weight.add_(torch.randn_like(m.norm_weight) * 0.3)
        m.gk_proj[1].bias.add_(torch.randn_like(m.gk_proj[1].bias))
    return m


@pytest.mark.parametrize("kw", [
    dict(),
    dict(n_heads=1, chunk_size=64),                                   # one chunk of nested 16-blocks, L=19 < 64
    dict(n_heads=4, expand_k=1.0, expand_v=2.0, chunk_size=16),
    dict(expand_k=0.25, expand_v=0.5, output_gate=False, chunk_size=3),
    dict(gate_logit_normalizer=0.25, chunk_size=8),                   # strong decays: log alpha down to ~-10
    dict(gate_logit_normalizer=1.0, clamp_min=-0.3, norm_eps=0.5),
])
def test_forward_matches_loop(kw):
    m = build(**kw)
    u = torch.randn(2, H, 19, dtype=torch.float64)
    torch.testing.assert_close(m(u), reference(m, u)[0], rtol=1e-10, atol=1e-10)


def test_forward_matches_loop_across_nested_blocks():
    """chunk_size 32: two sub-blocks of 16 per chunk and a ragged last chunk (L = 75)."""
    m = build(chunk_size=32, gate_logit_normalizer=2.0)
    u = torch.randn(1, H, 75, dtype=torch.float64)
    torch.testing.assert_close(m(u), reference(m, u)[0], rtol=1e-10, atol=1e-10)


def test_clamp_acts():
    """A floor above most log alpha values changes the output, and the loop with the floor matches it."""
    m = build(gate_logit_normalizer=1.0)
    u = torch.randn(1, H, 9, dtype=torch.float64)
    y0 = m(u)
    m.clamp_min = -0.05
    y1, _ = reference(m, u)
    torch.testing.assert_close(m(u), y1, rtol=1e-10, atol=1e-10)
    assert (y1 - y0).abs().max() > 1e-3


def test_step_and_state_passing_match_loop():
    m = build(n_heads=2, expand_k=1.0)
    u = torch.randn(2, H, 23, dtype=torch.float64)
    y_ref, S_ref = reference(m, u)
    ys, state = run_steps(m, u, m.default_state(2))
    torch.testing.assert_close(ys, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, S_ref, rtol=1e-10, atol=1e-10)
    yc, state = run_chunks(m, u, (2, 13, 14))
    torch.testing.assert_close(yc, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, S_ref, rtol=1e-10, atol=1e-10)
    # a non-zero start state is read the same way by the loop
    y2_ref, S2_ref = reference(m, u[..., :7], S0=state)
    y2, S2 = m(u[..., :7], state=state, return_state=True)
    torch.testing.assert_close(y2, y2_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(S2, S2_ref, rtol=1e-10, atol=1e-10)


def test_padding():
    m = build()
    lengths = torch.tensor([19, 6, 11])
    u = torch.randn(3, H, 19, dtype=torch.float64)
    assert_lengths_match(m, u, lengths, lambda x: reference(m, x)[0])


@pytest.mark.parametrize("kw", [dict(), dict(output_gate=False, clamp_min=-0.7, gate_logit_normalizer=1.0)])
def test_gradients_match_loop(kw):
    """Every parameter takes part (the GLA floor clamps about half the gates) and its gradient is the loop's."""
    u = torch.randn(2, H, 13, dtype=torch.float64, requires_grad=True)
    assert_grads_match(build(**kw), reference, u, every_parameter=True)


def test_shapes_and_param_groups():
    m = GatedLinearAttention(16, n_heads=4, expand_k=0.5, expand_v=1.0, gate_low_rank_dim=16, lr=1e-3)
    assert (m.d_key, m.d_value) == (2, 4) and m.gk_proj[0].weight.shape == (16, 16)
    assert m.gk_proj[1].weight.shape == (8, 16) and m.norm_weight.shape == (4,)
    assert m.default_state(3).shape == (3, 4, 2, 4)
    assert m.gk_proj[1].bias._optim == {"weight_decay": 0.0, "lr": 1e-3}
    groups = param_groups(m, lr=0.01, weight_decay=0.1)
    own = [g for g in groups if g["lr"] == 1e-3]
    assert len(own) == 1 and own[0]["weight_decay"] == 0.0 and own[0]["names"] == ["gk_proj.1.bias"]
    wd = {n for g in groups if g["weight_decay"] == 0.1 for n in g["names"]}
    assert wd == {f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "gk_proj.0", "gk_proj.1", "g_proj", "o_proj")}
    # without lr the gate bias keeps the optimizer's lr, and no weight decay
    m = GatedLinearAttention(16)
    assert m.gk_proj[1].bias._optim == {"weight_decay": 0.0}
    nowd = [g for g in param_groups(m, lr=0.01, weight_decay=0.1) if g["weight_decay"] == 0.0]
    assert len(nowd) == 1 and nowd[0]["lr"] == 0.01 and sorted(nowd[0]["names"]) == ["gk_proj.1.bias", "norm_weight"]


@pytest.mark.parametrize("kw, match", [
    (dict(n_heads=0), "n_heads must be a positive integer"),
    (dict(n_heads=3), "expand_k=0.5 gives 4.0 features for d_model=8, which must be a positive multiple of n_heads=3"),
    (dict(expand_k=0.3), "expand_k=0.3 gives .* choose expand_k"),
    (dict(expand_v=0), "expand_v=0 gives"),
    (dict(gate_low_rank_dim=0), "gate_low_rank_dim must be a positive integer"),
    (dict(gate_logit_normalizer=0), "gate_logit_normalizer \\(tau\\) must be positive"),
    (dict(clamp_min=0.5), "clamp_min is a floor of log alpha, so it must be negative or null"),
    (dict(norm_eps=0), "norm_eps must be positive"),
    (dict(chunk_size=24), "chunk_size must be at most 16 or a multiple of 16"),
    (dict(chunk_size=0), "chunk_size must be at most 16"),
    (dict(lr=-1), "lr must be >= 0"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        GatedLinearAttention(H, **{"n_heads": 2, **kw})
    assert "\n" not in str(e.value)
