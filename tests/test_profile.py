"""``ssmkit profile`` on a tiny sweep: table, JSON, CSV and a PNG; clear rows for unknown kernels."""
import json

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from ssmkit import profile
from ssmkit.errors import UserError


def app():
    a = typer.Typer()
    profile.register(a)

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
    assert isinstance(layer.out, torch.nn.Linear) and layer.kernel.l_max == 16  # SGConv spans the input
    result = CliRunner().invoke(app(), ["profile", "--output", "gated"])
    assert isinstance(result.exception, UserError) and "glu, linear, none" in str(result.exception)
