import pytest
import torch
from helpers import run_steps

from ssmkit import SequenceLayer


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("init", ["legs", "lin", "inv", "real"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("activation,output,channels", [("gelu", "glu", 1), ("glu", "linear", 2), ("tanh", None, 1)])
def test_conv_equals_recurrence_from_zero_and_nonzero_state(init, disc, activation, output, channels):
    torch.manual_seed(0)
    layer = SequenceLayer(6, d_state=16, init=init, disc=disc, activation=activation, output=output, channels=channels)
    x = torch.randn(3, 6, 50)
    y = layer(x)
    ys, s_end = run_steps(layer, x, layer.default_state(3))
    assert rel(ys, y) < 1e-4
    # From a non-zero state: the state reached after a prefix.
    prefix = torch.randn(3, 6, 20)
    _, s0 = layer(prefix, return_state=True)
    y_from_state, s_conv = layer(x, state=s0, return_state=True)
    ys2, s_step = run_steps(layer, x, s0)
    assert rel(ys2, y_from_state) < 1e-4
    assert rel(s_step, s_conv) < 1e-4
    # ... and both equal running prefix + x as one sequence.
    y_full = layer(torch.cat([prefix, x], -1))[..., 20:]
    assert rel(y_from_state, y_full) < 1e-4


def test_rate_reaches_the_recurrent_step():
    torch.manual_seed(0)
    layer = SequenceLayer(4, d_state=8, init="lin")
    x = torch.randn(2, 4, 30)
    y2 = layer(x, rate=2.0)
    assert rel(layer(x), y2) > 1e-3  # the rate changes the output ...
    ys, _ = run_steps(layer, x, layer.default_state(2), rate=2.0)
    assert rel(ys, y2) < 1e-4  # ... and the step follows it
    layer.rate = 0.5  # the layer's default rate is used when none is passed
    ys, _ = run_steps(layer, x, layer.default_state(2))
    assert rel(ys, layer(x, rate=0.5)) < 1e-4


def test_step_cache_follows_parameter_updates():
    torch.manual_seed(0)
    layer = SequenceLayer(4, d_state=8)
    x = torch.randn(1, 4, 10)
    run_steps(layer, x, layer.default_state(1))
    with torch.no_grad():
        layer.kernel.log_dt.add_(0.5)  # an optimizer step changes the SSM
    ys, _ = run_steps(layer, x, layer.default_state(1))
    assert rel(ys, layer(x)) < 1e-4


def test_max_kernel_length_truncates_the_kernel():
    torch.manual_seed(0)
    layer = SequenceLayer(2, d_state=8, max_kernel_length=5, D=False, activation="id", output=None).double()
    x = torch.zeros(1, 2, 20, dtype=torch.float64)
    x[..., 0] = 1.0  # impulse: the output is the kernel itself
    y = layer(x)
    assert y[..., 5:].abs().max() < 1e-12
    torch.testing.assert_close(y[..., :5], layer.kernel_fn(5)[0].unsqueeze(0))


def test_kernel_fn_shape_and_bidirectional_channels():
    layer = SequenceLayer(3, channels=2, bidirectional=True, d_state=4)
    assert layer.kernel_fn(11).shape == (4, 3, 11)


def test_bidirectional_state_is_refused():
    layer = SequenceLayer(3, bidirectional=True, d_state=4)
    with pytest.raises(ValueError, match="no recurrent state: a bidirectional layer sees the future"):
        layer.default_state(1)


def test_truncated_kernel_has_no_recurrence():
    layer = SequenceLayer(3, d_state=4, max_kernel_length=8)
    assert not layer.has_state
    with pytest.raises(ValueError, match="max_kernel_length=8 cuts the kernel"):
        layer.step(torch.randn(1, 3), None)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel="s9"), "unknown kernel 's9'"),
        (dict(kernel="s4dd"), "did you mean 's4d'"),
        (dict(d_stat=4), "unknown option 'd_stat'.*did you mean 'd_state'"),
        (dict(activation="gelu2"), "unknown activation"),
        (dict(output="mlp"), "unknown output"),
        (dict(channels=2, output=None), "output=None needs channels=1"),
        (dict(dropout=1.5), "dropout must be in"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequenceLayer(4, **kwargs)


def test_wrong_feature_count_is_a_clear_error():
    with pytest.raises(ValueError, match="expected 4 features"):
        SequenceLayer(4)(torch.randn(1, 5, 10))


def test_frozen_parameters_get_no_gradient():
    layer = SequenceLayer(4, d_state=8, lr={"A": 0, "B": None, "dt": 1e-3})
    assert {"A_real", "A_imag", "B"} <= set(dict(layer.kernel.named_buffers()))
    layer(torch.randn(2, 4, 16)).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_eval_kernel_is_cached_until_parameters_change(monkeypatch):
    torch.manual_seed(0)
    layer = SequenceLayer(4, d_state=8).eval()
    calls = []
    original = layer.kernel.forward
    monkeypatch.setattr(layer.kernel, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(2, 4, 16)
    with torch.no_grad():
        y1 = layer(x)
        y2 = layer(x)
        assert len(calls) == 1 and torch.equal(y1, y2)
        layer.kernel.log_dt.add_(0.3)  # a parameter update invalidates the cache
        y3 = layer(x)
        assert len(calls) == 2 and not torch.allclose(y1, y3)
        layer(torch.randn(2, 4, 20))  # a new length too
        assert len(calls) == 3
    layer(x)  # with autograd on, the kernel is always computed (its graph is needed)
    assert len(calls) == 4


def test_training_cache_computes_once_per_step_with_exact_gradients():
    from ssmkit.ops.cache import flush_kernel_caches, set_kernel_caching

    torch.manual_seed(0)
    a = SequenceLayer(4, d_state=8)
    b = SequenceLayer(4, d_state=8)
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
