"""Every option reaches its owner or is refused (issue 21, section 2; mixers of issue 23).

For every registered mixer, every option in its constructor's signature (``mixer_parameters``: for a convolution
SSM, ConvMixer's options and then its kernel's) is set to a non-default value through ``build_mixer`` (the way a
recipe's ``model.mixer`` reaches it), and the built module must behave differently from the default one. For a
kernel option (or a token mixer's own option) only observable behaviour counts: the state dict (values and shapes,
buffers included), which tensors are parameters and their optimizer tags (``param._optim``), the kernel's taps (or
the mixer's output) on a fixed input, and, for a recurrent kernel or mixer, the outputs and states of a few recurrent
steps. Plain attributes and the repr do not count: an option that is stored but never used would pass on them. An
option whose effect is by design none of these (a compute backend, the step implementation, eigenvalue clipping that
only acts on unstable eigenvalues, a mode that is an alias for some inits) is listed in ``ELSEWHERE`` with the test
that checks its own effect. An option that cannot act must be refused with a ValueError instead. For a kernel option
the comparison looks at the kernel itself, not at the ConvMixer around it, so a value taken by a ConvMixer option of
the same name (the shadowing this file guards against) fails here.

The options of a mixer's end (``END_VALUES``: ConvMixer's channels, bidirectional, activation, output, dropout,
tie_dropout, D, max_kernel_length, and the activation/output/dropout/tie_dropout of the mixers that own an
``OutputMap``) are held to the same rule: set to a non-default value each must change the mixer's output (eval mode)
and, where both builds have a recurrence, its recurrent steps, with the weights the two builds share copied across (so
a shifted random draw cannot pass for an effect), or be refused with a ValueError. A state dict that differs alone
does not count, nor does losing the recurrence alone. ``dropout`` (training mode only) and ``tie_dropout`` (the mask
shared over the sequence) are checked by their own tests (``END_ELSEWHERE``); an option a mixer does not take (D or
channels on a token mixer) is an unknown option; ``rate`` is a forward argument, checked for every mixer by
``tests/mixers/test_contract.py``.
"""
import inspect

import pytest
import torch

from ssmkit.mixers import MIXERS, Mixer, build_mixer, mixer_parameters
from ssmkit.mixers.conv import ROUTED, ConvMixer
from ssmkit.mixers.output import OutputMap

H, L = 8, 12

#: small settings used for both builds of a comparison (speed); an option under test overrides them
BASE = {
    "s4": {"d_state": 4}, "s4d": {"d_state": 4}, "dss": {"d_state": 4}, "dlr": {"d_state": 4}, "lssl": {"d_state": 4},
    "sgconv": {"l_max": 16, "kernel_dim": 4}, "s5": {"d_state": 8}, "lru": {"d_state": 4}, "mamba": {"d_state": 4},
    "attn": {"n_heads": 2}, "hyena": {}, "rglru": {}, "gla": {"n_heads": 1, "chunk_size": 8},
    "gated_deltanet": {"n_heads": 1, "chunk_size": 8}, "mamba2": {"d_state": 4, "headdim": 4, "chunk_size": 8},
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
    "hyena": {"order": 3, "filter": "s4d", "filter_options": {"l_max": 16}, "short_filter_order": 2, "pre_gate": True},
    "rglru": {"expand": 2, "n_heads": 2, "d_conv": 2, "c": 4.0, "a_min": 0.5, "a_max": 0.95, "bias": False,
              "lr": 1e-3},
    "gla": {"n_heads": 2, "expand_k": 1.0, "expand_v": 0.5, "gate_low_rank_dim": 4, "gate_logit_normalizer": 4,
            "clamp_min": -0.001, "output_gate": False, "norm_eps": 1.0, "chunk_size": 4, "lr": 1e-3},
    "gated_deltanet": {"n_heads": 2, "head_dim": 2, "expand_v": 1.0, "conv_size": 2, "conv_bias": True,
                       "output_gate": False, "allow_neg_eigval": True, "dt_min": 0.01, "dt_max": 0.5, "norm_eps": 1.0,
                       "chunk_size": 4, "lr": 1e-3},
    "mamba2": {"d_state": 6, "d_conv": 2, "expand": 1, "headdim": 2, "ngroups": 2, "A_init_range": (1.0, 2.0),
               "dt_min": 0.01, "dt_max": 0.5, "dt_init_floor": 0.05, "chunk_size": 4, "conv_bias": False, "bias": True,
               "norm_eps": 1.0, "lr": 1e-3, "backend": "torch"},
}

#: options whose effect is not in the state dict, the optimizer tags, the output or the step by design -> the test of
#: that effect (each named test must exist; see test_every_option_elsewhere_has_its_test)
ELSEWHERE = {
    ("s4", "mode"): "test_s4_mode_dplr_only_widens_the_inits",
    ("s4", "step_mode"): "test_s4_step_mode_picks_the_step_implementation",
    ("s5", "clip_eigs"): "test_s5_clip_eigs_clips_an_unstable_eigenvalue",
    **{(k, "backend"): "test_backend_is_the_one_that_runs" for k in ("s4", "s4d", "dss", "dlr")},
    ("mamba", "backend"): "test_mamba_backend_is_the_one_that_runs",
    **{(k, "chunk_size"): "test_chunk_size_is_the_chunk_that_runs" for k in ("gla", "gated_deltanet", "mamba2")},
    ("mamba2", "backend"): "test_mamba2_backend_is_the_one_that_runs",
}

#: options whose every non-default value is refused, with the reason the error names (the short exceptions list)
REFUSED = {
    ("attn", "attn_ff"): (1.0, "model.mlp_ratio"),  # position-wise MLPs are the model's (SequenceModel(mlp_ratio=...))
}

#: the options of a mixer's end (ConvMixer's, and those of the mixers that own an OutputMap) -> a non-default value
#: (with options it needs in both builds); each is tested on every mixer that takes it
END_VALUES = {
    "channels": (2, {}), "bidirectional": (True, {}), "activation": ("tanh", {}), "output": ("linear", {}),
    "dropout": (0.5, {}), "tie_dropout": (True, {"dropout": 0.5}), "D": (False, {}), "max_kernel_length": (4, {}),
}
#: the value to test where a mixer's default is the END_VALUES one (Hyena's output map is linear by default)
END_OTHER = {"activation": "gelu", "output": "glu"}
#: end options whose effect is by design not a difference on a fixed input in eval mode -> the test of that effect
#: (parametrised over every mixer that takes them)
END_ELSEWHERE = {
    "dropout": "test_dropout_acts_in_training_only",
    "tie_dropout": "test_tie_dropout_shares_the_mask_over_the_sequence",
}
#: the convolution SSMs' own options: every ConvMixer takes them all
CONV_OWN = ("channels", "bidirectional", "activation", "output", "dropout", "tie_dropout", "D", "max_kernel_length")


def _value(spec):
    return spec if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict) else (spec, {})


def _kernel_options(name: str) -> set[str]:
    """The kernel's options (for a ConvMixer) or the mixer's own options, without the end options."""
    cls = MIXERS.get(name)
    if issubclass(cls, ConvMixer):
        return {p for p in inspect.signature(cls.kernel_class).parameters if p != "d_model"}
    return set(mixer_parameters(name)) - set(END_VALUES)


def _end_options(name: str) -> list[str]:
    return [o for o in END_VALUES if o in mixer_parameters(name)]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _mixer_output(m: Mixer, x: torch.Tensor, train: bool) -> torch.Tensor:
    """The mixer's output on ``x`` (B, H, L), with a fixed seed."""
    m.train(train)
    torch.manual_seed(1)
    with torch.no_grad():
        return m(x)


def _state_dict(module: torch.nn.Module) -> list:
    """State dict (names, shapes, values), non-persistent buffers too, and which tensors train with which tags."""
    out = [(k, tuple(v.shape), v.detach()) for k, v in sorted(module.state_dict().items())]
    out += [(n, tuple(b.shape), b.detach()) for n, b in module.named_buffers()]
    return out + [(n, p.requires_grad, getattr(p, "_optim", None)) for n, p in module.named_parameters()]


def _mixer_steps(m: Mixer, x: torch.Tensor) -> list:
    """The outputs and states of three recurrent steps (eval mode); none without a recurrence."""
    if not m.has_state:
        return []
    m.eval()
    torch.manual_seed(1)
    out = []
    with torch.no_grad():
        state = m.default_state(x.shape[0])
        m.setup_step()
        for t in range(3):
            y, state = m.step(x[..., t], state)
            out += [y, *_flat(state)]
    return out


def _copy_shared_weights(source: Mixer, target: Mixer) -> None:
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


def _behaviour(m: Mixer, x: torch.Tensor) -> list:
    """What a user can observe of the kernel (or token mixer): its state dict (buffers included), which tensors train
    and their optimizer tags, its taps (or output) on ``x``, and three recurrent steps from the default state."""
    core = m.kernel if isinstance(m, ConvMixer) else m
    out = _state_dict(core) + [_core_output(m, x)]
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


def _core_output(m: Mixer, x: torch.Tensor) -> torch.Tensor:
    """The kernel's (C', H, L) taps, or the token mixer's own output in training mode (attention dropout included)."""
    torch.manual_seed(1)
    with torch.no_grad():
        if isinstance(m, ConvMixer):
            return m.kernel(L)[0]
        return m.train()(x)


def _build(name: str, **options) -> Mixer:
    torch.manual_seed(0)
    return build_mixer(H, {"name": name, **options})


def _x() -> torch.Tensor:
    return torch.randn(2, H, L, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", MIXERS.names())
def test_every_option_is_listed(name):
    """A new mixer or option must be added to VALUES (or, if refused, to REFUSED) with a value that changes it; the
    end options are tested on every mixer that takes them."""
    listed = set(VALUES.get(name, {})) | {opt for (k, opt) in REFUSED if k == name} | set(_end_options(name))
    assert listed == set(mixer_parameters(name)), name
    if issubclass(MIXERS.get(name), ConvMixer):
        assert set(CONV_OWN) <= set(_end_options(name))
        assert set(VALUES[name]) | {o for (k, o) in REFUSED if k == name} == _kernel_options(name) - set(ROUTED)


def test_no_kernel_option_is_shadowed_by_the_mixer():
    """A kernel option named like a ConvMixer option is only allowed if the mixer passes it on (ROUTED)."""
    for name in MIXERS.names():
        if issubclass(MIXERS.get(name), ConvMixer):
            assert _kernel_options(name) & set(CONV_OWN) <= set(ROUTED), name


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


#: the chunked op each chunked mixer runs, and the keyword its chunk length goes by
CHUNKED_OPS = {"gla": ("chunk_gla", "chunk_size"), "gated_deltanet": ("chunk_gated_delta_rule", "chunk_size"),
               "mamba2": ("ssd_scan", "chunk")}


@pytest.mark.parametrize("name", sorted(CHUNKED_OPS))
def test_chunk_size_is_the_chunk_that_runs(name, monkeypatch):
    """A chunk length gives the same numbers up to rounding by design (the chunked form is exact); what it must
    change is the chunk the op runs with."""
    import importlib

    module = importlib.import_module(MIXERS.get(name).__module__)
    op, keyword = CHUNKED_OPS[name]
    seen, real = [], getattr(module, op)
    monkeypatch.setattr(module, op, lambda *a, **k: (seen.append(k[keyword]), real(*a, **k))[1])
    outputs = []
    for chunk in (8, 4):
        seen.clear()
        m = _build(name, **{**BASE[name], "chunk_size": chunk}).double()
        with torch.no_grad():
            outputs.append(m(_x().double()))
        assert seen == [chunk], (name, chunk, seen)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-9, atol=1e-10)


def test_mamba2_backend_is_the_one_that_runs(monkeypatch):
    from ssmkit.mixers import mamba2 as mamba2_mod

    seen = []
    real = mamba2_mod.ssd_scan
    monkeypatch.setattr(mamba2_mod, "ssd_scan", lambda *a, **k: (seen.append(k["backend"]), real(*a, **k))[1])
    _core_output(_build("mamba2", **BASE["mamba2"], backend="torch"), _x())
    assert seen == ["torch"]
    with pytest.raises(ValueError, match="backend"):
        _build("mamba2", **BASE["mamba2"], backend="bogus")


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
        m = _build("s5", **BASE["s5"], clip_eigs=clip)
        with torch.no_grad():
            m.Lambda_re[0] = 0.3
        built[clip] = m
    dt = torch.exp(built[True].log_dt)[0]
    with torch.no_grad():
        plain, clipped = built[False].discrete_log()[0], built[True].discrete_log()[0]
    torch.testing.assert_close(plain[0].real, 0.3 * dt)
    torch.testing.assert_close(clipped[0].real, -1e-4 * dt)
    torch.testing.assert_close(plain[1:], clipped[1:], rtol=0, atol=0)
    x = _x()
    with torch.no_grad():
        assert not torch.equal(built[False](x), built[True](x))


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


def test_every_end_option_elsewhere_has_its_test():
    for option, test in END_ELSEWHERE.items():
        assert option in END_VALUES and callable(globals().get(test)), (option, test)


@pytest.mark.parametrize("name,option",
                         [(k, o) for k in sorted(BASE) for o in _end_options(k) if o not in END_ELSEWHERE])
def test_end_option_reaches_its_owner_or_is_refused(name, option):
    value, needs = END_VALUES[option]
    if value == mixer_parameters(name)[option].default:
        value = END_OTHER[option]
    base = {**BASE[name], **needs}
    x = _x()
    default, changed = _build(name, **base), _build(name, **{**base, option: value})
    _copy_shared_weights(default, changed)
    if option in ROUTED and option in _kernel_options(name):  # passed on: the kernel itself must behave differently
        assert not _same(_behaviour(default, x), _behaviour(changed, x)), \
            f"{option}={value!r} did not reach the kernel of {name!r}"
    # Every end option here acts on the numbers, so they must differ, in both modes: a state dict that differs alone
    # does not count (a built output map or D that forward never applies would pass on it), nor does losing the
    # recurrence alone (an option that only made step() refuse); the steps are compared where both have them.
    assert not _same(_mixer_output(default, x, False), _mixer_output(changed, x, False)), \
        f"{name}({option}={value!r}) did not change the mixer's output"
    if default.has_state and changed.has_state:
        assert not _same(_mixer_steps(default, x), _mixer_steps(changed, x)), \
            f"{name}({option}={value!r}) did not change the recurrent steps"


@pytest.mark.parametrize("name,option", [(k, o) for k in sorted(BASE) for o in ("channels", "D", "max_kernel_length")
                                         if o not in mixer_parameters(k)])
def test_convolution_options_on_a_token_mixer_are_unknown(name, option):
    """D, channels and max_kernel_length belong to convolution SSMs; a token mixer refuses them by name."""
    with pytest.raises(ValueError, match=f"unknown option '{option}' for mixer '{name}'"):
        _build(name, **BASE[name], **{option: END_VALUES[option][0]})


def _with_post(option: str) -> list[str]:
    return [k for k in sorted(BASE) if option in mixer_parameters(k) and isinstance(getattr(_build(k, **BASE[k]),
                                                                                            "post", None), OutputMap)]


@pytest.mark.parametrize("name", _with_post("dropout"))
def test_dropout_acts_in_training_only(name):
    """The mixer's dropout changes the output in training mode and nothing else: same state dict, same eval output,
    same recurrent steps."""
    x = _x()
    default, changed = _build(name, **BASE[name]), _build(name, **BASE[name], dropout=0.5)
    assert _same(_state_dict(default), _state_dict(changed))
    assert _same(_mixer_output(default, x, False), _mixer_output(changed, x, False))
    assert _same(_mixer_steps(default, x), _mixer_steps(changed, x))
    if "attn_dropout" not in mixer_parameters(name):
        assert _same(_mixer_output(default, x, True), _mixer_output(default, x, False))  # nothing else is random
    assert not _same(_mixer_output(default, x, True), _mixer_output(changed, x, True))


@pytest.mark.parametrize("name", _with_post("tie_dropout"))
def test_tie_dropout_shares_the_mask_over_the_sequence(name):
    """With ``tie_dropout`` a dropped feature is dropped at every position (Dropout1d), without it each (feature,
    position) is dropped on its own; in eval mode both are the identity."""
    x = _x()
    rows = {}
    for tie in (False, True):
        m = _build(name, **BASE[name], dropout=0.5, tie_dropout=tie)
        seen = []
        m.post.dropout.register_forward_hook(lambda mod, i, o, _seen=seen: _seen.append((i[0], o)))
        rows[tie] = (_mixer_output(m, x, True), _mixer_output(m, x, False), *seen[0])
    assert _same(rows[False][1], rows[True][1])
    assert not _same(rows[False][0], rows[True][0])
    for tie, (_, _, before, after) in rows.items():  # (B, features, L) into and out of the dropout
        dropped = (after == 0) & (before != 0)  # an input that is already 0 (a GELU underflow) says nothing
        kept = torch.isclose(after, 2 * before)  # survivors scaled by 1 / (1 - p)
        assert (dropped | kept).all() and dropped.any() and kept.any(), tie
        whole_rows = ((dropped | (before == 0)).all(-1) | kept.all(-1)).all()
        assert bool(whole_rows) == tie, (name, tie, dropped.float().mean())


def test_attention_dropout_and_mixer_dropout_are_two_options():
    """The issue's case: the mixer's dropout (before its output map) and attention's weight dropout each reach their
    own module."""
    m = build_mixer(16, {"name": "attn", "dropout": 0.3, "attn_dropout": 0.2})
    assert m.attn_dropout == 0.2 and m.post.dropout.p == 0.3
    assert build_mixer(16, {"name": "attn", "dropout": 0.3}).attn_dropout == 0.0


def test_dlr_max_kernel_length_reaches_the_kernel():
    m = build_mixer(4, {"name": "dlr", "d_state": 4, "max_kernel_length": 6})
    assert m.kernel.max_kernel_length == 6 and not m.kernel.has_state
    assert m.kernel_fn(20).shape[-1] == 6


def test_default_ends_and_glu_activation_only_on_convolutions():
    """The papers' ends: convolution SSMs, S5 and LRU gelu then GLU; attention none (recipes set output: linear);
    a GLU activation halves a convolution's doubled channels, so a token mixer refuses it."""
    for name in ("s4d", "s5", "lru"):
        post = _build(name, **BASE[name]).post
        assert (post.activation_name, post.output_name) == ("gelu", "glu"), name
    post = _build("attn", **BASE["attn"]).post
    assert (post.activation_name, post.output_name) == (None, None)
    for name in ("s5", "lru", "attn"):
        with pytest.raises(ValueError, match="unknown activation 'glu'"):
            _build(name, **BASE[name], activation="glu")


def test_rate_on_a_mixer_without_step_size_is_refused_by_the_model():
    from ssmkit.models import SequenceModel

    model = SequenceModel(3, 2, d_model=8, n_layers=1, mixer={"name": "attn", "n_heads": 2})
    with pytest.raises(ValueError, match="'attn' has no step size.*use rate=1"):
        model.set_rate(2.0)
    with pytest.raises(ValueError, match="'attn' has no step size"):
        SequenceModel(3, 2, d_model=8, n_layers=1, mixer={"name": "attn", "n_heads": 2}, rate=2.0)


def test_tie_dropout_needs_dropout():
    with pytest.raises(ValueError, match="tie_dropout=True .* dropout is 0"):
        _build("s4d", tie_dropout=True)


def test_model_refuses_mixer_keys_it_sets_itself():
    from ssmkit.models import SequenceModel

    with pytest.raises(ValueError, match="d_model is the model's width"):
        SequenceModel(3, 2, d_model=8, n_layers=1, mixer={"name": "s4d", "d_model": 4})


# --- recipe level: model.* keys next to model.mixer.* keys ---
def _recipe(model: dict, task: dict | None = None):
    from ssmkit.recipe import validate

    return validate({"task": task or {"name": "shift", "seq_len": 16}, "model": model}, source="r.yaml")


def test_model_and_mixer_dropout_both_reach_their_modules():
    """model.dropout (after each block) and model.mixer.dropout (inside the mixer, before its output map) are two
    options with two owners; neither replaces the other."""
    from ssmkit.recipe import build_model, build_task

    r = _recipe({"d_model": 8, "n_layers": 1, "dropout": 0.1, "mixer": {"name": "s4d", "d_state": 4, "dropout": 0.2}})
    block = build_model(r, build_task(r)).blocks[0]
    assert block.drop.p == 0.1 and block.mixer.post.dropout.p == 0.2


def test_sashimi_expand_and_mamba_expand_both_reach_their_modules():
    from ssmkit.recipe import build_model, build_task

    r = _recipe({"backbone": "sashimi", "d_model": 8, "n_layers": 1, "pool_factors": [2], "expand": 3,
                 "mixer": {"name": "mamba", "d_state": 4, "expand": 1}})
    model = build_model(r, build_task(r))
    assert sorted({m.d_model for m in model.mixers}) == [8, 24]  # model.expand: the level widths
    assert all(m.d_inner == m.d_model for m in model.mixers)  # mixer.expand: Mamba's inner width


def test_task_rate_and_model_rate_together_are_refused():
    """A task with a sampling-rate factor (speech at 8 kHz) sets the model's rate; a model.rate would be silently
    replaced, so the pair is one RecipeError."""
    from ssmkit.errors import RecipeError
    from ssmkit.recipe import build_task
    from ssmkit.train.loop import build_loop_model

    model = {"d_model": 8, "n_layers": 1, "rate": 2.0, "mixer": {"name": "s4d", "d_state": 4}}
    r = _recipe(model, {"name": "sc10", "sample_rate": 8000})
    with pytest.raises(RecipeError, match=r"model.rate"):
        build_loop_model(r, build_task(r))
    r = _recipe({k: v for k, v in model.items() if k != "rate"}, {"name": "sc10", "sample_rate": 8000})
    assert build_loop_model(r, build_task(r)).rate == 2.0
