"""The Hyena mixer against the operator written out in float64 in this file (explicit short convolution, the
implicit filter position by position, each long convolution as the direct sum over s <= t), its step and state
passing, padding, half precision, gradients, parameter groups and option errors."""
import math
import warnings

import pytest
import torch

from ssmkit.mixers.hyena import Hyena, HyenaState, ImplicitFilter
from ssmkit.train.optim import param_groups

CASES = {  # name -> Hyena options (small filters so the tests stay fast)
    "implicit": dict(order=2, filter_options=dict(l_max=64, emb_dim=5, filter_order=8)),
    "implicit-short": dict(order=2, filter_options=dict(l_max=7, emb_dim=3, filter_order=6, shift=0.1)),
    "implicit-pregate": dict(order=1, pre_gate=True, filter_options=dict(l_max=64, filter_order=8, num_inner_mlps=1)),
    "s4d": dict(order=2, filter="s4d", filter_options=dict(d_state=8)),
    "sgconv": dict(order=3, filter="sgconv", filter_options=dict(l_max=16, kernel_dim=4), short_filter_order=2),
}


def make(name, H=4, seed=0, **extra):
    torch.manual_seed(seed)
    m = Hyena(H, **{**CASES[name], **extra}).double()
    with torch.no_grad():  # away from the initial values, so that every parameter matters in the comparison
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def implicit_reference(f: ImplicitFilter, L: int) -> torch.Tensor:
    """(N, H, L) float64: the FFN on each position's encoding, the window, zero beyond l_max."""
    N, H = f.n_filters, f.d_model
    out = torch.zeros(N, H, L, dtype=torch.float64)
    freq = f.act.freq.double()
    for t in range(min(L, f.l_max)):
        h = f.z[t].double()
        for lin in f.linears:
            h = torch.sin(freq * (lin.weight.double() @ h + lin.bias.double()))
        h = f.out.weight.double() @ h  # (N H,)
        if f.modulate:
            h = h * (torch.exp(-f.t[t, 0].double() * f.deltas.double().abs()) + f.shift)
        for c in range(N * H):
            out[c % N, c // N, t] = h[c]
    return out


def filters_reference(m: Hyena, L: int, rate: float = 1.0) -> torch.Tensor:
    if m.filter_name == "implicit":
        return implicit_reference(m.filters, L)
    K = torch.stack([k(L, rate=rate)[0][0] for k in m.filters]).double()  # the kernels' own (tested elsewhere)
    return torch.nn.functional.pad(K, (0, L - K.shape[-1]))


def hyena_reference(m: Hyena, u: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
    """u (B, H, L) -> y (B, H, L), position by position in float64."""
    B, H, L = u.shape
    u = u.double()
    z = torch.einsum("oh,bhl->bol", m.in_proj.weight.double(), u) + m.in_proj.bias.double()[:, None]
    w = m.short_filter.weight[:, 0].double()  # (P H, k)
    k = w.shape[-1]
    zc = m.short_filter.bias.double()[None, :, None].repeat(B, 1, L)
    for t in range(L):
        for j in range(k):  # tap j reads position t - (k - 1) + j
            s = t - (k - 1) + j
            if s >= 0:
                zc[:, :, t] += w[:, j] * z[:, :, s]
    parts = zc.split(H, dim=1)
    v = parts[0]
    if m.pre_gate:
        v = parts[-1] * v
    K = filters_reference(m, L, rate)
    for n in range(m.order):
        y = torch.zeros_like(v)
        for t in range(L):
            for s in range(t + 1):
                y[:, :, t] += K[n, :, t - s] * v[:, :, s]
        if m.D is not None:
            y = y + m.D[n].double()[:, None] * v
        v = parts[1 + n] * y
    out = m.post.out
    return torch.einsum("oh,bhl->bol", out.weight.double(), v) + out.bias.double()[:, None]


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_the_explicit_computation(name):
    m = make(name)
    u = torch.randn(2, 4, 20, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # implicit-short: L = 20 > l_max = 7 (its zero taps are the point)
        y = m(u)
    assert y.shape == u.shape
    torch.testing.assert_close(y, hyena_reference(m, u), rtol=1e-10, atol=1e-10)


def test_initial_filter_follows_the_reference_formulas():
    """Positional encoding [t, cos(f w), -sin(f w)] and the window's decay rates, written from the formulas."""
    f = ImplicitFilter(3, 2, l_max=10, emb_dim=7, fast_decay_pct=0.5, slow_decay_pct=2.0, target=0.05)
    bands = [1e-4 + (2 - 1e-4) * i / 2 for i in range(3)]
    for t in range(10):
        w = 2 * math.pi * t / 10
        expect = [t / 9] + [math.cos(b * w) for b in bands] + [-math.sin(b * w) for b in bands]
        assert f.z[t].tolist() == pytest.approx(expect, abs=1e-6)
    lo, hi = math.log(0.05) / 2.0, math.log(0.05) / 0.5
    assert f.deltas.tolist() == pytest.approx([lo + (hi - lo) * i / 5 for i in range(6)], abs=1e-6)
    assert not isinstance(f.deltas, torch.nn.Parameter)  # frozen by default (modulation_lr 0)
    assert isinstance(f.z, torch.nn.Parameter) and f.z._optim == {"weight_decay": 0.0, "lr": 1e-5}
    assert torch.all(f.act.freq == 1.0)


@pytest.mark.parametrize("name", list(CASES))
def test_step_and_state_passing_match_forward(name):
    m = make(name)
    u = torch.randn(2, 4, 19, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y, final = m(u, return_state=True)
        state = m.default_state(2)
        m.setup_step()
        steps = []
        for t in range(19):
            y_t, state = m.step(u[..., t], state)
            steps.append(y_t)
        torch.testing.assert_close(torch.stack(steps, -1), y, rtol=1e-10, atol=1e-10)
        for a, b in zip(state, final):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        y1, s1 = m(u[..., :11], return_state=True)
        y2, s2 = m(u[..., 11:], state=s1, return_state=True)
        torch.testing.assert_close(torch.cat([y1, y2], -1), y, rtol=1e-10, atol=1e-10)
        for a, b in zip(s2, final):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        # a chunk after a state, and a step after a chunk
        y_t, _ = m.step(u[..., 11], s1)
        torch.testing.assert_close(y_t, y[..., 11], rtol=1e-10, atol=1e-10)


def test_memory_is_bounded_by_the_filter_length():
    m = make("implicit-short")  # 7 taps: a token reads itself and the 6 before it
    state = m.default_state(1)
    assert state.memory.shape == (1, 2, 4, 0)
    for t in range(12):
        _, state = m.step(torch.randn(1, 4, dtype=torch.float64), state)
        assert state.memory.shape == (1, 2, 4, min(t + 1, 6))
    s4d = make("s4d")
    assert s4d.default_state(3).memory.shape == (3, 2, 4, 4) and s4d.default_state(3).memory.is_complex()
    assert isinstance(s4d.default_state(3), HyenaState)


def test_s4d_filter_rate():
    m = make("s4d")
    assert m.has_rate
    u = torch.randn(1, 4, 12, dtype=torch.float64)
    y = m(u, rate=2.0)
    torch.testing.assert_close(y, hyena_reference(m, u, rate=2.0), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y, m(u))
    m.setup_step(2.0)
    state, steps = m.default_state(1), []
    for t in range(12):
        y_t, state = m.step(u[..., t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, -1), y, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="no step size"):
        make("implicit")(u, rate=2.0)


def test_step_follows_parameter_updates():
    m = make("implicit")
    u = torch.randn(1, 4, 5, dtype=torch.float64)
    m.setup_step()
    with torch.no_grad():
        m.filters.out.weight.mul_(2.0)  # as an optimizer step would
    state, steps = m.default_state(1), []
    for t in range(5):
        y_t, state = m.step(u[..., t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, -1), m(u), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["implicit", "s4d", "sgconv"])
def test_padding_gives_each_sample_its_own_outputs(name):
    m = make(name)
    u = torch.randn(3, 4, 16, dtype=torch.float64)
    lengths = torch.tensor([16, 9, 4])
    padded = u.clone()
    for b, n in enumerate(lengths.tolist()):
        padded[b, :, n:] = 0  # what the block does before the mixer
    y = m(padded, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(y[b : b + 1, :, :n], m(u[b : b + 1, :, :n]), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="lengths cannot be combined"):
        m(padded, lengths=lengths, return_state=True)


@pytest.mark.parametrize("name", ["implicit", "s4d", "sgconv"])
def test_gradients_match_the_reference(name):
    m = make(name, H=3)
    u = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 10, dtype=torch.float64)
    (m(u) * weight).sum().backward()
    mine = {n: p.grad.clone() for n, p in m.named_parameters()}
    du = u.grad.clone()
    m.zero_grad()
    u.grad = None
    (hyena_reference(m, u) * weight).sum().backward()
    torch.testing.assert_close(du, u.grad, rtol=1e-9, atol=1e-10)
    for n, p in m.named_parameters():
        assert torch.isfinite(mine[n]).all()
        torch.testing.assert_close(mine[n], p.grad, rtol=1e-9, atol=1e-10, msg=n)


@pytest.mark.parametrize("name", ["implicit", "s4d", "sgconv"])
def test_bf16_autocast_runs_and_stays_close(name):
    torch.manual_seed(0)
    m = Hyena(8, **CASES[name])
    u = torch.randn(2, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(u)
        y.float().sum().backward()
    assert torch.isfinite(y.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    torch.testing.assert_close(y.float(), m(u).detach(), rtol=0.1, atol=0.1)


def test_long_sequence_forward_backward():
    torch.manual_seed(0)
    m = Hyena(8, filter_options=dict(l_max=4096, filter_order=16))
    u = torch.randn(2, 8, 4096, requires_grad=True)
    y = m(u)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(u.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_parameter_groups():
    """Filter parameters: no weight decay, their own lr where set; the projections follow the optimizer."""
    m = Hyena(8, filter_options=dict(lr=1e-3, lr_pos_emb=0, modulation_lr=2e-4, filter_order=4, l_max=16))
    groups = {(g["lr"], g["weight_decay"]): set(g["names"]) for g in param_groups(m, lr=0.01, weight_decay=0.1)}
    assert groups[(1e-3, 0.0)] == {"filters.act.freq", "filters.out.weight"} | {
        f"filters.linears.{i}.{w}" for i in range(3) for w in ("weight", "bias")}
    assert groups[(2e-4, 0.0)] == {"filters.deltas"}
    assert "filters.z" in dict(m.named_buffers())  # lr 0: frozen
    assert {"in_proj.weight", "short_filter.weight", "post.out.weight"} <= groups[(0.01, 0.1)]
    assert "D" in groups[(0.01, 0.0)]
    s4d = Hyena(8, filter="s4d", filter_options=dict(d_state=4, lr=1e-3))
    groups = {(g["lr"], g["weight_decay"]): set(g["names"]) for g in param_groups(s4d, lr=0.01, weight_decay=0.1)}
    assert {"filters.0.A_real", "filters.1.log_dt", "filters.1.B"} <= groups[(1e-3, 0.0)]


@pytest.mark.parametrize("options, message", [
    (dict(filter="s4"), "unknown hyena filter 's4' \\(did you mean 's4d'\\?\\)"),
    (dict(order=0), "order must be an integer >= 1"),
    (dict(filter_options=dict(emb_dim=4)), "emb_dim must be an odd integer >= 3"),
    (dict(filter_options=dict(l_maxx=8)), "unknown option 'l_maxx'.*did you mean 'l_max'"),
    (dict(filter="s4d", filter_options=dict(l_max=8)), "unknown option 'l_max' for hyena's s4d filter"),
    (dict(filter="s4d", filter_options=dict(channels=2)), "hyena sets the s4d filter's channels itself"),
    (dict(filter_options=dict(target=2.0)), "target must be in \\(0, 1\\)"),
    (dict(filter_options=dict(lr=-1)), "lr must be a number >= 0"),
    (dict(filter_options=[1]), "filter_options must be a mapping"),
    (dict(output=None, activation="gelu", dropout=1.5), "dropout must be in"),
])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        Hyena(4, **options)


def test_shape_check():
    with pytest.raises(ValueError, match=r"expects \(B, 4, L\)"):
        Hyena(4)(torch.randn(2, 5, 8))
