"""ListOps (LRA) and ListOpsSubTrees (DLR paper): generator, files and tasks.

An expression is a tree whose inner nodes are operators over 2..max_args children and whose leaves are
digits 0-9: ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9. Operators (LRA, Nangia & Bowman 2018): MIN, MAX,
MED (median, truncated to an int), SM (sum mod 10).

Generation follows the LRA procedure: below ``max_depth`` a node is an operator with probability 0.25
(else a leaf), an operator gets U{2..max_args} children; whole expressions are drawn until enough of them
have ``min_length < #tokens < max_length``; exact duplicates are dropped; the first ``n_train`` go to
train, the next ``n_val`` to val, the rest to test.

Files:
- ListOps: ``<data>/listops/basic_{train,val,test}.tsv`` with header ``Source\\tTarget`` and the LRA
  string form with parentheses, ``( ( ( [MAX 2 ) 9 ) ] )`` (the official LRA files read the same way).
- ListOpsSubTrees: ``<data>/listops-subtrees/subtrees_{train,val,test}.tsv`` with columns Source (tokens
  without parentheses), Target, SubTreeEvals, SubTreeLengths, SubTreeHeights, SubTreeOps, SubTreeInds
  (space-separated, one entry per operator node in post-order, root last), Id. ``SubTreeInds`` is the token
  index of the node's closing ``]``.
"""
from __future__ import annotations

import csv
import io
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import Progress

from ssmkit.errors import DataError
from ssmkit.tasks._shared import (
    IGNORE_INDEX,
    ClassificationTask,
    check_positive,
    check_split,
    read_text,
    require_files,
    token_lengths,
)
from ssmkit.tasks.base import TASKS, Task, data_root
from ssmkit.tasks.download import fetch_hint

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
# Fixed vocabulary (not built from data, so every split and run agrees): pad, unk, 4 operators, "]", digits.
VOCAB = ("<pad>", "<unk>", *OPERATORS, END, *[str(d) for d in range(10)])
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
UNK_ID = 1

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def apply_op(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(statistics.median(args))
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}; choose one of {', '.join(OPERATORS)}")


@dataclass
class Expression:
    """One generated expression: its tokens and, per operator node (post-order), value/length/height/op/``]`` index."""

    tokens: list[str]
    value: int
    evals: list[int]
    lengths: list[int]
    heights: list[int]
    ops: list[str]
    closing: list[int]

    def lra_source(self) -> str:
        """The LRA string form: each operator's children nested in binary parentheses."""
        return _with_parentheses(self.tokens)


def _with_parentheses(tokens: list[str]) -> str:
    # LRA builds t = (op, a0); t = (t, a_i) for each further child; t = (t, "]"), and prints a pair as
    # "( left right )": "[MAX 2 9 ]" -> "( ( ( [MAX 2 ) 9 ) ] )".
    pos = 0

    def node() -> str:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok not in OPERATORS:
            return tok
        s = f"( {tok} {node()} )"
        while tokens[pos] != END:
            s = f"( {s} {node()} )"
        pos += 1
        return f"( {s} {END} )"

    return node()


def random_expression(rng: random.Random, max_depth: int, max_args: int) -> Expression:
    """Draws one tree by the LRA rule and records every operator node (post-order)."""
    tokens: list[str] = []
    rec = Expression(tokens, 0, [], [], [], [], [])

    def grow(depth: int) -> tuple[int, int]:  # (value, height)
        if depth >= max_depth or rng.random() > 0.25:
            value = rng.randrange(10)
            tokens.append(str(value))
            return value, 0
        op = rng.choice(OPERATORS)
        start = len(tokens)
        tokens.append(op)
        children = [grow(depth + 1) for _ in range(rng.randint(2, max_args))]
        tokens.append(END)
        value = apply_op(op, [v for v, _ in children])
        height = 1 + max(h for _, h in children)
        rec.evals.append(value)
        rec.lengths.append(len(tokens) - start)
        rec.heights.append(height)
        rec.ops.append(op[1:])
        rec.closing.append(len(tokens) - 1)
        return value, height

    rec.value, _ = grow(1)
    return rec


def generate(n: int, seed: int = 0, max_depth: int = 10, max_args: int = 10, min_length: int = 500,
             max_length: int = 2000, max_tries: int | None = None, progress: bool = False) -> list[Expression]:
    """``n`` distinct expressions with min_length < #tokens (without parentheses) < max_length.

    LRA defaults: max_depth 10, max_args 10, lengths 500..2000. DLR ListOpsSubTrees: 15, 9, 7000..8180.
    """
    for name, v in (("n", n), ("max_depth", max_depth), ("max_args", max_args), ("max_length", max_length)):
        check_positive(name, v)
    if max_args < 2 or min_length >= max_length - 1:
        raise ValueError(f"need max_args >= 2 and min_length < max_length - 1, got {max_args}, {min_length}, {max_length}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Expression] = []
    tries = 0
    max_tries = max_tries or 10_000 * n + 100_000
    bar = None
    if progress:
        bar = Progress()
        bar.start()
        task_id = bar.add_task("listops expressions", total=n)
    try:
        while len(out) < n:
            tries += 1
            if tries > max_tries:
                raise ValueError(f"gave up after {max_tries} draws with {len(out)}/{n} expressions: length bounds "
                                 f"{min_length}..{max_length} are too tight for max_depth={max_depth}, max_args={max_args}")
            e = random_expression(rng, max_depth, max_args)
            if not min_length < len(e.tokens) < max_length:
                continue
            key = " ".join(e.tokens)
            if key in seen:
                continue
            seen.add(key)
            out.append(e)
            if bar is not None:
                bar.advance(task_id)
    finally:
        if bar is not None:
            bar.stop()
    return out


def _split(exprs: list, n_val: int, n_test: int) -> dict[str, list]:
    n_train = len(exprs) - n_val - n_test
    return {"train": exprs[:n_train], "val": exprs[n_train:n_train + n_val], "test": exprs[n_train + n_val:]}


def write_listops(out: Path, exprs: list[Expression], n_val: int, n_test: int) -> list[Path]:
    """Writes ``basic_{train,val,test}.tsv`` in the LRA format; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, part in _split(exprs, n_val, n_test).items():
        path = out / f"basic_{split}.tsv"
        with open(path, "w", newline="") as f:
            f.write("Source\tTarget\n")
            for e in part:
                f.write(f"{e.lra_source()}\t{e.value}\n")
        paths.append(path)
    return paths


SUBTREE_COLUMNS = ("Source", "Target", "SubTreeEvals", "SubTreeLengths", "SubTreeHeights", "SubTreeOps", "SubTreeInds", "Id")


def write_subtrees(out: Path, exprs: list[Expression], n_val: int, n_test: int) -> list[Path]:
    """Writes ``subtrees_{train,val,test}.tsv`` (DLR ListOpsSubTrees columns); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    idx = 0
    for split, part in _split(exprs, n_val, n_test).items():
        path = out / f"subtrees_{split}.tsv"
        with open(path, "w", newline="") as f:
            f.write("\t".join(SUBTREE_COLUMNS) + "\n")
            for e in part:
                cols = [" ".join(e.tokens), str(e.value), *(" ".join(map(str, c)) for c in
                        (e.evals, e.lengths, e.heights, e.ops, e.closing)), str(idx)]
                f.write("\t".join(cols) + "\n")
                idx += 1
        paths.append(path)
    return paths


def tokenize(source: str) -> list[str]:
    """LRA source -> tokens: parentheses dropped, brackets kept as tokens (``[MAX``, ``]``)."""
    return [t for t in source.replace("(", " ").replace(")", " ").split()]


def encode(tokens: list[str], seq_len: int) -> torch.Tensor:
    ids = [TOKEN_ID.get(t, UNK_ID) for t in tokens[:seq_len]]
    x = torch.zeros(seq_len, dtype=torch.long)
    x[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    return x  # (L,)


def _read_tsv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} in the header line "
                            f"(expected tab-separated {', '.join(required)})")
        return list(reader)


class _TokenDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[tuple[torch.Tensor, torch.Tensor]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]


@TASKS.register("listops", description="LRA ListOps: evaluate nested MIN/MAX/MED/SM expressions (10 classes), L up to 2048")
class ListOps(ClassificationTask):
    """LRA ListOps classification from ``<data>/listops/basic_{train,val,test}.tsv``.

    Inputs are token ids padded with 0 to ``seq_len`` (longer inputs are truncated, as LRA does);
    ``lengths(x)`` gives the true lengths for mean pooling.
    """

    name = "listops"
    encoder = "embedding"

    def __init__(self, seq_len: int = 2048, data_dir: str | None = None):
        check_positive("seq_len", seq_len)
        self.seq_len = int(seq_len)
        self.dir = Path(data_dir) if data_dir else data_root() / "listops"
        self.d_input, self.d_output = len(VOCAB), 10

    def files(self) -> dict[str, Path]:
        return {s: self.dir / f"basic_{s}.tsv" for s in ("train", "val", "test")}

    def check_data(self) -> None:
        require_files(self.files().values(), "ListOps data",
                      "run `ssmkit data generate listops`" + (", or fetch the LRA release's files: "
                      + fetch_hint("lra-listops", self.dir.parent) if self.dir.name == "listops" else ""))

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        check_split(split)
        self.check_data()
        path = self.files()[split]
        rows = []
        for line, row in enumerate(_read_tsv(path, ("Source", "Target")), start=2):
            try:
                value = float(row["Target"])  # "nan"/"inf" parse as floats: refused below, not cast
                if not (value.is_integer() and 0 <= value <= 9):
                    raise ValueError
                target = int(value)
            except (TypeError, ValueError):
                raise DataError(f"{path}:{line}: Target {row['Target']!r} is not a digit 0-9") from None
            rows.append((encode(tokenize(row["Source"] or ""), self.seq_len), torch.tensor(target)))
        return _TokenDataset(rows)

    def lengths(self, x: torch.Tensor) -> torch.Tensor:
        return token_lengths(x)


@TASKS.register("listops-subtrees", description="DLR ListOpsSubTrees: the value of every sub-expression at its closing bracket, L up to 8192")
class ListOpsSubTrees(Task):
    """Per-token prediction: at each ``]`` the digit value of the sub-expression it closes; ignored elsewhere.

    Output (B, L, 10), target (B, L) with ``IGNORE_INDEX`` (-100) off the closing brackets.
    """

    name = "listops-subtrees"
    encoder = "embedding"
    pool = None
    main_metric = "accuracy"
    main_mode = "max"

    def __init__(self, seq_len: int = 8192, data_dir: str | None = None):
        check_positive("seq_len", seq_len)
        self.seq_len = int(seq_len)
        self.dir = Path(data_dir) if data_dir else data_root() / "listops-subtrees"
        self.d_input, self.d_output = len(VOCAB), 10

    def files(self) -> dict[str, Path]:
        return {s: self.dir / f"subtrees_{s}.tsv" for s in ("train", "val", "test")}

    def check_data(self) -> None:
        require_files(self.files().values(), "ListOpsSubTrees data", "run `ssmkit data generate listops-subtrees`")

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        check_split(split)
        self.check_data()
        path = self.files()[split]
        rows = []
        for line, row in enumerate(_read_tsv(path, ("Source", "SubTreeEvals", "SubTreeInds")), start=2):
            tokens = tokenize(row["Source"] or "")
            if len(tokens) > self.seq_len:
                raise DataError(f"{path}:{line}: {len(tokens)} tokens exceed seq_len={self.seq_len}; "
                                f"set task.seq_len={len(tokens)} or more")
            try:
                evals = [int(v) for v in (row["SubTreeEvals"] or "").split()]
                inds = [int(v) for v in (row["SubTreeInds"] or "").split()]
            except ValueError:
                raise DataError(f"{path}:{line}: SubTreeEvals/SubTreeInds must be space-separated integers") from None
            if len(evals) != len(inds) or any(not 0 <= i < len(tokens) or tokens[i] != END for i in inds):
                raise DataError(f"{path}:{line}: SubTreeInds must point at the ']' tokens, one per SubTreeEvals entry")
            target = torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.long)
            target[inds] = torch.tensor(evals, dtype=torch.long)
            rows.append((encode(tokens, self.seq_len), target))
        return _TokenDataset(rows)

    def lengths(self, x: torch.Tensor) -> torch.Tensor:
        return token_lengths(x)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.flatten(0, -2).float(), target.flatten(), ignore_index=IGNORE_INDEX)

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = target != IGNORE_INDEX  # (B, L)
        loss = F.cross_entropy(output.float().transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
        correct = (output.argmax(-1) == target) & mask  # (B, L)
        return {"loss": loss.sum(1).detach(), "correct": correct.sum(1).float(), "count": mask.sum(1).float()}

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(float(totals["count"].sum()), 1.0)
        return {"loss": float(totals["loss"].sum()) / n, "accuracy": float(totals["correct"].sum()) / n}
