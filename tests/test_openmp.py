"""OpenMP in an ssmkit process (ssmkit/openmp.py): the 10,000-spin wait is set before torch loads libgomp,
never over a user's setting, libgomp really reads it, and the compiled extension adds no second runtime."""
import os
import subprocess
import sys

import pytest

from ssmkit import openmp


@pytest.mark.parametrize("environ,modules,decision,spins", [
    ({}, {}, "ssmkit", "10000"),
    ({"GOMP_SPINCOUNT": "10000", "SSMKIT_OMP_DEFAULT_SET": "1"}, {}, "inherited", "10000"),  # a child process
    ({"GOMP_SPINCOUNT": "500", "SSMKIT_OMP_DEFAULT_SET": "1"}, {}, "user", "500"),  # changed since
    ({"GOMP_SPINCOUNT": "10000", "OMP_WAIT_POLICY": "PASSIVE", "SSMKIT_OMP_DEFAULT_SET": "1"}, {}, "user", "10000"),
    ({"OMP_WAIT_POLICY": "passive"}, {}, "user", None),  # a wait policy is a choice of waiting too
    ({"GOMP_SPINCOUNT": "1000"}, {}, "user", "1000"),
    ({}, {"torch": object()}, "late", None),  # libgomp has read its settings: leave the environment alone
    ({"SSMKIT_OMP_DEFAULT": "0"}, {}, "off", None),
])
def test_default_only_where_nobody_chose(environ, modules, decision, spins):
    before = dict(environ)
    assert openmp.apply_default(environ, modules) == decision
    assert environ.get("GOMP_SPINCOUNT") == spins
    set_now = {"GOMP_SPINCOUNT": "10000", "SSMKIT_OMP_DEFAULT_SET": "1"}
    assert environ == (before if decision != "ssmkit" else {**before, **set_now})


def _import_ssmkit(extra_env: dict) -> subprocess.Popen:
    """A fresh interpreter that imports ssmkit (hence torch, hence libgomp), with libgomp printing the
    settings it read at load time (OMP_DISPLAY_ENV=verbose, on stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SSMKIT_OMP_DEFAULT",
                                                           "SSMKIT_OMP_DEFAULT_SET")}
    env.update(OMP_DISPLAY_ENV="verbose", OMP_NUM_THREADS="2", **extra_env)
    code = "import os, ssmkit; print(os.environ.get('GOMP_SPINCOUNT'), ssmkit._openmp.decision)"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_libgomp_reads_the_spin_default_and_a_users_policy_wins():
    procs = [_import_ssmkit({}), _import_ssmkit({"OMP_WAIT_POLICY": "ACTIVE"})]  # both at once
    (out0, err0), (out1, err1) = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode == 0 and procs[1].returncode == 0, err0 + err1
    assert out0.split() == ["10000", "ssmkit"]
    assert "GOMP_SPINCOUNT = '10000'" in err0, err0  # about 1 ms of spinning (libgomp's default is 300000)
    assert out1.split() == ["None", "user"]
    assert "GOMP_SPINCOUNT = '30000000000'" in err1, err1  # libgomp's spin for ACTIVE: the user's choice stands


def test_runtimes_reads_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /venv/torch/lib/libgomp.so.1\n"
        "7f01-7f02 r--p 00010000 08:01 1 /venv/torch/lib/libgomp.so.1\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0\n"
        "7f03-7f04 r-xp 00000000 08:01 3 /opt/intel/libiomp5.so\n"
        "7f04-7f05 rw-p 00000000 00:00 0 \n"
        "7f05-7f06 r-xp 00000000 08:01 4 /venv/torch/lib/libtorch_cpu.so\n")
    assert openmp.runtimes(str(maps)) == ["/venv/torch/lib/libgomp.so.1", "/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0",
                                          "/opt/intel/libiomp5.so"]
    assert openmp.runtimes(str(tmp_path / "missing")) == []


def test_the_extension_adds_no_second_runtime():
    """The extension is built with -fopenmp (at::parallel_for is OpenMP code compiled into it) and asks for
    libgomp.so.1 by name; the loader must give it torch's copy, so one thread pool serves both."""
    import torch

    from ssmkit.ops import backends

    probe = backends.probe_extension()
    if not probe.ok:
        pytest.skip(f"the compiled extension is not built here: {probe.reason}")
    so = getattr(probe.module, "_C", probe.module).__file__  # the installed package's library, or the cached build
    assert so in open("/proc/self/maps").read()  # loaded
    with open(so, "rb") as f:
        assert b"GOMP_parallel" in f.read(), "the extension was built without -fopenmp: at::parallel_for runs serially"
    libs = openmp.runtimes()
    assert len(libs) == 1, libs
    torch_lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
    assert os.path.dirname(os.path.realpath(libs[0])) == torch_lib, libs


def test_doctor_reports_the_runtime_and_policy():
    from ssmkit import doctor

    row = doctor.check_openmp()
    assert row.component == "OpenMP"
    assert "libgomp" in row.detail and ("OMP_WAIT_POLICY" in row.detail or "GOMP_SPINCOUNT" in row.detail
                                        or "libgomp's" in row.detail), row.detail
