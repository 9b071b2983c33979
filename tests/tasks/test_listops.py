"""ListOps / ListOpsSubTrees: generated values checked by an independent evaluator, files in the LRA format."""
import pytest
import torch

from ssmkit.errors import DataError
from ssmkit.tasks.listops import VOCAB, ListOps, ListOpsSubTrees, generate, write_listops, write_subtrees


def evaluate(tokens):
    """Independent stack evaluator over the LRA token string (parentheses ignored)."""
    stack = []
    for tok in tokens:
        if tok in "()":
            continue
        if tok.startswith("["):
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            args = sorted(args)
            value = {"[MIN": args[0], "[MAX": args[-1], "[SM": sum(args) % 10,
                     "[MED": int(args[len(args) // 2] if len(args) % 2 else (args[len(args) // 2 - 1] + args[len(args) // 2]) / 2)}[op]
            if not stack:
                return value
            stack[-1].append(value)
        else:
            stack[-1].append(int(tok))
    raise AssertionError("unbalanced expression")


def closing_values(tokens):
    """Value of the sub-expression closed at each ']' index, computed by a second independent pass."""
    out, opens = {}, []
    for i, tok in enumerate(tokens):
        if tok.startswith("["):
            opens.append(i)
        elif tok == "]":
            out[i] = evaluate(tokens[opens.pop(): i + 1])
    return out


def test_generator_values_lengths_and_dedup():
    exprs = generate(60, seed=3, max_depth=6, max_args=5, min_length=10, max_length=120)
    assert len({" ".join(e.tokens) for e in exprs}) == 60
    for e in exprs:
        assert 10 < len(e.tokens) < 120
        assert evaluate(e.tokens) == e.value
        assert evaluate(e.lra_source().split()) == e.value
        assert e.lra_source().count("(") == e.lra_source().count(")")
        assert all(e.tokens[i] == "]" for i in e.closing)
        assert dict(zip(e.closing, e.evals)) == closing_values(e.tokens)
        assert e.closing[-1] == len(e.tokens) - 1 and e.evals[-1] == e.value  # root last
    assert generate(5, seed=3, max_depth=6, max_args=5, min_length=10, max_length=120)[0].tokens == exprs[0].tokens


def test_lra_parentheses_format():
    from ssmkit.tasks.listops import _with_parentheses

    assert _with_parentheses("[MAX 2 9 ]".split()) == "( ( ( [MAX 2 ) 9 ) ] )"


def test_listops_loader_reads_official_tsv(tmp_path):
    (tmp_path / "basic_train.tsv").write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n( ( ( [SM 4 ) 8 ) ] )\t2\n")
    for s in ("val", "test"):
        (tmp_path / f"basic_{s}.tsv").write_text("Source\tTarget\n( ( ( [MIN 2 ) 9 ) ] )\t2\n")
    task = ListOps(seq_len=8, data_dir=str(tmp_path))
    ds = task.dataset("train")
    x, y = ds[0]
    assert x.shape == (8,) and int(y) == 9
    assert [VOCAB[i] for i in x[:4]] == ["[MAX", "2", "9", "]"] and x[4:].eq(0).all()
    batch = torch.stack([ds[0][0], ds[1][0]])
    assert task.lengths(batch).tolist() == [4, 4]
    out = torch.randn(2, 10)
    stats = task.metric_stats(out, torch.tensor([9, 2]))
    assert stats["correct"].shape == (2,)


def test_listops_generated_files_roundtrip(tmp_path):
    exprs = generate(12, seed=0, max_depth=5, max_args=4, min_length=5, max_length=60)
    write_listops(tmp_path, exprs, n_val=2, n_test=2)
    assert (tmp_path / "basic_train.tsv").read_text().startswith("Source\tTarget\n")
    ds = ListOps(seq_len=64, data_dir=str(tmp_path)).dataset("train")
    assert len(ds) == 8
    assert [int(ds[i][1]) for i in range(8)] == [e.value for e in exprs[:8]]


def test_listops_missing_and_malformed(tmp_path):
    with pytest.raises(DataError, match=r"basic_train.tsv.*ssmkit data generate listops"):
        ListOps(data_dir=str(tmp_path)).check_data()
    for s in ("train", "val", "test"):
        (tmp_path / f"basic_{s}.tsv").write_text("Source\tTarget\n[MAX 1 ]\tseven\n")
    with pytest.raises(DataError, match=r"basic_train.tsv:2: Target 'seven'"):
        ListOps(data_dir=str(tmp_path)).dataset("train")
    with pytest.raises(ValueError, match="seq_len"):
        ListOps(seq_len=0)


def test_subtrees_targets_at_closing_brackets(tmp_path):
    exprs = generate(8, seed=1, max_depth=5, max_args=4, min_length=8, max_length=50)
    write_subtrees(tmp_path, exprs, n_val=2, n_test=2)
    task = ListOpsSubTrees(seq_len=64, data_dir=str(tmp_path))
    x, y = task.dataset("train")[0]
    tokens = [VOCAB[i] for i in x if i != 0]
    assert tokens == exprs[0].tokens
    expected = torch.full((64,), -100)
    for i, v in closing_values(tokens).items():
        expected[i] = v
    assert torch.equal(y, expected)
    # loss ignores the -100 positions; accuracy counts only closing brackets
    out = torch.full((1, 64, 10), -5.0)
    out[0, torch.arange(64), y.clamp(min=0)] = 5.0
    stats = task.metric_stats(out, y[None])
    assert stats["correct"].item() == stats["count"].item() == len(exprs[0].closing)
    assert task.loss(out, y[None]).item() < 1e-3


def test_subtrees_rejects_bad_indices(tmp_path):
    head = "Source\tTarget\tSubTreeEvals\tSubTreeLengths\tSubTreeHeights\tSubTreeOps\tSubTreeInds\tId\n"
    for s in ("train", "val", "test"):
        (tmp_path / f"subtrees_{s}.tsv").write_text(head + "[MAX 2 9 ]\t9\t9\t4\t1\tMAX\t2\t0\n")
    with pytest.raises(DataError, match=r"subtrees_train.tsv:2: SubTreeInds must point"):
        ListOpsSubTrees(seq_len=8, data_dir=str(tmp_path)).dataset("train")
