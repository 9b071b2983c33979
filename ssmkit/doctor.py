"""``ssmkit doctor``: what is installed, what runs, and how to fix what is missing.

Each check returns a row (component, status, detail, fix). Optional parts (pykeops, the compiled extension,
mamba_ssm, vision/audio packages) are probed with the exceptions their import really raises. What an op's backend
can do here is read from the op's table (``ssmkit/ops/dispatch.py``): the same reason string that errors and the
``auto`` log line give, self-tests included; the ``auto:`` rows say, for every op, what ``auto`` picks on this
machine for a typical call and why each implementation before it was not used. The command that prints them is
``ssmkit/cli/doctor.py``.
"""
from __future__ import annotations

import importlib
import platform
import shutil
from dataclasses import dataclass

import torch
from rich.table import Table

from ssmkit import openmp
from ssmkit.ops import backends, cauchy, causal_conv, dispatch, selective_scan, ssd, vandermonde

OK, WARN, MISSING = "ok", "warn", "missing"
#: the op modules with a backend table: importing one registers its table in ``dispatch.OPS`` (the auto: rows)
OP_MODULES = (cauchy, vandermonde, selective_scan, causal_conv, ssd)
_CPU = torch.device("cpu")


@dataclass
class Check:
    component: str
    status: str
    detail: str
    fix: str = ""


def _version(name: str, fix: str) -> Check:
    try:
        mod = importlib.import_module(name)
        return Check(name, OK, getattr(mod, "__version__", "installed"))
    except ImportError as e:
        return Check(name, MISSING, str(e), fix)
    except OSError as e:  # e.g. soundfile without libsndfile, torchaudio without its libraries
        return Check(name, MISSING, f"imports but a library is missing: {e}", fix)


def check_torch() -> list[Check]:
    rows = [Check("python", OK, platform.python_version()), Check("torch", OK, f"{torch.__version__} "
            f"(built with CUDA {torch.version.cuda})" if torch.version.cuda else f"{torch.__version__} (CPU build)")]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(Check("CUDA", OK, names))
    else:
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU visible (runs on CPU)"
        rows.append(Check("CUDA", WARN, why, "optional: a GPU with a matching CUDA torch wheel speeds training up"))
    rows.append(Check("CPU threads", OK, str(torch.get_num_threads())))
    return rows


def check_keops() -> Check:
    """pykeops: imports, and its Vandermonde reduction compiles and passes its self-test on the CPU."""
    probe = backends.probe_keops()
    if not probe.ok:
        return Check("pykeops", MISSING, probe.reason, "pip install 'ssmkit[keops]' (needs g++; optional)")
    ok, reason = vandermonde.OP.reason("keops", _CPU)
    if ok:
        return Check("pykeops", OK, f"compiles and runs on CPU: {reason}")
    return Check("pykeops", WARN, f"{probe.reason} imports but does not run: {reason}",
                 "check that g++ works and ~/.cache/keops* is writable; `python -c 'import pykeops; pykeops.clean_pykeops()'`")


def check_extension(build: bool = False) -> list[Check]:
    """The compiled extension: installed, or compiled into the user's cache (``build``: compile it now if it is not
    there; otherwise doctor only reports); its Cauchy product's self-test on the CPU and, where built, on CUDA."""
    fix = ("ssmkit doctor --build  (compiles it once into the user cache; needs a C++ compiler), or from a "
           "checkout: pip install --no-build-isolation ./extensions/cauchy")
    probe = backends.probe_extension(build=build)
    if not probe.ok:
        return [Check("extension (CPU)", MISSING, probe.reason, fix)]
    ok, reason = cauchy.OP.reason("extension", _CPU)
    rows = [Check("extension (CPU)", OK if ok else WARN, reason, "" if ok else f"rebuild it: {fix}"),
            check_mamba_cpu(probe.module, fix)]
    if probe.module.has_cuda():
        if torch.cuda.is_available():
            ok, reason = cauchy.OP.reason("extension", torch.device("cuda"))
            rows.append(Check("extension (CUDA)", OK if ok else WARN, reason, "" if ok else f"rebuild it: {fix}"))
        else:
            rows.append(Check("extension (CUDA)", OK, "compiled; no GPU here to test it"))
    else:
        rows.append(Check("extension (CUDA)", WARN if torch.cuda.is_available() else OK,
                          "not compiled (no nvcc or CPU torch at build time)",
                          f"with nvcc on PATH (or CUDA_HOME set): {fix}" if torch.cuda.is_available() else ""))
    return rows


def check_mamba_cpu(module, fix: str) -> Check:
    """The extension's fused CPU kernels of Mamba (selective scan, causal convolution + SiLU): present, the
    compiled variant in use (AVX2+FMA or baseline), and their self-tests against the torch paths."""
    why = selective_scan.OP.why_not("extension", selective_scan.OP.example(_CPU)) or \
        causal_conv.OP.why_not("extension", causal_conv.OP.example(_CPU))
    if why is None:
        return Check("extension (Mamba, CPU)", OK,
                     f"selective scan and causal conv fused, {module.selective_scan_isa()} variant; self-tests passed")
    return Check("extension (Mamba, CPU)", WARN, f"{why}; Mamba runs its torch paths on CPU", f"rebuild it: {fix}")


def check_mamba_ssm() -> Check:
    """The optional fused kernels of ``mamba_ssm`` (CUDA only): its selective scan, self-tested against ssmkit's."""
    probe = backends.probe_mamba_ssm()
    if not probe.ok:
        return Check("mamba_ssm", MISSING, probe.reason, "optional (CUDA): pip install mamba-ssm; ssmkit's own scans run without it")
    if not torch.cuda.is_available():
        return Check("mamba_ssm", WARN, f"{probe.reason}; no GPU visible, so ssmkit's own scan runs", "")
    ok, reason = selective_scan.OP.reason("mamba_ssm", torch.device("cuda"))
    return Check("mamba_ssm", OK if ok else WARN, reason,
                 "" if ok else "the torch scan is used instead; reinstall mamba-ssm for this torch/CUDA")


def check_auto() -> list[Check]:
    """For every op with a backend table: what ``auto`` picks on this machine (CUDA if visible, else CPU) for the
    op's typical call, and why each implementation before it was not used; the ones ``auto`` never reached or
    takes by name only, with their own reason. A failed self-test makes the row a warning."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for op in dispatch.OPS.values():
        pick, skipped, rest = op.explain(op.example(device) if op.example else dispatch.Call(device, frozenset()))
        parts = [f"{pick} ({op.example_text or op.name}, {device.type}): {op.reason(pick, device)[1]}"]
        parts += [f"{name} not used: {why}" for name, why in skipped]
        for name in rest:
            ok, why = op.reason(name, device)
            how = "by name only" if op.impls[name].auto is False else "not reached"
            parts.append(f"{name} ({how}{'' if ok else ', cannot run here'}): {why}")
        broken = [name for name, why in skipped if why.startswith("self-test")]
        rows.append(Check(f"auto: {op.label.lower()}", WARN if broken else OK, "; ".join(parts),
                          f"{', '.join(broken)} failed its self-test: rebuild or reinstall it" if broken else ""))
    return rows


def check_openmp() -> Check:
    """The OpenMP runtime(s) in this process (after the extension was loaded) and the wait policy in effect
    (``ssmkit/openmp.py``): one runtime is right; a spinning policy slows layers down on a busy machine."""
    libs = openmp.runtimes()
    names = ", ".join(p.split("site-packages/")[-1] for p in libs) or "none found (no /proc here?)"
    detail = f"{names}; {openmp.wait_policy()}"
    if len(libs) > 1:
        return Check("OpenMP", WARN, f"{len(libs)} runtimes loaded: {detail}",
                     "two thread pools compete for the cores: rebuild the extension against this torch "
                     "(ssmkit doctor --build) and do not preload another OpenMP library")
    if openmp.decision == "late":
        return Check("OpenMP", WARN, detail, "import ssmkit before torch, or export GOMP_SPINCOUNT=10000")
    return Check("OpenMP", OK, detail)


def check_compiled_step() -> Check:
    """What ``SequenceModel.compile_step()`` can use: AOTInductor needs torch.export and a C++ compiler."""
    if not hasattr(torch, "export") or not hasattr(torch._inductor, "aoti_compile_and_package"):
        return Check("compile_step", WARN, f"torch {torch.__version__} has no AOTInductor: torch.compile only",
                     "torch >= 2.6 for the ahead-of-time compiled step")
    compiler = next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)  # its path
    if compiler is None:
        return Check("compile_step", WARN, "no C++ compiler on PATH: compile_step() cannot build its library",
                     "install g++ (e.g. apt-get install g++) for the compiled recurrent step")
    return Check("compile_step", OK, f"AOTInductor with {compiler} (whole-model step in C++)")


def run_checks(build: bool = False) -> list[Check]:
    rows = check_torch()
    rows.append(_version("accelerate", "pip install accelerate"))
    rows.append(check_keops())
    rows.extend(check_extension(build))
    rows.append(check_openmp())
    rows.append(check_compiled_step())
    rows.append(check_mamba_ssm())
    rows.append(_version("torchvision", "pip install 'ssmkit[vision]' (image tasks)"))
    rows.append(_version("torchaudio", "pip install 'ssmkit[audio]' (speech tasks)"))
    rows.append(_version("soundfile", "pip install 'ssmkit[audio]'; on Linux also `apt-get install libsndfile1`"))
    rows.append(_version("matplotlib", "pip install 'ssmkit[plot]' (ssmkit profile --plot)"))
    rows.extend(check_auto())
    return rows


def render(rows: list[Check]):
    colour = {OK: "green", WARN: "yellow", MISSING: "red"}
    table = Table(title="ssmkit doctor")
    for col in ("component", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.component, f"[{colour[r.status]}]{r.status}[/]", r.detail, r.fix)
    return table


__all__ = ["Check", "run_checks", "render"]
