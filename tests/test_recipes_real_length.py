"""Every shipped recipe's model runs one finite forward + backward at the recipe's real sequence length.

A test at L = 48 proves the math, not the recipe: the LRU LRA recipes gave loss NaN on their first batch at
L = 4,096 (``ops/scan.py`` raised an underflowed decay to the power 0) while every small test passed. Here each
recipe keeps its task, its lengths (LRA text 4,096 / 4,000, ListOps 2,048, Path-X 16,384, Pathfinder
segmentation up to 512 x 512 = 262,144, speech 16,000, the long-shift recipes up to 1,048,576) and its mixer
options (init, r_min, dt range, mode, disc, bidirectional, ...); only the width (d_model 8; 4 beyond L = 65,536), depth (at most 2
layers), state size (d_state at most 8, S5 blocks 1, n_ssm 1), attention heads (1), the batch (1) and the number
of samples shrink, by the same overrides as ``tests/test_all_recipes.py`` (``shrink_overrides(lengths=False)``).
One batch comes from the task's own loader on tiny data in the real on-disk formats, goes through the training
loop's forward (lengths for padded tasks) and the task's loss; the loss and every gradient must be finite.

Recipes whose shrunk model and task coincide with an earlier one's are run once (the others skip, naming it).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_all_recipes as shipped
import torch

from ssmkit.recipe import build_task, load_recipe, load_yaml
from ssmkit.runs.evaluate import make_loader
from ssmkit.runs.model import forward
from ssmkit.tasks import pathfinder
from ssmkit.tasks.lm import write_synthetic_corpus

#: the module-scoped fixture of tests/test_all_recipes.py: tiny data in every real on-disk format
data_root = shipped.data_root

#: Pathfinder resolutions the shipped recipes use beyond the 32 x 32 images of ``data_root``.
PATHFINDER_RESOLUTIONS = (128, 256, 512)


#: Above this length the width shrinks further (d_model 4), and attention runs one head: the cost is the length's.
VERY_LONG = 1 << 16


def _recipe(name: str, runs: Path):
    path = shipped.RECIPES_DIR / f"{name}.yaml"
    data = load_yaml(path)
    overrides = shipped.shrink_overrides(data, runs, lengths=False, batch_size=1)
    if (_expected_length(data["task"]) or 0) > VERY_LONG:
        overrides.append("model.d_model=4")
    if "n_heads" in ((data.get("model") or {}).get("mixer") or {}):
        overrides.append("model.mixer.n_heads=1")  # full attention's cost is heads x L^2
    return load_recipe(str(path), overrides)


#: (shrunk model, task) -> the recipe that ran it: recipes that coincide after shrinking run once
_RAN: dict[str, str] = {}


def _expected_length(task: dict) -> int | None:
    """The sequence length the recipe's task options name, where they name one."""
    if task["name"] in ("pathfinder", "pathx", "pathfinder-segmentation"):
        return int(task.get("resolution", 32)) ** 2
    if "seq_len" in task:
        return int(task["seq_len"])
    return None


@pytest.fixture(scope="module")
def real_data(request):
    """``data_root`` (tiny data in every real format) plus Pathfinder images at 128, 256 and 512."""
    data_root = request.getfixturevalue("data_root")
    for resolution in PATHFINDER_RESOLUTIONS:
        pathfinder.generate(4, resolution, out=pathfinder.dataset_dir(resolution, root=data_root), segmentation=True)
    write_synthetic_corpus(data_root / "wikitext-103", n_paragraphs=400)  # > 8,192 tokens: one seq_len window
    return data_root


@pytest.mark.slow
@pytest.mark.parametrize("name", shipped.RECIPES)
def test_one_finite_training_step_at_the_real_length(name, real_data, tmp_path):
    recipe = _recipe(name, tmp_path / "runs")
    key = json.dumps([recipe.task, repr(recipe.model)], sort_keys=True, default=repr)
    if key in _RAN:
        pytest.skip(f"after shrinking, the same model and task as {_RAN[key]}, which ran this step")
    _RAN[key] = name
    torch.manual_seed(0)
    task = build_task(recipe)
    task.check_data()
    model = shipped._loop_model(recipe, task)
    model.train()
    x, y = next(iter(make_loader(task, "train", recipe, recipe.train.seed)))
    expected = _expected_length(recipe.task)
    if expected is not None:
        # at least the named length: some tasks append positions (markers, a forecast horizon, a reversed copy)
        assert max(x.shape) >= expected, f"{name}: input {tuple(x.shape)} is shorter than the recipe's length {expected}"
    loss = task.loss(forward(model, task, x), y)
    assert torch.isfinite(loss), f"{name}: loss {loss.item()} at input shape {tuple(x.shape)}"
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients at input shape {tuple(x.shape)} in {bad}"
    assert any(p.grad is not None for p in model.parameters()), f"{name}: no gradient reached the model"
