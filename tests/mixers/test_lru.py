"""LRU against its paper's formulas, run step by step in float64, and its output map written out."""
import math

import pytest
import torch
from mixer_refs import post_reference, run_chunks, run_steps

from ssmkit.mixers.lru import LRU
from ssmkit.train.optim import param_groups

H, L = 3, 40


def reference(m: LRU, u: torch.Tensor, h0=None) -> torch.Tensor:
    """x_t = lambda x_{t-1} + gamma (B u_t), y_t = Re(C x_t) + D u_t, lambda = exp(-exp(nu) + i exp(theta))."""
    lam = torch.exp(-torch.exp(m.nu_log.double()) + 1j * torch.exp(m.theta_log.double()))
    gamma = torch.exp(m.gamma_log.double())
    B = torch.view_as_complex(m.B.double())  # (N, H)
    C = torch.view_as_complex(m.C.double())  # (n_dir, H, N)
    u = u.double()

    def run(seq, x):
        out = []
        for t in range(seq.shape[-1]):
            x = lam * x + gamma * (seq[..., t].to(torch.complex128) @ B.T)
            out.append(x)
        return torch.stack(out, -1)

    x0 = torch.zeros(u.shape[0], m.P, dtype=torch.complex128) if h0 is None else h0
    y = torch.einsum("hn,bnl->bhl", C[0], run(u, x0)).real
    if m.bidirectional:
        y = y + torch.einsum("hn,bnl->bhl", C[1], run(u.flip(-1), torch.zeros_like(x0)).flip(-1)).real
    return y + m.D.double()[:, None] * u


def test_ring_initialisation_and_normalisation():
    torch.manual_seed(0)
    m = LRU(8, d_state=4000, r_min=0.4, r_max=0.9, max_phase=math.pi / 10)
    lam, _ = m.discrete()
    r, phase = lam.abs().double(), lam.angle().double()
    assert r.min() >= 0.4 - 1e-6 and r.max() <= 0.9 + 1e-6
    assert phase.min() >= 0 and phase.max() <= math.pi / 10 + 1e-6
    # uniform on the ring (in area): r^2 is uniform on [r_min^2, r_max^2]
    assert abs((r.square().mean() - (0.4**2 + 0.9**2) / 2).item()) < 0.01
    torch.testing.assert_close(torch.exp(m.gamma_log).double(), torch.sqrt(1 - r.square()), rtol=1e-5, atol=1e-6)
    B, C = torch.view_as_complex(m.B), torch.view_as_complex(m.C)
    assert abs(B.real.std().item() - 1 / math.sqrt(16)) < 0.01 and abs(C.imag.std().item() - 1 / math.sqrt(4000)) < 1e-3


@pytest.mark.parametrize("mode", ["scan", "conv"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_the_float64_recurrence(mode, bidirectional):
    torch.manual_seed(1)
    m = LRU(H, bidirectional=bidirectional, d_state=6, r_min=0.5, r_max=0.99, mode=mode, activation=None, output=None)
    u = torch.randn(2, H, L)
    torch.testing.assert_close(m(u).double(), reference(m, u), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.double()(u.double()), reference(m, u), rtol=1e-9, atol=1e-9)


def test_state_passing_from_a_given_state():
    torch.manual_seed(2)
    m = LRU(H, d_state=6, r_min=0.5, activation=None, output=None).double()
    u = torch.randn(2, H, L, dtype=torch.float64)
    h0 = torch.randn(2, 6, dtype=torch.complex128)
    y, s = m(u, state=h0, return_state=True)
    torch.testing.assert_close(y, reference(m, u, h0), rtol=1e-9, atol=1e-9)
    y1, s1 = m(u[..., :17], state=h0, return_state=True)
    y2, s2 = m(u[..., 17:], state=s1, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y)
    torch.testing.assert_close(s2, s)


def test_no_step_size_so_rate_must_be_one():
    """A sampling-rate factor other than 1 is refused in one line, by forward and by setup_step (for step)."""
    m = LRU(H)
    for call in (lambda: m(torch.randn(1, H, 8), rate=2.0), lambda: m.setup_step(rate=0.5)):
        with pytest.raises(ValueError, match="mixer 'lru' has no step size.*use rate=1") as err:
            call()
        assert "\n" not in str(err.value)
    m(torch.randn(1, H, 8), rate=1.0)


def test_param_groups_give_the_recurrence_its_own_lr_and_no_weight_decay():
    m = LRU(8, d_state=8, lr={"Lambda": 5e-4, "gamma": 5e-4})
    groups = {n: (g["lr"], g["weight_decay"]) for g in param_groups(m, lr=1e-3, weight_decay=0.05) for n in g["names"]}
    for name in ("nu_log", "theta_log", "gamma_log"):
        assert groups[name] == (5e-4, 0.0), name
    assert groups["B"] == (1e-3, 0.0)  # an SSM parameter: no weight decay
    assert groups["C"] == (1e-3, 0.05)
    assert groups["post.out.0.weight"] == (1e-3, 0.05)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="r_min < r_max"):
        LRU(H, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="max_phase"):
        LRU(H, max_phase=0)
    with pytest.raises(ValueError, match="unknown output 'lin'"):
        LRU(H, output="lin")


@pytest.mark.parametrize("mode", ["scan", "conv"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_step_and_chunks_equal_the_reference_with_the_output_map(mode, bidirectional):
    """The whole mixer (LRU -> GELU -> dropout 0 -> Linear + GLU, the defaults) against the float64 recurrence and
    the output map written out: forward, token by token with ``step`` and in chunks passing the state (causal)."""
    torch.manual_seed(3)
    m = LRU(H, bidirectional=bidirectional, d_state=6, r_min=0.5, r_max=0.99, mode=mode).double()
    assert m.post.activation_name == "gelu" and m.post.output_name == "glu"
    u = torch.randn(2, H, L, dtype=torch.float64)
    want = post_reference(m, reference(m, u))
    torch.testing.assert_close(m(u), want, rtol=1e-9, atol=1e-9)
    if bidirectional:
        assert not m.has_state
        with pytest.raises(ValueError, match="'lru' mixer has no recurrent step: a bidirectional mixer sees the future"):
            m.step(u[..., 0], None)
        return
    m.setup_step()
    ys, state = run_steps(m, u, m.default_state(2))
    torch.testing.assert_close(ys, want, rtol=1e-9, atol=1e-9)
    yc, s = run_chunks(m, u, (1, 2, 23))
    torch.testing.assert_close(yc, want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s, state, rtol=1e-9, atol=1e-9)


def test_dropout_and_its_tied_mask_act_in_training_only():
    """``dropout`` drops features before the output map while training (``tie_dropout``: the same features at every
    position), and nothing in eval."""
    torch.manual_seed(4)
    m = LRU(H, d_state=6, output=None, activation=None, dropout=0.5, tie_dropout=True).double()
    u = torch.randn(2, H, L, dtype=torch.float64)
    y = m(u)
    ssm = m.recurrence(u)[0]
    dropped = y == 0
    assert dropped.any() and not dropped.all()
    assert (dropped == dropped[..., :1]).all()  # a feature is dropped at all positions or at none
    torch.testing.assert_close(y[~dropped], 2 * ssm[~dropped])
    torch.testing.assert_close(m.eval()(u), ssm)
