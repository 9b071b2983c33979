"""The CLI: bad recipes and overrides give exit code 2 and one line on stderr; recipes list/show/cp."""
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssmkit.cli import app

GOOD = """\
# a tiny recipe for the tests
task: {name: shift, seq_len: 16, samples_per_epoch: 64, val_samples: 16}
model: {d_model: 8, n_layers: 1, mixer: {name: s4d, d_state: 8}}
optimizer: {name: adamw, lr: 1.0e-3}
train: {epochs: 1, batch_size: 8}
"""


@pytest.fixture()
def good(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


# (arguments after the recipe path or a full command, with {good} / {bad} placeholders; fragment of the message)
BAD = [
    (["train", "no/such/recipe.yaml"], None, "no recipe file"),
    (["train", "{bad}"], "task: {name: shift\n", "malformed YAML"),
    (["train", "{bad}"], "- a\n- b\n", "a recipe is a mapping"),
    (["train", "{bad}"], GOOD + "optimiser: {lr: 1}\n", "did you mean 'optimizer'"),
    (["train", "{bad}"], "model: {d_model: 8}\n", "missing the task section"),
    (["train", "{good}", "optimizer.lrr=1e-3"], None, "unknown key optimizer.lrr (did you mean 'lr'?)"),
    (["train", "{good}", "optimizer.lr=-1e-3"], None, "optimizer.lr must be > 0.0, got -0.001"),
    (["train", "{good}", "optimizer.lr=0"], None, "optimizer.lr must be > 0.0"),
    (["train", "{good}", "train.batch_size=abc"], None, "train.batch_size must be int, got 'abc'"),
    (["train", "{good}", "train.epochs=true"], None, "train.epochs must be int"),
    (["train", "{good}", "train.batch_size=3.5"], None, "train.batch_size must be int"),
    (["train", "{good}", "model.mixer.name=s4dd"], None, "unknown model.mixer.name 's4dd' (did you mean 's4d'?)"),
    (["train", "{good}", "model.mixer.d_stat=64"], None, "unknown option model.mixer.d_stat"),
    (["train", "{good}", "model.mixer.d_state=big"], None, "model.mixer.d_state must be int, got 'big'"),
    (["train", "{good}", "model.mixer.d_state=-4", "--dry-run"], None, "d_state must be positive"),
    (["train", "{good}", "model.mixer.d_model=4"], None, "model.mixer.d_model is set by the model"),
    (["train", "{good}", "model.layer.kernel=s4d"], None, "model.layer is now model.mixer"),
    (["train", "{good}", "task.L=2"], None, "task.L is now task.seq_len"),
    (["train", "{good}", "task.name=shfit"], None, "unknown task.name 'shfit' (did you mean 'shift'?)"),
    (["train", "{good}", "task.LL=5"], None, "unknown option task.LL"),
    (["train", "{good}", "task.seq_len=2", "--dry-run"], None, "num_shifts must be in [1, seq_len=2]"),
    (["train", "{good}", "train.mixed_precision=fp32"], None, "choose one of no, bf16, fp16"),
    (["train", "{good}", "train.mixed_precision=fp16", "--dry-run"], None, "fp16 needs a GPU"),
    (["train", "{good}", "optimizer.lr"], None, "not of the form key.sub=value"),
    (["train", "{good}", "optimizer.lr.x=1"], None, "optimizer.lr is 0.001, not a section"),
    (["train", "{good}", "model.dropout=1.5"], None, "model.dropout must be < 1.0"),
    (["train", "{good}", "scheduler.name=cosin"], None, "did you mean 'cosine'"),
    (["train", "{good}", "train.log_with=[mlflow]"], None, "train.log_with has 'mlflow'"),
    (["train", "{good}", "optimizer.betas=[0.9]"], None, "optimizer.betas must be two numbers"),
    (["train", "{good}", "train.batch_size=1000", "--dry-run"], None, "larger than the training set"),
    (["train", "{good}", "--max-step", "5"], None, "No such option"),
    (["train", "{good}", "--max-steps", "0"], None, "--max-steps"),
    (["train"], None, "missing RECIPE"),
    (["train", "--resume", "{tmp}/nope"], None, "no run directory or checkpoint"),
    (["eval", "{tmp}/nope"], None, "no run directory or checkpoint"),
    (["eval", "{tmp}", "--split", "train"], None, "choose val or test"),
    (["recipes", "show", "quick/s4d-shfit"], None, "did you mean 'quick/s4d-shift'"),
    (["nosuchcommand"], None, "No such command"),
]


@pytest.mark.parametrize("args,bad_text,fragment", BAD, ids=[f"{i}-{c[2][:30]}" for i, c in enumerate(BAD)])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, good, args, bad_text, fragment):
    bad = write(tmp_path, bad_text) if bad_text is not None else ""
    args = [a.format(good=good, bad=bad, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_one_real_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ssmkit", "train", str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: no recipe file")
    assert "Traceback" not in result.stderr


def test_dry_run_builds_and_runs_one_batch(good, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", str(good), "model.mixer.lr=1e-4", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "parameter groups" in result.output and "one batch: loss" in result.output
    assert "0.0001" in result.output  # the kernel's own lr group
    assert not (tmp_path / "runs").exists()


def test_recipes_list_show_cp(tmp_path):
    runner = CliRunner()
    listing = runner.invoke(app, ["recipes"])
    assert listing.exit_code == 0 and "quick/s4d-shift" in listing.output and "S4D learns" in listing.output
    shown = runner.invoke(app, ["recipes", "show", "quick/s4d-shift"])
    assert shown.exit_code == 0 and "name: s4d-shift" in shown.output
    copied = runner.invoke(app, ["recipes", "cp", "quick/s4d-shift", str(tmp_path)])
    assert copied.exit_code == 0 and (tmp_path / "s4d-shift.yaml").read_text() == shown.output
    again = runner.invoke(app, ["recipes", "cp", "quick/s4d-shift", str(tmp_path / "s4d-shift.yaml")])
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_every_shipped_recipe_validates():
    from ssmkit.recipe import load_recipe, recipes_root, shipped_recipes

    assert (recipes_root() / "quick" / "s4d-shift.yaml").is_file()
    for name in shipped_recipes():
        if name.startswith(("quick/", "synthetic/")):
            load_recipe(name)


def test_recipes_ship_inside_the_package():
    """The package's recipes folder is the checkout's recipes/ (a link), so wheels carry the same files."""
    import ssmkit

    pkg = Path(ssmkit.__file__).parent / "recipes"
    assert (pkg / "quick" / "s4d-shift.yaml").is_file()


def test_version():
    import ssmkit

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"ssmkit {ssmkit.__version__} (torch ")
    real = subprocess.run([sys.executable, "-m", "ssmkit", "--version"], capture_output=True, text=True, timeout=120)
    assert real.returncode == 0 and real.stdout == result.output and real.stderr == ""


@pytest.mark.parametrize("pattern,expect,refuse", [
    ("s4/lra-*", {"s4/lra-image", "s4/lra-listops", "s4/lra-pathfinder"}, {"s4/scifar", "dss/lra-image", "s5/lra-image"}),
    ("CIFAR", {"s4/scifar", "lssl/scifar", "s5/lra-image"}, {"quick/s4d-shift", "s4/lra-listops"}),  # name or description
    ("quick/s4d-shift", {"quick/s4d-shift"}, {"quick/s4d-lm-bytes"}),
])
def test_recipes_pattern_filters_the_list(pattern, expect, refuse):
    from ssmkit.recipe import shipped_recipes

    result = CliRunner().invoke(app, ["recipes", pattern])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.splitlines() if line.startswith(" ")}
    assert expect <= listed and not refuse & listed
    assert listed <= set(shipped_recipes()) and f"{len(listed)} of {len(shipped_recipes())} recipes" in result.output


def test_recipes_show_defaults_lists_every_key():
    """Every key with its value and default; the defaults are the ones an empty recipe resolves to (validate),
    and the keys found before only in error messages are there."""
    import yaml

    from ssmkit.recipe import validate

    result = CliRunner().invoke(app, ["recipes", "show", "quick/s4d-shift", "--defaults"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[1]
    starts = [header.index(name) for name in (" key", " value", " default", " help")]
    rows = {}
    for line in lines[2:]:
        key, value, default = (line[a:b].strip() for a, b in zip(starts, starts[1:]))
        rows[key.lstrip("*")] = (key.startswith("*"), value, default)
    recipe = yaml.safe_load(Path("recipes/quick/s4d-shift.yaml").read_text()) if Path("recipes").is_dir() else None
    bare = validate({"name": "bare", "task": {"name": "shift"}, "model": {"mixer": {"name": "s4d"}}}).to_dict()
    for section in ("model", "optimizer", "scheduler", "train"):
        for key, value in bare[section].items():
            if key == "mixer":
                continue
            changed, shown, default = rows[f"{section}.{key}"]
            expected = "null" if value is None else str(value).lower() if isinstance(value, bool) else None
            if expected is not None:
                assert default == expected, (section, key)
            elif isinstance(value, (int, float)):
                assert float(default) == value, (section, key)
            if recipe is not None and key not in (recipe.get(section) or {}):
                assert not changed and shown == default, (section, key)  # not set by the recipe: the default
    for key in ("train.grad_clip", "train.grad_accum", "train.mixed_precision", "train.save_every", "train.compile"):
        assert key in rows
    assert rows["optimizer.lr"] == (True, "0.004", "0.001") and rows["model.d_model"] == (True, "64", "128")
    assert rows["task.seq_len"][1:] == ("128", "256") and rows["model.mixer.d_state"][2] == "64"  # task and mixer signatures
    assert rows["train.grad_clip"] == (False, "null", "null") and rows["task.name"] == (False, "shift", "required")


@pytest.mark.parametrize("args", [
    ["profile", "--kernel", "s4d", "--length", "16", "--d-model", "4", "--d-state", "4", "--batch", "1", "--repeat", "1",
     "--no-isolate", "--no-floor"],
    ["recipes", "lra-image"],
    ["recipes", "show", "quick/s4d-shift", "--defaults"],
])
def test_tables_are_not_cut_at_80_columns_when_piped(args):
    """Off a terminal (CliRunner's output, like `| less` or `> file`) rows keep their whole width, even with
    COLUMNS=80; before, rich folded or cut every row to 80 columns."""
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "…" not in result.output and max(len(line) for line in lines) > 80
    if args[0] == "profile":
        (row,) = [line for line in lines if line.startswith("│ s4d")]
        assert row.rstrip().endswith("│") and " ok " in row  # the whole row, status column included, on one line
    if args[0] == "recipes" and len(args) == 2:
        assert any(line.strip().startswith("s4/lra-image") and "published" in line for line in lines)
