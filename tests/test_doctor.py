"""``ssmkit doctor``: every check reports a status, missing parts come with a fix, the command runs."""
import typer
from typer.testing import CliRunner

from ssmkit import doctor
from ssmkit.ops import backends


def test_checks_cover_the_components_and_missing_ones_have_a_fix():
    rows = doctor.run_checks()
    names = {r.component for r in rows}
    for expected in ("torch", "CUDA", "accelerate", "pykeops", "extension (CPU)", "torchvision", "torchaudio",
                     "soundfile", "auto: cauchy", "auto: vandermonde", "compile_step"):
        assert expected in names
    for r in rows:
        assert r.status in (doctor.OK, doctor.WARN, doctor.MISSING)
        if r.status == doctor.MISSING:
            assert r.fix, r
    ext = next(r for r in rows if r.component == "extension (CPU)")
    if backends.probe_extension().ok:
        assert ext.status == doctor.OK and "self-test error" in ext.detail
        mamba = next(r for r in rows if r.component == "extension (Mamba, CPU)")
        assert mamba.status == doctor.OK and "fused" in mamba.detail, mamba
        assert any(v in mamba.detail for v in ("avx2+fma variant", "baseline variant"))
    else:
        assert "pip install --no-build-isolation ./extensions/cauchy" in ext.fix


def test_missing_extension_says_why_and_how_to_fix(monkeypatch):
    backends.reset()
    monkeypatch.setitem(backends._probes, "extension", backends.Probe(False, "ssmkit_cauchy does not import (test)"))
    (row,) = doctor.check_extension()
    assert row.status == doctor.MISSING and "(test)" in row.detail and "./extensions/cauchy" in row.fix
    backends.reset()


def test_an_extension_without_the_mamba_kernels_says_to_rebuild(monkeypatch):
    backends.reset()
    old_build = object()
    monkeypatch.setitem(backends._probes, "extension", backends.Probe(True, "an old build", old_build))
    row = doctor.check_mamba_cpu(old_build, "rebuild-hint")
    assert row.status == doctor.WARN and "predates" in row.detail and "rebuild-hint" in row.fix
    backends.reset()


def test_compiled_step_check_names_the_missing_compiler(monkeypatch):
    import shutil

    assert doctor.check_compiled_step().status == doctor.OK  # g++ is here (the extension needs it too)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    row = doctor.check_compiled_step()
    assert row.status == doctor.WARN and "no C++ compiler" in row.detail and "g++" in row.fix


def test_doctor_command_prints_a_table():
    app = typer.Typer()
    doctor.register(app)

    @app.command("noop")  # a second command, so typer keeps ``doctor`` as a subcommand name
    def noop() -> None:
        pass

    result = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "ssmkit doctor" in result.output and "pykeops" in result.output and "auto: cauchy" in result.output
