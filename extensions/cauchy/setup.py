"""Builds ``ssmkit_cauchy``: the Cauchy product of ssmkit in C++ (always) and CUDA (when it can), and Mamba's
selective scan in C++ (``csrc/selective_scan_cpu.cpp``).

    pip install --no-build-isolation ./extensions/cauchy

The CUDA part is compiled when nvcc is found (CUDA_HOME) and torch is a CUDA build; set
``SSMKIT_CAUCHY_CUDA=0`` to skip it, ``=1`` to require it. ``TORCH_CUDA_ARCH_LIST`` defaults to
"8.0;9.0" to keep the build short. ``SSMKIT_CAUCHY_NATIVE=1`` adds -march=native to the C++ part
(faster, but the result only runs on CPUs like the one that built it).
"""
import importlib.util
import os

import torch
from setuptools import setup

here = os.path.dirname(os.path.abspath(__file__))


def _ext_build():
    """ssmkit/ops/ext_build.py of this checkout (it holds the CUDA-toolkit lookup and flags that ssmkit's own
    first-use build uses), loaded by path: building this package must not need ssmkit installed."""
    path = os.path.join(here, "..", "..", "ssmkit", "ops", "ext_build.py")
    spec = importlib.util.spec_from_file_location("_ssmkit_ext_build", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_build = _ext_build()
_find_cuda_home = _build.find_cuda_home
if _find_cuda_home():
    os.environ["CUDA_HOME"] = _find_cuda_home()

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

csrc = os.path.join("csrc")
sources = [os.path.join(csrc, n) for n in ("bindings.cpp", "cauchy_cpu.cpp", "selective_scan_cpu.cpp", "causal_conv_cpu.cpp")]
cxx_flags = _build.cxx_flags()
link_flags = _build.link_flags()

want_cuda = os.environ.get("SSMKIT_CAUCHY_CUDA", "auto")
can_cuda = CUDA_HOME is not None and torch.version.cuda is not None
if want_cuda == "1" and not can_cuda:
    raise RuntimeError(
        f"SSMKIT_CAUCHY_CUDA=1 but CUDA cannot be built: CUDA_HOME={CUDA_HOME}, torch.version.cuda={torch.version.cuda}"
    )
use_cuda = can_cuda and want_cuda != "0"

if use_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    ext = CUDAExtension(
        "ssmkit_cauchy._C",
        sources + [os.path.join(csrc, "cauchy_cuda.cu")],
        define_macros=[("SSMKIT_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=link_flags,
    )
else:
    print(f"ssmkit_cauchy: building the CPU part only (CUDA_HOME={CUDA_HOME}, torch CUDA={torch.version.cuda})")
    ext = CppExtension("ssmkit_cauchy._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)

setup(
    name="ssmkit-cauchy",
    version="0.1.0",
    description="C++/CUDA Cauchy product for ssmkit",
    packages=["ssmkit_cauchy"],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
