"""Every real task trains two steps end to end through `ssmkit train --max-steps 2` on tiny data in the real formats."""
import pytest
import yaml
from test_forecast import write_informer
from test_images import write_cifar, write_mnist
from test_speech import write_sc
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.tasks import listops, pathfinder
from ssmkit.tasks.forecast import write_synthetic_ett
from ssmkit.tasks.lm import write_synthetic_corpus
from ssmkit.tasks.sc09 import SC09_WORDS

TASKS = {
    "listops": {"seq_len": 64},
    "listops-subtrees": {"seq_len": 64},
    "pathfinder": {"resolution": 32},
    "pathfinder-segmentation": {"resolution": 32},
    "smnist": {},
    "psmnist": {"permutation_seed": 3},
    "scifar": {},
    "lra-image": {},
    "sc10": {"sample_rate": 8000},
    "imdb": {"seq_len": 32},
    "aan": {"seq_len": 32},
    "lm": {"corpus": "synthetic-text", "seq_len": 16},
    "cifar-density": {},
    "sc09": {},
    "weather": {"seq_len": 16, "pred_len": 8},
}


def make_data(name, root):
    if name.startswith("listops"):
        exprs = listops.generate(12, seed=0, max_depth=5, max_args=4, min_length=5, max_length=60)
        if name == "listops":
            listops.write_listops(root / "listops", exprs, 2, 2)
        else:
            listops.write_subtrees(root / "listops-subtrees", exprs, 2, 2)
    elif name.startswith("pathfinder"):
        pathfinder.generate(10, 32, out=pathfinder.dataset_dir(32, root=root), segmentation=True)
    elif name in ("smnist", "psmnist", "mnist-density"):
        write_mnist(root)
    elif name in ("scifar", "lra-image", "cifar-density"):
        write_cifar(root)
    elif name == "lm":  # WikiText layout: the synthetic corpus, and the same tiny text as wikitext-103
        for corpus in ("synthetic-text", "wikitext-103"):
            write_synthetic_corpus(root / corpus, n_paragraphs=8)
    elif name == "sc09":  # the digit folders, added to split lists other words may already have
        base = root / "SpeechCommands" / "speech_commands_v0.02"
        lists = {f: (base / f).read_text() for f in ("validation_list.txt", "testing_list.txt") if (base / f).exists()}
        write_sc(root, words=SC09_WORDS, per_word=3)
        for f, text in lists.items():
            (base / f).write_text(text + (base / f).read_text())
    elif name == "sc10":
        write_sc(root)
    elif name == "imdb":
        for split in ("train", "test"):
            for cls in ("pos", "neg"):
                d = root / "imdb" / "aclImdb" / split / cls
                d.mkdir(parents=True)
                for i in range(2):
                    (d / f"{i}.txt").write_text(f"a {cls} review number {i}")
    elif name in ("forecast", "weather"):  # Informer CSVs: ETT at full split sizes, WTH/ECL tiny, and the synthetic ETTh1 file
        write_informer(root, rows=1200)
        write_synthetic_ett(root / "informer/synthetic/ETTh1.csv", 20 * 720)
    elif name == "own":  # the files recipes/own/ name, small (scripts/own_data_examples.py exports the real ones)
        import numpy as np

        own = root / "own"
        rng = np.random.default_rng(0)
        (own / "digits").mkdir(parents=True)
        for split, n in (("train", 40), ("test", 10)):
            np.savez(own / "digits" / f"{split}.npz", x=rng.integers(0, 17, (n, 64)), y=np.arange(n) % 10)
        from datetime import date, timedelta

        rows = [f"{date(1960, 1, 2) + timedelta(weeks=i)},{315 + i / 50:.2f}" for i in range(600)]
        (own / "co2-weekly.csv").write_text("date,co2\n" + "\n".join(rows) + "\n")
        (own / "python-help").mkdir()
        for i in range(6):
            (own / "python-help" / f"topic{i}.txt").write_text(f"Topic {i}: statements and expressions.\n" * 30)
    elif name == "aan":  # LRA's new_aan_pairs.*.tsv: label id1 id2 text1 text2, no header
        (root / "aan").mkdir(parents=True)
        for split in ("train", "eval", "test"):
            rows = [f"{i % 2}\tp{i}\tq{i}\tpaper {i} on state spaces\tcited work {i}" for i in range(4)]
            (root / "aan" / f"new_aan_pairs.{split}.tsv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("name", list(TASKS))
def test_trains_two_steps(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))
    make_data(name, tmp_path / "data")
    recipe = {"name": f"tiny-{name}", "task": {"name": name, **TASKS[name]},
              "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"batch_size": 2, "runs_dir": str(tmp_path / "runs"), "log_every": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(path), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "2 steps" in result.output


def test_missing_data_exit_code_2(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "task": {"name": "pathfinder"}, "model": {"d_model": 8, "n_layers": 1}}))
    result = CliRunner().invoke(app, ["train", str(path), "--max-steps", "2"])
    assert result.exit_code == 2
    assert "ssmkit data generate pathfinder --resolution 32" in result.output
    result = CliRunner().invoke(app, ["data", "check", "listops"])
    assert result.exit_code == 2 and "basic_train.tsv" in result.output
