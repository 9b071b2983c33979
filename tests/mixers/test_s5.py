"""S5 against an independent float64 computation: HiPPO-N from its definition, the discretisation, the
MIMO recurrence run step by step, and the output map (activation, Linear, GLU) written out."""
import math

import pytest
import torch
from mixer_refs import post_reference, run_chunks, run_steps

import ssmkit.mixers.mimo as mimo_module
import ssmkit.mixers.s5 as s5_module
from ssmkit.mixers.lru import LRU
from ssmkit.mixers.s5 import S5, hippo_n
from ssmkit.train.optim import param_groups

H, L = 3, 40


def legs_normal(N: int) -> torch.Tensor:
    """HiPPO-LegS A plus (1/2) p p^T with p_n = sqrt(n + 1/2): the normal part (HiPPO-N) from its definition."""
    n = torch.arange(N, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    A = -torch.tril(q[:, None] * q[None, :], -1) - torch.diag(n + 1)
    p = torch.sqrt(n + 0.5)
    return A + p[:, None] * p[None, :]


@pytest.mark.parametrize("blocks", [1, 2, 4])
def test_hippo_n_eigenpairs(blocks):
    P = 16
    Lambda, V = hippo_n(P, blocks)
    S = torch.block_diag(*[legs_normal(P // blocks)] * blocks).to(torch.complex128)
    torch.testing.assert_close(S @ V, V * Lambda, rtol=0, atol=1e-9)  # eigenvectors of the block-diagonal HiPPO-N
    torch.testing.assert_close(V.conj().T @ V, torch.eye(P // 2, dtype=torch.complex128), rtol=0, atol=1e-9)
    assert torch.allclose(Lambda.real, torch.full((P // 2,), -0.5, dtype=torch.float64))
    assert (Lambda.imag > 0).all()


def reference(m: S5, u: torch.Tensor, rate: float = 1.0, h0=None) -> torch.Tensor:
    """y from the module's continuous parameters, discretised here and run step by step in float64."""
    Lam = torch.complex(m.Lambda_re.double(), m.Lambda_im.double())
    if m.clip_eigs:
        Lam = torch.complex(Lam.real.clamp(max=-1e-4), Lam.imag)
    dt = torch.exp(m.log_dt.double()) * rate
    B = torch.view_as_complex(m.B.double())
    C = torch.view_as_complex(m.C.double())  # (n_dir, H, P)
    if m.disc == "zoh":
        lam = torch.exp(Lam * dt)
        Bbar = ((lam - 1) / Lam)[:, None] * B
    else:
        lam = (1 + Lam * dt / 2) / (1 - Lam * dt / 2)
        Bbar = (dt / (1 - Lam * dt / 2))[:, None] * B
    u = u.double()

    def run(seq, x):
        out = []
        for t in range(seq.shape[-1]):
            x = lam * x + seq[..., t].to(torch.complex128) @ Bbar.T
            out.append(x)
        return torch.stack(out, -1)  # (B, P, L)

    x0 = torch.zeros(u.shape[0], m.P, dtype=torch.complex128) if h0 is None else h0.to(torch.complex128)
    y = m.output_scale * torch.einsum("hp,bpl->bhl", C[0], run(u, x0)).real
    if m.bidirectional:
        x_rev = run(u.flip(-1), torch.zeros_like(x0)).flip(-1)
        y = y + m.output_scale * torch.einsum("hp,bpl->bhl", C[1], x_rev).real
    return y + m.D.double()[:, None] * u


def bare(**options) -> dict:
    """Options for the SSM alone: no activation, no output map (the mixer's output is the recurrence's)."""
    return dict(activation=None, output=None, **options)


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("mode", ["scan", "conv"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("C_init", ["trunc_standard_normal", "complex_normal"])
def test_matches_the_float64_recurrence(disc, mode, bidirectional, C_init):
    torch.manual_seed(0)
    m = S5(H, **bare(bidirectional=bidirectional, d_state=8, blocks=2, disc=disc, mode=mode, C_init=C_init, dt_min=0.01,
                     dt_max=0.5))
    u = torch.randn(2, H, L)
    y = m(u)
    torch.testing.assert_close(y.double(), reference(m, u), rtol=1e-4, atol=1e-4)
    y64 = m.double()(u.double())
    torch.testing.assert_close(y64, reference(m, u), rtol=1e-9, atol=1e-9)


def test_conjugate_symmetry_is_the_full_system():
    """P/2 stored states with 2 Re(C x) equal the P-state system with the conjugates added and Re(C x)."""
    torch.manual_seed(1)
    m = S5(H, **bare(d_state=8)).double()
    u = torch.randn(2, H, L, dtype=torch.float64)
    full = S5(H, **bare(d_state=8, conj_sym=False)).double()
    with torch.no_grad():
        for name in ("Lambda_re", "log_dt", "D"):
            getattr(full, name).copy_(torch.cat([getattr(m, name)] * 2) if name != "D" else m.D)
        full.Lambda_im.copy_(torch.cat([m.Lambda_im, -m.Lambda_im]))
        B, C = torch.view_as_complex(m.B), torch.view_as_complex(m.C)
        full.B.copy_(torch.view_as_real(torch.cat([B, B.conj()])))
        full.C.copy_(torch.view_as_real(torch.cat([C, C.conj()], -1)))
    torch.testing.assert_close(full(u), m(u), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(full(u), reference(full, u), rtol=1e-10, atol=1e-10)


def _truncated_normal_std(c: float = 2.0) -> float:
    """The std of a standard normal truncated to [-c, c], written out: sqrt(1 - 2 c phi(c) / (Phi(c) - Phi(-c)))."""
    phi = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(c / math.sqrt(2))
    return math.sqrt(1 - 2 * c * phi / mass)


def test_jax_truncation_constant():
    """JAX's variance_scaling divides by 0.87962566103423978, the std of N(0, 1) truncated to [-2, 2]."""
    assert abs(s5_module.TRUNC_STD - _truncated_normal_std()) < 1e-12


def _draws(P: int, n: int, **options) -> list[S5]:
    torch.manual_seed(P)
    return [S5(64, d_state=P, blocks=P // 16, **options) for _ in range(n)]


@pytest.mark.parametrize("P", [64, 256])
def test_B_is_lecun_normal_on_P_by_H(P):
    """The official code draws real B on shape (P, H) with lecun_normal (fan_in = P): std 1/sqrt(P) exactly, cut at
    2 / 0.8796 of it; B~ = V^-1 B. B comes back from B~ as 2 Re(V B~) (V and its conjugate span C^P, B is real)."""
    _, V = hippo_n(P, P // 16)
    B = torch.cat([2 * (V @ torch.view_as_complex(m.B.double())).real for m in _draws(P, 16384 // (P * 64) + 1)])
    std = 1 / math.sqrt(P)
    assert abs(B.square().mean().sqrt().item() / std - 1) < 0.03
    bound = 2 * std / _truncated_normal_std()
    assert B.abs().max().item() <= bound * (1 + 1e-5)
    assert B.abs().max().item() > 0.95 * bound  # truncated there, not a plain normal scaled to that std
    assert abs(B.mean().item()) < 4 * std / math.sqrt(B.numel())


@pytest.mark.parametrize("P", [64, 256])
@pytest.mark.parametrize("C_init,fan_in", [("trunc_standard_normal", "P"), ("lecun_normal", "P*H"), ("complex_normal", None)])
def test_C_init_statistics(P, C_init, fan_in):
    """C~ = C V with V's columns orthonormal, so each part of C~ has the variance of each part of C: 1/fan_in, fan_in P
    for trunc_standard_normal (each row lecun_normal on (1, P, 2)) and P H for lecun_normal (on (H, P, 2)); complex_normal
    samples C~ directly with variance 1/2 per part."""
    H = 64
    C = torch.cat([m.C.double().flatten() for m in _draws(P, 2, C_init=C_init, bidirectional=True)])
    var = 0.5 if fan_in is None else 1 / {"P": P, "P*H": P * H}[fan_in]
    assert abs(C.square().mean().item() / var - 1) < 0.05, (C.square().mean().item(), var)


def test_dt_global_is_the_official_regular_group():
    """dt_global (the S5 training code's flag): log_dt stays one per state and trains with the optimizer's lr and weight
    decay, while Lambda and B keep the SSM lr without weight decay; dt_shared is one step size for all states."""
    m = S5(8, d_state=8, dt_global=True, lr={"Lambda": 1e-3, "B": 1e-3})
    groups = {n: (g["lr"], g["weight_decay"]) for g in param_groups(m, lr=4e-3, weight_decay=0.05) for n in g["names"]}
    assert groups["log_dt"] == (4e-3, 0.05)
    for name in ("Lambda_re", "Lambda_im", "B"):
        assert groups[name] == (1e-3, 0.0), name
    assert m.log_dt.shape == (4,)  # one per stored state
    assert S5(H, d_state=8, dt_shared=True).log_dt.shape == (1,)
    with pytest.raises(ValueError, match="dt_global=True trains log_dt with the optimizer's lr and weight decay.*drop lr.dt"):
        S5(H, d_state=8, dt_global=True, lr={"Lambda": 1e-3, "dt": 1e-3})


def test_rate_scales_the_step_and_step_mode_follows():
    torch.manual_seed(3)
    m = S5(H, d_state=8, activation="id", output="linear").eval()
    u = torch.randn(2, H, L)
    with torch.no_grad():
        y2 = m(u, rate=2.0)
        pre = m.recurrence(u, rate=2.0)[0]
        m.setup_step(rate=2.0)
        ys, _ = run_steps(m, u, m.default_state(2))
    torch.testing.assert_close(pre.double(), reference(m, u, rate=2.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y2.double(), post_reference(m, reference(m, u, rate=2.0)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ys, y2, rtol=1e-4, atol=1e-4)
    assert (y2 - m(u)).abs().max() > 1e-3


def test_state_passing_from_a_given_state():
    torch.manual_seed(4)
    m = S5(H, **bare(d_state=8)).double()
    u = torch.randn(2, H, L, dtype=torch.float64)
    h0 = torch.randn(2, m.P, dtype=torch.complex128)
    y, s = m(u, state=h0, return_state=True)
    torch.testing.assert_close(y, reference(m, u, h0=h0), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="no recurrent state: a bidirectional mixer sees the future"):
        S5(H, bidirectional=True)(u.float(), return_state=True)


def test_param_groups_give_the_ssm_its_own_lr_and_no_weight_decay():
    m = S5(8, d_state=8, lr={"Lambda": 1e-3, "B": 1e-3, "dt": 1e-3})
    groups = {n: (g["lr"], g["weight_decay"]) for g in param_groups(m, lr=4e-3, weight_decay=0.05) for n in g["names"]}
    for name in ("Lambda_re", "Lambda_im", "B", "log_dt"):
        assert groups[name] == (1e-3, 0.0), name
    assert groups["C"] == (4e-3, 0.05)
    assert groups["D"] == (4e-3, 0.0)
    assert groups["post.out.0.weight"] == (4e-3, 0.05) and groups["post.out.0.bias"] == (4e-3, 0.0)
    with pytest.raises(ValueError, match=r"unknown lr key\(s\) \['A'\] for S5; allowed: Lambda, B, C, dt"):
        S5(8, lr={"A": 1e-3})
    frozen = S5(8, d_state=8, lr={"Lambda": 0})  # lr 0 freezes: a buffer, not a parameter
    assert "Lambda_re" in dict(frozen.named_buffers()) and "Lambda_re" not in dict(frozen.named_parameters())


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="blocks"):
        S5(H, d_state=12, blocks=4)
    with pytest.raises(ValueError, match="unknown C_init"):
        S5(H, C_init="glorot")
    with pytest.raises(ValueError, match="unknown mode"):
        S5(H, mode="fft")
    with pytest.raises(ValueError, match=r"unknown activation 'gelu2' \(did you mean 'gelu'\?\)"):
        S5(H, activation="gelu2")
    with pytest.raises(ValueError, match="tie_dropout=True .* dropout is 0"):
        S5(H, tie_dropout=True)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_step_and_chunks_equal_the_reference_with_the_output_map(bidirectional):
    """The whole mixer (SSM -> GELU -> dropout 0 -> Linear + GLU, the defaults) against the float64 recurrence and
    the output map written out: forward, token by token with ``step`` (causal), and in chunks passing the state, at
    rate 1 and 2."""
    torch.manual_seed(5)
    m = S5(H, bidirectional=bidirectional, d_state=8, blocks=2, dt_min=0.01, dt_max=0.5).double()
    assert m.post.activation_name == "gelu" and m.post.output_name == "glu"
    u = torch.randn(2, H, L, dtype=torch.float64)
    for rate in (1.0, 2.0):
        want = post_reference(m, reference(m, u, rate=rate))
        torch.testing.assert_close(m(u, rate=rate), want, rtol=1e-9, atol=1e-9)
        if bidirectional:
            continue
        m.setup_step(rate)
        ys, state = run_steps(m, u, m.default_state(2))
        torch.testing.assert_close(ys, want, rtol=1e-9, atol=1e-9)
        yc, s = run_chunks(m, u, (1, 14), rate=rate)
        torch.testing.assert_close(yc, want, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(s, state, rtol=1e-9, atol=1e-9)


def test_step_follows_a_parameter_change():
    """``step`` discretises again when a parameter changed in place since ``setup_step`` (a training step)."""
    torch.manual_seed(6)
    m = S5(H, **bare(d_state=8)).double()
    u = torch.randn(1, H, 5, dtype=torch.float64)
    m.setup_step()
    with torch.no_grad():
        m.log_dt.add_(1.0)
    ys, _ = run_steps(m, u, m.default_state(1))
    torch.testing.assert_close(ys, reference(m, u), rtol=1e-9, atol=1e-9)


def test_padding_reaches_neither_direction():
    """``lengths``: each sample's valid outputs equal the sample run alone, even when the padding is not zero
    (the reverse scan starts at each sample's end)."""
    torch.manual_seed(7)
    m = S5(H, bidirectional=True, d_state=8).double()
    u = torch.randn(2, H, L, dtype=torch.float64)
    y = m(u, lengths=torch.tensor([L, 23]))
    torch.testing.assert_close(y[1:, :, :23], m(u[1:, :, :23]), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y[:1], m(u[:1]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [S5, LRU])
def test_bf16_autocast_keeps_the_recurrence_in_float32(cls, monkeypatch):
    """Under bf16 autocast the input map, the scan and the output Re(C x) see float32/complex64 tensors only, forward
    and backward; the output map after them may run in bf16."""
    seen = []
    for name in ("_apply_complex", "_real_output", "linear_scan"):
        fn = getattr(mimo_module, name)

        def spy(*args, _fn=fn, _name=name, **kwargs):
            seen.append((_name, {a.dtype for a in args if isinstance(a, torch.Tensor)}))
            return _fn(*args, **kwargs)

        monkeypatch.setattr(mimo_module, name, spy)
    torch.manual_seed(8)
    m = cls(8, d_state=8)
    u = torch.randn(2, 8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(u)
        y.float().sum().backward()
    assert y.dtype == torch.bfloat16  # the GLU map ran under autocast: the check sees a bf16 region
    assert {n for n, _ in seen} == {"_apply_complex", "_real_output", "linear_scan"}
    for name, dtypes in seen:
        assert dtypes <= {torch.float32, torch.complex64}, (name, dtypes)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
