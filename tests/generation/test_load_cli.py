"""ssmkit.load and `ssmkit generate` on runs trained here for two steps on tiny real-format data:
text to stdout or a file, a PNG of image completions, and the bad inputs (exit code 2, one line)."""
import json
import sys

import pytest
import torch
import yaml
from tasks.test_images import write_mnist  # tests/tasks (tests/ is on sys.path)
from typer.testing import CliRunner

import ssmkit
import ssmkit.runs.evaluate
from ssmkit.cli import app
from ssmkit.errors import UserError
from ssmkit.tasks.lm import write_synthetic_corpus

MODEL = {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}}


def train_run(root, name: str, task: dict, model: dict = MODEL):
    recipe = {"name": name, "task": task, "model": model,
              "train": {"batch_size": 2, "runs_dir": str(root / "runs"), "log_every": 1}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = root / "runs" / name
    result = CliRunner().invoke(app, ["train", str(path), "--max-steps", "2", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    corpus = write_synthetic_corpus(root / "data" / "synthetic-text", n_paragraphs=40)
    train = (corpus / "wiki.train.tokens").read_text().replace("<unk>", "Anna")
    for path in corpus.iterdir():  # a vocabulary without <unk> (an unknown prompt word is an error) that covers every split
        path.write_text(train)
    write_mnist(root / "data", n=4)
    lm = {"name": "lm", "corpus": "synthetic-text", "level": "word", "seq_len": 16, "data_dir": str(root / "data")}
    return {
        "root": root,
        "lm": train_run(root, "lm", lm),
        "lm-sgconv": train_run(root, "lm-sgconv", lm, {**MODEL, "mixer": {"name": "sgconv", "l_max": 16, "kernel_dim": 4}}),
        "density": train_run(root, "density", {"name": "mnist-density", "data_dir": str(root / "data"), "val_fraction": 0.5}),
        "shift": train_run(root, "shift", {"name": "shift", "seq_len": 16, "samples_per_epoch": 8, "val_samples": 4}),
    }


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_load_gives_the_trained_model_in_eval_mode(runs):
    run = ssmkit.load(runs["lm"])
    assert not run.model.training and run.task.name == "lm" and run.recipe.task["seq_len"] == 16
    assert run.step == 2 and run.run_dir == runs["lm"] and run.checkpoint.parent.name == "checkpoints"
    from safetensors.torch import load_file

    saved = load_file(str(run.checkpoint / "model.safetensors"))
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    same = ssmkit.load(run.checkpoint, which="latest")  # a checkpoint folder works too
    x = run.task.encode("The old river was")[None]
    torch.testing.assert_close(same.model(x), run.model(x))
    with pytest.raises(UserError, match="choose best or latest"):
        ssmkit.load(runs["lm"], which="newest")


def test_eval_loads_through_load(runs, monkeypatch):
    calls = []
    real = ssmkit.runs.evaluate.load  # ssmkit eval (evaluate_run) reads the run through ssmkit.load
    assert real is ssmkit.load
    monkeypatch.setattr(ssmkit.runs.evaluate, "load", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    result = invoke("eval", runs["lm"])
    assert result.exit_code == 0, result.output
    assert calls and calls[0][1].get("check_data") is True
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 2


def test_generate_text_to_stdout_deterministic_for_a_seed(runs):
    args = ["generate", runs["lm"], "--prompt", "The old river", "--max-new-tokens", "12", "--seed", "3"]
    a, b, c = invoke(*args), invoke(*args), invoke(*args[:-1], "4")
    assert a.exit_code == 0, a.output
    assert a.stdout.startswith("The old river ") and len(a.stdout.split()) > 3
    assert a.stdout == b.stdout and a.stdout != c.stdout
    assert "tokens/s (step: eager" in a.stderr


def test_generate_greedy_text_equals_the_library(runs):
    result = invoke("generate", runs["lm"], "--prompt", "The river of", "--max-new-tokens", "8", "--temperature", "0")
    assert result.exit_code == 0, result.output
    run = ssmkit.load(runs["lm"])
    g = ssmkit.generate(run.model, run.task.encode("The river of"), 8, temperature=0)
    assert result.stdout.rstrip("\n") == run.task.decode(g.tokens[0])


def test_generate_without_prompt_uses_test_windows_and_writes_a_file(runs, tmp_path):
    out = tmp_path / "samples.txt"
    result = invoke("generate", runs["lm"], "--num-samples", "2", "--max-new-tokens", "5", "--out", out, "--top-k", "3")
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "===== sample 0 =====" in text and "===== sample 1 =====" in text and result.stdout == ""
    again = invoke("generate", runs["lm"], "--out", out)
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_generate_density_writes_a_png_of_completions(runs, tmp_path):
    from PIL import Image

    result = invoke("generate", runs["density"], "--num-samples", "3", "--max-new-tokens", "392", "--top-p", "0.9")
    assert result.exit_code == 0, result.output
    paths = result.stdout.split()
    assert len(paths) == 1 and paths[0].endswith(".png")
    assert str(runs["density"] / "samples" / "step-00000002-seed0") in paths[0]
    width, height = Image.open(paths[0]).size
    assert width > 3 * 28 and height > 2 * 28  # a row of prompts above a row of completions, 3 columns
    second = invoke("generate", runs["density"], "--max-new-tokens", "392")
    assert "step-00000002-seed0-2" in second.stdout  # a new folder, the first one is kept


def one_line_exit_2(result, fragment: str):
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("key,args,fragment", [
    ("shift", [], "predicts labels, not sequences"),
    ("lm", ["--prompt", "The zebra"], "not in the training vocabulary"),
    ("lm-sgconv", ["--prompt", "The old river " * 6], "(mixer 'sgconv') has none"),  # 18+ words > seq_len 16
    ("density", ["--prompt", "x"], "takes no text prompt"),
    ("lm", ["--prompt", "a", "--prompt-file", "f"], "not both"),
    ("lm", ["--prompt-file", "{root}/nope.txt"], "No such file"),
    ("lm", ["--temperature", "-1"], "temperature must be >= 0"),
    ("lm", ["--top-p", "0"], "top_p must be in (0, 1]"),
    ("lm", ["--checkpoint", "newest"], "choose best or latest"),
    ("lm", ["--compile", "fast"], "unknown compile='fast'"),
    ("lm", ["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    ("nope", [], "no run directory or checkpoint"),
])
def test_bad_generate_inputs_are_one_line_and_exit_code_2(runs, key, args, fragment):
    path = runs.get(key, runs["root"] / "no-such-run")
    args = [a.format(root=runs["root"]) for a in args]
    one_line_exit_2(invoke("generate", path, *args), fragment)


def test_a_prompt_file_that_is_not_utf8(runs, tmp_path):
    bad = tmp_path / "bytes.bin"
    bad.write_bytes(b"The \xff\xfe river")
    one_line_exit_2(invoke("generate", runs["lm"], "--prompt-file", bad), "not a UTF-8 text file (byte 4 is 0xff)")


@pytest.mark.parametrize("args,fragment", [
    (["--prompt", "The \udcff river"], "--prompt is not valid UTF-8 text (byte 0xff at character 4)"),
    (["--seed", str(2**70)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--num-samples", "1e9"], "--num-samples"),
    (["--num-samples", str(10**9)], "at most about"),  # the memory it needs, before drawing a prompt
    (["--num-samples", str(10**9), "--prompt", "The old river"], "at most about"),
    (["--max-new-tokens", str(10**11)], "lower --max-new-tokens"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "inf"], "--temperature must be a finite number"),
    (["--out", "{root}/no/such/folder/x.txt"], "does not exist"),
    (["--out", "{root}/lm.yaml/x.txt"], "does not exist"),
])
def test_environment_failures_are_one_line(runs, args, fragment):
    """Inputs that used to end in a traceback (UnicodeEncodeError, a seed overflow, an allocation of 10^9 samples,
    a write into a missing folder after generating) are refused first, in one line."""
    args = [a.format(root=runs["root"]) for a in args]
    before = sorted(p for p in runs["root"].rglob("*"))
    one_line_exit_2(invoke("generate", runs["lm"], *args), fragment)
    assert sorted(p for p in runs["root"].rglob("*")) == before


def test_density_out_under_a_file_is_refused(runs):
    one_line_exit_2(invoke("generate", runs["density"], "--out", runs["root"] / "lm.yaml" / "samples"), "is a file")


def test_invalid_utf8_prompt_bytes_in_a_real_process(runs):
    """The bytes a shell passes (here 0xff) reach Python as a surrogate; the user sees one line, exit 2."""
    import os
    import subprocess

    result = subprocess.run([sys.executable.encode(), b"-m", b"ssmkit", b"generate", str(runs["lm"]).encode(),
                             b"--prompt", b"The \xff river"], capture_output=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    stderr = result.stderr.decode("utf-8", errors="replace")
    assert result.returncode == 2 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines() == [
        "error: --prompt is not valid UTF-8 text (byte 0xff at character 4); give UTF-8 text, or write the prompt "
        "to a UTF-8 file and pass --prompt-file"]
