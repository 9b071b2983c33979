"""LRA Text (byte-level IMDB, L=4096) and LRA Retrieval (AAN document pairs, L=4000 each).

Byte-level tokens: a text's UTF-8 bytes b -> id b + 1, 0 is padding (vocabulary 257); inputs are cut to
``seq_len`` and right-padded, and ``lengths(x)`` gives the true lengths for pooling.

Files:
- IMDB: the original release ``<data>/imdb/aclImdb/{train,test}/{pos,neg}/*.txt`` (LRA reads the same
  reviews through tfds). LRA has no IMDB validation set (the S4 code's IMDB val loader is None, state-spaces/s4
  #119), and ssmkit never evaluates ``val`` on the test set: ``val_fraction: 0`` (default: all 25k reviews
  train) means no validation split, so the loop keeps the last step as ``best``; ``val_fraction > 0`` holds
  out that share of train (seed 42).
- AAN: ``<data>/aan/new_aan_pairs.{train,eval,test}.tsv`` from ``lra_release/lra_release/tsv_data``,
  tab-separated ``label id1 id2 text1 text2`` without a header.

Retrieval needs a two-tower model: each document goes through the same backbone, pooled to u and v,
then an MLP reads [u, v, u*v, u-v] (LRA; S4's ``retrieval`` decoder). ``AAN.wrap_model(model)`` returns
a ``RetrievalModel`` that does this around a ``SequenceModel``; inputs are (B, 2, L) token ids.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import torch
import torch.nn as nn

from ssmkit.errors import DataError
from ssmkit.tasks._shared import (
    ClassificationTask,
    check_fraction,
    check_positive,
    check_split,
    read_text,
    require_files,
    split_indices,
    token_lengths,
)
from ssmkit.tasks.base import TASKS, data_root
from ssmkit.tasks.download import fetch_hint

BYTE_VOCAB = 257

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def encode_bytes(text: str, seq_len: int) -> torch.Tensor:
    """UTF-8 bytes + 1, cut to seq_len and padded with 0: (seq_len,) int64."""
    data = text.encode("utf-8")[:seq_len]
    x = torch.zeros(seq_len, dtype=torch.long)
    if data:
        x[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).long() + 1
    return x


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, rows, seq_len: int):
        self.rows, self.seq_len = rows, seq_len

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        texts, label = self.rows[i]
        x = torch.stack([encode_bytes(t, self.seq_len) for t in texts]) if isinstance(texts, tuple) else encode_bytes(texts, self.seq_len)
        return x, torch.tensor(label)


@TASKS.register("imdb", description="LRA Text: byte-level IMDB sentiment, L=4096, 2 classes")
class Imdb(ClassificationTask):
    name = "imdb"
    encoder = "embedding"

    def __init__(self, seq_len: int = 4096, val_fraction: float = 0.0, data_dir: str | None = None):
        check_positive("seq_len", seq_len)
        check_fraction("val_fraction", val_fraction)
        self.seq_len, self.val_fraction = int(seq_len), val_fraction
        self.root = (Path(data_dir) if data_dir else data_root()) / "imdb" / "aclImdb"
        self.d_input, self.d_output = BYTE_VOCAB, 2

    def check_data(self) -> None:
        require_files([self.root / s / c for s in ("train", "test") for c in ("pos", "neg")], "IMDB data",
                      fetch_hint("lra-text", self.root.parent.parent))

    def _read(self, source: str) -> list[tuple[str, int]]:
        rows = []
        for label, cls in enumerate(("neg", "pos")):
            for f in sorted((self.root / source / cls).glob("*.txt")):
                try:
                    rows.append((f.read_text(encoding="utf-8"), label))
                except (UnicodeDecodeError, OSError) as e:
                    raise DataError(f"{f}: cannot read this review as UTF-8 text ({e})") from None
        if not rows:
            raise DataError(f"IMDB data: no *.txt reviews in {self.root / source}/pos or neg")
        return rows

    def validation_missing(self) -> str | None:
        return "LRA has no IMDB validation set and task.val_fraction is 0" if self.val_fraction == 0 else None

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        check_split(split)
        if split == "val" and self.val_fraction == 0:
            raise self.no_validation_error()
        self.check_data()
        if split == "test":
            return _Pairs(self._read("test"), self.seq_len)
        rows = self._read("train")
        if self.val_fraction > 0:
            train_idx, val_idx = split_indices(len(rows), (1 - self.val_fraction, self.val_fraction), seed=42)
            rows = [rows[i] for i in sorted(train_idx if split == "train" else val_idx)]
        return _Pairs(rows, self.seq_len)

    def lengths(self, x: torch.Tensor) -> torch.Tensor:
        return token_lengths(x)


class RetrievalModel(nn.Module):
    """Two-tower retrieval: a shared backbone pools each document to features u, v; an MLP classifies
    [u, v, u*v, u-v] (LRA's AAN head). The backbone's own decoder is replaced by the identity, so its
    pooled d_model features are u and v.

    forward(x (B, 2, L), lengths (B, 2) | None) -> (B, n_classes).
    """

    def __init__(self, backbone: nn.Module, n_classes: int = 2, hidden: int | None = None):
        super().__init__()
        d = backbone.decoder.in_features
        backbone.decoder = nn.Identity()
        self.backbone = backbone
        hidden = hidden or d
        self.head = nn.Sequential(nn.Linear(4 * d, hidden), nn.GELU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        feats = self.backbone(x.flatten(0, 1), lengths=None if lengths is None else lengths.flatten())  # (2B, D)
        u, v = feats.view(b, 2, -1).unbind(1)  # (B, D) each
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))  # (B, n_classes)


AAN_FILES = {"train": "new_aan_pairs.train.tsv", "val": "new_aan_pairs.eval.tsv", "test": "new_aan_pairs.test.tsv"}


@TASKS.register("aan", description="LRA Retrieval: do two AAN papers cite each other? byte-level, L=4000 per document")
class AAN(ClassificationTask):
    """Inputs (2, seq_len) byte ids per sample; the model must be wrapped with ``wrap_model`` (two towers)."""

    name = "aan"
    encoder = "embedding"

    def __init__(self, seq_len: int = 4000, data_dir: str | None = None):
        check_positive("seq_len", seq_len)
        self.seq_len = int(seq_len)
        self.root = (Path(data_dir) if data_dir else data_root()) / "aan"
        self.d_input, self.d_output = BYTE_VOCAB, 2

    def check_data(self) -> None:
        require_files([self.root / f for f in AAN_FILES.values()], "AAN data",
                      fetch_hint("lra-retrieval", self.root.parent))

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        check_split(split)
        self.check_data()
        path = self.root / AAN_FILES[split]
        rows = []
        with io.StringIO(read_text(path), newline="") as f:
            for n, fields in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                if not fields:
                    continue
                try:
                    label = int(float(fields[0]))
                    assert label in (0, 1) and len(fields) == 5
                except (ValueError, AssertionError):
                    raise DataError(f"{path}:{n}: expected 5 tab-separated fields 'label(0|1) id1 id2 text1 text2', "
                                    f"got {len(fields)} starting {fields[0][:20]!r}") from None
                rows.append(((fields[3], fields[4]), label))
        return _Pairs(rows, self.seq_len)

    def lengths(self, x: torch.Tensor) -> torch.Tensor:
        return token_lengths(x)  # (B, 2)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return RetrievalModel(model, n_classes=self.d_output)
