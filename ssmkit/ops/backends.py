"""Which Cauchy / Vandermonde backend runs, and why.

Every optional backend (``keops``: pykeops; ``extension``: the compiled ``ssmkit_cauchy``) is probed
once: its import is guarded by the exceptions an import can really raise (never a bare ``except``)
and the reason for a failure is kept, so that ``ssmkit doctor`` can print it. Before its first use on a
device, a backend is self-tested against the ``torch`` backend on a tiny problem, whatever the caller's
mode: gradients on, outside inference mode and autocast, on fresh inputs (a first call under ``torch.no_grad()``
or ``torch.inference_mode()``, as in ``ssmkit eval`` or generation, once failed the gradient part of the test and
dropped the extension for the whole process). ``auto`` choices are logged once per (op, device, backend),
fallbacks included, with the reason (logger ``ssmkit.ops``, INFO); a failed self-test is logged once as a WARNING
(it means a broken build, not a missing one); a backend that is asked for by name but cannot run falls back with
a one-line ``RuntimeWarning`` that says why. ``ssmkit doctor`` runs the same self-tests and shows their result.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger("ssmkit.ops")


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (not installed, failed its self-test, or unsupported size/dtype)."""


@dataclass
class Probe:
    ok: bool
    reason: str = ""
    module: object = None


_probes: dict[str, Probe] = {}
_self_tests: dict[tuple[str, str, str], Probe] = {}
_logged: set[tuple] = set()
_warned: set[tuple] = set()


def probe_extension(build: bool | None = None) -> Probe:
    """The compiled Cauchy product, probed once; ``Probe.reason`` says why it is missing.

    First the installed ``ssmkit_cauchy`` (``pip install --no-build-isolation ./extensions/cauchy``, which
    ``make`` runs); else the copy ``ops/ext_build.py`` compiles from the sources in the package into the
    user's cache: loaded when already built, compiled now (with a line on stderr) when ``build`` is True,
    or when ``build`` is None and ``SSMKIT_BUILD_EXTENSION`` is not ``0``.
    """
    if "extension" in _probes and not (build and not _probes["extension"].ok):
        return _probes["extension"]
    try:
        mod = importlib.import_module("ssmkit_cauchy")
        _probes["extension"] = Probe(True, _describe(mod, "installed ssmkit_cauchy"), mod)
        return _probes["extension"]
    except ImportError as e:  # not installed, or an ABI/undefined-symbol mismatch with this torch
        installed = f"ssmkit_cauchy does not import ({type(e).__name__}: {e})"
    except OSError as e:  # a shared library it links to is missing
        installed = f"ssmkit_cauchy failed to load a library: {e}"
    from ssmkit.ops import ext_build

    if build is None:
        build = os.environ.get("SSMKIT_BUILD_EXTENSION", "1") != "0" or ext_build.is_built()
    if not build:
        _probes["extension"] = Probe(False, f"{installed}; not built for this torch yet: run `ssmkit doctor --build`")
        return _probes["extension"]
    try:
        mod = ext_build.load(announce=lambda msg: print(msg, file=sys.stderr, flush=True))
        _probes["extension"] = Probe(True, _describe(mod, "compiled on first use"), mod)
    except ext_build.BuildFailed as e:
        _probes["extension"] = Probe(False, f"{installed}; {e}")
    return _probes["extension"]


def _describe(mod, how: str) -> str:
    return f"{how}, {'CUDA part built' if mod.has_cuda() else 'CPU part only'}"


def probe_keops() -> Probe:
    """Imports pykeops once (without compiling anything)."""
    if "keops" not in _probes:
        try:
            # pykeops prints its compile banner through its own verbosity flag; keep it quiet.
            pykeops = importlib.import_module("pykeops")
            pykeops.set_verbose(False)
            mod = importlib.import_module("pykeops.torch")
            _probes["keops"] = Probe(True, f"pykeops {pykeops.__version__}", mod)
        except ImportError as e:
            _probes["keops"] = Probe(False, f"pykeops does not import ({e}); install it with `pip install 'ssmkit[keops]'`")
        except (OSError, RuntimeError) as e:  # keops checks its compiler / CUDA set-up at import
            _probes["keops"] = Probe(False, f"pykeops failed to initialise: {e}")
    return _probes["keops"]


def probe_mamba_ssm() -> Probe:
    """Imports the fused selective scan of the ``mamba_ssm`` package once (optional, CUDA only)."""
    if "mamba_ssm" not in _probes:
        try:
            mod = importlib.import_module("mamba_ssm.ops.selective_scan_interface")
            version = getattr(importlib.import_module("mamba_ssm"), "__version__", "?")
            _probes["mamba_ssm"] = Probe(True, f"mamba_ssm {version}", mod)
        except ImportError as e:  # not installed, or its CUDA extension does not match this torch
            _probes["mamba_ssm"] = Probe(False, f"mamba_ssm does not import ({e}); optional, CUDA only: `pip install mamba-ssm`")
        except OSError as e:  # a shared library it links to is missing
            _probes["mamba_ssm"] = Probe(False, f"mamba_ssm failed to load a library: {e}")
    return _probes["mamba_ssm"]


def self_test(op: str, backend: str, device: torch.device, run: Callable[[], float], tol: float) -> Probe:
    """Runs ``run()`` (returns the max abs error vs the torch backend) once per (op, backend, device type).

    ``run`` makes its own inputs, so it runs here with gradients enabled, outside inference mode and with autocast
    off, whatever the caller's mode: the result (cached for the process) depends on the backend only. A failure
    is logged once as a warning."""
    key = (op, backend, device.type)
    if key not in _self_tests:
        try:
            # a first use inside no_grad / inference_mode / autocast must not test without gradients or in bf16
            with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
                err = run()
            ok = err <= tol
            _self_tests[key] = Probe(ok, f"self-test error {err:.2e}" + ("" if ok else f" > tolerance {tol:.0e}"))
        except (RuntimeError, ValueError, TypeError, ImportError, OSError) as e:
            # keops raises plain RuntimeError / ValueError on compile failures; the extension raises
            # RuntimeError from TORCH_CHECK. Anything else is a bug and should propagate.
            _self_tests[key] = Probe(False, f"self-test raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if not _self_tests[key].ok:
            log.warning("%s on %s: the %s backend failed its self-test (%s); it will not be used in this process",
                        op, device.type, backend, _self_tests[key].reason)
    return _self_tests[key]


def log_choice(op: str, device: torch.device, backend: str, why: str) -> None:
    key = (op, device.type, backend)
    if key not in _logged:
        _logged.add(key)
        log.info("%s on %s: using the %s backend (%s)", op, device.type, backend, why)


def warn_fallback(op: str, wanted: str, got: str, why: str, stacklevel: int = 4) -> None:
    key = (op, wanted, got, why)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"{op}: backend {wanted!r} cannot run ({why}); falling back to {got!r}", RuntimeWarning,
                      stacklevel=stacklevel)


def settle(op: str, device: torch.device, candidate: str, requested: str, why: str | None, how: str) -> str:
    """The end of a choice between an optional backend and ``torch``: ``candidate`` when nothing stops it
    (``why`` is None; the choice is logged once), else ``torch``: with a warning when ``candidate`` was asked
    for by name, logged once with the reason when ``auto`` falls back."""
    if why is None:
        log_choice(op, device, candidate, how)
        return candidate
    if requested == candidate:
        warn_fallback(op, candidate, "torch", why, stacklevel=5)
    else:
        log_choice(op, device, "torch", f"{candidate} not used: {why}")
    return "torch"


def max_relative_error(candidate: Callable, reference: Callable, args: list[torch.Tensor], loss: Callable) -> float:
    """A self-test's error: candidate(*args) against reference(*args), each on fresh leaf copies of args; the
    largest difference of the outputs and of the gradients of ``loss(*outputs)`` with respect to every arg,
    relative to 1 + the reference's magnitude."""
    outs = []
    for fn in (candidate, reference):
        inputs = [t.clone().requires_grad_() for t in args]
        out = fn(*inputs)
        out = out if isinstance(out, tuple) else (out,)
        outs.append([o.detach() for o in out] + list(torch.autograd.grad(loss(*out), inputs)))
    return max((a - r).abs().max().item() / (1 + r.abs().max().item()) for a, r in zip(*outs))


def extension_kernel_reason(function: str, what: str, op: str, run: Callable[[], float], tol: float) -> str | None:
    """None if the compiled extension has ``function`` (one of its CPU kernels, ``what`` in words) and it passed
    its self-test ``run`` (max error against the torch path) on the CPU; otherwise why not, in one line."""
    probe = probe_extension()
    if not probe.ok:
        return probe.reason
    if not hasattr(probe.module, function):
        return f"the installed ssmkit_cauchy predates the {what}; rebuild it (make extension, or ssmkit doctor --build)"
    test = self_test(op, "extension", torch.device("cpu"), run, tol)
    return None if test.ok else test.reason


def reset() -> None:
    """Forget probes, self-tests and the log/warn-once memory (for tests)."""
    _probes.clear()
    _self_tests.clear()
    _logged.clear()
    _warned.clear()


def chunked_positions(fn: Callable[..., torch.Tensor], L: int, chunk: int, *tensors: torch.Tensor) -> torch.Tensor:
    """Evaluates ``fn(l0, n, *tensors) -> (..., n)`` over l0 = 0, chunk, 2*chunk, ... and concatenates.

    Memory is bounded in backward too: nothing of a chunk's graph is kept; backward recomputes each
    chunk under autograd, takes its vector-Jacobian product and drops it before the next chunk.
    """
    return _Chunked.apply(fn, L, chunk, *tensors)


class _Chunked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, L, chunk, *tensors):
        ctx.fn, ctx.L, ctx.chunk = fn, L, chunk
        ctx.save_for_backward(*tensors)
        with torch.no_grad():
            return torch.cat([fn(l0, min(chunk, L - l0), *tensors) for l0 in range(0, L, chunk)], dim=-1)

    @staticmethod
    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        grads = [None] * len(tensors)
        inputs = [t.detach().requires_grad_(n) for t, n in zip(tensors, needs)]
        wrt = [t for t, n in zip(inputs, needs) if n]
        if not wrt:
            return (None, None, None, *grads)
        acc = [torch.zeros_like(t) for t in wrt]
        for l0 in range(0, ctx.L, ctx.chunk):
            n = min(ctx.chunk, ctx.L - l0)
            with torch.enable_grad():
                out = ctx.fn(l0, n, *inputs)
                parts = torch.autograd.grad(out, wrt, grad[..., l0 : l0 + n], allow_unused=True)
            for a, p in zip(acc, parts):
                if p is not None:
                    a += p
        it = iter(acc)
        grads = [next(it) if n else None for n in needs]
        return (None, None, None, *grads)
