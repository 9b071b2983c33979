"""Every option reaches its owner or is refused (issue 21, section 2).

For every registered kernel and token mixer, every option in its constructor's signature and every argument of
``SequenceLayer`` is set to a non-default value through ``SequenceLayer`` (the way recipes reach them), and the built
module must behave differently from the default one. For a kernel option only observable behaviour counts: the
state dict (values and shapes, buffers included), which tensors are parameters and their optimizer tags
(``param._optim``), the kernel's taps (or the mixer's output) on a fixed input, and, for a recurrent kernel, the
outputs and states of a few recurrent steps. Plain attributes and the repr do not count: an option that is stored but
never used would pass on them. An option whose effect is by design none of these (a compute backend, the step
implementation, eigenvalue clipping that only acts on unstable eigenvalues, a mode that is an alias for some inits)
is listed in ``ELSEWHERE`` with the test that checks its own effect. An option that cannot act on a kernel must be
refused with a ValueError instead. For a kernel option the comparison looks at the kernel (or mixer) itself, not at
the layer around it, so a value taken by a layer argument of the same name (the shadowing this file guards against)
fails here.

Every ``SequenceLayer`` argument is held to the same rule: set to a non-default value it must change the layer's
output (eval mode) and, where both layers have a recurrence, its recurrent steps, with the weights the two builds
share copied across (so a shifted random draw cannot pass for an effect), or be refused with a ValueError. A state
dict that differs alone does not count, nor does losing the recurrence alone. ``transposed`` (the input layout),
``dropout`` (training mode only) and ``tie_dropout`` (the mask shared over the sequence) are checked by their own
tests (``LAYER_ELSEWHERE``).
"""
import inspect

import pytest
import torch

from ssmkit.mixers.kernels import KERNELS
from ssmkit.mixers.sequence_layer import ROUTED, SequenceLayer

H, L = 8, 12  # H != L, so a transposed output differs in shape

#: small settings used for both builds of a comparison (speed); an option under test overrides them
BASE = {
    "s4": {"d_state": 4}, "s4d": {"d_state": 4}, "dss": {"d_state": 4}, "dlr": {"d_state": 4}, "lssl": {"d_state": 4},
    "sgconv": {"l_max": 16, "kernel_dim": 4}, "s5": {"d_state": 8}, "lru": {"d_state": 4}, "mamba": {"d_state": 4},
    "attn": {"n_heads": 2},
}

#: kernel -> option -> a non-default value (with, if needed, other options it needs, set in both builds)
VALUES = {
    "s4": {"d_state": 6, "mode": "dplr", "init": "lagt", "rank": 2, "n_ssm": 2, "deterministic": True, "dt_min": 0.01,
           "dt_max": 0.5, "step_mode": "dense", "precision": "double", "B_clip": None, "lr": {"A": 0.0},
           "wd": {"A": 0.1}, "backend": "torch"},
    "s4d": {"d_state": 6, "init": "lin", "disc": "bilinear", "real_transform": "relu", "dt_min": 0.01, "dt_max": 0.5,
            "B_clip": None, "lr": {"A": 0.0}, "wd": {"A": 0.1}, "backend": "torch"},
    "dss": {"d_state": 6, "version": "softmax", "Lambda_init": "lin", "sep_dt_re_im": True, "dt_min": 0.01, "dt_max": 0.5,
            "softmax_length": (16, {"version": "softmax"}), "kernel_to_real": "imag", "lr": {"Lambda": 0.0},
            "wd": {"Lambda": 0.1}, "backend": "torch"},
    "dlr": {"d_state": 6, "Lambda_init": "randn", "version": "Lambda_imag", "kernel_to_real": "imag", "dt_min": 0.01,
            "dt_max": 0.5, "W_scale": 0.5, "lr": {"Lambda": 0.0}, "wd": {"Lambda": 0.1}, "backend": "torch"},
    "lssl": {"d_state": 6, "init": "legt", "learn": 2, "dt_min": 0.01, "dt_max": 0.5,
             "dt_per_channel": (True, {"channels": 2}),
             "lr": {"A": 0.0}, "wd": {"A": 0.1}},
    "sgconv": {"l_max": 64, "kernel_dim": 8, "n_scales": 4, "init_scale": 1, "mode": "cat_cos", "decay_min": 1.0,
               "decay_max": 3.0, "alpha_min": (0.7, {"alpha_min": 0.5, "alpha_max": 0.9}),
               "alpha_max": (0.9, {"alpha_min": 0.5, "alpha_max": 0.5}),
               "lr": {"kernel": 0.0}, "wd": {"kernel": 0.1}},
    "s5": {"d_state": 4, "blocks": 2, "conj_sym": False, "C_init": "lecun_normal", "disc": "bilinear", "dt_min": 0.01,
           "dt_max": 0.5, "dt_global": True, "dt_shared": True, "clip_eigs": True, "mode": "conv", "lr": {"Lambda": 0.0},
           "wd": {"Lambda": 0.1}},
    "lru": {"d_state": 6, "r_min": 0.5, "r_max": 0.9, "max_phase": 1.0, "mode": "conv", "lr": {"Lambda": 0.0},
            "wd": {"Lambda": 0.1}},
    "mamba": {"d_state": 6, "d_conv": 2, "expand": 1, "dt_rank": 2, "dt_min": 0.01, "dt_max": 0.5, "dt_init_floor": 0.05,
              "conv_bias": False, "bias": True, "lr": 1e-2, "backend": "torch"},
    "attn": {"n_heads": 4, "chunk_size": 4, "attn_dropout": 0.5, "learn_temperature": False, "rotary_base": 100.0},
}

#: options whose effect is not in the state dict, the optimizer tags, the output or the step by design -> the test of
#: that effect (each named test must exist; see test_every_option_elsewhere_has_its_test)
ELSEWHERE = {
    ("s4", "mode"): "test_s4_mode_dplr_only_widens_the_inits",
    ("s4", "step_mode"): "test_s4_step_mode_picks_the_step_implementation",
    ("s5", "clip_eigs"): "test_s5_clip_eigs_clips_an_unstable_eigenvalue",
    **{(k, "backend"): "test_backend_is_the_one_that_runs" for k in ("s4", "s4d", "dss", "dlr")},
    ("mamba", "backend"): "test_mamba_backend_is_the_one_that_runs",
}

#: options whose every non-default value is refused, with the reason the error names (the short exceptions list)
REFUSED = {
    ("attn", "attn_ff"): (1.0, "model.mlp_ratio"),  # position-wise MLPs are the model's (SequenceModel(mlp_ratio=...))
}

#: SequenceLayer arguments -> a non-default value (with options it needs in both builds)
LAYER_VALUES = {
    "channels": (2, {}), "bidirectional": (True, {}), "activation": ("tanh", {}), "output": ("linear", {}),
    "dropout": (0.5, {}), "tie_dropout": (True, {"dropout": 0.5}), "transposed": (False, {}), "D": (False, {}),
    "rate": (2.0, {}), "max_kernel_length": (4, {}),
}
#: layer arguments whose effect is by design not a difference in the layer's behaviour on a fixed input in the fixed
#: layout -> the test of that effect (parametrized over every kernel)
LAYER_ELSEWHERE = {
    "transposed": "test_transposed_is_the_input_layout",
    "dropout": "test_dropout_acts_in_training_only",
    "tie_dropout": "test_tie_dropout_shares_the_mask_over_the_sequence",
}
MIXER_REFUSES = {"channels": "it has no channels", "D": "D skip belongs to convolution kernels",
                 "max_kernel_length": "token mixer has none"}
#: kernels without a step size refuse rate != 1 (at build or at the first forward)
NO_STEP_SIZE = {"attn", "mamba", "dlr", "sgconv", "lru"}


def _value(spec):
    return spec if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict) else (spec, {})


def _kernel_options(name: str) -> set[str]:
    return {p for p in inspect.signature(KERNELS.get(name)).parameters if p not in ("self", "d_model")}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _layer_output(layer: SequenceLayer, x: torch.Tensor, train: bool) -> torch.Tensor:
    """The layer's output on ``x`` (B, H, L), in that layout whatever ``transposed`` is, with a fixed seed."""
    layer.train(train)
    torch.manual_seed(1)
    with torch.no_grad():
        if layer.transposed:
            return layer(x)
        return layer(x.transpose(1, 2)).transpose(1, 2)


def _state_dict(module: torch.nn.Module) -> list:
    """State dict (names, shapes, values), non-persistent buffers too, and which tensors train with which tags."""
    out = [(k, tuple(v.shape), v.detach()) for k, v in sorted(module.state_dict().items())]
    out += [(n, tuple(b.shape), b.detach()) for n, b in module.named_buffers()]
    return out + [(n, p.requires_grad, getattr(p, "_optim", None)) for n, p in module.named_parameters()]


def _layer_steps(layer: SequenceLayer, x: torch.Tensor) -> list:
    """The outputs and states of three recurrent steps (eval mode); none without a recurrence."""
    if not layer.has_state:
        return []
    layer.eval()
    torch.manual_seed(1)
    out = []
    with torch.no_grad():
        state = layer.default_state(x.shape[0])
        for t in range(3):
            y, state = layer.step(x[..., t], state)
            out += [y, *_flat(state)]
    return out


def _copy_shared_weights(source: SequenceLayer, target: SequenceLayer) -> None:
    """Give ``target`` the values of every state dict entry it shares (name and shape) with ``source``: an option
    that adds or drops a tensor (``D=False``) shifts the random draws of the ones built after it, which would change
    the output even if the option itself were never applied."""
    own = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    target.load_state_dict(shared, strict=False)


def _flat(state) -> list:
    """The tensors and numbers of a recurrent state (a tensor, a tuple, or a dataclass-like object)."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (list, tuple)):
        return [t for x in state for t in _flat(x)]
    if hasattr(state, "__dict__"):
        return [t for _, x in sorted(vars(state).items()) for t in _flat(x)]
    return [state]


def _behaviour(layer: SequenceLayer, x: torch.Tensor) -> list:
    """What a user can observe of the kernel (or mixer): its state dict (buffers included), which tensors train and
    their optimizer tags, its taps (or output) on ``x``, and three recurrent steps from the default state."""
    core = layer.mixer if layer.kernel is None else layer.kernel
    out = _state_dict(core) + [_core_output(layer, x)]
    if core.has_state:
        core.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            state = core.default_state(x.shape[0])
            core.setup_step()
            for t in range(3):
                y, state = core.step(x[..., t], state)
                out += [y, *_flat(state)]
    return out


def _core_output(layer: SequenceLayer, x: torch.Tensor) -> torch.Tensor:
    """The kernel's (C', H, L) taps, or the mixer's own output in training mode (attention dropout included)."""
    torch.manual_seed(1)
    with torch.no_grad():
        if layer.kernel is not None:
            return layer.kernel(L)[0]
        return layer.mixer.train()(x)[0]


def _build(name: str, **options) -> SequenceLayer:
    torch.manual_seed(0)
    return SequenceLayer(H, kernel=name, **options)


def _x() -> torch.Tensor:
    return torch.randn(2, H, L, generator=torch.Generator().manual_seed(2))


def test_every_kernel_option_is_listed():
    """A new kernel or option must be added to VALUES (or, if refused, to REFUSED) with a value that changes it."""
    for name in KERNELS.names():
        listed = set(VALUES[name]) | {opt for (k, opt) in REFUSED if k == name}
        assert listed == _kernel_options(name) - set(ROUTED), name


def test_no_kernel_option_is_shadowed_by_the_layer():
    """A kernel option named like a SequenceLayer argument is only allowed if the layer passes it on (ROUTED)."""
    layer_args = set(inspect.signature(SequenceLayer.__init__).parameters) - {"self", "kernel", "kernel_options"}
    for name in KERNELS.names():
        assert _kernel_options(name) & layer_args <= set(ROUTED), name


@pytest.mark.parametrize("name,option", [(k, o) for k in sorted(VALUES) for o in VALUES[k] if (k, o) not in ELSEWHERE])
def test_kernel_option_changes_the_kernel(name, option):
    value, needs = _value(VALUES[name][option])
    base = {**BASE[name], **needs}
    default, changed = _build(name, **base), _build(name, **{**base, option: value})
    x = _x()
    assert not _same(_behaviour(default, x), _behaviour(changed, x)), \
        f"{name}.{option}={value!r} changed nothing observable in the kernel"


def test_every_option_elsewhere_has_its_test():
    for (name, option), test in ELSEWHERE.items():
        assert option in VALUES[name], (name, option)
        assert callable(globals().get(test)), f"{name}.{option}: no test {test}"


@pytest.mark.parametrize("name", ["s4", "s4d", "dss", "dlr"])
def test_backend_is_the_one_that_runs(name, monkeypatch):
    """A compute backend gives the same numbers by design; what it must change is which implementation runs. Each
    op's implementations are spied on at the op boundary; an unknown backend is refused."""
    from ssmkit.ops import cauchy, vandermonde

    op = cauchy if name == "s4" else vandermonde
    calls = []
    for key, fn in list(op._IMPLS.items()):
        monkeypatch.setitem(op._IMPLS, key, lambda *a, _k=key, _f=fn: (calls.append(_k), _f(*a))[1])
    outputs = {}
    for backend in ("torch", "chunked"):
        calls.clear()
        outputs[backend] = _core_output(_build(name, **BASE[name], backend=backend), _x())
        assert calls and set(calls) == {backend}, (name, backend, calls)
    torch.testing.assert_close(outputs["torch"], outputs["chunked"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown .*backend 'bogus'"):
        _core_output(_build(name, **BASE[name], backend="bogus"), _x())


def test_mamba_backend_is_the_one_that_runs(monkeypatch):
    from ssmkit.mixers import mamba as mamba_mod

    seen = []
    real = mamba_mod.selective_scan
    monkeypatch.setattr(mamba_mod, "selective_scan", lambda *a, **k: (seen.append(k["backend"]), real(*a, **k))[1])
    _core_output(_build("mamba", **BASE["mamba"], backend="torch"), _x())
    assert seen == ["torch"]
    with pytest.raises(ValueError, match="backend"):
        _core_output(_build("mamba", **BASE["mamba"], backend="bogus"), _x())


def _impulse_steps(kernel, L: int) -> torch.Tensor:
    """y_t (C, H, L) of the recurrence fed 1 at t = 0 and 0 after: the kernel's impulse response."""
    state = kernel.default_state(1)
    kernel.setup_step()
    ys = []
    for t in range(L):
        y, state = kernel.step(torch.full((1, kernel.H), float(t == 0), dtype=torch.float64), state)
        ys.append(y[0])
    return torch.stack(ys, dim=-1)


def test_s4_step_mode_picks_the_step_implementation():
    """``linear`` steps with O(N rank) factors (no N x N matrix is kept), ``dense`` with the materialised N x N
    transition; both are the recurrence of the convolution kernel (checked against its taps)."""
    from ssmkit.mixers.kernels.s4 import S4Kernel

    N, n = 8, 4
    taps = {}
    for step_mode in ("linear", "dense"):
        torch.manual_seed(0)
        k = S4Kernel(3, d_state=N, step_mode=step_mode, dt_min=0.05, dt_max=0.2).double()
        K = k(L)[0].detach()
        with torch.no_grad():
            taps[step_mode] = _impulse_steps(k, L)
        torch.testing.assert_close(taps[step_mode], K, rtol=1e-8, atol=1e-10)
        kept = [tuple(t.shape) for t in k._step if isinstance(t, torch.Tensor)]
        if step_mode == "dense":
            assert (3, n, N) in kept, kept  # the rows of dA for the stored half of the state
        else:
            assert all(N not in shape for shape in kept), kept  # diagonal + rank-1 factors of the half state only
    torch.testing.assert_close(taps["linear"], taps["dense"], rtol=1e-10, atol=1e-12)


def test_s5_clip_eigs_clips_an_unstable_eigenvalue():
    """clip_eigs only acts on an eigenvalue whose real part is above -1e-4: push one positive and the discrete
    system must decay at -1e-4 * dt for it (it grows without the option); the others are untouched."""
    built = {}
    for clip in (False, True):
        layer = _build("s5", **BASE["s5"], clip_eigs=clip)
        with torch.no_grad():
            layer.mixer.Lambda_re[0] = 0.3
        built[clip] = layer.mixer
    dt = torch.exp(built[True].log_dt)[0]
    with torch.no_grad():
        plain, clipped = built[False].discrete_log()[0], built[True].discrete_log()[0]
    torch.testing.assert_close(plain[0].real, 0.3 * dt)
    torch.testing.assert_close(clipped[0].real, -1e-4 * dt)
    torch.testing.assert_close(plain[1:], clipped[1:], rtol=0, atol=0)
    x = _x()
    with torch.no_grad():
        assert not torch.equal(built[False](x)[0], built[True](x)[0])


def test_s4_mode_dplr_only_widens_the_inits():
    """As in the reference (where ``nplr`` and ``dplr`` name one kernel class), ``dplr`` with a HiPPO init is the
    ``nplr`` kernel itself; what it adds is the S4D-style inits with a random low-rank term, which ``nplr``
    refuses."""
    from ssmkit.mixers.kernels.s4 import S4Kernel

    x = _x()
    nplr, dplr = _build("s4", **BASE["s4"]), _build("s4", **BASE["s4"], mode="dplr")
    assert _same(_behaviour(nplr, x), _behaviour(dplr, x))
    with pytest.raises(ValueError, match="unknown init 'lin'"):
        S4Kernel(H, d_state=4, mode="nplr", init="lin")
    torch.manual_seed(0)
    k = S4Kernel(H, d_state=4, mode="dplr", init="lin")
    assert torch.equal(k.A_imag[0], torch.pi * torch.arange(2.0))  # S4D-Lin: Im(Lambda_n) = pi n
    assert k.P.abs().sum() > 0 and k(L)[0].isfinite().all()


def test_lssl_dt_per_channel_needs_channels():
    """With several channels each gets its own step size (checked above: log_dt is (C, H)); with one channel the
    option would be the default, so it is refused."""
    with pytest.raises(ValueError, match="dt_per_channel=True needs channels > 1"):
        _build("lssl", **BASE["lssl"], dt_per_channel=True)
    assert _build("lssl", **BASE["lssl"], channels=2, dt_per_channel=True).kernel.log_dt.shape == (2, H)


@pytest.mark.parametrize("name,option", sorted(REFUSED))
def test_refused_kernel_options(name, option):
    value, match = REFUSED[(name, option)]
    with pytest.raises(ValueError, match=match):
        _build(name, **BASE[name], **{option: value})


def _refusal(name: str, option: str) -> str | None:
    if KERNELS.meta(name)["kind"] == "mixer" and option in MIXER_REFUSES:
        return MIXER_REFUSES[option]
    if option == "rate" and name in NO_STEP_SIZE:
        return "step size"
    return None


def test_every_layer_argument_is_listed():
    """A new SequenceLayer argument must be added to LAYER_VALUES with a value that changes the layer."""
    args = set(inspect.signature(SequenceLayer.__init__).parameters) - {"self", "d_model", "kernel", "kernel_options"}
    assert set(LAYER_VALUES) == args
    for option, test in LAYER_ELSEWHERE.items():
        assert option in LAYER_VALUES and callable(globals().get(test)), (option, test)


@pytest.mark.parametrize("name,option",
                         [(k, o) for k in KERNELS.names() for o in LAYER_VALUES if o not in LAYER_ELSEWHERE])
def test_layer_argument_reaches_its_owner_or_is_refused(name, option):
    value, needs = LAYER_VALUES[option]
    base = {**BASE[name], **needs}
    x = _x()
    refusal = _refusal(name, option)
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            _layer_output(_build(name, **{**base, option: value}), x, train=False)
        return
    default, changed = _build(name, **base), _build(name, **{**base, option: value})
    _copy_shared_weights(default, changed)
    if option in ROUTED and option in _kernel_options(name):  # passed on: the kernel itself must behave differently
        assert not _same(_behaviour(default, x), _behaviour(changed, x)), \
            f"{option}={value!r} did not reach kernel {name!r}"
    # Every layer argument here acts on the numbers, so they must differ, in both modes: a state dict that differs
    # alone does not count (a built output map or D that forward never applies would pass on it), nor does losing
    # the recurrence alone (an argument that only made step() refuse); the steps are compared where both have them.
    assert not _same(_layer_output(default, x, False), _layer_output(changed, x, False)), \
        f"SequenceLayer({option}={value!r}) did not change the output of kernel {name!r}"
    if default.has_state and changed.has_state:
        assert not _same(_layer_steps(default, x), _layer_steps(changed, x)), \
            f"SequenceLayer({option}={value!r}) did not change the recurrent steps of kernel {name!r}"


@pytest.mark.parametrize("name", KERNELS.names())
def test_transposed_is_the_input_layout(name):
    """``transposed=False`` takes and gives (B, L, H) where the default takes and gives (B, H, L): the same layer
    otherwise (same state dict, the same numbers transposed), and each refuses the other's layout (H != L)."""
    x = _x()
    default, changed = _build(name, **BASE[name]), _build(name, **BASE[name], transposed=False)
    assert _same(_state_dict(default), _state_dict(changed))
    default.eval(), changed.eval()
    with torch.no_grad():
        y = changed(x.transpose(1, 2))
        assert y.shape == (2, L, H)
        torch.testing.assert_close(y, default(x).transpose(1, 2), rtol=1e-6, atol=1e-7)
        with pytest.raises(ValueError, match=f"expected {H} features"):
            changed(x)
        with pytest.raises(ValueError, match=f"expected {H} features"):
            default(x.transpose(1, 2))


@pytest.mark.parametrize("name", KERNELS.names())
def test_dropout_acts_in_training_only(name):
    """The layer's dropout changes the output in training mode and nothing else: same state dict, same eval output,
    same recurrent steps."""
    x = _x()
    default, changed = _build(name, **BASE[name]), _build(name, **BASE[name], dropout=0.5)
    assert _same(_state_dict(default), _state_dict(changed))
    assert _same(_layer_output(default, x, False), _layer_output(changed, x, False))
    assert _same(_layer_steps(default, x), _layer_steps(changed, x))
    assert _same(_layer_output(default, x, True), _layer_output(default, x, False))  # nothing else is random
    assert not _same(_layer_output(default, x, True), _layer_output(changed, x, True))


@pytest.mark.parametrize("name", KERNELS.names())
def test_tie_dropout_shares_the_mask_over_the_sequence(name):
    """With ``tie_dropout`` a dropped feature is dropped at every position (Dropout1d), without it each (feature,
    position) is dropped on its own; in eval mode both are the identity."""
    x = _x()
    rows = {}
    for tie in (False, True):
        layer = _build(name, **BASE[name], dropout=0.5, tie_dropout=tie)
        seen = []
        layer.dropout.register_forward_hook(lambda m, i, o, _seen=seen: _seen.append((i[0], o)))
        rows[tie] = (_layer_output(layer, x, True), _layer_output(layer, x, False), *seen[0])
    assert _same(rows[False][1], rows[True][1])
    assert not _same(rows[False][0], rows[True][0])
    for tie, (_, _, before, after) in rows.items():  # (B, features, L) into and out of the dropout
        dropped = (after == 0) & (before != 0)  # an input that is already 0 (a GELU underflow) says nothing
        kept = torch.isclose(after, 2 * before)  # survivors scaled by 1 / (1 - p)
        assert (dropped | kept).all() and dropped.any() and kept.any(), tie
        whole_rows = ((dropped | (before == 0)).all(-1) | kept.all(-1)).all()
        assert bool(whole_rows) == tie, (name, tie, dropped.float().mean())


def test_attention_dropout_and_layer_dropout_are_two_options():
    """The issue's case: the layer's dropout no longer swallows attention's; each reaches its own module."""
    layer = SequenceLayer(16, kernel="attn", dropout=0.3, attn_dropout=0.2)
    assert layer.mixer.attn_dropout == 0.2 and layer.dropout.p == 0.3
    assert SequenceLayer(16, kernel="attn", dropout=0.3).mixer.attn_dropout == 0.0


def test_dlr_max_kernel_length_reaches_the_kernel():
    layer = SequenceLayer(4, kernel="dlr", d_state=4, max_kernel_length=6)
    assert layer.kernel.max_kernel_length == 6 and not layer.kernel.has_state
    assert layer.kernel_fn(20).shape[-1] == 6


def test_explicit_activation_applies_after_any_mixer_and_glu_is_refused():
    """``auto`` keeps each block's usual activation (none after attention or Mamba); a named one is applied."""
    assert isinstance(SequenceLayer(8, kernel="attn").act, torch.nn.Identity)
    assert isinstance(SequenceLayer(8, kernel="s5", d_state=4).act, torch.nn.GELU)
    assert isinstance(SequenceLayer(8, kernel="s4d", d_state=4).act, torch.nn.GELU)
    assert isinstance(SequenceLayer(8, kernel="attn", activation="gelu").act, torch.nn.GELU)
    with pytest.raises(ValueError, match="token mixer: activation='glu'"):
        SequenceLayer(8, kernel="mamba", activation="glu")


def test_rate_set_later_is_refused_by_a_mixer_without_step_size():
    layer = SequenceLayer(8, kernel="attn")
    layer.rate = 2.0  # as SequenceModel.set_rate does
    with pytest.raises(ValueError, match="'attn' has no step size.*use rate=1"):
        layer(_x())
    with pytest.raises(ValueError, match="no step size"):
        layer.setup_step()


def test_tie_dropout_needs_dropout():
    with pytest.raises(ValueError, match="tie_dropout=True .* dropout is 0"):
        SequenceLayer(8, tie_dropout=True)


def test_a_shadowing_kernel_cannot_be_built(monkeypatch):
    """A kernel that takes a layer argument's name (other than the routed ones) is refused when the layer is built."""

    class Shadowing(torch.nn.Module):
        def __init__(self, d_model: int, bidirectional: bool = False, dropout: float = 0.0):
            super().__init__()

    monkeypatch.setitem(KERNELS._items, "shadowing", Shadowing)
    monkeypatch.setitem(KERNELS._meta, "shadowing", {"kind": "mixer"})
    with pytest.raises(TypeError, match="kernel 'shadowing' takes dropout, which SequenceLayer's argument"):
        SequenceLayer(8, kernel="shadowing")


def test_model_refuses_layer_keys_it_sets_itself():
    from ssmkit.models.sequence import SequenceModel

    for key, value in (("d_model", 4), ("transposed", True)):
        with pytest.raises(ValueError, match=f"layer option '{key}' is set by"):
            SequenceModel(3, 2, d_model=8, n_layers=1, layer={"kernel": "s4d", key: value})


# --- recipe level: model.* keys next to model.layer.* keys ---
def _recipe(model: dict, task: dict | None = None):
    from ssmkit.recipe import validate

    return validate({"task": task or {"name": "shift", "L": 16}, "model": model}, source="r.yaml")


def test_model_and_layer_dropout_both_reach_their_modules():
    """model.dropout (after each block) and model.layer.dropout (inside the layer, before its output map) are two
    options with two owners; neither replaces the other."""
    from ssmkit.recipe import build_model, build_task

    r = _recipe({"d_model": 8, "n_layers": 1, "dropout": 0.1, "layer": {"kernel": "s4d", "d_state": 4, "dropout": 0.2}})
    block = build_model(r, build_task(r)).blocks[0]
    assert block.drop.p == 0.1 and block.layer.dropout.p == 0.2


def test_sashimi_expand_and_mamba_expand_both_reach_their_modules():
    from ssmkit.recipe import build_model, build_task

    r = _recipe({"backbone": "sashimi", "d_model": 8, "n_layers": 1, "pool_factors": [2], "expand": 3,
                 "layer": {"kernel": "mamba", "d_state": 4, "expand": 1}}, {"name": "shift", "L": 16})
    model = build_model(r, build_task(r))
    widths = sorted({layer.d_model for layer in model.layers})
    assert widths == [8, 24]  # model.expand: the level widths
    assert all(layer.mixer.d_inner == layer.d_model for layer in model.layers)  # layer.expand: Mamba's inner width


def test_task_rate_and_layer_rate_together_are_refused():
    """A task with a sampling-rate factor (speech at 8 kHz) sets every layer's rate; a model.layer.rate would be
    silently replaced, so the pair is one RecipeError."""
    from ssmkit.errors import RecipeError
    from ssmkit.recipe import build_task
    from ssmkit.train.loop import build_loop_model

    model = {"d_model": 8, "n_layers": 1, "layer": {"kernel": "s4d", "d_state": 4, "rate": 2.0}}
    r = _recipe(model, {"name": "sc10", "sample_rate": 8000})
    with pytest.raises(RecipeError, match=r"model.layer.rate=2.0 and the task's sampling-rate factor 2 .*drop model.layer.rate"):
        build_loop_model(r, build_task(r))
    r = _recipe({**model, "layer": {"kernel": "s4d", "d_state": 4}}, {"name": "sc10", "sample_rate": 8000})
    assert {layer.rate for layer in build_loop_model(r, build_task(r)).layers} == {2.0}
