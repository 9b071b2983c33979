"""Compiles the C++/CUDA extension (the Cauchy product; Mamba's selective scan and causal convolution on the
CPU) on first use, for users who installed ssmkit with plain ``pip``.

A wheel cannot carry a binary that matches every torch a user may have, so ssmkit ships the extension's
sources inside the package (``ssmkit/_csrc``, the files of ``extensions/cauchy/csrc``) and compiles them
with ``torch.utils.cpp_extension.load`` (ninja) the first time the extension is wanted, into a per-user
cache keyed by everything the binary depends on: the torch version and its CUDA version, the Python
version, the machine, the compile flags and a hash of the sources. A later torch gets a new folder; the
old build is never loaded against it.

* where: ``$SSMKIT_CACHE/ext/`` (default ``$XDG_CACHE_HOME/ssmkit`` or ``~/.cache/ssmkit``);
* when: on first use (``ssmkit.ops.backends.probe_extension``), or ahead of time with
  ``ssmkit doctor --build``; ``SSMKIT_BUILD_EXTENSION=0`` turns first-use builds off (an extension built
  ahead of time is still loaded);
* CUDA: compiled when torch is a CUDA build and ``nvcc`` is found; ``SSMKIT_CAUCHY_CUDA=0`` skips it,
  ``=1`` requires it (the same switches as ``extensions/cauchy/setup.py``).

A failed build never breaks ssmkit: the caller gets ``BuildFailed`` with a one-line reason (the full
compiler log is kept in the build folder) and falls back to the torch backends.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

#: The extension's sources, shipped in the package (a link to extensions/cauchy/csrc in a checkout).
SOURCES_DIR = Path(__file__).resolve().parent.parent / "_csrc"
_CPP = ("bindings.cpp", "cauchy_cpu.cpp", "selective_scan_cpu.cpp", "causal_conv_cpu.cpp")
_CUDA = ("cauchy_cuda.cu",)
_HEADERS = ("cauchy.h", "selective_scan.h", "causal_conv.h", "simd.h", "parallel.h")


class BuildFailed(RuntimeError):
    """The extension could not be compiled or loaded here; ``str()`` is one line."""


def cache_root() -> Path:
    """``$SSMKIT_CACHE``, else ``$XDG_CACHE_HOME/ssmkit``, else ``~/.cache/ssmkit``: the extension builds and the text
    corpora's token caches (``tasks/text_corpus.py``)."""
    env = os.environ.get("SSMKIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ssmkit"


def find_cuda_home() -> str | None:
    """A CUDA toolkit root that really holds the headers (a wrapper script at /usr/local/bin/nvcc would
    otherwise make torch guess CUDA_HOME=/usr/local)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


def want_cuda() -> tuple[bool, str]:
    """(compile the CUDA half?, why). Raises ``BuildFailed`` if ``SSMKIT_CAUCHY_CUDA=1`` cannot be met."""
    switch = os.environ.get("SSMKIT_CAUCHY_CUDA", "auto")
    home = find_cuda_home()
    if switch == "0":
        return False, "SSMKIT_CAUCHY_CUDA=0"
    if torch.version.cuda is None or home is None:
        why = "torch is a CPU build" if torch.version.cuda is None else "no CUDA toolkit (nvcc) found"
        if switch == "1":
            raise BuildFailed(f"SSMKIT_CAUCHY_CUDA=1 but the CUDA half cannot be built: {why}")
        return False, why
    return True, f"CUDA {torch.version.cuda}, toolkit {home}"


def cxx_flags() -> list[str]:
    """The C++ flags of the extension (shared with ``extensions/cauchy/setup.py``). ``-fopenmp`` where the
    compiler is GCC on Linux: ``at::parallel_for`` in an extension is OpenMP code compiled into it, serial
    without the flag; the library then uses the ``libgomp.so.1`` that torch has already loaded."""
    flags = ["-O3", "-fopenmp-simd"]
    if sys.platform.startswith("linux"):
        flags.append("-fopenmp")
    if os.environ.get("SSMKIT_CAUCHY_NATIVE") == "1":
        flags.append("-march=native")
    return flags


def link_flags() -> list[str]:
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def _flags(cuda: bool) -> list[str]:
    return cxx_flags() + (["-DSSMKIT_WITH_CUDA"] if cuda else [])


def build_key(cuda: bool) -> str:
    """A short hash of everything the compiled library depends on."""
    h = hashlib.sha256()
    for part in (torch.__version__, str(torch.version.cuda), sys.version.split()[0], platform.machine(),
                 " ".join(_flags(cuda)), os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0") if cuda else ""):
        h.update(part.encode() + b"\0")
    for name in _CPP + _HEADERS + (_CUDA if cuda else ()):
        h.update((SOURCES_DIR / name).read_bytes())
    return h.hexdigest()[:12]


def build_dir(key: str) -> Path:
    """The cache folder of the build with this ``build_key``."""
    tv = torch.__version__.replace("+", "-")
    return cache_root() / "ext" / f"cauchy-torch{tv}-py{sys.version_info[0]}{sys.version_info[1]}-{key}"


def _has_library(d: Path) -> bool:
    return any(d.glob("*.so")) or any(d.glob("*.pyd"))


def is_built() -> bool:
    """Whether a library for this torch/flags/sources is already in the cache (nothing is compiled)."""
    try:
        return _has_library(build_dir(build_key(want_cuda()[0])))
    except (BuildFailed, OSError):
        return False


def load(verbose: bool = False, announce=None):
    """Compiles (if needed) and imports the extension; returns the module (``cauchy_fwd``, ``cauchy_bwd``,
    ``has_cuda``, ``shares_poles``). ``announce(msg)`` is called once before a compile that has to run."""
    missing = [n for n in _CPP + _HEADERS if not (SOURCES_DIR / n).is_file()]
    if missing:
        raise BuildFailed(f"the extension's sources are not in this install ({SOURCES_DIR}: {', '.join(missing)} missing)")
    cuda, why = want_cuda()
    if cuda:
        os.environ["CUDA_HOME"] = find_cuda_home()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    if shutil.which("ninja") is None and not _ninja_from_package():
        raise BuildFailed("ninja is not installed; `pip install ninja` (torch compiles extensions with it)")
    cxx = os.environ.get("CXX") or next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)
    if cxx is None:
        raise BuildFailed("no C++ compiler on PATH; install g++ (e.g. apt-get install g++), then `ssmkit doctor --build`")
    key = build_key(cuda)
    d = build_dir(key)
    d.mkdir(parents=True, exist_ok=True)
    if announce is not None and not _has_library(d):
        part = "C++ and CUDA" if cuda else f"C++ only: {why}"
        announce(f"ssmkit: compiling the Cauchy extension ({part}) once into {d}; this takes about "
                 f"{'3 minutes' if cuda else '1 minute'}")
    cpp_extension = _cpp_extension()
    sources = [str(SOURCES_DIR / n) for n in _CPP + (_CUDA if cuda else ())]
    try:
        return cpp_extension.load(
            name=f"ssmkit_cauchy_{key}", sources=sources, build_directory=str(d),
            extra_cflags=_flags(cuda), extra_cuda_cflags=["-O3"] if cuda else None, extra_ldflags=link_flags(),
            with_cuda=cuda, verbose=verbose,
        )
    except (RuntimeError, OSError, ImportError, SystemExit) as e:  # compiler errors, ninja failure, bad .so
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise BuildFailed(f"compiling the Cauchy extension failed ({first[:200]}); the compiler log is in {d}") from e


def _cpp_extension():
    """``torch.utils.cpp_extension``, imported only when a build is wanted (it is slow to import and, on CPU builds,
    logs a warning about guessing CUDA_HOME as it imports: silenced here)."""
    home = find_cuda_home()
    if home:
        os.environ.setdefault("CUDA_HOME", home)
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return importlib.import_module("torch.utils.cpp_extension")
    finally:
        logger.setLevel(level)


def _ninja_from_package() -> bool:
    """pip's ``ninja`` package puts the binary in the environment's bin folder, which may not be on PATH."""
    candidate = Path(sys.executable).parent / "ninja"
    if candidate.is_file():
        os.environ["PATH"] = f"{candidate.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return True
    return False
