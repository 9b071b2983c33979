"""The guarantees every registered kernel gives through SequenceLayer, whatever its math.

Each kernel's own test file checks its kernel against an independent float64 computation; this file
checks the layer-level contract for all of them at once, so that a new kernel cannot skip it.
"""
import pytest
import torch
from helpers import run_steps

from ssmkit import KERNELS, SequenceLayer

H, L = 4, 24

# Sizes that make every part of each kernel matter at length L (e.g. all of SGConv's scales).
SMALL = {"sgconv": dict(l_max=L, kernel_dim=4)}


def make(kernel: str, **kw) -> SequenceLayer:
    torch.manual_seed(0)
    return SequenceLayer(H, kernel=kernel, **{**SMALL.get(kernel, {}), **kw})


def recurrent(kernel: str) -> bool:
    return make(kernel).has_state


@pytest.mark.parametrize("kernel", KERNELS.names())
@pytest.mark.parametrize("transposed", [True, False])
def test_shapes_and_dtypes(kernel, transposed):
    layer = make(kernel, transposed=transposed)
    x = torch.randn(2, H, L) if transposed else torch.randn(2, L, H)
    assert layer(x).shape == x.shape
    assert layer.double()(x.double()).dtype == torch.float64


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_bf16_autocast_runs_and_stays_close(kernel):
    layer = make(kernel)
    x = torch.randn(2, H, L)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert torch.isfinite(y).all()
    assert ((y.float() - ref).norm() / ref.norm()).item() < 5e-2


@pytest.mark.parametrize("kernel", KERNELS.names())
@pytest.mark.parametrize("bidirectional", [False, True])
def test_future_dependence(kernel, bidirectional):
    layer = make(kernel, bidirectional=bidirectional).double()
    x = torch.randn(1, H, L, dtype=torch.float64)
    x2 = x.clone()
    x2[..., L // 2 + 1 :] += torch.randn_like(x2[..., L // 2 + 1 :])
    y, y2 = layer(x), layer(x2)
    past_changed = (y[..., : L // 2 + 1] - y2[..., : L // 2 + 1]).abs().max().item()
    if bidirectional:
        assert past_changed > 1e-6, "a bidirectional layer must see inputs after t"
    else:
        assert past_changed < 1e-12, "a causal layer must not see inputs after t"


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_gradients_reach_every_trainable_parameter(kernel):
    layer = make(kernel, bidirectional=False)
    x = torch.randn(2, H, L, requires_grad=True)
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_conv_equals_step(kernel):
    layer = make(kernel).eval()
    if not layer.has_state:
        pytest.skip(f"{kernel} has no recurrence (a pure convolution), so there is no step mode to compare")
    x = torch.randn(2, H, L)
    y = layer(x)
    ys, _ = run_steps(layer, x, layer.default_state(2))
    assert ((ys - y).norm() / y.norm()).item() < 1e-4


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_forward_with_state_equals_two_halves(kernel):
    layer = make(kernel).eval()
    if not layer.has_state:
        pytest.skip(f"{kernel} has no recurrence, so there is no state to pass")
    x = torch.randn(2, H, L)
    y = layer(x)
    y1, s1 = layer(x[..., : L // 3], return_state=True)
    y2, _ = layer(x[..., L // 3 :], state=s1, return_state=True)
    assert ((torch.cat([y1, y2], -1) - y).norm() / y.norm()).item() < 1e-4


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_stateless_kernels_refuse_state_clearly(kernel):
    layer = make(kernel, bidirectional=True)
    with pytest.raises(ValueError, match="has no recurrent state"):
        layer(torch.randn(1, H, L), return_state=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("kernel", KERNELS.names())
def test_cuda_matches_cpu(kernel):
    layer = make(kernel)
    x = torch.randn(2, H, L)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), layer.cpu()(x), rtol=1e-4, atol=1e-4)
