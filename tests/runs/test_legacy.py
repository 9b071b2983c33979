"""Runs saved before the mixer redesign (issue #23) load with today's code and give the outputs they gave then.

``tests/fixtures/legacy_v0/runs/*`` are real run directories written by ``ssmkit train`` at commit 6977abb
(old recipe keys ``model.layer``/``task.L``, old weights ``blocks.N.layer.*``); ``expected.safetensors`` holds a
fixed input per run and the output the loaded model gave at that commit (``mk_expected.py``). The unit tests
check ``ssmkit.runs.legacy``'s two functions on hand-written old recipes and state dicts, refusals included.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import ssmkit
from ssmkit.errors import RecipeError, UserError
from ssmkit.recipe import validate
from ssmkit.runs.legacy import needs_upgrade, upgrade_recipe, upgrade_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v0"
RUNS = sorted(p.name for p in (FIXTURES / "runs").iterdir() if p.is_dir())


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_fixtures_are_there():
    assert len(RUNS) == 12, RUNS  # attn dlr dss lru lssl mamba s4 s4d s4d-bidi s5 sashimi sgconv
    for name in RUNS:
        old = yaml.safe_load((FIXTURES / "runs" / name / "recipe.yaml").read_text())
        assert "layer" in old["model"] and "L" in old["task"], name  # really the old layout


@pytest.mark.parametrize("name", RUNS)
def test_an_old_run_loads_and_gives_its_stored_output(name, tmp_path):
    run = shutil.copytree(FIXTURES / "runs" / name, tmp_path / name)
    before = _digests(run)
    expected = load_file(str(FIXTURES / "expected.safetensors"))
    old = yaml.safe_load((run / "recipe.yaml").read_text())

    loaded = ssmkit.load(run, which="latest")
    assert loaded.step == 2
    assert loaded.recipe.model.mixer["name"] == old["model"]["layer"]["kernel"]
    assert loaded.recipe.task["seq_len"] == old["task"]["L"]
    with torch.no_grad():
        y = loaded.model(expected[f"{name}.input"])
    y = y[0] if isinstance(y, tuple) else y
    torch.testing.assert_close(y.float(), expected[f"{name}.output"], rtol=1e-5, atol=1e-6)
    assert _digests(run) == before  # loading never rewrites the old run


# --- upgrade_recipe ---
def _old(layer: dict, **task) -> dict:
    return {"name": "old", "task": {"name": "shift", "L": 16, **task},
            "model": {"d_model": 8, "n_layers": 1, "layer": layer, "backbone": "sequence"},
            "train": {"batch_size": 2}}


def test_recipe_keys_are_renamed_and_the_result_validates():
    old = _old({"kernel": "s4d", "d_state": 4, "output": "linear", "rate": 2.0})
    frozen = yaml.safe_dump(old)
    new, changes = upgrade_recipe(old)
    assert yaml.safe_dump(old) == frozen  # the input is not changed
    assert new["task"] == {"name": "shift", "seq_len": 16}
    assert new["model"]["mixer"] == {"name": "s4d", "d_state": 4, "output": "linear"}
    assert new["model"]["rate"] == 2.0 and "layer" not in new["model"]
    assert list(new["model"]) == ["d_model", "n_layers", "mixer", "rate", "backbone"]  # the order is kept
    assert "task.L -> task.seq_len" in changes and any("model.rate" in c for c in changes)
    assert not needs_upgrade(new) and needs_upgrade(old)
    recipe = validate(new)
    assert recipe.model.mixer == {"name": "s4d", "d_state": 4, "output": "linear"} and recipe.model.rate == 2.0
    assert upgrade_recipe(new) == (new, [])  # today's layout: nothing to do


def test_l_max_becomes_seq_len_and_two_lengths_are_refused():
    new, _ = upgrade_recipe({"task": {"name": "listops", "l_max": 64}, "model": {"layer": {"kernel": "s4d"}}})
    assert new["task"] == {"name": "listops", "seq_len": 64}
    with pytest.raises(RecipeError, match="keep one of them as task.seq_len"):
        upgrade_recipe({"task": {"name": "shift", "L": 8, "seq_len": 8}})


@pytest.mark.parametrize("layer, mixer", [
    # the old layer put a GLU after attention unless told otherwise; today's attention has no output map by default
    ({"kernel": "attn", "n_heads": 2}, {"name": "attn", "n_heads": 2, "output": "glu"}),
    ({"kernel": "attn", "n_heads": 2, "output": "linear"}, {"name": "attn", "n_heads": 2, "output": "linear"}),
    # activation auto: GELU after kernels, S5 and LRU (today's default too), none after attention and Mamba
    ({"kernel": "s4d", "activation": "auto"}, {"name": "s4d"}),
    ({"kernel": "lru", "activation": "auto", "output": "glu"}, {"name": "lru", "output": "glu"}),
    ({"kernel": "attn", "activation": "auto", "output": None}, {"name": "attn", "output": None}),
    ({"kernel": "attn", "activation": "gelu", "output": "glu"}, {"name": "attn", "activation": "gelu", "output": "glu"}),
    ({"kernel": "s4d", "activation": "glu", "channels": 2}, {"name": "s4d", "activation": "glu", "channels": 2}),
    # Mamba's old layer: no activation, output null (an identity); today's mamba has neither option
    ({"kernel": "mamba", "output": None, "d_state": 4}, {"name": "mamba", "d_state": 4}),
    ({"kernel": "mamba", "output": None, "activation": "id", "dropout": 0.0}, {"name": "mamba"}),
    ({"d_state": 4}, {"name": "s4d", "d_state": 4}),  # no kernel: the old default s4d
])
def test_old_layer_defaults_are_written_out_where_todays_differ(layer, mixer):
    new, changes = upgrade_recipe(_old(layer))
    assert new["model"]["mixer"] == mixer
    validate(new)
    if mixer == {"name": "attn", "n_heads": 2, "output": "glu"}:
        assert any("model.mixer.output: glu" in c for c in changes)


@pytest.mark.parametrize("layer, words", [
    ({"kernel": "mamba", "d_state": 4}, "output 'glu'"),  # the old default GLU after Mamba: no place today
    ({"kernel": "mamba", "output": "linear"}, "output 'linear'"),
    ({"kernel": "mamba", "output": None, "activation": "gelu"}, "activation 'gelu'"),
    ({"kernel": "mamba", "output": None, "dropout": 0.1}, "model.layer.dropout=0.1"),
    ({"kernel": "s4d", "nope": 1}, "model.layer.nope has no option in today's mixer 's4d'"),
    ({"kernel": "gru"}, "model.layer.kernel 'gru' is not a mixer today"),
])
def test_an_old_model_without_an_equivalent_is_refused_in_one_line(layer, words):
    with pytest.raises(RecipeError) as e:
        upgrade_recipe(_old(layer))
    message = str(e.value)
    assert words in message and "\n" not in message
    assert "retrain it" in message  # says what to do instead


# --- upgrade_state_dict ---
def test_state_dict_keys_follow_the_mapping():
    t = {k: torch.full((2,), float(i)) for i, k in enumerate([
        "encoder.weight", "blocks.0.norm.norm.weight", "blocks.0.layer.D", "blocks.0.layer.kernel.log_dt",
        "blocks.0.layer.out.0.weight", "blocks.1.layer.mixer.out.weight", "blocks.1.layer.out.weight",
        "units.up0_0.blocks.3.layer.kernel.C", "decoder.bias"])}
    new = upgrade_state_dict(t)
    assert list(new) == [
        "encoder.weight", "blocks.0.norm.norm.weight", "blocks.0.mixer.D", "blocks.0.mixer.kernel.log_dt",
        "blocks.0.mixer.post.out.0.weight", "blocks.1.mixer.out.weight", "blocks.1.mixer.post.out.weight",
        "units.up0_0.blocks.3.mixer.kernel.C", "decoder.bias"]
    assert all(new_v is old_v for new_v, old_v in zip(new.values(), t.values()))  # the tensors, renamed
    assert upgrade_state_dict(new) == new  # today's keys: unchanged


@pytest.mark.parametrize("key", ["blocks.0.layer.act.weight", "blocks.0.layer.dropout.p", "blocks.2.layer",
                                 "units.center.blocks.0.layer.Dx"])
def test_an_unknown_old_layer_key_is_refused_in_one_line(key):
    with pytest.raises(UserError) as e:
        upgrade_state_dict({key: torch.zeros(1)})
    message = str(e.value)
    assert key in message and "\n" not in message and "retrain it" in message


def test_every_fixture_key_under_an_old_layer_has_a_new_name():
    for name in RUNS:
        (weights,) = (FIXTURES / "runs" / name / "checkpoints").glob("step-*/model.safetensors")
        old = load_file(str(weights))
        new = upgrade_state_dict(old)
        assert len(new) == len(old)
        assert not [k for k in new if ".layer." in k], name
