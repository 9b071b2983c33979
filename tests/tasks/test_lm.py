"""Language modelling on WikiText-layout files written here: vocabulary and streams as the reference builds
them, windows that cover each split once and shard without overlap, the adaptive head, and learning."""
import math

import numpy as np
import pytest
import torch
import yaml
from accelerate.data_loader import prepare_data_loader
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.errors import DataError, RecipeError, UserError
from ssmkit.models import SequenceModel
from ssmkit.recipe import validate
from ssmkit.tasks import TASKS
from ssmkit.tasks._shared import IGNORE_INDEX
from ssmkit.tasks.lm import LanguageModel, write_synthetic_corpus

TRAIN = " = Title = \n\n a b a \n c a b\n"  # words a b a <eos> <eos> c a b <eos> (line 1 also has = Title =)
VALID = "b c\n d a\n"  # d is not a training word
TEST = "a b c\n"


def write_wiki(folder, train=TRAIN, valid=VALID, test=TEST, suffix="tokens"):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"wiki.{split}.{suffix}").write_text(text, encoding="utf-8")
    return folder


def lm(tmp_path, **options):
    return LanguageModel(data_dir=str(tmp_path), **options)


def test_word_vocabulary_and_streams_as_the_reference(tmp_path):
    write_wiki(tmp_path / "wikitext-103", valid=VALID.replace("d", "<unk>"))
    task = lm(tmp_path, seq_len=4)
    # <eos> first, then training words by decreasing count, ties in order of first appearance
    assert task.vocab == ["<eos>", "a", "=", "b", "Title", "c"]
    assert task.vocab_size == task.d_input == task.d_output == 6 and not task.adaptive
    ids = {w: i for i, w in enumerate(task.vocab)}
    words = "= Title = <eos> <eos> a b a <eos> c a b <eos>".split()
    assert task.stream("train").tolist() == [ids[w] for w in words]
    with pytest.raises(DataError, match=r"wiki\.valid\.tokens: 1 word\(s\) not in the training vocabulary .* e\.g\. <unk>"):
        task.stream("val")  # the training text has no <unk> to map it to


def test_unknown_words_become_unk_when_the_vocabulary_has_it(tmp_path):
    write_wiki(tmp_path / "wikitext-103", train=TRAIN + "<unk> a\n")
    task = lm(tmp_path, seq_len=4)
    unk, ids = task.vocab.index("<unk>"), {w: i for i, w in enumerate(task.vocab)}
    assert task.stream("val").tolist() == [ids["b"], ids["c"], 0, unk, ids["a"], 0]
    assert task.encode("a zebra b").tolist() == [ids["a"], unk, ids["b"]]
    assert task.encode("a b\n").tolist() == [ids["a"], ids["b"], 0]
    (tmp_path / "wikitext-103" / "wiki.test.tokens").write_text("b c\n d a")  # a last line without its newline
    assert task.stream("test").tolist() == task.stream("val").tolist()
    text = "a b\nc a"
    assert task.decode(task.encode(text)) == text
    # a cached vocabulary and stream give the same result in a fresh task
    again = lm(tmp_path, seq_len=4)
    assert again.vocab == task.vocab and np.array_equal(again.stream("val"), task.stream("val"))
    assert any((tmp_path / "wikitext-103" / "ssmkit-cache").iterdir())


def test_encode_names_words_the_vocabulary_lacks(tmp_path):
    write_wiki(tmp_path / "wikitext-103")
    with pytest.raises(UserError, match="zebra"):
        lm(tmp_path).encode("a zebra")


def test_byte_level_raw_files(tmp_path):
    text = "héllo wörld\n = x = \n"
    write_wiki(tmp_path / "wikitext-103-raw", train=text * 3, valid=text, test=text, suffix="raw")
    task = lm(tmp_path, level="byte", raw=True, seq_len=8)
    assert task.vocab_size == task.d_input == task.d_output == 256 and task.main_metric == "bits_per_byte"
    data = list(text.encode("utf-8"))
    x, y = task.dataset("test")[0]
    assert x.tolist() == data[:8] and y.tolist() == data[1:9]
    assert task.decode(task.encode(text)) == text and task.encode("é").tolist() == [0xC3, 0xA9]


def unique_stream_task(tmp_path, n_words=101, seq_len=8):
    """A corpus whose word stream has no repeats but <eos>, so every window is recognisable."""
    lines = [" ".join(f"w{i}" for i in range(j, min(j + 5, n_words))) for j in range(0, n_words, 5)]
    text = "\n".join(lines) + "\n"
    write_wiki(tmp_path / "wikitext-103", train=text, valid=text, test=text)
    return lm(tmp_path, seq_len=seq_len)


def test_windows_cover_each_split_once(tmp_path):
    task = unique_stream_task(tmp_path)
    stream = task.stream("val").tolist()
    N, L = len(stream), task.seq_len
    val, train = task.dataset("val"), task.dataset("train")
    assert len(train) == (N - 1) // L and len(val) == math.ceil((N - 1) / L)
    targets, inputs = [], []
    for i in range(len(val)):
        x, y = val[i]
        keep = y != IGNORE_INDEX
        assert x.shape == y.shape == (L,)
        assert torch.equal(x[keep][1:], y[keep][:-1])  # y[t] is the token after x[t]
        inputs += x[keep].tolist()
        targets += y[keep].tolist()
    assert targets == stream[1:] and inputs == stream[:-1]  # every token but the first predicted exactly once
    x, y = val[len(val) - 1]
    assert (y == IGNORE_INDEX).sum() == L * len(val) - (N - 1) > 0  # the last window is partial and padded
    assert (x[y == IGNORE_INDEX] == 0).all()
    # the metric counts exactly the split's tokens
    loader = torch.utils.data.DataLoader(val, batch_size=3)
    tokens = sum(float(task.metric_stats(torch.zeros(*xb.shape, task.vocab_size), yb)["tokens"].sum()) for xb, yb in loader)
    assert tokens == N - 1


@pytest.mark.parametrize("split", ["train", "val"])
def test_windows_shard_without_overlap_across_ranks_and_workers(tmp_path, split):
    task = unique_stream_task(tmp_path, n_words=203)
    ds = task.dataset(split)
    seen = []
    for rank in range(2):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=split == "train", num_workers=2,
                                             generator=torch.Generator().manual_seed(0), drop_last=split == "train")
        shard = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False,
                                    use_seedable_sampler=True, data_seed=0)
        seen.append([tuple(x.tolist()) for xb, _ in shard for x in xb])
    windows = {tuple(ds[i][0].tolist()) for i in range(len(ds))}
    a, b = (set(s) for s in seen)
    assert len(windows) == len(ds)
    if split == "train":  # disjoint shards of full batches
        assert not a & b and len(seen[0]) == len(a) and len(seen[1]) == len(b) and a | b <= windows
        assert len(a | b) == 4 * (len(ds) // 4)
    else:  # evaluation: together every window; repeats only to even out the last batch
        assert a | b == windows
        assert len(seen[0]) + len(seen[1]) - len(ds) < 4


def test_adaptive_head_keeps_the_contract_and_its_cheap_loss_agrees(tmp_path):
    text = "\n".join(" ".join(f"w{(7 * i + j) % 30}" for j in range(6)) for i in range(40)) + "\n"
    write_wiki(tmp_path / "wikitext-103", train=text, valid=text, test=text)
    task = lm(tmp_path, seq_len=12, cutoffs=[4, 12, 100])  # 100 >= V - 1 is dropped
    V = task.vocab_size
    assert task.adaptive and task.cutoffs == [4, 12] and task.d_output == 1 and V == 31
    torch.manual_seed(0)
    backbone = SequenceModel(task.d_input, task.d_output, d_model=16, n_layers=2, pool=None, encoder="embedding",
                             mixer={"name": "s4d", "d_state": 8})
    model = task.wrap_model(backbone).eval()
    pairs, y = next(iter(torch.utils.data.DataLoader(task.dataset("val"), batch_size=4)))
    assert pairs.shape == (4, 2, 12) and torch.equal(pairs[:, 1], y)
    with torch.no_grad():
        logp = model(pairs[:, 0])  # the contract: (B, L, V) log-probs
        target_logp = model(pairs)  # the training path: each target's log-prob
    assert logp.shape == (4, 12, V)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(4, 12), atol=1e-5)
    assert torch.allclose(target_logp, logp.gather(-1, y.unsqueeze(-1)).squeeze(-1), atol=1e-5)
    ref = -logp.double().gather(-1, y.unsqueeze(-1)).mean()
    assert abs(float(task.loss(target_logp, y)) - float(ref)) < 1e-5
    full_stats = task.metric_stats(logp, y)  # the plain path on the contract's output agrees
    assert torch.allclose(task.metric_stats(target_logp, y)["nll"], full_stats["nll"], atol=1e-4)
    # step (recurrent) = forward at each position
    model.setup_step()
    state = model.default_state(4)
    for t in range(4):
        out, state = model.step(pairs[:, 0, t], state)
        assert torch.allclose(out, logp[:, t], atol=1e-4)
    # padding targets count nowhere
    y_pad = y.clone()
    y_pad[:, 6:] = IGNORE_INDEX
    pairs_pad = torch.stack([pairs[:, 0], y_pad], 1)
    with torch.no_grad():
        out = model(pairs_pad)
    assert (out[:, 6:] == 0).all() and int(task.metric_stats(out, y_pad)["tokens"].sum()) == 24


def test_tied_adaptive_input_embedding(tmp_path):
    text = "\n".join(" ".join(f"w{(7 * i + j) % 30}" for j in range(6)) for i in range(40)) + "\n"
    write_wiki(tmp_path / "wikitext-103", train=text, valid=text, test=text)
    task = lm(tmp_path, seq_len=12, cutoffs=[4, 12])
    backbone = SequenceModel(task.d_input, task.d_output, d_model=16, n_layers=1, pool=None, encoder="embedding")
    model = task.wrap_model(backbone)
    sm, emb = model.head, model.backbone.encoder
    assert not any(isinstance(m, torch.nn.Embedding) for m in model.modules())
    ids = torch.tensor([[0, 3, 4, 11, 12, 30]])
    with torch.no_grad():
        got = emb(ids)[0].double()
    W = sm.head.weight.double()
    proj = [t[0].weight.double() for t in sm.tail]  # (16 // 4, 16), (16 // 16, 16)
    out = [t[1].weight.double() for t in sm.tail]  # (8, 4), (19, 1)
    want = torch.stack([W[0], W[3], out[0][0] @ proj[0], out[0][7] @ proj[0], out[1][0] @ proj[1], out[1][18] @ proj[1]]) * 4
    assert torch.allclose(got, want, atol=1e-6)
    emb(ids).sum().backward()  # the input side trains the softmax's matrices
    assert sm.tail[1][1].weight.grad[18].abs().sum() > 0 and sm.head.weight.grad[3].abs().sum() > 0
    keys = list(model.state_dict())
    assert not any("softmax" in k for k in keys) and len(keys) == len(set(keys))
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))  # no shared tensors saved twice
    untied = lm(tmp_path, seq_len=12, cutoffs=[4, 12], tie_adaptive=False).wrap_model(
        SequenceModel(task.d_input, task.d_output, d_model=16, n_layers=1, pool=None, encoder="embedding"))
    assert isinstance(untied.backbone.encoder, torch.nn.Embedding)


def test_bidirectional_model_is_refused(tmp_path):
    write_wiki(tmp_path / "wikitext-103")
    task = lm(tmp_path, level="byte")
    model = SequenceModel(256, 256, d_model=8, n_layers=1, pool=None, encoder="embedding",
                          mixer={"name": "s4d", "d_state": 4, "bidirectional": True})
    with pytest.raises(RecipeError, match="bidirectional=false"):
        task.wrap_model(model)


def test_adaptive_tail_too_narrow_is_refused(tmp_path):
    text = " ".join(f"w{i}" for i in range(40)) + "\n"
    write_wiki(tmp_path / "wikitext-103", train=text, valid=text, test=text)
    task = lm(tmp_path, cutoffs=[10, 30])  # div_value 4: widths 8 // 4 = 2, 8 // 16 = 0
    model = SequenceModel(task.d_input, task.d_output, d_model=8, n_layers=1, pool=None, encoder="embedding")
    with pytest.raises(RecipeError, match="width 8 // 4\\^2 = 0; lower task.div_value"):
        task.wrap_model(model)


def test_check_data_names_files_and_commands(tmp_path):
    with pytest.raises(DataError, match=r"wikitext-103/wiki\.train\.tokens.*ssmkit data download wikitext-103"):
        lm(tmp_path).check_data()
    with pytest.raises(DataError, match=r"wiki\.train\.raw.*ssmkit data download wikitext-103-raw"):
        lm(tmp_path, raw=True).check_data()
    with pytest.raises(DataError, match=r"mine/wiki\.valid\.tokens.*ssmkit data generate text --out"):
        lm(tmp_path, corpus="mine").check_data()
    with pytest.raises(ValueError, match="level"):
        lm(tmp_path, level="char")
    with pytest.raises(ValueError, match="seq_len"):
        lm(tmp_path, seq_len=0)


def test_prompts_and_samples_file(tmp_path):
    task = unique_stream_task(tmp_path, seq_len=10)
    p = task.prompts(3, seed=1)
    assert p.shape == (3, 5) and torch.equal(p, task.prompts(3, seed=1))
    s = task.stream("test").tolist()
    for row in p.tolist():  # each prompt is a window of the test stream
        assert any(s[i:i + 5] == row for i in range(len(s) - 4))
    files = task.save_samples(torch.cat([p, p.flip(1)], 1), tmp_path / "out", prompt_len=5)
    text = files[0].read_text()
    assert text.count("===== sample") == 6 and task.decode(p[2]) in text


def test_generate_text_cli_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))
    result = CliRunner().invoke(app, ["data", "generate", "text", "--n", "40"])
    assert result.exit_code == 0, result.output
    first = (tmp_path / "synthetic-text" / "wiki.train.tokens").read_text()
    assert first == (tmp_path / "synthetic-text-raw" / "wiki.train.raw").read_text()
    write_synthetic_corpus(tmp_path / "again", 40, seed=0)
    assert (tmp_path / "again" / "wiki.train.tokens").read_text() == first
    task = TASKS.get("lm")(corpus="synthetic-text", seq_len=16)
    assert all(len(task.dataset(s)) > 0 for s in ("train", "val", "test"))  # every valid/test word is known or <unk>
    result = CliRunner().invoke(app, ["data", "check", "lm", "-o", "corpus=synthetic-text", "-o", "level=byte"])
    assert result.exit_code == 0 and "lm test" in result.output


def test_byte_model_learns_the_synthetic_corpus(tmp_path):
    """A one-layer S4D byte model, 120 steps (~3 s): val bits/byte falls far below the uniform 8 and below
    the corpus's byte unigram entropy (a model that ignored context could not get under it)."""
    from ssmkit.train.loop import train

    write_synthetic_corpus(tmp_path / "synthetic-text", 300)
    counts = np.bincount(np.fromfile(tmp_path / "synthetic-text" / "wiki.valid.tokens", np.uint8), minlength=256)
    p = counts[counts > 0] / counts.sum()
    unigram_bits = float(-(p * np.log2(p)).sum())
    recipe = validate({"name": "lm-learn", "task": {"name": "lm", "corpus": "synthetic-text", "level": "byte",
                                                      "seq_len": 64, "data_dir": str(tmp_path)},
                       "model": {"d_model": 32, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 16}},
                       "optimizer": {"lr": 0.01}, "scheduler": {"name": "cosine", "warmup_steps": 10},
                       "train": {"max_steps": 120, "batch_size": 16, "log_every": 1000, "runs_dir": str(tmp_path / "runs")}})
    summary = train(recipe)
    bits = summary["final"]["val/bits_per_byte"]
    assert bits < 3.0 and bits < unigram_bits - 0.8, (bits, unigram_bits)


def train_and_generate(tmp_path, monkeypatch, task: dict, *generate_args: str):
    """Trains ``task`` two steps with ``ssmkit train`` on the data under tmp_path/data, then runs
    ``ssmkit generate`` on the run; returns generate's result."""
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))
    recipe = {"name": "tiny", "task": task, "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"batch_size": 2, "max_steps": 2, "runs_dir": str(tmp_path / "runs")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "r.yaml")])
    assert result.exit_code == 0, result.output
    return CliRunner().invoke(app, ["generate", str(tmp_path / "runs" / "tiny"), "--compile", "none", *generate_args])


def test_generate_from_an_adaptive_word_model(tmp_path, monkeypatch):
    write_synthetic_corpus(tmp_path / "data" / "synthetic-text", 40)
    task = {"name": "lm", "corpus": "synthetic-text", "seq_len": 16, "cutoffs": [10, 30], "div_value": 2.0}
    result = train_and_generate(tmp_path, monkeypatch, task, "--prompt", "The old castle was", "--max-new-tokens", "6")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("The old castle was ") and len(result.stdout.split()) >= 10
