"""The probes of the optional parts that ops' implementations run on: ssmkit's compiled extension (``ssmkit_cauchy``),
pykeops and mamba_ssm. How an op chooses among its implementations is ``ssmkit/ops/dispatch.py``.

Each part is probed once per process: its import is guarded by the exceptions an import can really raise (never a
bare ``except``) and the reason for a failure is kept in the :class:`~ssmkit.ops.dispatch.Probe`, which the op
tables report (errors, the ``auto`` log line, ``ssmkit doctor``).
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from ssmkit.ops import dispatch, ext_build
from ssmkit.ops.dispatch import Probe

_probes: dict[str, Probe] = {}


def probe_extension(build: bool | None = None) -> Probe:
    """The compiled extension, probed once; ``Probe.reason`` says why it is missing.

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


def extension_kernel(function: str, what: str) -> Callable[[], Probe]:
    """The probe of one kernel of the extension: the extension is here and has ``function`` (``what``, in words:
    an extension built before that kernel existed lacks it)."""

    def probe() -> Probe:
        ext = probe_extension()
        if ext.ok and not hasattr(ext.module, function):
            return Probe(False, f"the installed ssmkit_cauchy predates the {what}; rebuild it (make extension, or "
                                "ssmkit doctor --build)")
        return ext

    return probe


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


def optional_module(module: str, package: str, hint: str) -> Callable[[], Probe]:
    """A probe that imports ``module`` of the optional ``package`` once; ``hint`` says how to get it. An op whose
    implementation runs on an optional package (``mamba_ssm``'s kernels) names one of these in its table."""

    def probe() -> Probe:
        if module not in _probes:
            try:
                mod = importlib.import_module(module)
                version = getattr(importlib.import_module(package), "__version__", "?")
                _probes[module] = Probe(True, f"{package} {version}", mod)
            except ImportError as e:  # not installed, or its compiled part does not match this torch
                _probes[module] = Probe(False, f"{package} does not import ({e}); {hint}")
            except OSError as e:  # a shared library it links to is missing
                _probes[module] = Probe(False, f"{package} failed to load a library: {e}")
        return _probes[module]

    return probe


#: the fused selective scan of the ``mamba_ssm`` package (optional, CUDA only)
probe_mamba_ssm = optional_module("mamba_ssm.ops.selective_scan_interface", "mamba_ssm",
                                  "optional, CUDA only: `pip install mamba-ssm`")


def reset() -> None:
    """Forgets probes, self-tests and which choices were logged (for tests)."""
    _probes.clear()
    dispatch.reset()
