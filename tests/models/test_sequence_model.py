import pytest
import torch

from ssmkit import SequenceModel


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("norm", ["layer", "batch", None])
@pytest.mark.parametrize("mlp_ratio", [0, 2])
def test_step_equals_forward(prenorm, norm, mlp_ratio):
    torch.manual_seed(0)
    m = SequenceModel(3, 5, d_model=8, n_layers=2, mixer=dict(name="s4d", d_state=8), prenorm=prenorm, norm=norm,
                      pool=None, mlp_ratio=mlp_ratio).eval()
    x = torch.randn(2, 30, 3)
    y = m(x)  # (B, L, d_output)
    state = m.default_state(2)
    m.setup_step()
    outs = []
    for t in range(30):
        o, state = m.step(x[:, t], state)
        outs.append(o)
    assert rel(torch.stack(outs, 1), y) < 1e-4


def test_forward_state_two_halves():
    torch.manual_seed(0)
    m = SequenceModel(3, 2, d_model=8, n_layers=3, mixer=dict(name="s4d", d_state=8), pool=None).eval()
    x = torch.randn(2, 40, 3)
    y1, s = m(x[:, :15], return_state=True)
    y2, _ = m(x[:, 15:], state=s, return_state=True)
    assert rel(torch.cat([y1, y2], 1), m(x)) < 1e-4


def test_embedding_encoder_and_pooling():
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (4, 20))
    for pool, shape in [("mean", (4, 3)), ("last", (4, 3)), (None, (4, 20, 3))]:
        m = SequenceModel(11, 3, d_model=8, n_layers=1, encoder="embedding", pool=pool, mixer=dict(name="s4d", d_state=4))
        assert m(ids).shape == shape


def test_pooling_respects_lengths():
    torch.manual_seed(0)
    m = SequenceModel(2, 3, d_model=8, n_layers=1, pool="mean", mixer=dict(name="s4d", d_state=4)).eval()
    x = torch.randn(1, 12, 2)
    padded = torch.cat([x, torch.randn(1, 5, 2)], 1)
    # causal mixers: positions < 12 do not see the padding, so masked mean pooling ignores it exactly
    torch.testing.assert_close(m(padded, lengths=torch.tensor([12])), m(x), rtol=1e-5, atol=1e-5)
    m.pool = "last"
    torch.testing.assert_close(m(padded, lengths=torch.tensor([12])), m(x), rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    kw = dict(d_model=8, n_layers=2, mixer=dict(name="s4d", d_state=8), pool="mean")
    a = SequenceModel(3, 2, **kw)
    b = SequenceModel(3, 2, checkpoint=True, **kw)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 16, 3)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_set_rate_reaches_every_mixer():
    """The model holds the rate and passes it to every mixer's forward and setup_step; a mixer without a step size
    refuses it at set_rate."""
    m = SequenceModel(1, 1, d_model=4, n_layers=3, mixer=dict(name="s4d", d_state=4), pool=None).eval()
    seen = []
    for mixer in m.mixers:
        mixer.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["rate"]), with_kwargs=True)
    x = torch.randn(1, 10, 1)
    y1 = m(x)
    m.set_rate(2.0)
    y2 = m(x)
    assert m.rate == 2.0 and seen == [1.0] * 3 + [2.0] * 3
    assert (y1 - y2).abs().max() > 1e-4
    m.step(x[:, 0], m.default_state(1))
    assert all(mixer._step_rate == 2.0 for mixer in m.mixers)
    with pytest.raises(ValueError, match="cannot rescale it"):
        SequenceModel(1, 1, d_model=4, n_layers=1, mixer=dict(name="attn"), rate=2.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pool="max"), "unknown pool"),
        (dict(norm="rms"), "unknown norm"),
        (dict(encoder="conv"), "unknown encoder"),
        (dict(n_layers=0), "must be positive"),
        (dict(mixer=dict(name="nope")), "unknown mixer 'nope'"),
        (dict(mixer=dict(d_state=4)), "have no name"),
        (dict(rate=0), "rate .* must be a positive number"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequenceModel(2, 2, **kwargs)


def test_the_removed_layer_argument_names_mixer():
    with pytest.raises(TypeError, match="takes mixer=.* instead of layer="):
        SequenceModel(2, 2, layer=dict(kernel="s4d"))


def test_real_states_step_like_complex_ones():
    torch.manual_seed(0)
    m = SequenceModel(2, 3, d_model=8, n_layers=2, mixer=dict(name="s4d", d_state=8), pool=None).eval()
    x = torch.randn(5, 2)
    s_c, s_r = m.default_state(5), m.default_state(5, real=True)
    assert all(not s.is_complex() and s.shape[-1] == 2 for s in s_r)
    for _ in range(4):
        y_c, s_c = m.step(x, s_c)
        y_r, s_r = m.step(x, s_r)
    torch.testing.assert_close(y_r, y_c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.view_as_complex(s_r[0]), s_c[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["inductor", "aot"])
def test_compiled_step_equals_eager_and_follows_weight_updates(backend):
    torch.manual_seed(0)
    m = SequenceModel(1, 2, d_model=8, n_layers=2, mixer=dict(name="s4d", d_state=8), pool=None)
    step = m.compile_step(backend)
    x = torch.randn(3, 1)
    state = m.default_state(3, real=True)
    s_fast, s_eager = state, state
    for _ in range(3):
        y, s_fast = step(x, s_fast)
        y_eager, s_eager = m.step(x, s_eager)
        torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
        for a, b in zip(s_fast, s_eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.1)
    m.setup_step()
    if backend == "aot":
        assert (step(x, state)[0] - m.step(x, state)[0]).abs().max() > 1e-3  # frozen weights: stale until refresh
        step.refresh()
    torch.testing.assert_close(step(x, state)[0], m.step(x, state)[0], rtol=1e-5, atol=1e-6)


def test_compile_step_auto_picks_aot_only_for_real_states():
    from ssmkit.models.fast_step import AOTStep, aot_unsupported

    s4d = SequenceModel(1, 2, d_model=8, n_layers=2, mixer=dict(name="s4d", d_state=8), pool=None)
    assert aot_unsupported(s4d, s4d.default_state(1, real=True)) is None
    assert isinstance(s4d.compile_step(), AOTStep)
    s4 = SequenceModel(1, 2, d_model=8, n_layers=1, mixer=dict(name="s4", d_state=8), pool=None)
    assert "complex" in aot_unsupported(s4, s4.default_state(1, real=True))
    assert not isinstance(s4.compile_step(), AOTStep)
    attn = SequenceModel(1, 2, d_model=8, n_layers=1, mixer=dict(name="attn"), pool=None)
    assert "attention" in aot_unsupported(attn, attn.default_state(1, real=True))
    with pytest.raises(ValueError, match="auto, aot or inductor"):
        s4d.compile_step("fast")
    with pytest.raises(ValueError, match="complex"):
        AOTStep(s4)(torch.randn(1, 1), s4.default_state(1))
