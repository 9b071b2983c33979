"""SGConv against an independent float64 construction: explicit upsampling, decay and concatenation."""
import itertools
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ssmkit.mixers import build_mixer
from ssmkit.mixers.kernels.sgconv import SGConvKernel, n_scales_for

MODES = [
    "_".join(t for t in (combine, init, decay, interp) if t)
    for combine, init, decay, interp in itertools.product(
        ("cat", "sum"), ("randn", "cos"), ("", "learnable", "learnable_fixed"), ("", "nearest")
    )
]


def upsample(w: np.ndarray, factor: int, nearest: bool) -> np.ndarray:
    """w (..., d) -> (..., d*factor): half-pixel-centred linear interpolation (or nearest), one tap at a time."""
    d = w.shape[-1]
    out = np.zeros(w.shape[:-1] + (d * factor,))
    for j in range(d * factor):
        if nearest:
            out[..., j] = w[..., min(j // factor, d - 1)]
            continue
        x = max(0.0, (j + 0.5) / factor - 0.5)
        i0 = int(math.floor(x))
        i1 = min(i0 + 1, d - 1)
        lam = x - i0
        out[..., j] = (1 - lam) * w[..., i0] + lam * w[..., i1]
    return out


def raw_kernel(k: SGConvKernel) -> np.ndarray:
    """The full unnormalised kernel (C, H, d*2^(n-1+s)) from the raw parameters, in numpy float64."""
    p = lambda t: t.detach().double().numpy()  # noqa: E731
    mode = k.mode.split("_")
    n, d, s = k.n_scales, k.kernel_dim, k.init_scale
    ws = [p(getattr(k, f"kernel_{i}")) for i in range(n)]
    C, H, _ = ws[0].shape
    if k.use_alpha:
        factor = [p(k.alpha)[..., None] ** i for i in range(n)]
    elif "learnable" in mode:
        factor = [1.0] * n
    else:
        m = np.linspace(k.options_decay[0], k.options_decay[1], H)
        factor = [(m ** (n - 1 - i))[:, None] for i in range(n)]
    total = d * 2 ** (n - 1 + s)
    if "cat" in mode:
        parts = [upsample(ws[i], 2 ** (max(0, i - 1) + s), "nearest" in mode) * factor[i] for i in range(n)]
        K = np.concatenate(parts, axis=-1)
    else:
        K = np.zeros((C, H, total))
        for i in range(n):
            up = upsample(ws[i], 2 ** (i + s), "nearest" in mode) * factor[i]
            K[..., : up.shape[-1]] += up
    assert K.shape[-1] == total
    if "learnable" in mode:
        K = K * (np.arange(total) + 1.0) ** (-p(k.gamma)[:, None])
    return K


def make(seed=0, **kw) -> SGConvKernel:
    torch.manual_seed(seed)
    opts = dict(channels=2, l_max=32, kernel_dim=4)
    opts.update(kw)
    k = SGConvKernel(3, **opts)
    # remember the decay range for the reference (m_h = linspace(decay_min, decay_max, H))
    k.options_decay = (kw.get("decay_min", 2.0), kw.get("decay_max", 2.0))
    return k


CASES = [
    dict(mode=m, **extra)
    for m in MODES
    for extra in ({}, {"decay_min": 1.5, "decay_max": 3.0})
] + [
    dict(mode="cat_randn", init_scale=1),
    dict(mode="sum_randn", init_scale=1),
    dict(mode="cat_randn", alpha_min=0.3, alpha_max=1.0),
    dict(mode="cat_randn", n_scales=2),
    dict(mode="cat_cos", l_max=20, kernel_dim=3),
]


@pytest.mark.filterwarnings("ignore:sgconv kernel covers")
@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("L", [None, 13, 80])
def test_kernel_matches_explicit_construction(kw, L):
    k = make(**kw).double()
    full = raw_kernel(k)
    norm0 = np.linalg.norm(full, axis=-1, keepdims=True)  # measured at initialisation
    np.testing.assert_allclose(k.kernel_norm.numpy(), norm0, rtol=1e-6)
    # change the weights: the normalisation stays the one measured at initialisation
    with torch.no_grad():
        for p in k.parameters():
            p.mul_(1.3).add_(0.1)
    full = raw_kernel(k)
    L = k.length if L is None else L
    K, state = k(L)
    assert state is None and K.shape == (2, 3, L)
    ref = np.zeros((2, 3, L))
    # divided by the stored norm (measured in float32 at construction, checked above against float64)
    ref[..., : min(L, full.shape[-1])] = (full / k.kernel_norm.numpy())[..., :L]
    np.testing.assert_allclose(K.detach().numpy(), ref, rtol=1e-10, atol=1e-12)


def test_scale_count_and_segments_follow_the_paper():
    assert n_scales_for(1000, 64) == 5 and n_scales_for(1024, 64) == 5 and n_scales_for(1025, 64) == 6
    assert n_scales_for(2**20, 64) == 15 and n_scales_for(10, 64) == 1
    assert n_scales_for(1024, 64, init_scale=1) == 4
    k = make(l_max=1000, kernel_dim=64, channels=1)
    assert k.n_scales == 5 and k.length == 64 * 16 >= 1000
    assert sum(p.numel() for p in k.parameters()) == 5 * 3 * 64  # grows with log L, not L


def test_cos_init_is_a_permutation_of_cosines():
    k = make(mode="cat_cos", channels=2)
    t = np.linspace(0, 1, 4)
    want = np.cos(2 * np.pi * np.arange(3)[:, None] * t)  # (H, d)
    for i in range(k.n_scales):
        w = getattr(k, f"kernel_{i}").detach().double().numpy()
        np.testing.assert_allclose(w[0], w[1])  # same over channels
        rows = sorted(map(tuple, np.round(w[0], 6)))
        assert rows == sorted(map(tuple, np.round(want, 6)))


def test_norm_buffer_is_saved_and_restored(tmp_path):
    k = make(seed=0)
    with torch.no_grad():
        k.kernel_0.mul_(3.0)  # "training": the current weights no longer give the init-time norm
    assert "kernel_norm" in k.state_dict()
    save_file(k.state_dict(), str(tmp_path / "k.safetensors"))
    other = make(seed=1)
    assert not torch.allclose(other.kernel_norm, k.kernel_norm)
    other.load_state_dict(load_file(str(tmp_path / "k.safetensors")))
    torch.testing.assert_close(other.kernel_norm, k.kernel_norm)
    torch.testing.assert_close(other(32)[0], k(32)[0])


def test_frozen_and_per_parameter_settings():
    k = make(alpha_min=0.5, alpha_max=1.0, lr={"kernel": 1e-3, "decay": 0.0}, wd={"kernel": 0.05})
    params, buffers = dict(k.named_parameters()), dict(k.named_buffers())
    assert "alpha" in buffers and "alpha" not in params
    assert params["kernel_0"]._optim == {"lr": 1e-3, "weight_decay": 0.05}
    learned = make(mode="cat_randn_learnable", lr=2e-3)
    assert dict(learned.named_parameters())["gamma"]._optim == {"lr": 2e-3, "weight_decay": 0.0}
    fixed = make(mode="cat_randn_learnable_fixed")
    assert "gamma" in dict(fixed.named_buffers())
    for kern in (make(alpha_min=0.5, alpha_max=1.0), learned):
        kern(32)[0].square().sum().backward()
        for name, p in kern.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mode="cat"), "unknown sgconv mode 'cat'"),
        (dict(mode="cat_randn_fixed"), "unknown sgconv mode"),
        (dict(mode="cat_sum_randn"), "a mode is 'cat' or 'sum'"),
        (dict(kernel_dim=0), "kernel_dim must be a positive integer"),
        (dict(l_max=2.5), "l_max must be a positive integer"),
        (dict(n_scales=0), "n_scales must be a positive integer"),
        (dict(init_scale=-1), "init_scale must be"),
        (dict(decay_min=3.0, decay_max=2.0), "decay_min <= decay_max"),
        (dict(alpha_min=0.5), "set both"),
        (dict(alpha_min=0.5, alpha_max=1.0, decay_min=2.0), "not both"),
        (dict(lr={"W": 1.0}), "unknown lr key"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_longer_input_warns_once_and_sees_no_further_than_the_kernel():
    k = make()
    with pytest.warns(UserWarning, match="Raise l_max"):
        K, _ = k(40)
    assert (K[..., 32:] == 0).all()
    with pytest.raises(ValueError, match="rate must be 1.0"):
        k(8, rate=2.0)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_runs_in_a_bidirectional_mixer(mode):
    torch.manual_seed(0)
    mixer = build_mixer(4, dict(name="sgconv", bidirectional=True, channels=2, l_max=16, kernel_dim=4, mode=mode))
    x = torch.randn(2, 4, 16, requires_grad=True)
    y = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="has no recurrent state"):
        mixer(x, return_state=True)


def test_bidirectional_sees_the_future_and_causal_does_not():
    for bidirectional in (False, True):
        torch.manual_seed(0)
        mixer = build_mixer(4, dict(name="sgconv", bidirectional=bidirectional, l_max=16, kernel_dim=4)).double()
        x = torch.randn(1, 4, 16, dtype=torch.float64)
        x2 = x.clone()
        x2[..., 9:] += 1.0
        changed = (mixer(x)[..., :9] - mixer(x2)[..., :9]).abs().max().item()
        assert (changed > 1e-6) if bidirectional else (changed < 1e-12)
