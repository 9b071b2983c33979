"""``ssmkit doctor``: every check reports a status, missing parts come with a fix, the command runs."""
import torch
import typer
from typer.testing import CliRunner

from ssmkit import doctor
from ssmkit.cli.doctor import doctor_command
from ssmkit.ops import backends, dispatch


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
    app.command("doctor")(doctor_command)

    @app.command("noop")  # a second command, so typer keeps ``doctor`` as a subcommand name
    def noop() -> None:
        pass

    result = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "ssmkit doctor" in result.output and "pykeops" in result.output and "auto: cauchy" in result.output


def test_auto_rows_cover_every_table_and_a_failed_self_test_is_a_warning(monkeypatch):
    """One auto: row per op table, naming the pick and why the ones before it were skipped; an extension that imports
    but fails its self-tests (a broken build) turns the rows it was skipped in into warnings with a fix."""

    class Broken:  # imports, has every kernel, and every kernel fails
        def has_cuda(self):
            return False

        def __getattr__(self, name):
            def kernel(*args):
                raise RuntimeError("a broken build")
            return kernel

    backends.reset()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(backends._probes, "extension", backends.Probe(True, "pretend", Broken()))
    rows = {r.component: r for r in doctor.check_auto()}
    assert set(rows) == {f"auto: {op.label.lower()}" for op in dispatch.OPS.values()}
    assert {"auto: cauchy", "auto: vandermonde", "auto: selective-scan", "auto: causal-convolution", "auto: ssd"} <= set(rows)
    for name, pick in (("auto: selective-scan", "torch"), ("auto: causal-convolution", "torch")):
        row = rows[name]
        assert row.status == doctor.WARN and row.detail.startswith(f"{pick} (Mamba, float32, cpu)"), row
        assert "extension not used: self-test raised RuntimeError: a broken build" in row.detail
        assert "extension failed its self-test" in row.fix
    assert rows["auto: cauchy"].status == doctor.WARN and rows["auto: cauchy"].detail.startswith("chunked (S4,")
    assert rows["auto: ssd"].status == doctor.OK and "mamba_ssm not used: it runs on CUDA only" in rows["auto: ssd"].detail
    backends.reset()
