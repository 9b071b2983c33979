"""The rglru mixer (ssmkit/mixers/rglru.py) against Griffin's recurrent block written out as a float64 loop over
tokens (W_x, causal conv, block-diagonal gates per head, log a = -c softplus(Lambda) r,
h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t), times GeLU(W_y u), W_out), independent of the scan code."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import MaxTensor
from mixer_refs import assert_grads_match, assert_lengths_match, run_chunks, run_steps

from ssmkit.mixers.rglru import MAX_SQRT_GRADIENT, RGLRU, input_scale
from ssmkit.train.optim import param_groups


def block_diag(bd, x):
    """x (B, E) through the block-diagonal map, one head at a time."""
    k = bd.block
    return torch.cat([x[:, j * k:(j + 1) * k] @ bd.weight[j].double() + bd.bias[j].double()
                      for j in range(bd.n_heads)], dim=1)


def reference_branch(br, u, h0=None, conv0=None):
    """h (B, E, L) of one conv + RG-LRU branch, token by token; final (conv, h)."""
    Bsz, _, L = u.shape
    E, K = br.width, br.d_conv
    Wx, bx = br.linear_x.weight.double(), br.linear_x.bias
    W = br.conv1d.weight.double().squeeze(1)
    hist = [torch.zeros(Bsz, E, dtype=torch.float64)] * (K - 1) if conv0 is None else \
        [conv0[..., k].double() for k in range(K - 1)]
    h = torch.zeros(Bsz, E, dtype=torch.float64) if h0 is None else h0.double()
    hs = []
    for t in range(L):
        x = u[..., t].double() @ Wx.T + (0 if bx is None else bx.double())
        hist = hist + [x]
        xc = (torch.stack(hist[-K:], -1) * W).sum(-1) + br.conv1d.bias.double()
        r = torch.sigmoid(block_diag(br.a_gate, xc))
        i = torch.sigmoid(block_diag(br.input_gate, xc))
        a = torch.exp(-br.c * F.softplus(br.a_param.double()) * r)
        h = a * h + torch.sqrt(1 - a**2) * (i * xc)
        hs.append(h)
    conv = torch.stack(hist[-(K - 1):], -1) if K > 1 else torch.zeros(Bsz, E, 0, dtype=torch.float64)
    return torch.stack(hs, -1), (conv, h)


def reference(m, u, h0=None, conv0=None):
    h, state = reference_branch(m.rglru, u, h0, conv0)
    if m.bidirectional:
        h = h + reference_branch(m.rglru_reverse, u.flip(-1))[0].flip(-1)
    Wy, by = m.linear_y.weight.double(), m.linear_y.bias
    g = torch.einsum("ed,bdl->bel", Wy, u.double()) + (0 if by is None else by.double()[None, :, None])
    g = 0.5 * g * (1 + torch.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))   # GeLU, tanh form
    Wo, bo = m.linear_out.weight.double(), m.linear_out.bias
    y = torch.einsum("he,bel->bhl", Wo, h * g) + (0 if bo is None else bo.double()[None, :, None])
    return y, state


def build(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(expand=1.5, n_heads=3)
    opts.update(kw)
    m = RGLRU(8, **opts).double()
    with torch.no_grad():  # non-zero biases so that a wrong use shows (the official init zeroes them)
        for mod in m.modules():
            for name, p in mod.named_parameters(recurse=False):
                if name in ("bias", "b"):
                    p.add_(torch.randn_like(p) * 0.3)
    return m


@pytest.mark.parametrize("kw", [dict(), dict(n_heads=1), dict(bias=False, d_conv=1), dict(d_conv=3, c=2.0),
                                dict(bidirectional=True)])
def test_forward_matches_loop(kw):
    m = build(**kw)
    u = torch.randn(2, 8, 19, dtype=torch.float64)
    torch.testing.assert_close(m(u), reference(m, u)[0], rtol=1e-10, atol=1e-10)


def test_step_and_state_passing_match_loop():
    m = build()
    u = torch.randn(2, 8, 23, dtype=torch.float64)
    y_ref, (conv_ref, h_ref) = reference(m, u)
    ys, state = run_steps(m, u, m.default_state(2))
    torch.testing.assert_close(ys, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.h, h_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.conv, conv_ref, rtol=1e-10, atol=1e-10)
    yc, state = run_chunks(m, u, (2, 13, 14))
    torch.testing.assert_close(yc, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.h, h_ref, rtol=1e-10, atol=1e-10)
    y2_ref, _ = reference(m, u[..., :7], h0=state.h, conv0=state.conv)
    torch.testing.assert_close(m(u[..., :7], state=state), y2_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding(bidirectional):
    m = build(bidirectional=bidirectional)
    lengths = torch.tensor([19, 6, 11])
    u = torch.randn(3, 8, 19, dtype=torch.float64)
    assert_lengths_match(m, u, lengths, m)


def test_gradients_match_loop():
    u = torch.randn(2, 8, 13, dtype=torch.float64, requires_grad=True)
    assert_grads_match(build(), reference, u)


def test_input_scale_stable_and_clipped():
    """sqrt(1 - a^2) from log a keeps its digits next to a = 1 (float32), and its derivative is capped at the
    official 1000 (d sqrt(w)/dw) where 1 - a^2 underflows."""
    log_a = torch.tensor([-1e-7, -1e-4, -0.1, -5.0], dtype=torch.float32)
    want = torch.sqrt(-torch.expm1(2 * log_a.double()))
    torch.testing.assert_close(input_scale(log_a).double(), want, rtol=1e-6, atol=0)
    naive = torch.sqrt(1 - torch.exp(log_a) ** 2)
    assert (naive.double() - want).abs()[0] / want[0] > 5e-2    # the naive float32 form loses it (9%)
    x = torch.tensor([-1e-12, 0.0, -0.3], dtype=torch.float64, requires_grad=True)
    y = input_scale(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all() and g.abs().max() <= 2 * MAX_SQRT_GRADIENT
    lg = x.detach()[2]
    exact = -math.exp(2 * lg) / math.sqrt(-math.expm1(2 * lg))
    assert math.isclose(g[2].item(), exact, rel_tol=1e-12)


def test_bf16_autocast_finite():
    torch.manual_seed(0)
    m = RGLRU(16, n_heads=4)
    u = torch.randn(2, 16, 50, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(u)
        y_t, _ = m.step(u[..., 0], m.default_state(2))
    y.float().square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(y_t).all() and torch.isfinite(u.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    torch.testing.assert_close(y.float(), m(u.detach()), rtol=0.1, atol=0.05)


def test_long_sequence_forward_backward():
    torch.manual_seed(0)
    m = RGLRU(16, n_heads=2)
    u = torch.randn(2, 16, 4096, requires_grad=True)
    y = m(u)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(u.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_memory_linear_in_length():
    """The largest tensor in forward and backward is a (B, E, L) activation (times a small constant for the
    concatenated convolution input): nothing grows faster than L."""
    torch.manual_seed(0)
    m = RGLRU(16, n_heads=2)
    u = torch.randn(1, 16, 2048, requires_grad=True)
    with MaxTensor() as mt:
        m(u).sum().backward()
    assert mt.max_numel <= 2 * 16 * (2048 + 3), mt.max_numel


def test_init_and_param_groups():
    m = RGLRU(64, n_heads=4, lr=1e-3)
    a0 = torch.exp(-F.softplus(m.rglru.a_param))
    assert a0.min() >= 0.9 - 1e-6 and a0.max() <= 0.999 + 1e-6
    # a_0^2 uniform on [0.81, 0.998]: its mean is the interval's midpoint (64 samples: 4 standard errors)
    assert abs((a0**2).mean().item() - (0.81 + 0.999**2) / 2) < 4 * (0.999**2 - 0.81) / math.sqrt(12 * 64)
    assert m.rglru.input_gate.weight.shape == (4, 16, 16)
    groups = param_groups(m, lr=0.01, weight_decay=0.1)
    own = [g for g in groups if g["lr"] == 1e-3]
    assert len(own) == 1 and own[0]["weight_decay"] == 0.0 and own[0]["names"] == ["rglru.a_param"]


def test_bidirectional_has_no_state():
    m = build(bidirectional=True)
    assert not m.has_state
    with pytest.raises(ValueError, match="no recurrent state.*bidirectional"):
        m.default_state(2)


@pytest.mark.parametrize("kw, match", [
    (dict(n_heads=3), "n_heads=3 must divide lru_width = expand \\* d_model = 8"),
    (dict(expand=0), "expand must be positive"),
    (dict(d_conv=0), "d_conv must be a positive integer"),
    (dict(a_min=0.99, a_max=0.9), "a_min <= a_max"),
    (dict(a_max=1.0), "a_max < 1"),
    (dict(c=0), "c must be > 0"),
    (dict(lr=-1), "lr must be >= 0"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        RGLRU(8, **kw)
    assert "\n" not in str(e.value)


def test_rate_refused():
    with pytest.raises(ValueError, match="rate"):
        build()(torch.randn(1, 8, 5, dtype=torch.float64), rate=0.5)
