"""LRA Text (IMDB byte level) and Retrieval (AAN) from files in the release formats."""
import pytest
import torch

from ssmkit.errors import DataError
from ssmkit.models import SequenceModel
from ssmkit.tasks.lra_text import AAN, Imdb, RetrievalModel, encode_bytes


def test_byte_encoding():
    x = encode_bytes("hé", 5)
    assert x.tolist() == [ord("h") + 1, 0xC3 + 1, 0xA9 + 1, 0, 0]
    assert encode_bytes("abcdef", 3).tolist() == [98, 99, 100]


def test_imdb_folders(tmp_path):
    root = tmp_path / "imdb" / "aclImdb"
    for split in ("train", "test"):
        for cls in ("pos", "neg"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                (root / split / cls / f"{i}_7.txt").write_text(f"{cls} review {i}")
    task = Imdb(seq_len=16, data_dir=str(tmp_path))
    ds = task.dataset("train")
    assert len(ds) == 6 and not task.has_validation  # never the test reviews as validation
    labels = sorted(int(ds[i][1]) for i in range(6))
    assert labels == [0, 0, 0, 1, 1, 1]
    x, y = ds[3]
    assert bytes((x[x > 0] - 1).tolist()).decode() == "pos review 0" and int(y) == 1
    assert task.lengths(x[None]).item() == len("pos review 0")
    assert len(Imdb(data_dir=str(tmp_path), val_fraction=0.5).dataset("train")) == 3


def test_aan_tsv_and_retrieval_head(tmp_path):
    (tmp_path / "aan").mkdir()
    for name in ("train", "eval", "test"):
        (tmp_path / "aan" / f"new_aan_pairs.{name}.tsv").write_text(
            "1\tP01\tP02\tfirst paper text\tsecond paper\n0\tP03\tP04\tabc\t\"quoted\" text\n")
    task = AAN(seq_len=24, data_dir=str(tmp_path))
    ds = task.dataset("train")
    x, y = ds[1]
    assert x.shape == (2, 24) and int(y) == 0
    assert bytes((x[1][x[1] > 0] - 1).tolist()).decode() == '"quoted" text'
    backbone = SequenceModel(task.d_input, task.d_output, d_model=8, n_layers=1, pool="mean", encoder="embedding")
    model = task.wrap_model(backbone)
    assert isinstance(model, RetrievalModel)
    batch = torch.stack([ds[0][0], ds[1][0]])  # (2, 2, L)
    out = model(batch, lengths=task.lengths(batch))
    assert out.shape == (2, 2)
    # the head sees [u, v, u*v, u-v] of the two towers: swapping documents changes only the u-v sign
    feats = backbone(batch.flatten(0, 1), lengths=task.lengths(batch).flatten()).view(2, 2, -1)
    u, v = feats.unbind(1)
    assert torch.allclose(out, model.head(torch.cat([u, v, u * v, u - v], -1)), atol=1e-6)


def test_missing_and_malformed(tmp_path):
    with pytest.raises(DataError, match=r"new_aan_pairs.train.tsv.*ssmkit data download lra-retrieval"):
        AAN(data_dir=str(tmp_path)).dataset("train")
    (tmp_path / "aan").mkdir()
    for name in ("train", "eval", "test"):
        (tmp_path / "aan" / f"new_aan_pairs.{name}.tsv").write_text("yes\tonly three\tfields\n")
    with pytest.raises(DataError, match=r"new_aan_pairs.train.tsv:1: expected 5 tab-separated fields"):
        AAN(data_dir=str(tmp_path)).dataset("train")
    with pytest.raises(DataError, match="aclImdb"):
        Imdb(data_dir=str(tmp_path)).dataset("test")
