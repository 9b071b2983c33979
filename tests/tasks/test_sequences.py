"""The ``sequences`` task on a user's own files: .npz / folders of .npy and a saved Hugging Face dataset; what it
infers, samples and lengths by hand, masking end to end, metrics against float64 NumPy, one-line errors, CLI runs."""
import numpy as np
import pytest
import torch
import yaml
from test_bad_inputs import assert_one_line_exit_2
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.errors import DataError
from ssmkit.models.sequence import SequenceModel
from ssmkit.tasks import TASKS


def seq(**kw):
    return TASKS.get("sequences")(**kw)


def token_data(n=40, L=12, V=7, seed=0, lengths=False):
    """Token sequences whose class is whether token 3 occurs more often than token 5 (learnable, not constant)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, (n, L))
    y = ((x == 3).sum(1) > (x == 5).sum(1)).astype(np.int64)
    out = {"x": x, "y": y}
    if lengths:
        out["lengths"] = rng.integers(1, L + 1, n)
    return out


def test_tokens_inferred_shifted_and_padded_by_lengths(tmp_path):
    train = token_data(lengths=True)
    np.savez(tmp_path / "train.npz", **train)
    task = seq(train=str(tmp_path / "train.npz"), val=0.25)
    assert task.tokens and task.classification and task.variable
    assert (task.vocab_size, task.d_input, task.d_output, task.encoder) == (7 + 1, 8, 2, "embedding")
    assert task.main_metric == "accuracy" and task.main_mode == "max"
    ds_train, ds_val = task.dataset("train"), task.dataset("val")
    assert (len(ds_train), len(ds_val)) == (30, 10)
    src = task.sources()
    assert not set(src["train"].indices) & set(src["val"].indices)  # a partition of the file
    i = src["val"].indices[0]
    x, y = ds_val[0]
    n = int(train["lengths"][i])
    assert x[:n].tolist() == (train["x"][i, :n] + 1).tolist() and (x[n:] == 0).all() and int(y) == train["y"][i]
    assert task.lengths(torch.stack([x, x]))[0].item() == n
    with pytest.raises(DataError, match="no test split; give task.test=PATH"):
        task.dataset("test")
    line = task.describe()
    assert "train 30 / val 10 samples" in line and "vocabulary 8" in line and "2 classes" in line and "padded, masked" in line
    assert seq(train=str(tmp_path / "train.npz"), vocab_size=20).vocab_size == 21


def test_padded_features_give_each_sample_its_own_output(tmp_path):
    """Floats (N, L, D) with lengths: the validity channel reaches the model as lengths, so a padded sample's
    output (pooled, masked) equals the sample run alone at its own length."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 10, 3)).astype(np.float32)
    lengths = np.array([10, 4, 7, 1, 9, 6])
    x[np.arange(10)[None, :] >= lengths[:, None]] = 123.0  # junk in the padding: must not matter
    y = rng.normal(size=(6, 2))
    np.savez(tmp_path / "train.npz", x=x, y=y, lengths=lengths)
    np.savez(tmp_path / "val.npz", x=x[:2], y=y[:2], lengths=lengths[:2])
    task = seq(train=str(tmp_path / "train.npz"), val=str(tmp_path / "val.npz"))
    assert not task.tokens and not task.classification and task.variable
    assert (task.d_input, task.d_output, task.main_metric) == (3, 2, "mse")
    torch.manual_seed(0)
    backbone = SequenceModel(d_input=task.d_input, d_output=task.d_output, d_model=8, n_layers=2,
                             mixer={"name": "s4d", "d_state": 4}, pool="mean", encoder="linear").double()
    model = task.wrap_model(backbone)
    ds = task.dataset("train")
    xb = torch.stack([ds[i][0] for i in range(6)]).double()
    assert xb.shape == (6, 10, 4) and task.lengths(xb).tolist() == lengths.tolist()
    batched = model(xb, lengths=task.lengths(xb))
    for i in range(6):
        alone = backbone(torch.from_numpy(x[i:i + 1, :lengths[i]]).double())
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-9, atol=1e-9)
    out, tgt = torch.randn(6, 2), torch.from_numpy(y).float()
    m = task.compute_metrics({k: v.sum(0) for k, v in task.metric_stats(out, tgt).items()})
    err = out.double().numpy() - y.astype(np.float32).astype(np.float64)
    assert m["mse"] == pytest.approx((err ** 2).mean(), rel=1e-6) and m["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-6)


def test_folder_of_npy_is_memory_mapped_and_labels_guess_can_be_overridden(tmp_path):
    data = token_data(n=20)
    folder = tmp_path / "train"
    folder.mkdir()
    np.save(folder / "x.npy", data["x"].astype(np.float32)[..., None])  # (N, L, 1) features
    np.save(folder / "y.npy", data["y"].astype(np.float64))  # float labels: regression unless told
    task = seq(train=str(folder))
    assert isinstance(task.sources()["train"].source.x, np.memmap)
    assert not task.classification and task.d_output == 1 and not task.variable and task.width == 1
    cls = seq(train=str(folder), labels="classes", num_classes=4)
    assert cls.classification and cls.d_output == 4
    x, y = cls.dataset("val")[0]
    assert x.shape == (12, 1) and y.dtype == torch.long
    out = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    m = cls.compute_metrics({k: v.sum(0) for k, v in cls.metric_stats(out, torch.tensor([0, 1])).items()})
    logp = out.double() - torch.logsumexp(out.double(), -1, keepdim=True)
    assert m["accuracy"] == 0.5 and m["loss"] == pytest.approx(-(logp[0, 0] + logp[1, 1]).item() / 2, rel=1e-6)


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((4, 3), int)}, r"no array named y \(it has x\)"),
    ({"x": np.zeros((4, 3), int), "y": np.zeros(5, int)}, r"y has shape \(5,\) for x of shape \(4, 3\)"),
    ({"x": -np.ones((4, 3), int), "y": np.zeros(4, int)}, r"x\[0\] has a negative token id -1"),
    ({"x": np.zeros((4, 3), int), "y": np.array([0, 1, -2, 1])}, r"y\[2\] = -2 is not a class id"),
    ({"x": np.zeros((4, 3), int), "y": np.zeros(4, int), "lengths": np.array([1, 2, 4, 1])}, r"lengths\[2\] = 4 is outside 1..3"),
    ({"x": np.array([[0.0, np.nan]] * 4), "y": np.zeros(4, int)}, r"x\[0\] has a NaN"),
    ({"x": np.zeros((4,), int), "y": np.zeros(4, int)}, r"x has shape \(4,\); give \(N, L\) token ids"),
])
def test_bad_arrays_name_the_problem(tmp_path, arrays, match):
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(DataError, match=match):
        seq(train=str(tmp_path / "t.npz")).dataset("train")


def test_bad_files_and_options(tmp_path):
    (tmp_path / "t.npz").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match="t.npz: not a NumPy .npz/.npy"):
        seq(train=str(tmp_path / "t.npz")).dataset("train")
    np.savez(tmp_path / "o.npz", x=np.array([[1, 2], [3]], dtype=object), y=np.zeros(2, int))
    with pytest.raises(DataError, match="holds Python objects"):
        seq(train=str(tmp_path / "o.npz")).dataset("train")
    with pytest.raises(DataError, match="nope.npz does not exist"):
        seq(train=str(tmp_path / "nope.npz")).check_data()
    with pytest.raises(ValueError, match="task.train=PATH .* or as task.hf"):
        seq()
    with pytest.raises(ValueError, match="task option input is for a Hugging Face dataset"):
        seq(train="a.npz", input="text")
    with pytest.raises(ValueError, match="val=1.5 must be a path, or a fraction"):
        seq(train="a.npz", val=1.5)


def _recipe(tmp_path, task: dict, extra: dict | None = None) -> str:
    recipe = {"name": "own-seq", "task": task, "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"batch_size": 4, "runs_dir": str(tmp_path / "runs"), "log_every": 1, "eval_every": 2}, **(extra or {})}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _train_and_eval(tmp_path, recipe: str, split: str, expect_samples: int, dry: str) -> dict:
    result = CliRunner().invoke(app, ["train", recipe, "--dry-run"], env={"COLUMNS": "1000"})  # lines unwrapped
    assert result.exit_code == 0, result.output
    assert dry in result.output, result.output
    result = CliRunner().invoke(app, ["train", recipe, "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "runs" / "own-seq"), "--split", split])
    assert result.exit_code == 0, result.output
    metrics = yaml.safe_load(result.output.strip().splitlines()[-1])
    assert metrics["samples"] == expect_samples
    return metrics


def test_trains_and_evaluates_from_npz_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))
    (tmp_path / "data" / "mine").mkdir(parents=True)
    np.savez(tmp_path / "data" / "mine" / "train.npz", **token_data(n=40, lengths=True))
    np.savez(tmp_path / "data" / "mine" / "val.npz", **token_data(n=5, seed=2, lengths=True))
    np.savez(tmp_path / "data" / "mine" / "test.npz", **token_data(n=9, seed=1, lengths=True))
    recipe = _recipe(tmp_path, {"name": "sequences", "train": "mine/train.npz", "val": "mine/val.npz",
                                "test": "mine/test.npz"})  # under $SSMKIT_DATA
    m = _train_and_eval(tmp_path, recipe, "test", 9, "data: sequences: train 40 / val 5 / test 9 samples")
    assert 0 <= m["accuracy"] <= 1 and np.isfinite(m["loss"])
    result = CliRunner().invoke(app, ["data", "check", "sequences", "-o", "train=mine/train.npz"])
    assert result.exit_code == 0 and "sequences test: none given" in result.output


def test_bad_npz_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "train.npz", x=np.zeros((8, 4)), y=np.full(8, np.inf))
    recipe = _recipe(tmp_path, {"name": "sequences", "train": "train.npz"})
    assert_one_line_exit_2(CliRunner().invoke(app, ["train", recipe, "--max-steps", "1"]), "y[0] is NaN or infinite")
    assert_one_line_exit_2(CliRunner().invoke(app, ["data", "check", "sequences", "-o", "train=missing.npz"]),
                           "missing.npz does not exist")


# --- Hugging Face datasets ---
def saved_hf(tmp_path):
    datasets = pytest.importorskip("datasets", reason="task.hf reads Hugging Face datasets (pip install datasets)")
    texts = ["good film", "bad plot, bad acting", "great", "awful", "a fine and good movie", "terrible ending",
             "loved it", "boring", "wonderful cast", "dull"]
    labels = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": texts * 2, "label": labels * 2}, features=features),
        "test": datasets.Dataset.from_dict({"text": texts[:5], "label": labels[:5]}, features=features),
    })
    dd.save_to_disk(str(tmp_path / "reviews"))
    return texts, labels


def test_saved_hf_dataset_text_as_bytes(tmp_path):
    texts, labels = saved_hf(tmp_path)
    task = seq(hf=str(tmp_path / "reviews"), val=0.2)
    assert task.splits == ("train", "val", "test")
    assert task.tokens and task.classification and task.variable and task.vocab_size == 257
    assert task.length == max(len(t.encode()) for t in texts) and task.num_classes == 2
    x, y = task.dataset("test")[1]
    raw = texts[1].encode()
    assert x[:len(raw)].tolist() == [b + 1 for b in raw] and (x[len(raw):] == 0).all() and int(y) == labels[1]
    assert "2 classes: neg, pos" in task.describe() and "UTF-8 bytes" in task.describe()
    with pytest.raises(DataError, match=r"has no column 'sentence' \(columns: text, label\); set task.input"):
        seq(hf=str(tmp_path / "reviews"), input="sentence").dataset("train")
    datasets = pytest.importorskip("datasets")
    dd = datasets.load_from_disk(str(tmp_path / "reviews"))
    dd["validation"] = dd["test"]
    dd.save_to_disk(str(tmp_path / "with-val"))
    assert seq(hf=str(tmp_path / "with-val")).sources()["val"].n == 5  # the dataset's own validation split
    with pytest.raises(DataError, match="task.val=0.2 would hold out part of train, but the dataset's validation split"):
        seq(hf=str(tmp_path / "with-val"), val=0.2).dataset("train")
    with pytest.raises(DataError, match=r"no split 'validation' \(it has train, test\)"):
        seq(hf=str(tmp_path / "reviews"), split={"train": "train", "val": "validation"}).dataset("train")


def test_trains_and_evaluates_from_a_saved_hf_dataset(tmp_path, monkeypatch):
    saved_hf(tmp_path)
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, {"name": "sequences", "hf": "reviews", "input": "text", "label": "label"})
    _train_and_eval(tmp_path, recipe, "test", 5, "2 classes: neg, pos")


def test_unreachable_hub_name_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("datasets", reason="task.hf reads Hugging Face datasets (pip install datasets)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network (this one has none either)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    recipe = _recipe(tmp_path, {"name": "sequences", "hf": "someone/no-such-dataset"})
    line = assert_one_line_exit_2(CliRunner().invoke(app, ["train", recipe, "--max-steps", "1"]))
    assert "Hugging Face dataset 'someone/no-such-dataset' could not be loaded (the Hugging Face Hub cannot be reached" in line
    assert "save_to_disk" in line


def test_hf_columns_of_token_lists_and_of_vectors(tmp_path):
    datasets = pytest.importorskip("datasets", reason="task.hf reads Hugging Face datasets (pip install datasets)")
    rng = np.random.default_rng(3)
    ids = [rng.integers(0, 30, n).tolist() for n in (5, 9, 2, 7, 9, 4)]
    datasets.Dataset.from_dict({"ids": ids, "y": [0, 2, 1, 2, 0, 1]}).save_to_disk(str(tmp_path / "tok"))
    task = seq(hf=str(tmp_path / "tok"), input="ids", label="y", val=0.5, seq_len=6)
    assert task.tokens and task.variable and task.length == 6 and task.num_classes == 3
    assert task.vocab_size == max(max(r) for r in ids) + 2
    x, _ = task.dataset("train")[0]
    row = ids[task.sources()["train"].indices[0]][:6]
    assert x[:len(row)].tolist() == [i + 1 for i in row] and (x[len(row):] == 0).all()  # cut at seq_len, then padded
    vecs = [rng.normal(size=(n, 2)).tolist() for n in (3, 5, 4, 5)]
    targets = [[1.5], [-0.5], [0.25], [2.0]]
    datasets.Dataset.from_dict({"text": vecs, "label": targets}).save_to_disk(str(tmp_path / "vec"))
    reg = seq(hf=str(tmp_path / "vec"), val=0.25)
    assert not reg.tokens and not reg.classification and (reg.d_input, reg.d_output) == (2, 1) and reg.variable
    i = reg.sources()["val"].indices[0]
    x, y = reg.dataset("val")[0]
    n = len(vecs[i])
    np.testing.assert_allclose(x[:n, :2].numpy(), np.array(vecs[i]), rtol=1e-6)
    assert x[:n, 2].tolist() == [1.0] * n and (x[n:] == 0).all() and y.tolist() == targets[i]
    assert reg.lengths(x[None]).tolist() == [n]
