"""The install a user does: build the wheel with pip's default build isolation, install it into a fresh
virtual environment outside the checkout, and get a working compiled Cauchy extension from it.

The wheel carries the extension's sources (``ssmkit/_csrc``); ``ssmkit doctor --build`` (or the first use)
compiles them into the user cache (``ssmkit/ops/ext_build.py``). To keep this test to about a minute, the
fresh environment takes ssmkit's dependencies (torch, ...) from the test's own environment through a
``.pth`` file that lists a folder of links to them, leaving out every ssmkit package of this environment
(the editable checkout and the ``make``-built ``ssmkit_cauchy``), so only the wheel's ssmkit can be imported.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # a copy, so the build writes nothing into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "ssmkit", src / "ssmkit", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "recipes", src / "recipes")
    shutil.copytree(ROOT / "extensions", src / "extensions", ignore=shutil.ignore_patterns("build", "*.egg-info", "*.so"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", str(src), "-w", str(tmp / "dist")])
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp / "dist").glob("ssmkit-*.whl")

    deps = tmp / "deps"  # this environment's packages, without any ssmkit
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("ssmkit", "__editable__", "_ssmkit")):
            (deps / entry.name).symlink_to(entry)
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    env_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (env_site / "zz_deps.pth").write_text(f"{deps}\n")
    installed = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {**os.environ, "SSMKIT_CACHE": str(tmp / "cache"), "SSMKIT_CAUCHY_CUDA": "0", "COLUMNS": "250",
           "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    return {"py": py, "bin": env_dir / "bin", "env": env, "cwd": tmp, "build_log": built.stdout + built.stderr}


def test_wheel_builds_without_deprecation_warnings(fresh_env):
    assert "Deprecat" not in fresh_env["build_log"], fresh_env["build_log"]


def test_the_wheel_is_the_ssmkit_imported_and_carries_the_sources(fresh_env):
    out = _run([str(fresh_env["py"]), "-c", "import ssmkit, ssmkit.ops.ext_build as b; print(ssmkit.__file__); "
                "print(sorted(p.name for p in b.SOURCES_DIR.iterdir()))"], env=fresh_env["env"], cwd=fresh_env["cwd"])
    assert out.returncode == 0, out.stderr
    where, sources = out.stdout.splitlines()
    assert str(fresh_env["cwd"] / "venv") in where and str(ROOT) not in where
    assert all(n in sources for n in ("bindings.cpp", "cauchy_cpu.cpp", "cauchy.h", "cauchy_cuda.cu", "simd.h",
                                      "selective_scan_cpu.cpp", "selective_scan.h", "causal_conv_cpu.cpp", "causal_conv.h"))
    imp = _run([str(fresh_env["py"]), "-c", "import ssmkit_cauchy"], env=fresh_env["env"], cwd=fresh_env["cwd"])
    assert imp.returncode != 0  # the make-built module of the checkout is not visible here


def test_doctor_builds_the_extension_and_its_self_test_passes(fresh_env):
    ssmkit = str(fresh_env["bin"] / "ssmkit")
    kw = {"env": fresh_env["env"], "cwd": fresh_env["cwd"]}
    before = _run([ssmkit, "doctor"], **kw)
    assert before.returncode == 0, before.stderr
    line = next(x for x in before.stdout.splitlines() if "extension (CPU)" in x)
    assert "MISSING" in line.upper() and "doctor --build" in before.stdout

    built = _run([ssmkit, "doctor", "--build"], **kw)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "compiling the Cauchy extension" in built.stderr  # the progress line
    line = next(x for x in built.stdout.splitlines() if "extension (CPU)" in x)
    assert "compiled on first use" in line and "self-test" in line and "MISSING" not in line.upper(), built.stdout

    def cached(*argv):  # python in the fresh venv, first-use builds switched off
        return _run([str(fresh_env["py"]), *argv], env={**fresh_env["env"], "SSMKIT_BUILD_EXTENSION": "0"},
                    cwd=fresh_env["cwd"])

    # A later process loads the cached build without compiling, even with first-use builds switched off.
    use = cached("-c",
                "import torch; from ssmkit.ops import cauchy; "
                "v = torch.randn(3, 4, dtype=torch.cfloat); w = torch.randn(3, 4, dtype=torch.cfloat); "
                "z = torch.exp(1j * torch.linspace(0, 3, 5)).to(torch.cfloat); "
                "a = cauchy.cauchy(v, z, w, backend='extension'); b = cauchy.cauchy(v, z, w, backend='torch'); "
                "print(float((a - b).abs().max()))")
    assert use.returncode == 0, use.stderr
    assert "compiling" not in use.stderr and "fall" not in use.stderr.lower(), use.stderr
    assert float(use.stdout.strip()) < 1e-4
    # ... and Mamba's fused CPU scan in it
    scan = cached("-W", "error", "-c",
                 "import torch; from ssmkit.ops.selective_scan import selective_scan; "
                 "g = torch.Generator().manual_seed(0); u = torch.randn(2, 3, 40, generator=g); "
                 "d = torch.rand(2, 3, 40, generator=g) * 0.2; A = -torch.rand(3, 5, generator=g); "
                 "B, C = torch.randn(2, 5, 40, generator=g), torch.randn(2, 5, 40, generator=g); "
                 "a = selective_scan(u, d, A, B, C, backend='extension')[0]; "
                 "b = selective_scan(u, d, A, B, C, backend='torch')[0]; print(float((a - b).abs().max()))")
    assert scan.returncode == 0, scan.stderr
    assert float(scan.stdout.strip()) < 1e-4
