"""Builds ``ssmkit_cauchy``: the Cauchy product of ssmkit in C++ (always) and CUDA (when it can).

    pip install --no-build-isolation ./extensions/cauchy

The CUDA part is compiled when nvcc is found (CUDA_HOME) and torch is a CUDA build; set
``SSMKIT_CAUCHY_CUDA=0`` to skip it, ``=1`` to require it. ``TORCH_CUDA_ARCH_LIST`` defaults to
"8.0;9.0" to keep the build short. ``SSMKIT_CAUCHY_NATIVE=1`` adds -march=native to the C++ part
(faster, but the result only runs on CPUs like the one that built it).
"""
import os
import shutil

import torch
from setuptools import setup


def _find_cuda_home() -> str | None:
    """A CUDA toolkit root that really holds the headers (a wrapper script at /usr/local/bin/nvcc
    would otherwise make torch guess CUDA_HOME=/usr/local)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


if _find_cuda_home():
    os.environ["CUDA_HOME"] = _find_cuda_home()

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
csrc = os.path.join("csrc")
sources = [os.path.join(csrc, "bindings.cpp"), os.path.join(csrc, "cauchy_cpu.cpp")]
cxx_flags = ["-O3", "-fopenmp-simd"]
if os.environ.get("SSMKIT_CAUCHY_NATIVE") == "1":
    cxx_flags.append("-march=native")

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
    )
else:
    print(f"ssmkit_cauchy: building the CPU part only (CUDA_HOME={CUDA_HOME}, torch CUDA={torch.version.cuda})")
    ext = CppExtension("ssmkit_cauchy._C", sources, extra_compile_args={"cxx": cxx_flags})

setup(
    name="ssmkit-cauchy",
    version="0.1.0",
    description="C++/CUDA Cauchy product for ssmkit",
    packages=["ssmkit_cauchy"],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
