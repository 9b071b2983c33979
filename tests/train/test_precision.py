"""Mixed precision that holds: under bf16 autocast, kernel generation, Cauchy/Vandermonde products and FFTs
stay in float32/complex64 for every registered mixer (and the S5/LRU recurrence); bf16 training of S4D on shift
learns like float32."""
import importlib
import pkgutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ssmkit.mixers.kernels
from ssmkit.mixers import MIXERS, build_mixer, mixer_parameters
from ssmkit.mixers.conv import ConvMixer
from ssmkit.mixers.mimo import DiagonalMIMO
from ssmkit.recipe import validate
from ssmkit.train.loop import train

H, L = 4, 24
#: sizes that fit H and L (as tests/mixers/test_contract.py's); the other mixers run with their defaults
SMALL = {"sgconv": dict(l_max=L, kernel_dim=4), "attn": dict(n_heads=2), "gla": dict(n_heads=1, chunk_size=8),
         "gated_deltanet": dict(n_heads=1, chunk_size=8), "mamba2": dict(d_state=4, headdim=4, chunk_size=8)}
LOW = {torch.bfloat16, torch.float16, torch.complex32}
FFT_OPS = ("_fft_r2c", "_fft_c2r", "_fft_c2c")
ENTRY_POINTS = ("cauchy", "log_vandermonde", "log_vandermonde_transpose")


class _Recorder(TorchDispatchMode):
    """Records, after autocast has cast the inputs, every aten op's tensor dtypes: inside the kernel
    module (``in_kernel``) and for every FFT anywhere."""

    def __init__(self):
        super().__init__()
        self.in_kernel = False
        self.kernel_low: list[str] = []
        self.fft_low: list[str] = []
        self.ffts = 0
        self.any_low = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtypes = {a.dtype for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        name = func.__name__ if hasattr(func, "__name__") else str(func)
        if any(op in str(func) for op in FFT_OPS):
            self.ffts += 1
            if dtypes & LOW:
                self.fft_low.append(f"{func} {sorted(map(str, dtypes))}")
        self.any_low = self.any_low or bool(dtypes & LOW)
        if self.in_kernel and dtypes & LOW:
            self.kernel_low.append(f"{name} {sorted(map(str, dtypes))}")
        return func(*args, **kwargs)


def _patch_entry_points(monkeypatch, seen: list):
    """Wraps every Cauchy/Vandermonde entry point that a kernel module imported, checking input dtypes."""
    modules = [importlib.import_module(f"ssmkit.mixers.kernels.{m.name}") for m in pkgutil.iter_modules(ssmkit.mixers.kernels.__path__)]
    for module in modules:
        for name in ENTRY_POINTS:
            fn = getattr(module, name, None)
            if fn is None:
                continue

            def wrapped(*args, _fn=fn, _name=f"{module.__name__}.{name}", **kwargs):
                seen.append((_name, [a.dtype for a in args if isinstance(a, torch.Tensor)]))
                return _fn(*args, **kwargs)

            monkeypatch.setattr(module, name, wrapped)


def _watch_core(mixer, rec, monkeypatch) -> bool:
    """Marks the float32 core while it runs: a convolution mixer's kernel, S5/LRU's recurrence. False: the mixer
    has no such core (attention, Mamba, ... legitimately run their projections in bf16)."""
    if isinstance(mixer, ConvMixer):
        mixer.kernel.register_forward_pre_hook(lambda *a: setattr(rec, "in_kernel", True))
        mixer.kernel.register_forward_hook(lambda *a: setattr(rec, "in_kernel", False))
        return True
    if isinstance(mixer, DiagonalMIMO):
        real = mixer.recurrence

        def recurrence(*args, **kwargs):
            rec.in_kernel = True
            try:
                return real(*args, **kwargs)
            finally:
                rec.in_kernel = False

        monkeypatch.setattr(mixer, "recurrence", recurrence)
        return True
    return False


@pytest.mark.parametrize("name", MIXERS.names())
@pytest.mark.parametrize("bidirectional", [False, True])
def test_bf16_autocast_keeps_kernel_and_fft_in_float32(name, bidirectional, monkeypatch):
    if bidirectional and "bidirectional" not in mixer_parameters(name):
        pytest.skip(f"{name} is causal only (no bidirectional option)")
    torch.manual_seed(0)
    options = {**SMALL.get(name, {}), **({"bidirectional": True} if bidirectional else {})}
    mixer = build_mixer(H, {"name": name, **options})
    seen: list = []
    _patch_entry_points(monkeypatch, seen)
    rec = _Recorder()
    has_core = _watch_core(mixer, rec, monkeypatch)
    x = torch.randn(2, H, L, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), rec:
        y = mixer(x)
        y.float().sum().backward()
    assert rec.any_low, "autocast did not run any op in bf16: the check would see nothing"
    assert not rec.kernel_low, f"{name}: kernel generation / recurrence ran in half precision: {rec.kernel_low[:5]}"
    assert not rec.fft_low, f"{name}: FFT in half precision: {rec.fft_low[:5]}"
    for entry, dtypes in seen:
        assert not set(dtypes) & LOW, f"{entry} got {dtypes} under bf16 autocast"
    if isinstance(mixer, ConvMixer):
        assert has_core and rec.ffts >= 3  # rfft of u and k, irfft (forward), and their backward
        assert mixer.kernel(L)[0].dtype == torch.float32 or mixer.kernel(L)[0].is_complex()
    assert y.dtype in (torch.float32, torch.bfloat16) and torch.isfinite(y.float()).all()
    assert all(p.grad is None or (p.grad.dtype == p.dtype and torch.isfinite(p.grad).all()) for p in mixer.parameters())


@pytest.mark.parametrize("backend", ["torch", "extension"])
def test_bf16_autocast_keeps_the_selective_scan_in_float32(monkeypatch, backend):
    """Mamba's selective scan (a recurrence, not an FFT) runs in float32, forward and backward: the torch scan's
    chunks, or every tensor that goes into and comes out of the extension's fused scan."""
    import ssmkit.ops.selective_scan as ss

    if backend == "extension" and ss._extension_reason() is not None:
        pytest.skip(f"the compiled extension's scan is not available here: {ss._extension_reason()}")
    seen = []
    if backend == "torch":
        names = ("_chunk", "_chunk_backward")
        for name in names:
            fn = getattr(ss, name)
            monkeypatch.setattr(ss, name, lambda *a, _fn=fn, _n=name: seen.append((_n, {t.dtype for t in a})) or _fn(*a))
    else:
        names = ("fwd", "bwd")
        mod = ss.backends.probe_extension().module

        class Spy:  # the extension module, recording the dtypes of every tensor it is given and returns
            def __getattr__(self, attr):
                fn = getattr(mod, attr)

                def call(*a, _n=attr.rsplit("_", 1)[-1]):
                    out = fn(*a)
                    seen.append((_n, {t.dtype for t in (*a, *out) if isinstance(t, torch.Tensor)}))
                    return out
                return call if attr.startswith("selective_scan_") else fn

        monkeypatch.setattr(ss.backends, "probe_extension", lambda *a, **k: ss.backends.Probe(True, "spy", Spy()))
    torch.manual_seed(0)
    layer = build_mixer(H, {"name": "mamba", "backend": backend})
    x = torch.randn(2, H, L, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), _Recorder() as rec:
        y = layer(x)
        y.float().sum().backward()
    assert rec.any_low, "autocast did not run any op in bf16: the check would see nothing"
    assert {n for n, _ in seen} == set(names)
    assert all(dtypes == {torch.float32} for _, dtypes in seen), seen
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_fp16_without_gpu_is_refused(tmp_path):
    from ssmkit.errors import RecipeError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 is allowed there")
    recipe = validate({"name": "x", "task": {"name": "shift", "seq_len": 8, "samples_per_epoch": 8},
                       "model": {"d_model": 4, "n_layers": 1}, "train": {"mixed_precision": "fp16", "runs_dir": str(tmp_path)}})
    with pytest.raises(RecipeError, match="fp16 needs a GPU"):
        train(recipe)


def _shift(tmp_path, precision: str) -> dict:
    return train(validate({
        "name": f"shift-{precision}",
        "task": {"name": "shift", "seq_len": 16, "num_shifts": 4, "samples_per_epoch": 16 * 250, "val_samples": 128},
        "model": {"d_model": 32, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 32, "lr": 1e-2}},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "scheduler": {"name": "cosine"},
        "train": {"epochs": 1, "batch_size": 16, "log_every": 50, "seed": 0, "mixed_precision": precision,
                  "runs_dir": str(tmp_path)},
    }))


def test_bf16_training_reaches_the_float32_r2_band(tmp_path):
    """S4D on shift (L=16, 4 shifts, 250 steps): bf16 autocast lands in the same R^2 band as float32."""
    full = _shift(tmp_path, "no")
    half = _shift(tmp_path, "bf16")
    r2_full, r2_half = full["final"]["val/r2"], half["final"]["val/r2"]
    assert r2_full > 0.9, r2_full
    assert r2_half > 0.9 and abs(r2_half - r2_full) < 0.03, (r2_half, r2_full)
