"""The loop's task hooks: padded lengths reach the model's pooling; ``task.rate`` reaches every mixer's forward
(zero-shot resolution change in ``ssmkit eval``). AAN's ``wrap_model`` is exercised in
tests/tasks/test_train_tasks.py (two steps through ``ssmkit train``)."""
import json

import numpy as np
import soundfile
import torch
import yaml
from typer.testing import CliRunner

import ssmkit.runs.evaluate
from ssmkit.cli import app
from ssmkit.mixers import Mixer
from ssmkit.models import SequenceModel
from ssmkit.recipe import validate
from ssmkit.tasks.speech import SC10_WORDS
from ssmkit.train import loop
from ssmkit.train.loop import build_loop_model, forward


def test_padding_does_not_change_a_mean_pooled_prediction():
    """listops pads with id 0: through the loop's forward helper, extra padding leaves the output unchanged
    (causal layers: positions before the padding do not see it; masked mean pooling ignores it)."""
    recipe = validate({"name": "p", "task": {"name": "listops", "seq_len": 12},
                       "model": {"d_model": 8, "n_layers": 2, "mixer": {"name": "s4d", "d_state": 4}}})
    task = loop.build_task(recipe)
    torch.manual_seed(0)
    model = build_loop_model(recipe, task).eval()
    tokens = torch.randint(1, task.d_input, (2, 7))  # (B, 7) real tokens, no padding id
    short = torch.nn.functional.pad(tokens, (0, 5))  # (B, 12) padded with 0
    long = torch.nn.functional.pad(tokens, (0, 17))  # (B, 24) more padding
    assert task.lengths(short).tolist() == [7, 7]
    with torch.no_grad():
        a, b = forward(model, task, short), forward(model, task, long)
        unmasked = model(long)  # plain mean over 24 positions
    assert a.shape == (2, 10)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (unmasked - a).abs().max() > 1e-3  # without the lengths the padding would change it


def _write_wavs(root, per_word: int = 3):
    base = root / "SpeechCommands" / "speech_commands_v0.02"
    t = np.arange(16000) / 16000
    val, test = [], []
    for k, word in enumerate(SC10_WORDS):
        (base / word).mkdir(parents=True)
        for i in range(per_word):
            wave = 0.1 * np.sin(2 * np.pi * (100 + 50 * k) * t)
            soundfile.write(base / word / f"s{i}_nohash_0.wav", wave.astype(np.float32), 16000)
        val.append(f"{word}/s1_nohash_0.wav")
        test.append(f"{word}/s2_nohash_0.wav")
    (base / "validation_list.txt").write_text("\n".join(val) + "\n")
    (base / "testing_list.txt").write_text("\n".join(test) + "\n")


def test_zero_shot_eval_at_8khz_sets_rate_2(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))
    _write_wavs(tmp_path / "data")
    recipe = {"name": "sc", "task": {"name": "sc10"},
              "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"batch_size": 5, "runs_dir": str(tmp_path / "runs"), "log_every": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(path), "--max-steps", "1", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output

    seen = []
    real_evaluate = ssmkit.runs.evaluate.evaluate

    def spy(model, loader, task, accelerator):  # the rates every mixer's forward got during the evaluation
        rates = []
        hooks = [m.register_forward_pre_hook(lambda mod, args, kwargs: rates.append(kwargs["rate"]), with_kwargs=True)
                 for m in accelerator.unwrap_model(model).modules() if isinstance(m, Mixer)]
        try:
            return real_evaluate(model, loader, task, accelerator)
        finally:
            seen.append((sorted(set(rates)), next(iter(loader))[0].shape))
            for hook in hooks:
                hook.remove()

    monkeypatch.setattr(ssmkit.runs.evaluate, "evaluate", spy)
    out = {}
    for rate in (16000, 8000):
        result = CliRunner().invoke(app, ["eval", str(run), f"task.sample_rate={rate}"])
        assert result.exit_code == 0, result.output
        out[rate] = json.loads(result.stdout.strip().splitlines()[-1])
    (rates16, shape16), (rates8, shape8) = seen
    assert rates16 == [1.0] and shape16[1] == 16000
    assert rates8 == [2.0] and shape8[1] == 8000  # half the samples, twice the step size
    assert out[8000]["rate"] == 2.0 and out[8000]["samples"] == 10
    assert np.isfinite(out[8000]["loss"]) and 0 <= out[8000]["accuracy"] <= 1
    assert out[8000]["loss"] != out[16000]["loss"]


def test_wrapped_model_rate_reaches_the_backbone():
    """A task with both wrap_model and rate: the rate is set on the SequenceModel inside the wrapper."""
    recipe = validate({"name": "w", "task": {"name": "aan", "seq_len": 8},
                       "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}}})
    task = loop.build_task(recipe)
    task.rate = 4.0
    model = build_loop_model(recipe, task)
    backbone = [m for m in model.modules() if isinstance(m, SequenceModel)]
    assert len(backbone) == 1 and model is not backbone[0]
    assert backbone[0].rate == 4.0
    rates = []
    for m in backbone[0].modules():
        if isinstance(m, Mixer):
            m.register_forward_pre_hook(lambda mod, args, kwargs: rates.append(kwargs["rate"]), with_kwargs=True)
    x = torch.randint(1, 257, (3, 2, 8))
    x[:, :, 6:] = 0
    assert forward(model, task, x).shape == (3, 2)
    assert rates and set(rates) == {4.0}  # both towers' mixers ran at the task's rate
