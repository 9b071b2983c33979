"""ConvMixer: a convolution kernel as a token mixer (``ssmkit/mixers/conv.py``).

The recurrence (from a zero and a non-zero state) against the convolution for every S4D init, discretisation and
end (activation, output map, channels); the rate in the step; the step set-up and the kernel cache following
parameter updates; max_kernel_length; refusals; the per-kernel classes' merged signatures.
"""
import inspect

import pytest
import torch
from helpers import run_steps

from ssmkit.mixers import MIXERS, build_mixer, mixer_parameters
from ssmkit.mixers.conv import CONV_MIXERS, ConvMixer, S4DMixer, conv_mixer_class
from ssmkit.mixers.kernels import KERNELS, S4DKernel
from ssmkit.ops.cache import flush_kernel_caches, set_kernel_caching


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def s4d(d_model=4, **options) -> ConvMixer:
    return build_mixer(d_model, {"name": "s4d", **options})


@pytest.mark.parametrize("init", ["legs", "lin", "inv", "real"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("activation,output,channels", [("gelu", "glu", 1), ("glu", "linear", 2), ("tanh", None, 1)])
def test_conv_equals_recurrence_from_zero_and_nonzero_state(init, disc, activation, output, channels):
    torch.manual_seed(0)
    m = s4d(6, d_state=16, init=init, disc=disc, activation=activation, output=output, channels=channels)
    x = torch.randn(3, 6, 50)
    y = m(x)
    ys, s_end = run_steps(m, x, m.default_state(3))
    assert rel(ys, y) < 1e-4
    # From a non-zero state: the state reached after a prefix.
    prefix = torch.randn(3, 6, 20)
    _, s0 = m(prefix, return_state=True)
    y_from_state, s_conv = m(x, state=s0, return_state=True)
    ys2, s_step = run_steps(m, x, s0)
    assert rel(ys2, y_from_state) < 1e-4
    assert rel(s_step, s_conv) < 1e-4
    # ... and both equal running prefix + x as one sequence.
    y_full = m(torch.cat([prefix, x], -1))[..., 20:]
    assert rel(y_from_state, y_full) < 1e-4


def test_rate_reaches_the_recurrent_step():
    torch.manual_seed(0)
    m = s4d(d_state=8, init="lin")
    x = torch.randn(2, 4, 30)
    y2 = m(x, rate=2.0)
    assert rel(m(x), y2) > 1e-3  # the rate changes the output ...
    m.setup_step(rate=2.0)
    ys, _ = run_steps(m, x, m.default_state(2))
    assert rel(ys, y2) < 1e-4  # ... and the step follows the rate it was set up for
    m.setup_step(rate=0.5)
    ys, _ = run_steps(m, x, m.default_state(2))
    assert rel(ys, m(x, rate=0.5)) < 1e-4


def test_step_set_up_follows_parameter_updates():
    torch.manual_seed(0)
    m = s4d(d_state=8)
    x = torch.randn(1, 4, 10)
    m.setup_step(rate=2.0)
    run_steps(m, x, m.default_state(1))
    with torch.no_grad():
        m.kernel.log_dt.add_(0.5)  # an optimizer step changes the SSM
    ys, _ = run_steps(m, x, m.default_state(1))  # redone at the rate it was set up for
    assert rel(ys, m(x, rate=2.0)) < 1e-4


def test_max_kernel_length_truncates_the_kernel():
    torch.manual_seed(0)
    m = s4d(2, d_state=8, max_kernel_length=5, D=False, activation="id", output=None).double()
    x = torch.zeros(1, 2, 20, dtype=torch.float64)
    x[..., 0] = 1.0  # impulse: the output is the kernel itself
    y = m(x)
    assert y[..., 5:].abs().max() < 1e-12
    torch.testing.assert_close(y[..., :5], m.kernel_fn(5)[0].unsqueeze(0))


def test_kernel_fn_shape_and_bidirectional_channels():
    assert s4d(3, channels=2, bidirectional=True, d_state=4).kernel_fn(11).shape == (4, 3, 11)
    assert s4d(3, channels=2, activation="glu", d_state=4).kernel_fn(11).shape == (4, 3, 11)


def test_bidirectional_state_is_refused():
    with pytest.raises(ValueError, match="no recurrent state: a bidirectional mixer sees the future"):
        s4d(3, bidirectional=True, d_state=4).default_state(1)


def test_truncated_kernel_has_no_recurrence():
    m = s4d(3, d_state=4, max_kernel_length=8)
    assert not m.has_state
    with pytest.raises(ValueError, match="max_kernel_length=8 cuts the kernel"):
        m.step(torch.randn(1, 3), None)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(d_stat=4), "unknown option 'd_stat'.*did you mean 'd_state'"),
        (dict(activation="gelu2"), "unknown activation"),
        (dict(output="mlp"), "unknown output"),
        (dict(channels=2, output=None), "output=None needs the mixed features to be d_model"),
        (dict(dropout=1.5), "dropout must be in"),
        (dict(tie_dropout=True), "tie_dropout=True .* dropout is 0"),
        (dict(channels=0), "channels must be a positive integer"),
        (dict(max_kernel_length=0), "max_kernel_length must be a positive integer"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        s4d(**options)


def test_frozen_parameters_get_no_gradient():
    m = s4d(d_state=8, lr={"A": 0, "B": None, "dt": 1e-3})
    assert {"A_real", "A_imag", "B"} <= set(dict(m.kernel.named_buffers()))
    m(torch.randn(2, 4, 16)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_state_dict_layout():
    """kernel.*, D and post.out.* (the layout the old-checkpoint mapping in design #23 relies on)."""
    keys = set(s4d(d_state=4).state_dict())
    assert {"D", "post.out.0.weight", "post.out.0.bias"} <= keys
    assert all(k.startswith(("kernel.", "post.out.")) or k == "D" for k in keys), keys
    assert "D" not in s4d(D=False, d_state=4).state_dict()


def test_eval_kernel_is_cached_until_parameters_change(monkeypatch):
    torch.manual_seed(0)
    m = s4d(d_state=8).eval()
    calls = []
    original = m.kernel.forward
    monkeypatch.setattr(m.kernel, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(2, 4, 16)
    with torch.no_grad():
        y1 = m(x)
        y2 = m(x)
        assert len(calls) == 1 and torch.equal(y1, y2)
        m.kernel.log_dt.add_(0.3)  # a parameter update invalidates the cache
        y3 = m(x)
        assert len(calls) == 2 and not torch.allclose(y1, y3)
        m(torch.randn(2, 4, 20))  # a new length too
        assert len(calls) == 3
        m(x, rate=2.0)  # and a new rate
        assert len(calls) == 4
    m(x)  # with autograd on, the kernel is always computed (its graph is needed)
    assert len(calls) == 5


def test_training_cache_computes_once_per_step_with_exact_gradients():
    torch.manual_seed(0)
    a, b = s4d(d_state=8), s4d(d_state=8)
    b.load_state_dict(a.state_dict())
    assert set_kernel_caching(b, True) == 1
    xs = [torch.randn(2, 4, 16) for _ in range(3)]
    for x in xs:  # three micro-batches of one optimizer step
        a(x).square().sum().backward()
        b(x).square().sum().backward()
    assert b.kernel_cache.computed == 1
    assert b.kernel.log_dt.grad is None  # the kernel's gradient waits in the cache ...
    assert flush_kernel_caches(b) == 1  # ... until the step's single flush
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_every_kernel_is_a_registered_conv_mixer_with_one_signature():
    """Each registered kernel has its ConvMixer class under the same name; its signature is ConvMixer's options and
    then the kernel's (routed ones once), so the recipe validator sees every option."""
    assert set(CONV_MIXERS) == set(KERNELS.names())
    own = ["channels", "bidirectional", "activation", "output", "dropout", "tie_dropout", "D", "max_kernel_length"]
    for name, cls in CONV_MIXERS.items():
        assert MIXERS.get(name) is cls and cls.kernel_class is KERNELS.get(name)
        params = list(mixer_parameters(name))
        kernel_opts = [p for p in inspect.signature(cls.kernel_class).parameters if p not in ("d_model", "channels",
                                                                                             "max_kernel_length")]
        assert params == own + kernel_opts, name
    assert mixer_parameters("s4d")["d_state"].default == inspect.signature(S4DKernel).parameters["d_state"].default
    assert not MIXERS.get("dlr").has_rate and not MIXERS.get("sgconv").has_rate and MIXERS.get("s4").has_rate


def test_max_kernel_length_reaches_dlr():
    m = build_mixer(4, {"name": "dlr", "d_state": 4, "max_kernel_length": 6})
    assert m.kernel.max_kernel_length == 6 and not m.kernel.has_state and not m.has_state
    assert m.kernel_fn(20).shape[-1] == 6


def test_a_shadowing_kernel_is_refused():
    """A kernel option named like a ConvMixer option (other than the routed ones) could never be set."""

    class Shadowing(S4DKernel):
        def __init__(self, d_model: int, channels: int = 1, dropout: float = 0.0):
            super().__init__(d_model, channels=channels)

    with pytest.raises(TypeError, match="Shadowing takes dropout, which ConvMixer's option"):
        conv_mixer_class("shadowing", Shadowing)
    with pytest.raises(TypeError, match="Shadowing takes dropout"):
        ConvMixer(4, Shadowing)


def test_direct_construction_equals_build_mixer():
    torch.manual_seed(0)
    a = S4DMixer(4, d_state=4)
    torch.manual_seed(0)
    b = ConvMixer(4, "s4d", d_state=4)
    torch.manual_seed(0)
    c = s4d(d_state=4)
    x = torch.randn(1, 4, 9)
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), c(x))
