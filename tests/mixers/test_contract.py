"""The contract (``ssmkit/mixers/base.py``) every registered mixer keeps, whatever its math.

Parametrised by ``MIXERS.names()``, so a mixer registered later is held to it without being listed here (it runs
with its defaults unless ``SMALL`` gives it smaller sizes). Each mixer's own test file checks its forward against
an independent float64 computation; this file checks, in float64, that the three ways of running a recurrent mixer
agree (forward, step token by token, forward in chunks passing the state), that ``lengths`` makes each sample's
valid outputs those it gets alone, that ``rate`` reaches the step size (or is refused), bf16 autocast, gradients,
causality, and one-line refusals.
"""
import pytest
import torch
from helpers import SMALL_MIXER_OPTIONS as SMALL
from helpers import run_chunks, run_steps

from ssmkit.mixers import MIXERS, Mixer, build_mixer, mixer_parameters

H, L = 4, 24  # SMALL (small sizes per mixer, in tests/helpers.py) is made for this L
NAMES = MIXERS.names()


def make(name: str, seed: int = 0, **kw) -> Mixer:
    torch.manual_seed(seed)
    if not kw.get("bidirectional", True) and "bidirectional" not in mixer_parameters(name):
        del kw["bidirectional"]  # a causal-only mixer has no such option (directions() gives it False only)
    return build_mixer(H, {"name": name, **SMALL.get(name, {}), **kw})


def directions(name: str) -> list[bool]:
    return [False, True] if "bidirectional" in mixer_parameters(name) else [False]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", NAMES)
def test_is_a_mixer_with_its_registry_name(name):
    m = make(name)
    assert isinstance(m, Mixer) and m.name == name and m.d_model == H
    assert isinstance(m.has_state, bool) and isinstance(m.has_rate, bool)
    assert "d_model" not in mixer_parameters(name)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_dtypes(name):
    m = make(name)
    u = torch.randn(2, H, L)
    assert m(u).shape == u.shape
    assert m.double()(u.double()).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_runs_and_stays_close(name):
    m = make(name)
    u = torch.randn(2, H, L)
    ref = m(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(u)
    assert torch.isfinite(y).all()
    assert rel(y.float(), ref) < 5e-2


@pytest.mark.parametrize("name", NAMES)
def test_future_dependence(name):
    for bidirectional in directions(name):
        m = make(name, bidirectional=bidirectional).double()
        u = torch.randn(1, H, L, dtype=torch.float64)
        u2 = u.clone()
        u2[..., L // 2 + 1:] += torch.randn_like(u2[..., L // 2 + 1:])
        past_changed = (m(u)[..., : L // 2 + 1] - m(u2)[..., : L // 2 + 1]).abs().max().item()
        if bidirectional:
            assert past_changed > 1e-6, "a bidirectional mixer must see inputs after t"
        else:
            assert past_changed < 1e-12, "a causal mixer must not see inputs after t"


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_trainable_parameter(name):
    m = make(name)
    u = torch.randn(2, H, L, requires_grad=True)
    m(u).square().sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"
    assert u.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_steps_equals_chunks_in_float64(name):
    m = make(name).double().eval()
    if not m.has_state:
        pytest.skip(f"{name} has no recurrence with its defaults ({m.no_state_reason()}): nothing to compare")
    u = torch.randn(2, H, L, dtype=torch.float64)
    with torch.no_grad():
        y, s_full = m(u, return_state=True)
        m.setup_step()
        ys, s_step = run_steps(m, u, m.default_state(2))
        yc, s_chunk = run_chunks(m, u, [1, L // 3, L // 3 + 5])
    assert rel(ys, y) < 1e-9
    assert rel(yc, y) < 1e-9
    # the states agree in what they do next: continuing from each gives the same outputs
    v = torch.randn(2, H, 7, dtype=torch.float64)
    with torch.no_grad():
        after = [m(v, state=s) for s in (s_full, s_step, s_chunk)]
        whole = m(torch.cat([u, v], -1))[..., L:]
    for a in after:
        assert rel(a, whole) < 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_valid_outputs_with_lengths_equal_each_sample_alone(name):
    """The caller (the block) zeroes the input after each length; the mixer's valid outputs are then each
    sample's own, for any amount and content of padding, in both directions."""
    lengths = torch.tensor([5, 13, 1, 20])
    gen = torch.Generator().manual_seed(1)
    samples = [torch.randn(H, int(n), dtype=torch.float64, generator=gen) for n in lengths]
    for bidirectional in directions(name):
        m = make(name, bidirectional=bidirectional).double().eval()
        with torch.no_grad():
            alone = [m(s.unsqueeze(0))[0] for s in samples]
            for Lp in (20, 27):
                u = torch.zeros(len(samples), H, Lp, dtype=torch.float64)
                for i, s in enumerate(samples):
                    u[i, :, : s.shape[-1]] = s
                y = m(u, lengths=lengths)
                for i, n in enumerate(lengths.tolist()):
                    torch.testing.assert_close(y[i, :, :n], alone[i], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_rate_reaches_the_step_size_or_is_refused(name):
    m = make(name).double().eval()
    u = torch.randn(2, H, L, dtype=torch.float64)
    if not m.has_rate:
        with pytest.raises(ValueError, match="sampling-rate factor cannot rescale it"):
            m(u, rate=2.0)
        with pytest.raises(ValueError, match="sampling-rate factor cannot rescale it"):
            m.setup_step(rate=2.0)
        return
    with torch.no_grad():
        y2 = m(u, rate=2.0)
        assert rel(m(u), y2) > 1e-3, "rate must change the output"
        if m.has_state:
            m.setup_step(rate=2.0)
            ys, _ = run_steps(m, u, m.default_state(2))
            assert rel(ys, y2) < 1e-9, "the step must follow the rate of setup_step"


@pytest.mark.parametrize("name", NAMES)
def test_no_state_is_refused_in_one_line(name):
    if True not in directions(name):
        pytest.skip(f"{name} has no bidirectional option")
    m = make(name, bidirectional=True)
    assert not m.has_state
    for call in (lambda: m(torch.randn(1, H, L), return_state=True), lambda: m.default_state(1)):
        with pytest.raises(ValueError, match="no recurrent state") as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_lengths_with_state_and_wrong_width_are_refused(name):
    m = make(name)
    u = torch.randn(2, H, 8)
    if m.has_state:
        with pytest.raises(ValueError, match="lengths cannot be combined with state"):
            m(u, lengths=torch.tensor([3, 8]), return_state=True)
    with pytest.raises(ValueError, match=f"expects \\(B, {H}, L\\)"):
        m(torch.randn(2, H + 1, 8))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_one_line_with_a_suggestion(name):
    option = next(iter(mixer_parameters(name)))
    with pytest.raises(ValueError, match=f"unknown option '{option}x' for mixer '{name}'.*did you mean '{option}'"):
        build_mixer(H, {"name": name, option + "x": 1})


def test_build_mixer_refusals():
    with pytest.raises(ValueError, match="unknown mixer 's4dd'.*did you mean 's4d'"):
        build_mixer(H, {"name": "s4dd"})
    with pytest.raises(ValueError, match="have no name; add name: one of"):
        build_mixer(H, {"d_state": 4})
    with pytest.raises(ValueError, match="d_model is the model's width"):
        build_mixer(H, {"name": "s4d", "d_model": 8})
    with pytest.raises(ValueError, match="a mixer is a mapping"):
        build_mixer(H, "s4d")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    m = make(name)
    u = torch.randn(2, H, L)
    torch.testing.assert_close(m.cuda()(u.cuda()).cpu(), m.cpu()(u), rtol=1e-4, atol=1e-4)
