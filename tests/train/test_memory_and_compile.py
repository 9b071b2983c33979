"""Memory savers and torch.compile through the loop: activation checkpointing changes no gradient,
max_kernel_length trains, and train.compile falls back cleanly (with a warning naming the error)."""
import warnings

import pytest
import torch
from safetensors.torch import load_file

from ssmkit.recipe import validate
from ssmkit.runs.checkpoint import find_checkpoint
from ssmkit.train import loop
from ssmkit.train.loop import build_loop_model, forward, train


def tiny(tmp_path, model=None, **train_options) -> dict:
    return {
        "name": "mem",
        "task": {"name": "cumsum", "seq_len": 16, "samples_per_epoch": 32, "val_samples": 8},
        "model": {"d_model": 8, "n_layers": 2, "dropout": 0.1, "mixer": {"name": "s4d", "d_state": 4}, **(model or {})},
        "optimizer": {"lr": 1e-2},
        "train": {"batch_size": 8, "max_steps": 3, "log_every": 1, "runs_dir": str(tmp_path), **train_options},
    }


def test_activation_checkpointing_gives_the_same_gradients(tmp_path):
    grads = []
    for checkpoint in (False, True):
        recipe = validate(tiny(tmp_path, {"checkpoint": checkpoint}))
        task = loop.build_task(recipe)
        torch.manual_seed(0)
        model = build_loop_model(recipe, task).train()
        x, y = next(iter(loop.make_loader(task, "train", recipe, 0)))
        torch.manual_seed(1)  # the same dropout masks (recomputation replays the RNG state)
        task.loss(forward(model, task, x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    plain, ckpt = grads
    assert plain.keys() == ckpt.keys() and all(torch.equal(plain[k], ckpt[k]) for k in plain)

    # and through the whole loop: three optimizer steps land on the same weights
    runs = [train(validate(tiny(tmp_path, {"checkpoint": c})))["run_dir"] for c in (False, True)]
    a, b = (load_file(str(find_checkpoint(r) / "model.safetensors")) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_max_kernel_length_trains(tmp_path):
    summary = train(validate(tiny(tmp_path, {"mixer": {"name": "s4d", "d_state": 4, "max_kernel_length": 4}})))
    assert summary["status"] == "finished" and summary["step"] == 3


def test_compile_failure_falls_back_with_a_warning(tmp_path, monkeypatch):
    """A forced failure of the compiled model (torch.compile itself takes about a minute on this CPU, so
    the real compile is not run here): the loop warns once with the error and trains eagerly, exactly
    like an uncompiled run."""

    def broken_compile(model, **kw):
        def run(*a, **k):
            raise RuntimeError("inductor: complex64 is not supported\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = train(validate(tiny(tmp_path, compile=True)))
    messages = [str(w.message) for w in caught if "train.compile" in str(w.message)]
    assert len(messages) == 1 and "RuntimeError: inductor: complex64 is not supported" in messages[0]
    assert compiled["compiled"] is False and "complex64" in compiled["compile_error"]
    eager = train(validate(tiny(tmp_path)))
    a, b = (load_file(str(find_checkpoint(s["run_dir"]) / "model.safetensors")) for s in (compiled, eager))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_on_cpu_is_refused(tmp_path):
    from ssmkit.errors import RecipeError

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: FSDP is allowed there")
    with pytest.raises(RecipeError, match="fsdp needs GPUs"):
        train(validate(tiny(tmp_path, distributed="fsdp")))
