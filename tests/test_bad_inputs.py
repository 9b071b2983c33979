"""Every bad input to every user-facing command is one line on stderr and exit code 2, with no traceback,
and leaves every file of the user's exactly as it was.

The corpus: garbage bytes, wrong types, NaN/inf, negative sizes, unknown names at every level, and corrupt or
truncated files in every on-disk format ssmkit reads (recipes, checkpoints: safetensors, weights-only torch
files, JSON state and pointers, metrics.jsonl, summary.json; data: LRA TSVs, pathfinder metadata and PNGs,
MNIST idx, CIFAR pickles, Speech Commands WAVs and lists, aclImdb reviews). Commands run in-process through
typer's CliRunner (a warning or a log line on stderr would count as a second line); a few run as real
subprocesses for the true exit code and stderr.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.mixers import MIXERS

sys.path.insert(0, str(Path(__file__).parent / "tasks"))
from test_train_tasks import make_data  # noqa: E402

GARBAGE = bytes(range(128, 256)) * 8 + b"\x00\xff\xfe"
RECIPE = {
    "name": "tiny",
    "task": {"name": "shift", "seq_len": 16, "samples_per_epoch": 32, "val_samples": 8},
    "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
    "train": {"batch_size": 8, "epochs": 1, "log_every": 1},
}


class _Exploit:
    """A pickle that would create ``marker`` when loaded: a loader that runs code fails the test."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (shutil.copyfile, (os.devnull, str(self.marker)))


# --- the harness ---------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Every file's hash, but a run's ``.lock`` (it records the last trainer that took it: ssmkit/train/lock.py)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def assert_one_line_exit_2(result, fragment: str | None = None) -> str:
    out = result.output + (result.stderr or "")
    assert "Traceback" not in out, out
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    if fragment is not None:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run_bad(tmp_path: Path, args: list[str], fragment: str | None = None, env: dict | None = None,
            new_ok: str | None = None) -> str:
    """Runs the CLI in-process in ``tmp_path`` and checks the one-line error and that no file changed (nor
    appeared, except under ``new_ok``: a run that started before a lazily read sample broke)."""
    before = snapshot(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(app, args, env={"SSMKIT_DATA": str(tmp_path / "data"), **(env or {})})
    finally:
        os.chdir(cwd)
    line = assert_one_line_exit_2(result, fragment)
    after = snapshot(tmp_path)
    if new_ok is not None:
        after = {k: v for k, v in after.items() if k in before or not k.startswith(new_ok)}
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}
    return line


# --- a real run directory to break ------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "train": {**RECIPE["train"], "runs_dir": str(root / "runs")}}))
    result = CliRunner().invoke(app, ["train", str(recipe), "--run-dir", str(root / "run"), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture()
def run(trained, tmp_path) -> Path:
    """A copy of the trained run directory inside this test's folder (so the snapshot covers it)."""
    dest = tmp_path / "run"
    shutil.copytree(trained, dest)
    return dest


def ckpt_of(run: Path) -> Path:
    (ckpt,) = [p for p in (run / "checkpoints").glob("step-*") if p.is_dir()]
    return ckpt


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# (file in the checkpoint, how to break it, fragment of the message)
CHECKPOINT_DAMAGE = [
    ("model.safetensors", "truncate", "model.safetensors"),
    ("model.safetensors", "garbage", "model.safetensors"),
    ("model.safetensors", "empty", "model.safetensors"),
    ("optimizer.pt", "truncate", "optimizer.pt"),
    ("optimizer.pt", "garbage", "optimizer.pt"),
    ("optimizer.pt", "exploit", "optimizer.pt"),
    ("optimizer.pt", "missing", "optimizer.pt"),
    ("rng.pt", "exploit", "rng.pt"),
    ("rng.pt", "truncate", "rng.pt"),
    ("rng.pt", "wrong", "rng.pt"),
    ("state.json", "garbage", "state.json"),
    ("state.json", "wrong", "state.json"),
    ("state.json", "keys", "state.json"),
    ("recipe.yaml", "garbage", "recipe.yaml"),
    ("recipe.yaml", "wrong", "recipe.yaml"),
]


def damage(path: Path, how: str, marker: Path) -> None:
    if how == "truncate":
        truncate(path)
    elif how == "garbage":
        path.write_bytes(GARBAGE)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()
    elif how == "exploit":
        torch.save({"torch": _Exploit(marker), "state": {}}, path)
    elif how == "wrong" and path.suffix == ".pt":
        torch.save([1, 2, 3], path)
    elif how == "wrong" and path.suffix == ".json":
        path.write_text("[1, 2, 3]")
    elif how == "wrong":
        path.write_text("task: {name: shift, L: -3}\nmodel: 5\n")
    elif how == "keys":
        path.write_text('{"step": "two"}')
    else:
        raise AssertionError(how)


# eval reads the weights, state.json and the recipe; resume reads every file
CHECKPOINT_CASES = [(c, *d) for d in CHECKPOINT_DAMAGE for c in ("eval", "resume")
                    if c == "resume" or d[0] not in ("optimizer.pt", "rng.pt")]


@pytest.mark.parametrize("command,name,how,fragment", CHECKPOINT_CASES, ids=[f"{c}-{n}-{h}" for c, n, h, _ in CHECKPOINT_CASES])
def test_damaged_checkpoint(run, tmp_path, command, name, how, fragment):
    marker = tmp_path / "exploit-ran"
    damage(ckpt_of(run) / name, how, marker)
    args = ["eval", str(run)] if command == "eval" else ["train", "--resume", str(run)]
    line = run_bad(tmp_path, args, fragment)
    assert not marker.exists()
    if how == "exploit":
        assert "refused" in line and "weights_only" in line and "shutil.copyfile" in line


@pytest.mark.parametrize("how", ["middle", "types"])
def test_damaged_metrics_on_resume(run, tmp_path, how):
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    if how == "middle":
        lines.insert(1, "{not json")
    else:
        lines.insert(1, '{"step": "x"}')
    path.write_text("\n".join(lines) + "\n")
    run_bad(tmp_path, ["train", "--resume", str(run)], "metrics.jsonl")


def test_run_directory_arguments(run, tmp_path):
    (tmp_path / "plain.txt").write_text("not a run")
    run_bad(tmp_path, ["eval", str(tmp_path / "plain.txt")], "plain.txt")
    run_bad(tmp_path, ["eval", str(tmp_path / "nothing-here")], "no run directory")
    run_bad(tmp_path, ["eval", str(run), "--checkpoint", "newest"], "latest or best")
    run_bad(tmp_path, ["eval", str(run), "task.nope=1"], "task.nope")
    run_bad(tmp_path, ["eval", str(run), "task.seq_len=-4"])
    run_bad(tmp_path, ["eval", str(run), "task.seq_len=.nan"])
    run_bad(tmp_path, ["train", "--resume", str(run), "optimizer.lr=1"], "train.*")
    run_bad(tmp_path, ["train", "--resume", str(run), "train.batch_size=-1"], "train.batch_size")
    run_bad(tmp_path, ["train", "--resume", str(run), "train.nope=1"], "train.nope")
    run_bad(tmp_path, ["train", "--resume", str(tmp_path / "plain.txt")])
    shutil.rmtree(run / "checkpoints")
    run_bad(tmp_path, ["eval", str(run)], "no latest checkpoint")


# --- recipes --------------------------------------------------------------------------------------
RECIPE_FILES = {
    "binary garbage": GARBAGE,
    "utf-16": "task: {name: shift}\n".encode("utf-16"),
    "latin-1": "name: caf\xe9\ntask: {name: shift}\n".encode("latin-1"),
    "nul bytes": b"task: {name: shift}\n\x00\x00\x00",
    "empty": b"",
    "only a comment": b"# nothing\n",
    "a scalar": b"42\n",
    "a list": b"- task\n- model\n",
    "unclosed": b"task: {name: shift\n",
    "tabs": b"task:\n\tname: shift\n",
    "python tag": b"task: !!python/object/apply:os.system ['true']\n",
    "deep": b"task: " + b"[" * 2000 + b"]" * 2000 + b"\n",
    "task a number": b"task: 5\n",
    "task a list": b"task: [shift]\n",
    "task name a list": b"task: {name: [shift]}\n",
    "task name a mapping": b"task: {name: {a: 1}}\n",
    "task name unknown": b"task: {name: shfit}\n",
    "model a number": b"task: {name: shift}\nmodel: 5\n",
    "model a string": b"task: {name: shift}\nmodel: big\n",
    "mixer a list": b"task: {name: shift}\nmodel: {mixer: [s4d]}\n",
    "mixer name a list": b"task: {name: shift}\nmodel: {mixer: {name: [s4d]}}\n",
    "mixer name a mapping": b"task: {name: shift}\nmodel: {mixer: {name: {a: 1}}}\n",
    "mixer name null": b"task: {name: shift}\nmodel: {mixer: {name: null}}\n",
    "name a list": b"name: [a]\ntask: {name: shift}\n",
    "name with a slash": b"name: ../escape\ntask: {name: shift}\n",
    "section keys not strings": b"task: {name: shift}\ntrain: {1: 2}\n",
    "top-level key not a string": b"task: {name: shift}\n7: x\n",
    "optimizer a list": b"task: {name: shift}\noptimizer: [adamw]\n",
    "betas a string": b"task: {name: shift}\noptimizer: {betas: fast}\n",
    "betas nan": b"task: {name: shift}\noptimizer: {betas: [.nan, 0.9]}\n",
    "log_with a string": b"task: {name: shift}\ntrain: {log_with: tensorboard}\n",
    "log_with a mapping in a list": b"task: {name: shift}\ntrain: {log_with: [{a: 1}]}\n",
    "huge int": b"task: {name: shift}\nmodel: {d_model: 100000000000000000000000000000}\n",
}


@pytest.mark.parametrize("content", list(RECIPE_FILES.values()), ids=list(RECIPE_FILES))
def test_bad_recipe_file(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    run_bad(tmp_path, ["train", str(path), "--dry-run"])


def test_absurd_model_sizes_are_one_line_with_an_estimate(tmp_path):
    line = run_bad(tmp_path, ["train", _recipe(tmp_path), "model.d_model=1e9", "--dry-run"], "model.d_model=1000000000")
    assert "parameters" in line and "EiB in float32" in line and "more than this machine's" in line


@pytest.mark.parametrize("model", [
    {"d_model": 64, "n_layers": 2},
    {"d_model": 96, "n_layers": 3, "mixer": {"name": "s4d", "d_state": 16, "output": "linear"}},
    {"d_model": 32, "n_layers": 2, "mlp_ratio": 4},
    {"d_model": 16, "n_layers": 2, "backbone": "sashimi", "pool_factors": [4, 4]},
    *({"d_model": 64, "n_layers": 2, "mixer": {"name": k}} for k in MIXERS.names()),
])
def test_the_size_estimate_is_a_lower_bound(model):
    """The estimate that refuses absurd sizes never exceeds a built model's real count (so no model that fits is
    refused), and stays within 5x of it."""
    from ssmkit.recipe import build_model, build_task, parameter_estimate, validate

    recipe = validate({"name": "size", "task": {"name": "shift", "seq_len": 64}, "model": model})
    built = build_model(recipe, build_task(recipe))
    real = sum(p.numel() for p in built.parameters()) + sum(b.numel() for b in built.buffers())
    assert real / 5 <= parameter_estimate(recipe.model) <= real


@pytest.mark.parametrize("override", [f"task.seq_len={2**62}", f"task.samples_per_epoch={2**62}"])
def test_an_allocation_that_cannot_succeed_is_one_line(tmp_path, override):
    """Sizes within 64 bits whose tensors still cannot exist: torch's allocation error is an environment failure,
    one line (the CLI's out-of-memory net), not a traceback."""
    run_bad(tmp_path, ["train", _recipe(tmp_path), override, "--dry-run"], "out of memory (Storage size calculation")


def test_runs_dir_or_run_dir_under_a_file(tmp_path):
    recipe = _recipe(tmp_path)
    run_bad(tmp_path, ["train", recipe, f"train.runs_dir={recipe}", "--max-steps", "1"], "tiny.yaml is a file, not a folder")
    run_bad(tmp_path, ["train", recipe, "--run-dir", f"{recipe}/run", "--max-steps", "1"], "tiny.yaml is a file, not a folder")


def test_recipe_path_that_is_not_a_file(tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    run_bad(tmp_path, ["train", str(tmp_path / "folder.yaml")], "directory")
    run_bad(tmp_path, ["train", str(tmp_path / "missing.yaml")], "no recipe file")
    run_bad(tmp_path, ["recipes", "show", str(tmp_path / "missing.yaml")], "no recipe file")
    (tmp_path / "garbage.yaml").write_bytes(GARBAGE)
    run_bad(tmp_path, ["recipes", "show", str(tmp_path / "garbage.yaml")], "not a UTF-8 text file")
    run_bad(tmp_path, ["recipes", "cp", str(tmp_path / "garbage.yaml"), str(tmp_path / "copy.yaml")], "not a UTF-8 text file")
    run_bad(tmp_path, ["recipes", "show", str(tmp_path / "garbage.yaml"), "--defaults"], "not a UTF-8 text file")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    run_bad(tmp_path, ["recipes", "show", str(tmp_path / "list.yaml"), "--defaults"], "a recipe is a mapping")
    (tmp_path / "bad-key.yaml").write_text("task: {name: shift}\nmodel: {d_modl: 4}\n")
    run_bad(tmp_path, ["recipes", "show", str(tmp_path / "bad-key.yaml"), "--defaults"], "did you mean 'd_model'")


OVERRIDES = [
    # NaN and infinity
    "optimizer.lr=.nan", "optimizer.lr=nan", "optimizer.lr=.inf", "optimizer.lr=-.inf", "optimizer.lr=1e999",
    "model.dropout=.nan", "train.grad_clip=.inf", "optimizer.weight_decay=.nan", "optimizer.eps=.inf",
    "scheduler.min_lr_ratio=.nan", "task.seq_len=.nan", "task.seq_len=.inf", "model.mixer.dt_min=.nan",
    "model.mixer.dt_max=.inf", "model.mixer.lr=.nan", "model.d_model=.inf", "model.mlp_ratio=.nan",
    # negative and zero sizes
    "model.d_model=-1", "model.d_model=0", "model.n_layers=0", "task.seq_len=-5", "task.seq_len=0", "task.samples_per_epoch=-1",
    "task.val_samples=0", "train.batch_size=0", "train.batch_size=-8", "train.eval_batch_size=-1",
    "train.grad_accum=0", "train.epochs=-1", "train.log_every=0", "train.keep_checkpoints=0",
    "train.num_workers=-1", "model.mixer.d_state=-4", "model.mixer.d_state=0", "scheduler.warmup_steps=-1",
    "model.mlp_ratio=-1", "optimizer.weight_decay=-0.1",
    # wrong types
    "train.batch_size=[1,2]", "train.batch_size={a: 1}", "train.batch_size=abc", "train.epochs=1.5",
    "model.prenorm=maybe", "model.mixer=5", "model.mixer=[s4d]", "model.mixer.name=[s4d]",
    "model.mixer.name={a: 1}", "task=5", "task=[shift]", "task.name=[shift]", "task.name={a: 1}",
    "task.seq_len=abc", "task.seq_len=[16]", "model=5", "optimizer.betas=abc", "name=[1]", "description=5",
    "train.log_with=tensorboard", "model.mixer.d_state=1.5", "model.mixer.d_state=abc", "train.seed=-1",
    "model.mixer.bidirectional=2", "train.compile=yes please",
    # unknown names at every level
    "nope=1", "model.nope=1", "optimizer.nope=1", "scheduler.nope=1", "train.nope=1", "task.nope=1",
    "model.mixer.nope=1", "task.name=nope", "model.mixer.name=nope", "optimizer.name=nope",
    "scheduler.name=nope", "train.mixed_precision=nope", "train.distributed=nope", "model.norm=nope",
    "train.log_with=[nope]", "scheduler.interval=nope", "model.mixer.activation=nope", "model.mixer.output=nope",
    "model.mixer.init=nope",
    # the old layout's keys: one line naming the new key
    "model.layer.kernel=s4d", "model.layer.d_state=4", "task.L=16", "task.l_max=16", "model.mixer.kernel=s4d",
    # malformed overrides
    "optimizer.lr", "=1", "optimizer..lr=1", ".lr=1", "optimizer.lr.x=1",
    # absurd sizes: refused before anything is allocated, or beyond 64 bits
    "model.d_model=1e9", "model.n_layers=1e9", "model.mixer.d_state=1000000000000", "model.mlp_ratio=1e12",
    f"task.seq_len={2**70}", f"task.samples_per_epoch={2**70}", f"train.seed={2**70}", "train.seed=4294967296",
    f"train.grad_accum={2**70}", "train.num_workers=100000", f"optimizer.lr={2**2000}", f"model.mixer.channels={2**64}",
]


@pytest.mark.parametrize("override", OVERRIDES)
def test_bad_override(tmp_path, override):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    run_bad(tmp_path, ["train", str(path), override, "--dry-run"])


# --- command-line options of every command ---------------------------------------------------------
def _recipe(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return str(path)


COMMANDS = [
    ["nosuchcommand"],
    ["train", "{recipe}", "--max-steps", "0"],
    ["train", "{recipe}", "--max-steps", "-3"],
    ["train", "{recipe}", "--max-steps", "abc"],
    ["train", "{recipe}", "--processes", "0"],
    ["train", "{recipe}", "--processes", "x"],
    ["train", "{recipe}", "--processes", str(2**70)],  # not 2^70 processes started on this machine
    ["train", "{recipe}", "--nope"],
    ["train", "{recipe}", "--name", "a/b"],
    ["train", "{recipe}", "--name", ""],
    ["train", "{recipe}", "--name", "x", "--run-dir", "y"],
    ["train", "{recipe}", "--run-dir", "{recipe}"],
    ["train"],
    ["eval"],
    ["eval", "x", "--split", "train"],
    ["recipes", "nope"],
    ["recipes", ""],
    ["recipes", "nope", "show"],
    ["recipes", "show", "quick/nope"],
    ["recipes", "show"],
    ["recipes", "cp", "quick/nope", "x.yaml"],
    ["recipes", "cp", "quick/s4d-shift", "{recipe}"],
    ["recipes", "cp", "quick/s4d-shift", "no/such/folder/x.yaml"],
    ["recipes", "cp", "quick/s4d-shift", "new-folder/"],  # a folder that does not exist: not a file named new-folder
    ["recipes", "cp", "quick/s4d-shift", ""],
    ["data", "nope"],
    ["data", "generate", "nope"],
    ["data", "generate", "listops", "--n", "-5"],
    ["data", "generate", "listops", "--n", "abc"],
    ["data", "generate", "listops", "--n", "10", "--val", "-1"],
    ["data", "generate", "listops", "--resolution", "32"],
    ["data", "generate", "pathfinder", "--resolution", "33"],
    ["data", "generate", "pathfinder", "--resolution", "-32"],
    ["data", "generate", "pathfinder", "--n", "0"],
    ["data", "generate", "pathfinder", "--n", "4", "--workers", "0"],
    ["data", "generate", "pathfinder", "--n", "4", "--workers", "-2"],
    ["data", "generate", "listops", "--n", "20", "--val", "2", "--test", "2", "--min-length", "50", "--max-length", "10"],
    ["data", "check", "nope"],
    ["data", "check", "listops", "-o", "nope=1"],
    ["data", "check", "listops", "-o", "seq_len=-1"],
    ["data", "check", "listops", "-o", "seq_len=.nan"],
    ["data", "check", "listops", "-o", "seq_len"],
    ["data", "check", "listops", "-o", "seq_len=[1"],
    ["data", "check", "pathfinder", "-o", "resolution=abc"],
    ["profile", "--kernel", "nope"],
    ["profile", "--kernel", "s4d,nope"],
    ["profile", "--kernel", ","],
    ["profile", "--length", "0"],
    ["profile", "--length", "-1k"],
    ["profile", "--length", "abc"],
    ["profile", "--length", ""],
    ["profile", "--d-model", "-1"],
    ["profile", "--d-state", "0"],
    ["profile", "--batch", "abc"],
    ["profile", "--repeat", "0"],
    ["profile", "--repeat", str(2**70)],
    ["sweep", "quick/s4d-shift", "--seeds", str(2**70)],
    ["sweep", "quick/s4d-shift", "--seeds", "1001"],
    ["profile", "--mode", "nope"],
    ["profile", "--backend", "nope"],
    ["profile", "--output", "nope"],
    ["profile", "--device", "nope"],
    ["profile", "--out", "points.xlsx"],
    ["profile", "--plot", "plot.txt"],
    ["doctor", "--nope"],
    ["doctor", "extra-argument"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_bad_command_line(tmp_path, args):
    recipe = _recipe(tmp_path)
    run_bad(tmp_path, [a.format(recipe=recipe) for a in args])


# --- data in every on-disk format -------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """Each writer's tiny data, made once (pathfinder takes seconds) and copied into every test."""
    made: dict[str, Path] = {}

    def get(writer: str, dest: Path) -> Path:
        if writer not in made:
            made[writer] = tmp_path_factory.mktemp(f"data-{writer}")
            make_data(writer, made[writer])
        shutil.copytree(made[writer], dest)
        return dest

    return get


def _targets(root: Path, pattern: str) -> list[Path]:
    """The files to break: every image or clip (``data check`` reads the first and last sample of each
    split), else the one file named."""
    found = sorted(root.rglob(pattern))
    assert found, pattern
    return found if pattern.startswith("*.") and pattern != "*.npy" else found[:1]


# (task to check, data writer, file to break (glob under data/), how, fragment of the message)
DATA_DAMAGE = [
    ("listops", "listops", "basic_train.tsv", "garbage"),
    ("listops", "listops", "basic_val.tsv", "header"),
    ("listops", "listops", "basic_test.tsv", "target"),
    ("listops", "listops", "basic_train.tsv", "empty"),
    ("listops-subtrees", "listops-subtrees", "subtrees_train.tsv", "garbage"),
    ("listops-subtrees", "listops-subtrees", "subtrees_val.tsv", "fields"),
    ("pathfinder", "pathfinder", "*.npy", "garbage"),
    ("pathfinder", "pathfinder", "*.npy", "fields"),
    ("pathfinder", "pathfinder", "*.png", "garbage"),
    ("pathfinder", "pathfinder", "*.png", "truncate"),
    ("pathfinder-segmentation", "pathfinder", "*.npy", "fields"),
    ("pathfinder-segmentation", "pathfinder", "*.png", "garbage"),
    ("smnist", "smnist", "train-images-idx3-ubyte", "truncate"),
    ("smnist", "smnist", "t10k-labels-idx1-ubyte", "garbage"),
    ("smnist", "smnist", "train-labels-idx1-ubyte", "empty"),
    ("scifar", "scifar", "data_batch_1", "truncate"),
    ("scifar", "scifar", "test_batch", "garbage"),
    ("scifar", "scifar", "data_batch_2", "exploit"),
    ("scifar", "scifar", "data_batch_3", "fields"),
    ("sc10", "sc10", "*.wav", "garbage"),
    ("sc10", "sc10", "*.wav", "cut"),
    ("sc10", "sc10", "validation_list.txt", "garbage"),
    ("imdb", "imdb", "*.txt", "garbage"),
    ("aan", "aan", "new_aan_pairs.train.tsv", "garbage"),
    ("aan", "aan", "new_aan_pairs.eval.tsv", "fields"),
]


def damage_data(path: Path, how: str, marker: Path) -> None:
    if how in ("garbage", "truncate", "empty"):
        damage(path, how, marker)
    elif how == "cut":  # inside the header (a WAV cut after its header just reads as a shorter clip)
        path.write_bytes(path.read_bytes()[:30])
    elif how == "header":
        path.write_text("Input\tLabel\n( 1 )\t1\n")
    elif how == "target":
        path.write_text("Source\tTarget\n( [MAX 2 3 ] )\tbig\n")
    elif how == "exploit":
        path.write_bytes(pickle.dumps(_Exploit(marker)))
    elif path.suffix == ".tsv" and path.name.startswith("subtrees"):
        path.write_text("Source\tSubTreeEvals\tSubTreeInds\n( [MAX 2 3 ] )\tx y\t1\n")
    elif path.suffix == ".tsv":
        path.write_text("1\tonly-two-fields\n")
    elif path.suffix == ".npy":
        path.write_text("imgs/0 sample_0.png 0 yes\n")
    elif path.name.startswith("data_batch"):
        path.write_bytes(pickle.dumps({"data": [[1, 2, 3]], "labels": [0, 1]}))
    else:
        raise AssertionError((path, how))


@pytest.mark.parametrize("task,writer,pattern,how", DATA_DAMAGE, ids=[f"{t}-{p}-{h}" for t, _, p, h in DATA_DAMAGE])
def test_damaged_data(tmp_path, data_cache, task, writer, pattern, how):
    root = data_cache(writer, tmp_path / "data")
    targets = _targets(root, pattern)
    marker = tmp_path / "exploit-ran"
    for target in targets:
        damage_data(target, how, marker)
    options = ["-o", "resolution=32"] if task.startswith("pathfinder") else []
    if task == "sc10":
        options = ["-o", "sample_rate=16000"]
    line = run_bad(tmp_path, ["data", "check", task, *options])
    assert any(str(t) in line for t in targets), line
    assert not marker.exists()


def test_damaged_data_under_train(tmp_path, data_cache):
    """The same errors reach ``ssmkit train`` (here: a corrupt ListOps TSV)."""
    root = data_cache("listops", tmp_path / "data")
    (root / "listops" / "basic_train.tsv").write_bytes(GARBAGE)
    recipe = {**RECIPE, "task": {"name": "listops", "seq_len": 64}, "train": {"batch_size": 2, "runs_dir": "runs"}}
    path = tmp_path / "listops.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_bad(tmp_path, ["train", str(path), "--max-steps", "1"], "basic_train.tsv")


def test_damaged_data_read_by_a_loader_worker(tmp_path, data_cache):
    """A sample broken in a DataLoader worker process (train.num_workers=1): still the one original line."""
    root = data_cache("sc10", tmp_path / "data")
    for wav in root.rglob("*.wav"):
        wav.write_bytes(GARBAGE)
    recipe = {**RECIPE, "task": {"name": "sc10"}, "train": {"batch_size": 2, "num_workers": 1, "runs_dir": "runs"}}
    path = tmp_path / "sc10.yaml"
    path.write_text(yaml.safe_dump(recipe))
    line = run_bad(tmp_path, ["train", str(path), "--max-steps", "1"], "cannot read this WAV file", new_ok="runs/")
    assert "DataLoader worker" not in line and line.startswith(f"error: {root}")


# --- real processes: the exit code and stderr a user sees ------------------------------------------
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SSMKIT_DATA": str(cwd / "data")}
    return subprocess.run([sys.executable, "-m", "ssmkit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_in_real_processes(run, tmp_path):
    (tmp_path / "garbage.yaml").write_bytes(GARBAGE)
    truncate(ckpt_of(run) / "model.safetensors")
    before = snapshot(tmp_path)
    for args, fragment in ((["train", "garbage.yaml"], "garbage.yaml"),
                           (["eval", str(run)], "model.safetensors")):
        result = _cli(args, tmp_path)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (args, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
    assert snapshot(tmp_path) == before


# --- the commands of the other issues: generate, runs, plot ------------------------------------------
RUN_COMMANDS = [
    ["generate", "{tmp}/nothing-here"],
    ["generate", "{run}"],  # a run of a task that predicts labels
    ["generate", "{run}", "--checkpoint", "nope"],
    ["generate", "{run}", "--num-samples", "0"],
    ["generate", "{run}", "--num-samples", "-1"],
    ["generate", "{run}", "--max-new-tokens", "0"],
    ["generate", "{run}", "--temperature", "abc"],
    ["generate", "{run}", "--temperature", "-1"],
    ["generate", "{run}", "--temperature", "nan"],
    ["generate", "{run}", "--top-k", "0"],
    ["generate", "{run}", "--top-p", "1.5"],
    ["generate", "{run}", "--top-p", "inf"],
    ["generate", "{run}", "--compile", "nope"],
    ["generate", "{run}", "--device", "nope"],
    ["generate", "{run}", "--prompt", "a", "--prompt-file", "{garbage}"],
    ["generate", "{run}", "--prompt-file", "{garbage}"],
    ["generate", "{run}", "--prompt-file", "{tmp}/missing.txt"],
    ["generate", "{run}", "--out", "{garbage}"],
    ["generate", "{broken}"],
    ["runs", "{tmp}/nothing-here"],
    ["runs", "{tmp}", "--columns", "model.nope"],
    ["runs", "{tmp}", "--columns", ""],
    ["runs", "{tmp}", "--filter", ""],
    ["runs", "{tmp}", "--filter", "=x"],
    ["generate", "{run}", "--prompt", "caf\udce9"],  # the bytes of a non-UTF-8 shell argument
    ["generate", "{run}", "--seed", str(2**70)],
    ["generate", "{run}", "--num-samples", "1e9"],
    ["runs", "{garbage}"],
    ["runs", "--nope"],
    ["plot"],
    ["plot", "{tmp}/nothing-here"],
    ["plot", "{garbage}"],
    ["plot", "{tmp}"],
    ["plot", "{run}", "--metric", "val/nope"],
    ["plot", "{run}", "--out", "curves.txt"],
    ["plot", "{run}", "--out", "{garbage}.png"],
    ["plot", "{run}", "--out", "{tmp}/no/such/folder/c.png"],
    ["plot", "{broken}"],
]


@pytest.mark.parametrize("args", RUN_COMMANDS, ids=[" ".join(a) for a in RUN_COMMANDS])
def test_bad_run_commands(trained, tmp_path, args):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    truncate(ckpt_of(broken) / "model.safetensors")
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join([lines[0], "{torn", *lines[1:]]) + "\n")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(GARBAGE)
    (tmp_path / "garbage.bin.png").write_bytes(GARBAGE)
    run_bad(tmp_path, [a.format(run=run, broken=broken, garbage=garbage, tmp=tmp_path) for a in args])
