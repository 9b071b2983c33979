"""``ssmkit profile`` on a tiny sweep: table, JSON, CSV and a PNG; clear rows for unknown kernels."""
import json

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from ssmkit import profile
from ssmkit.cli.profile import profile_command
from ssmkit.errors import UserError


def app():
    a = typer.Typer()
    a.command("profile")(profile_command)

    @a.command("noop")
    def noop() -> None:
        pass

    return a


def test_parse_lengths():
    assert profile.parse_lengths("1k,4k,1M,100") == [1024, 4096, 1 << 20, 100]
    with pytest.raises(UserError, match="k or M"):
        profile.parse_lengths("4g")


def test_tiny_sweep_writes_table_json_and_png(tmp_path):
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    refused = CliRunner().invoke(app(), ["profile", "--kernel", "s4d,nosuchkernel", "--out", str(out)])
    assert isinstance(refused.exception, UserError) and not out.exists()  # before anything runs
    assert "unknown --kernel 'nosuchkernel'" in str(refused.exception)
    args = ["profile", "--kernel", "s4d", "--length", "64,128", "--d-model", "4", "--d-state", "4",
            "--batch", "2", "--repeat", "1", "--no-isolate", "--out", str(out), "--plot", str(png)]
    result = CliRunner().invoke(app(), args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "ssmkit profile" in result.output and "tokens/s" in result.output
    data = json.loads(out.read_text())
    pts = {(p["kernel"], p["length"]): p for p in data["points"]}
    for L in (64, 128):
        p = pts[("s4d", L)]
        assert p["status"] == "ok" and p["time_ms"] > 0 and p["floor_ms"] > 0 and p["tokens_per_s"] > 0
        assert p["ratio"] == pytest.approx(p["time_ms"] / p["floor_ms"])
    with Image.open(png) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_isolated_point_measures_memory_in_a_child_process(tmp_path):
    spec = dict(kernel="s4d", length=256, mode="fwd+bwd", backend="auto", batch=2, d_model=8, d_state=8, repeat=1,
                floor=False, device="cpu", threads=1)
    row = profile.run_point(spec, isolate=True)
    assert row["status"] == "ok", row
    assert row["peak_mb"] is not None and row["peak_mb"] >= 0 and row["time_ms"] > 0
    out = tmp_path / "p.csv"
    profile.write([row], out)
    assert out.read_text().splitlines()[0].startswith("kernel,length,mode")


def test_step_mode_and_bad_mode():
    row = profile.measure_point("s4d", 16, "step", "auto", 1, 4, 4, repeat=1)
    assert row["status"] == "ok" and row["tokens_per_s"] > 0
    result = CliRunner().invoke(app(), ["profile", "--mode", "backward"])
    assert result.exit_code != 0


def test_output_map_is_chosen_and_checked(monkeypatch):
    built = []
    real = profile._build_layer
    monkeypatch.setattr(profile, "_build_layer", lambda *a: built.append(real(*a)) or built[-1])
    assert profile.measure_point("sgconv", 16, "fwd", "auto", 1, 4, 4, repeat=1, output="linear")["status"] == "ok"
    layer = built[-1]
    assert isinstance(layer.post.out, torch.nn.Linear) and layer.kernel.l_max == 16  # SGConv spans the input
    assert profile.measure_point("s4d", 16, "fwd", "auto", 1, 4, 4, repeat=1, output="none")["status"] == "ok"
    assert isinstance(built[-1].post.out, torch.nn.Identity)  # --output none: no output map
    assert profile.measure_point("hyena", 40, "fwd", "auto", 1, 4, None, repeat=1)["status"] == "ok"
    assert built[-1].filters.l_max == 40  # Hyena's implicit filter spans the input too
    result = CliRunner().invoke(app(), ["profile", "--output", "gated"])
    assert isinstance(result.exception, UserError) and "glu, linear, none" in str(result.exception)


def test_every_registered_mixer_is_profiled_forward_backward_and_step():
    """Each name of MIXERS builds through build_mixer with the profile's options and gives a finite point in
    fwd+bwd; the recurrent ones also in step mode, and those without a recurrence say so."""
    from ssmkit.mixers import MIXERS

    assert set(profile.KNOWN_KERNELS) == set(MIXERS.names())
    for name in MIXERS.names():
        row = profile.measure_point(name, 32, "fwd+bwd", "auto", 1, 32, None, repeat=1, floor=False)
        assert row["status"] == "ok" and row["time_ms"] > 0, (name, row["status"])
        own = profile.mixer_parameters(name).get("d_state")
        assert row["d_state"] == (None if own is None else own.default), name  # unset: the mixer's own N
        step = profile.measure_point(name, 8, "step", "auto", 1, 32, 8, repeat=1)
        assert step["status"] == "ok" or step["status"] == f"{name} has no recurrent step", (name, step["status"])
        if name in ("s4d", "mamba", "mamba2", "gla", "gated_deltanet", "rglru", "hyena"):
            assert step["status"] == "ok" and step["tokens_per_s"] > 0, name


@pytest.mark.parametrize("args, message", [
    (["--kernel", "gla", "--d-state", "8"], "--d-state does not apply to gla (no d_state option)"),
    (["--kernel", "rglru,gla", "--output", "linear"], "--output does not apply to rglru, gla (no output option)"),
    (["--kernel", "hyena", "--backend", "torch"], "--backend does not apply to hyena (no backend option)"),
    (["--kernel", "mamba2", "--backend", "keops"], "mixer 'mamba2' refuses these profile options"),
    (["--kernel", "mamba2", "--d-model", "40"], "mixer 'mamba2' refuses these profile options: headdim"),
])
def test_options_that_reach_no_chosen_mixer_are_refused_before_running(args, message, tmp_path):
    out = tmp_path / "p.json"
    result = CliRunner().invoke(app(), ["profile", *args, "--length", "16", "--out", str(out)])
    assert isinstance(result.exception, UserError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not out.exists()


def test_options_reach_the_mixers_that_have_them(tmp_path):
    """--d-state goes to s4d and not to gla (whose point records None); both rows are measured."""
    out = tmp_path / "p.json"
    args = ["profile", "--kernel", "s4d,gla", "--length", "32", "--d-model", "8", "--d-state", "6", "--batch", "1",
            "--repeat", "1", "--no-isolate", "--no-floor", "--out", str(out)]
    result = CliRunner().invoke(app(), args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    pts = {p["kernel"]: p for p in json.loads(out.read_text())["points"]}
    assert pts["s4d"]["d_state"] == 6 and pts["gla"]["d_state"] is None
    assert profile.default_d_state("mamba") == 16 and profile.mixer_spec("mamba", None, "auto", 32) == {
        "name": "mamba", "backend": "auto"}  # unset: the mixer's own d_state
    assert pts["s4d"]["status"] == pts["gla"]["status"] == "ok"
    assert profile.mixer_spec("s4d", 6, "auto", 32)["d_state"] == 6
    assert profile._build_layer("s4d", 8, 6, "auto", 32).kernel.N == 6
