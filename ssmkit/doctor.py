"""``ssmkit doctor``: what is installed, what runs, and how to fix what is missing.

Each check returns a row (component, status, detail, fix). Optional parts (pykeops, the compiled
extension, vision/audio packages) are probed with the exceptions their import really raises, and the
Cauchy/Vandermonde backends are self-tested against the plain torch backend on a tiny problem.
"""
from __future__ import annotations

import importlib
import logging
import platform
from dataclasses import dataclass

import torch
import typer

OK, WARN, MISSING = "ok", "warn", "missing"


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
    from ssmkit.ops import backends, vandermonde

    probe = backends.probe_keops()
    if not probe.ok:
        return Check("pykeops", MISSING, probe.reason, "pip install 'ssmkit[keops]' (needs g++; optional)")
    test = backends.self_test(
        "log_vandermonde", "keops", torch.device("cpu"), lambda: vandermonde._self_test_error("keops", torch.device("cpu")), 1e-4
    )
    if test.ok:
        return Check("pykeops", OK, f"{probe.reason}; compiles and runs on CPU ({test.reason})")
    return Check("pykeops", WARN, f"{probe.reason} imports but does not run: {test.reason}",
                 "check that g++ works and ~/.cache/keops* is writable; `python -c 'import pykeops; pykeops.clean_pykeops()'`")


def check_extension(build: bool = False) -> list[Check]:
    """The compiled Cauchy product: installed, or compiled into the user's cache (``build``: compile it now
    if it is not there; otherwise doctor only reports)."""
    from ssmkit.ops import backends, cauchy

    fix = ("ssmkit doctor --build  (compiles it once into the user cache; needs a C++ compiler), or from a "
           "checkout: pip install --no-build-isolation ./extensions/cauchy")
    probe = backends.probe_extension(build=build)
    if not probe.ok:
        return [Check("extension (CPU)", MISSING, probe.reason, fix)]
    rows = []
    test = backends.self_test("cauchy", "extension", torch.device("cpu"),
                              lambda: cauchy._self_test_error("extension", torch.device("cpu")), 1e-4)
    rows.append(Check("extension (CPU)", OK if test.ok else WARN, f"{probe.reason}; {test.reason}",
                      "" if test.ok else f"rebuild it: {fix}"))
    rows.append(check_mamba_cpu(probe.module, fix))
    if probe.module.has_cuda():
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            t = backends.self_test("cauchy", "extension", dev, lambda: cauchy._self_test_error("extension", dev), 1e-4)
            rows.append(Check("extension (CUDA)", OK if t.ok else WARN, t.reason, "" if t.ok else f"rebuild it: {fix}"))
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
    from ssmkit.ops import causal_conv, selective_scan

    why = selective_scan._extension_reason() or causal_conv._extension_reason()
    if why is None:
        return Check("extension (Mamba, CPU)", OK,
                     f"selective scan and causal conv fused, {module.selective_scan_isa()} variant; self-tests passed")
    return Check("extension (Mamba, CPU)", WARN, f"{why}; Mamba runs its torch paths on CPU", f"rebuild it: {fix}")


def check_mamba_ssm() -> Check:
    """The optional fused selective scan (``mamba_ssm``, CUDA only), self-tested against ssmkit's torch scan."""
    from ssmkit.ops import backends, selective_scan

    probe = backends.probe_mamba_ssm()
    if not probe.ok:
        return Check("mamba_ssm", MISSING, probe.reason, "optional (CUDA): pip install mamba-ssm; ssmkit's own scans run without it")
    if not torch.cuda.is_available():
        return Check("mamba_ssm", WARN, f"{probe.reason}; no GPU visible, so ssmkit's own scan runs", "")
    dev = torch.device("cuda")
    test = backends.self_test("selective_scan", "mamba_ssm", dev, lambda: selective_scan._self_test_error(dev), 1e-3)
    return Check("mamba_ssm", OK if test.ok else WARN, f"{probe.reason}; {test.reason}",
                 "" if test.ok else "the torch scan is used instead; reinstall mamba-ssm for this torch/CUDA")


def check_auto() -> list[Check]:
    """What ``backend: auto`` picks for a typical S4 / S4D size (H=256, N=64, L=4096)."""
    from ssmkit.ops import cauchy, vandermonde

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    H, n, L = 256, 32, 4096
    v = torch.zeros(H, n, dtype=torch.complex64, device=device)
    z = torch.zeros(L // 2 + 1, dtype=torch.complex64, device=device)
    logging.getLogger("ssmkit.ops").setLevel(logging.WARNING)
    c = cauchy.choose_backend(v, z, v)
    vd = vandermonde.choose_backend(v, v, L)
    from ssmkit.ops import causal_conv, selective_scan

    x = torch.zeros(1, 1, 1, device=device)
    sc, cc = selective_scan.choose_backend(x, None), causal_conv.choose_backend(x)
    return [
        Check("auto: cauchy", OK, f"{c} (S4, H={H}, N={2 * n}, L={L}, {device.type})"),
        Check("auto: vandermonde", OK, f"{vd} (S4D, H={H}, N={2 * n}, L={L}, {device.type})"),
        Check("auto: selective scan", OK, f"{sc} (Mamba, {device.type})"),
        Check("auto: causal conv", OK, f"{cc} (Mamba, {device.type})"),
    ]


def check_openmp() -> Check:
    """The OpenMP runtime(s) in this process (after the extension was loaded) and the wait policy in effect
    (``ssmkit/openmp.py``): one runtime is right; a spinning policy slows layers down on a busy machine."""
    from ssmkit import openmp

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
    import shutil

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
    from rich.table import Table

    colour = {OK: "green", WARN: "yellow", MISSING: "red"}
    table = Table(title="ssmkit doctor")
    for col in ("component", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.component, f"[{colour[r.status]}]{r.status}[/]", r.detail, r.fix)
    return table


def register(app) -> None:
    """Adds ``ssmkit doctor`` to a Typer app."""

    @app.command("doctor")
    def doctor(
        build: bool = typer.Option(False, "--build", help="compile the C++/CUDA Cauchy extension now (once per torch "
                                   "version) if it is not installed or cached"),
    ) -> None:
        """Check the installation: torch, CUDA, optional packages, the compiled extension, backends."""
        from ssmkit.console import console as make_console

        rows = run_checks(build)
        console = make_console()  # off a terminal: rows never cut at 80 columns
        console.print(render(rows))
        missing = [r for r in rows if r.status != OK]
        console.print(f"{len(rows) - len(missing)} ok, {len(missing)} to look at" if missing else "all ok")


__all__ = ["Check", "run_checks", "render", "register"]
