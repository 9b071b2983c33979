"""Every shipped recipe parses, builds its model and takes one optimizer step on tiny stand-in data, so
that no recipe can rot; and ``ssmkit recipes`` lists them all, grouped, with their expected result.

Sizes are shrunk by the same ``key=value`` overrides a user would type (d_model, n_layers, d_state,
lengths, batch size). Real-data tasks read tiny files written here in their real on-disk formats under a
temporary ``$SSMKIT_DATA`` (the writers of ``tests/tasks``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ssmkit.recipe import build_task, load_recipe, load_yaml, recipe_description, shipped_recipes
from ssmkit.runs.evaluate import make_loader
from ssmkit.runs.model import build_loop_model
from ssmkit.train.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).parent / "tasks"))
from test_train_tasks import make_data  # noqa: E402

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPES = sorted(p.relative_to(RECIPES_DIR).with_suffix("").as_posix() for p in RECIPES_DIR.rglob("*.yaml"))
SYNTHETIC = {"shift", "cumsum", "cummax", "reverse", "sort", "masked_select", "masked_select_fixed", "solve",
             "solve_fixed", "context_shift", "mips", "adding"}
#: Length-type task options and their tiny values.
TASK_SHRINK = {"seq_len": 32, "M": 4, "samples_per_epoch": 4, "val_samples": 2, "test_samples": 2}
#: Tiny seq_len by task where it is not 32: 16 for the synthetic tasks, 64 for ListOps and LRA text (their tiny data).
SEQ_LEN = {**dict.fromkeys((*SYNTHETIC, "selective_copying", "induction_heads", "copying"), 16),
           **dict.fromkeys(("listops", "listops-subtrees", "imdb", "aan"), 64)}
#: Task names whose tiny data is 32 x 32 Pathfinder images (Path-X at its real 128 x 128 would be L = 16K).
PATHFINDER_32 = {"pathfinder", "pathx", "pathfinder-segmentation"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Tiny datasets in the real formats for every real task; ``$SSMKIT_DATA`` points here."""
    root = tmp_path_factory.mktemp("data")
    for name in ("listops", "listops-subtrees", "pathfinder", "smnist", "scifar", "sc10", "imdb", "aan", "lm", "sc09", "forecast", "own"):
        make_data(name, root)  # one writer per on-disk format, shared with tests/tasks/test_train_tasks.py
    old = os.environ.get("SSMKIT_DATA")
    os.environ["SSMKIT_DATA"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SSMKIT_DATA", None)
    else:
        os.environ["SSMKIT_DATA"] = old


#: Task options that count samples, not positions (kept tiny also at the real lengths).
SAMPLE_COUNTS = ("samples_per_epoch", "val_samples", "test_samples")


def shrink_overrides(data: dict, runs: Path, lengths: bool = True, batch_size: int = 2) -> list[str]:
    """``key=value`` overrides that keep the recipe's choices but make every size tiny. ``lengths=False``
    keeps every length as shipped (task lengths, resolutions, sample rates, SGConv's l_max, kernel and
    attention-chunk lengths) and shrinks only width, depth, state size and sample counts
    (tests/test_recipes_real_length.py)."""
    task, model = data["task"], data.get("model") or {}
    mixer = model.get("mixer") or {}
    out = [f"train.runs_dir={runs}", f"train.batch_size={batch_size}", "train.grad_accum=1", "train.num_workers=0",
           "model.d_model=8", f"model.n_layers={min(int(model.get('n_layers', 4)), 2)}"]
    for key, value in TASK_SHRINK.items():
        if key in task and (lengths or key in SAMPLE_COUNTS):
            tiny = SEQ_LEN.get(task["name"], value) if key == "seq_len" else value
            out.append(f"task.{key}={min(int(task[key]), tiny)}")
    if task["name"] in SYNTHETIC:
        out += ["task.samples_per_epoch=4", "task.val_samples=2"]
        if "seq_len" not in task and lengths:
            out.append("task.seq_len=16")
    if lengths and task["name"] in PATHFINDER_32:
        out.append("task.resolution=32")
    if lengths and task["name"] in ("sc10", "sc35"):
        out.append("task.sample_rate=8000")
    return out + _shrink_mixer(mixer, lengths)


def _shrink_mixer(mixer: dict, lengths: bool) -> list[str]:
    out = []
    if "d_state" in mixer:
        out.append(f"model.mixer.d_state={min(int(mixer['d_state']), 8)}")
    if "blocks" in mixer:
        out.append("model.mixer.blocks=1")  # S5's HiPPO-N blocks must divide the shrunk d_state
    if "n_ssm" in mixer:
        out.append("model.mixer.n_ssm=1")
    if "n_heads" in mixer:
        out.append("model.mixer.n_heads=2")
    if not lengths:
        return out
    if "kernel_dim" in mixer:
        out.append(f"model.mixer.kernel_dim={min(int(mixer['kernel_dim']), 4)}")
    if "l_max" in mixer:
        out.append(f"model.mixer.l_max={min(int(mixer['l_max']), 1024)}")
    if mixer.get("max_kernel_length"):
        out.append("model.mixer.max_kernel_length=512")
    if mixer.get("chunk_size"):
        out.append("model.mixer.chunk_size=8")
    return out


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_one_step(name, data_root, tmp_path):
    path = RECIPES_DIR / f"{name}.yaml"
    data = load_yaml(path)
    full = load_recipe(str(path))  # the recipe as shipped is valid
    assert full.name and full.task["name"]
    recipe = load_recipe(str(path), shrink_overrides(data, tmp_path / "runs"))
    assert recipe.model.mixer["name"] == full.model.mixer["name"]
    torch.manual_seed(0)
    task = build_task(recipe)
    task.check_data()
    model = _loop_model(recipe, task)
    optimizer = build_optimizer(model, recipe.optimizer)
    x, y = next(iter(make_loader(task, "train", recipe, recipe.train.seed)))
    model.train()
    loss = task.loss(model(x), y)
    assert torch.isfinite(loss), f"{name}: loss {loss}"
    before = [p.detach().clone() for p in model.parameters()]
    loss.backward()
    optimizer.step()
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    assert changed > 0, f"{name}: one optimizer step changed no parameter"


#: A header names its source (the word, or the reference repository), its result and its hardware.
def _loop_model(recipe, task):
    """The model exactly as the training loop builds it (its two-tower wrap for AAN and rate included)."""
    return build_loop_model(recipe, task)


HEADER_WORDS = {"source": ("source", "after ", "state-spaces/", "ag1988/", "ctlllll/"),
                "published": ("published", "expected"), "hardware": ("hardware",)}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_header_and_description(name):
    """A comment header naming the source, the published/expected result and the hardware; a description
    (what ``ssmkit recipes`` shows) that states the expected result."""
    text = (RECIPES_DIR / f"{name}.yaml").read_text()
    header = " ".join(line for line in text.splitlines() if line.startswith("#")).lower()
    missing = [w for w, markers in HEADER_WORDS.items() if not any(m in header for m in markers)]
    assert not missing, f"{name}: header comment lacks {missing}"
    description = yaml.safe_load(text).get("description", "")
    assert any(w in description.lower() for w in ("published", "expect")), f"{name}: description {description!r} states no expected result"


def test_ssmkit_recipes_lists_every_recipe_grouped(monkeypatch):
    from ssmkit.cli import app

    assert sorted(shipped_recipes()) == RECIPES  # the package's recipes folder is this one
    monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    groups = sorted({n.rsplit("/", 1)[0] for n in RECIPES})
    for group in groups:
        assert group in [line.strip() for line in lines], f"group title {group!r} missing"
    for name in RECIPES:
        row = next((line for line in lines if line.split() and line.split()[0] == name), None)
        assert row is not None, f"{name} not listed"
        assert recipe_description(RECIPES_DIR / f"{name}.yaml") in row
        group = name.rsplit("/", 1)[0]
        title = next(i for i, line in enumerate(lines) if line.strip() == group)
        assert lines.index(row) > title
