"""``ssmkit.ops.linear_attention`` against the recurrences written out here as per-token float64 loops:

- GLA: S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t;
- gated delta rule: S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = scale S_t^T q_t
  (written as the paper's product with the (I - beta k k^T) matrix, not the code's rank-1 update).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.linear_attention import chunk_gated_delta_rule, chunk_gla, gated_delta_rule_step, gla_step


def loop_gla(q, k, v, g, scale, S0=None):
    B, h, L, dk = q.shape
    S = torch.zeros(B, h, dk, v.shape[-1], dtype=torch.float64) if S0 is None else S0.clone()
    out = []
    for t in range(L):
        S = torch.exp(g[:, :, t]).unsqueeze(-1) * S + torch.einsum("bhk,bhv->bhkv", k[:, :, t], v[:, :, t])
        out.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(out, dim=2), S


def loop_delta(q, k, v, g, beta, scale, S0=None):
    B, h, L, dk = q.shape
    S = torch.zeros(B, h, dk, v.shape[-1], dtype=torch.float64) if S0 is None else S0.clone()
    eye = torch.eye(dk, dtype=torch.float64)
    out = []
    for t in range(L):
        kt, b = k[:, :, t], beta[:, :, t, None, None]
        transition = torch.exp(g[:, :, t])[..., None, None] * (eye - b * kt.unsqueeze(-1) * kt.unsqueeze(-2))
        S = transition @ S + b * kt.unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        out.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return torch.stack(out, dim=2), S


def gla_inputs(B=2, h=2, L=37, dk=5, dv=3, gate_scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    g = F.logsigmoid(r(B, h, L, dk) * 3) * gate_scale
    return r(B, h, L, dk), r(B, h, L, dk), r(B, h, L, dv), g, r(B, h, dk, dv)


def delta_inputs(B=2, h=2, L=37, dk=5, dv=3, gate_scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k = F.normalize(r(B, h, L, dk), dim=-1), F.normalize(r(B, h, L, dk), dim=-1)
    g = F.logsigmoid(r(B, h, L) * 3) * gate_scale
    return q, k, r(B, h, L, dv), g, torch.sigmoid(r(B, h, L) * 2), r(B, h, dk, dv)


@pytest.mark.parametrize("chunk", [1, 8, 12, 16, 48, 64])  # 12, 48: blocks branching by 3 as well as halving
@pytest.mark.parametrize("L", [1, 37, 130])
def test_gla_chunked_equals_loop(chunk, L):
    q, k, v, g, S0 = gla_inputs(L=L)
    want, want_S = loop_gla(q, k, v, g, 0.7, S0)
    got, got_S = chunk_gla(q, k, v, g, scale=0.7, initial_state=S0, chunk_size=chunk)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_S, want_S, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("L", [1, 37, 130])
def test_delta_rule_chunked_equals_loop(chunk, L):
    q, k, v, g, beta, S0 = delta_inputs(L=L)
    want, want_S = loop_delta(q, k, v, g, beta, 0.6, S0)
    got, got_S = chunk_gated_delta_rule(q, k, v, g, beta, scale=0.6, initial_state=S0, chunk_size=chunk)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_S, want_S, rtol=1e-10, atol=1e-10)


def test_steps_equal_the_loops():
    q, k, v, g, S0 = gla_inputs(L=9)
    want, _ = loop_gla(q, k, v, g, 0.5, S0)
    S = S0
    for t in range(9):
        o, S = gla_step(q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], S, scale=0.5)
        torch.testing.assert_close(o, want[:, :, t], rtol=1e-12, atol=1e-12)
    q, k, v, g, beta, S0 = delta_inputs(L=9)
    want, _ = loop_delta(q, k, v, g, beta, 0.5, S0)
    S = S0
    for t in range(9):
        o, S = gated_delta_rule_step(q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], beta[:, :, t], S, scale=0.5)
        torch.testing.assert_close(o, want[:, :, t], rtol=1e-12, atol=1e-12)


def test_extreme_gates_stay_finite_and_exact_in_float32():
    """Per-step log gates down to -300 within a chunk (cumulative -20,000): exp(-b) of the naive factorisation
    (q exp(b)) (k exp(-b))^T would overflow float32 at 88; every exponent here is <= 0."""
    q, k, v, g, S0 = gla_inputs(L=100, gate_scale=100.0)
    assert g.min() < -250
    want, want_S = loop_gla(q, k, v, g, 0.5, S0)
    got, got_S = chunk_gla(*(t.float() for t in (q, k, v, g)), scale=0.5, initial_state=S0.float())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_S.double(), want_S, rtol=1e-4, atol=1e-4)
    q, k, v, g, beta, S0 = delta_inputs(L=100, gate_scale=100.0)
    want, want_S = loop_delta(q, k, v, g, beta, 0.5, S0)
    got, got_S = chunk_gated_delta_rule(*(t.float() for t in (q, k, v, g, beta)), scale=0.5, initial_state=S0.float())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_no_decay_and_full_beta():
    """g = 0 (alpha 1) and beta = 1 (the delta rule's projection) are exact too."""
    q, k, v, g, beta, S0 = delta_inputs(L=40)
    g, beta = torch.zeros_like(g), torch.ones_like(beta)
    want, _ = loop_delta(q, k, v, g, beta, 1.0, S0)
    got, _ = chunk_gated_delta_rule(q, k, v, g, beta, scale=1.0, initial_state=S0, chunk_size=16)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    q, k, v, g, S0 = gla_inputs(L=40)
    want, _ = loop_gla(q, k, v, torch.zeros_like(g), 1.0, S0)
    got, _ = chunk_gla(q, k, v, torch.zeros_like(g), scale=1.0, initial_state=S0, chunk_size=32)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("which", ["gla", "delta"])
def test_gradients_match_the_loop(which):
    if which == "gla":
        args = [t.requires_grad_() for t in gla_inputs(L=40, dk=3, dv=2)]
        run = lambda fn, a: fn(*a[:4], scale=0.8, initial_state=a[4], chunk_size=16)  # noqa: E731
        got, want = run(chunk_gla, args), loop_gla(*args[:4], 0.8, args[4])
    else:
        args = [t.requires_grad_() for t in delta_inputs(L=40, dk=3, dv=2)]
        got = chunk_gated_delta_rule(*args[:5], scale=0.8, initial_state=args[5], chunk_size=16)
        want = loop_delta(*args[:5], 0.8, args[5])
    w = torch.randn_like(want[0])
    grads = [torch.autograd.grad((o * w).sum() + S.square().sum(), args) for o, S in (got, want)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_bf16_autocast_runs_in_float32():
    q, k, v, g, S0 = (t.float() for t in gla_inputs(L=70))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, S = chunk_gla(q.bfloat16(), k.bfloat16(), v.bfloat16(), g.bfloat16(), initial_state=S0)
    assert o.dtype == torch.float32 and torch.isfinite(o).all() and torch.isfinite(S).all()
    q, k, v, g, beta, S0 = (t.float() for t in delta_inputs(L=70))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, S = chunk_gated_delta_rule(q.bfloat16(), k.bfloat16(), v.bfloat16(), g, beta, initial_state=S0)
    assert o.dtype == torch.float32 and torch.isfinite(o).all()


def test_bad_chunk_size():
    q, k, v, g, _ = gla_inputs(L=5)
    with pytest.raises(ValueError, match="chunk_size must be at most 16 or a multiple of 16"):
        chunk_gla(q, k, v, g, chunk_size=24)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_gated_delta_rule(q, k, v, g[..., 0], g[..., 0], chunk_size=0)


def test_default_scale_is_inverse_sqrt_dk():
    q, k, v, g, S0 = gla_inputs(L=6, dk=4)
    want, _ = loop_gla(q, k, v, g, 1 / math.sqrt(4))
    torch.testing.assert_close(chunk_gla(q, k, v, g)[0], want, rtol=1e-10, atol=1e-10)


def test_gate_decay_backward_gradcheck():
    """The hand-written backward of the masked decay exp(x_i - y_j) (``_GateDecay``) against finite differences."""
    from ssmkit.ops.linear_attention import _gate_decay

    gen = torch.Generator().manual_seed(3)
    y = -torch.rand(2, 5, 3, generator=gen, dtype=torch.float64).cumsum(-2)
    x = y - 0.1 * torch.rand(2, 5, 3, generator=gen, dtype=torch.float64)
    for keep in (torch.ones(5, 5, dtype=torch.bool).tril(), torch.ones(5, 5, dtype=torch.bool).tril(-1)):
        args = (x.clone().requires_grad_(), y.clone().requires_grad_())
        assert torch.autograd.gradcheck(lambda a, b, keep=keep: _gate_decay(a, b, keep.unsqueeze(-1), torch.float64), args)
        D = _gate_decay(*args, keep.unsqueeze(-1), torch.float64)
        want = torch.where(keep.unsqueeze(-1), torch.exp(x.unsqueeze(-2) - y.unsqueeze(-3)), torch.zeros(()))
        torch.testing.assert_close(D, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("chunk", [12, 64])
def test_gla_extreme_gates_every_block_shape(chunk):
    """Gates down to -300 per step in float32 through both block branchings (halving, and 3 in 12 = 2 x 2 x 3): every
    exponent <= 0, so nothing overflows and the result stays at float32 accuracy."""
    q, k, v, g, S0 = gla_inputs(L=50, gate_scale=100.0, seed=1)
    want, want_S = loop_gla(q, k, v, g, 0.5, S0)
    got, got_S = chunk_gla(*(t.float() for t in (q, k, v, g)), scale=0.5, initial_state=S0.float(), chunk_size=chunk)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_S.double(), want_S, rtol=1e-4, atol=1e-4)


def test_gla_gradients_with_zero_gates():
    """Gates exactly 0 (alpha = 1, as a saturated float32 logsigmoid gives) in some positions: the gradients still
    match the loop's (a zero difference of cumulative gates must keep its derivative)."""
    q, k, v, g, S0 = gla_inputs(L=40, dk=3, dv=2, seed=2)
    g = torch.where(torch.rand(g.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) < 0.5,
                    torch.zeros_like(g), g)
    args = [t.requires_grad_() for t in (q, k, v, g, S0)]
    got = chunk_gla(*args[:4], scale=0.8, initial_state=args[4], chunk_size=16)
    want = loop_gla(*args[:4], 0.8, args[4])
    w = torch.randn_like(want[0])
    grads = [torch.autograd.grad((o * w).sum() + S.square().sum(), args) for o, S in (got, want)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("C", [1, 2, 8])
def test_gla_intra_halvings_against_the_sum_and_gradcheck(C):
    """The intra-chunk matrix of a power-of-two chunk (``_GLAIntraHalvings``, hand-written backward) against the
    explicit float64 sum A_ts = sum_d q_td k_sd exp(b_td - b_sd) (s <= t), and its backward by gradcheck."""
    from ssmkit.ops.linear_attention import _gla_intra

    gen = torch.Generator().manual_seed(4)
    q, k = (torch.randn(2, C, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    b = F.logsigmoid(torch.randn(2, C, 3, generator=gen, dtype=torch.float64)).cumsum(-2)
    keep = torch.ones(C, C, dtype=torch.bool).tril()
    want = torch.einsum("ntd,nsd,ntsd->nts", q, k, torch.exp(b.unsqueeze(-2) - b.unsqueeze(-3))) * keep
    torch.testing.assert_close(_gla_intra(q, k, b), want, rtol=1e-12, atol=1e-12)
    args = (q.requires_grad_(), k.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(_gla_intra, args)
