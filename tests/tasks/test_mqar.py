"""Zoology's MQAR task (``ssmkit/tasks/mqar.py``) against independently written checks: every query's target is
the value paired with its key in the context, the keys and values come from the disjoint vocabulary halves, the
query gaps follow zoology's power law (exact sequential-sampling probabilities computed here by enumeration), the
loss and accuracy count the query positions only (checked against a float64 sum), seeding and sharding as the
other synthetic tasks, the extrapolation split, refusals, and one training run through the loop."""
import itertools
import math

import pytest
import torch
import yaml
from accelerate.data_loader import BatchSamplerShard
from typer.testing import CliRunner

from ssmkit.tasks import TASKS

IGNORE = -100


def parse(x: list[int], y: list[int], P: int, V: int) -> dict:
    """Reads one sample as a person would: the pairs from the context, then each labelled position as a query."""
    context = x[: 2 * P]
    pairs = dict(zip(context[0::2], context[1::2]))
    assert len(pairs) == P, "keys repeat in the context"
    assert all(1 <= k < V // 2 for k in pairs) and all(V // 2 <= v < V for v in pairs.values())
    assert len(set(pairs.values())) == P, "values repeat in the context"
    queries = [t for t, label in enumerate(y) if label != IGNORE]
    return {"pairs": pairs, "queries": queries}


@pytest.mark.parametrize("fill", [False, True])
def test_every_query_asks_a_key_after_its_pair_and_is_labelled_with_its_value(fill):
    P, L, V = 5, 40, 30
    task = TASKS.get("mqar")(seq_len=L, num_kv_pairs=P, vocab_size=V, random_non_queries=fill)
    assert (task.d_input, task.d_output, task.encoder, task.pool) == (V, V, "embedding", None)
    fills = []
    for i in range(50):
        x, y = task.dataset("train")[i]
        assert x.shape == y.shape == (L,) and x.dtype == y.dtype == torch.long
        x, y = x.tolist(), y.tolist()
        sample = parse(x, y, P, V)
        pairs, queries = sample["pairs"], sample["queries"]
        assert sorted(x[q] for q in queries) == sorted(pairs)  # every key queried exactly once
        for q in queries:
            assert q >= 2 * P and (q - 2 * P) % 2 == 0  # after the whole context, on zoology's even slots
            key_at = x.index(x[q])  # the key's first occurrence: its place in the context
            assert key_at < 2 * P and key_at % 2 == 0 and key_at < q  # never before its key
            assert y[q] == pairs[x[q]] == x[key_at + 1]
        others = [x[t] for t in range(2 * P, L) if t not in queries]
        assert all(0 <= t < V for t in others)
        if not fill:
            assert others == [0] * len(others)
        fills += others
    if fill:  # uniform over the whole vocabulary, as zoology's random_non_queries
        assert len(set(fills)) == V and abs(sum(fills) / len(fills) - (V - 1) / 2) < 1.0


def sequential_inclusion(weights: list[float], k: int) -> tuple[list[float], list[float]]:
    """Exact float64 probabilities, for k draws without replacement with probability ∝ weights among those left:
    (that g is the first draw, that g is drawn at all), by enumerating every ordered draw."""
    total = sum(weights)
    first = [w / total for w in weights]
    drawn = [0.0] * len(weights)
    for order in itertools.permutations(range(len(weights)), k):
        prob, left = 1.0, total
        for g in order:
            prob *= weights[g] / left
            left -= weights[g]
        for g in order:
            drawn[g] += prob
    return first, drawn


def test_query_gaps_follow_zoologys_power_law():
    P, space, a, n = 3, 8, 0.01, 3000
    L = 2 * P + 2 * space
    task = TASKS.get("mqar")(seq_len=L, num_kv_pairs=P, vocab_size=16, power_a=a, random_non_queries=False,
                             samples_per_epoch=n)
    weights = [a * (g + 1) ** (a - 1) for g in range(space)]  # zoology: p = a * arange(1, space + 1) ** (a - 1)
    first, drawn = sequential_inclusion(weights, P)
    first_count, drawn_count = [0] * space, [0] * space
    data = task.dataset("train")
    for i in range(n):
        x, y = data[i]
        gaps = {int(x[q]): (q - 2 * P) // 2 for q in (y != IGNORE).nonzero().flatten().tolist()}
        first_count[gaps[int(x[0])]] += 1  # the first key's gap is the first draw
        for g in gaps.values():
            drawn_count[g] += 1
    for g in range(space):
        for p, count in ((first[g], first_count[g]), (drawn[g], drawn_count[g])):
            sigma = math.sqrt(n * p * (1 - p))
            assert abs(count - n * p) < 4.5 * sigma + 1, (g, count, n * p)
    assert drawn[0] > 0.8 and first[0] > 0.35  # the law does favour a query right after the context
    uniform = TASKS.get("mqar")(seq_len=L, num_kv_pairs=1, vocab_size=16, power_a=1.0, samples_per_epoch=800)
    counts = torch.bincount(torch.tensor([int((uniform.dataset("train")[i][1] != IGNORE).nonzero()) for i in range(800)]),
                            minlength=L)[2::2]
    assert counts.sum() == 800 and counts.min() > 50  # power_a 1: every slot alike (100 expected each)


def test_seeding_epochs_and_shards():
    task = TASKS.get("mqar")(seq_len=16, num_kv_pairs=2, vocab_size=64, samples_per_epoch=8, val_samples=4)
    train = task.dataset("train", seed=3)
    first = [train[i][0] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, [task.dataset("train", seed=3)[i][0] for i in range(8)]))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], task.dataset("train", seed=4)[0][0])  # the run's seed moves training data
    train.set_epoch(1)
    assert not any(torch.equal(first[i], train[i][0]) for i in range(8))  # a fresh epoch
    val = task.dataset("val")
    val.set_epoch(5)
    assert torch.equal(val[0][0], task.dataset("val", seed=9)[0][0])  # fixed by the task's seed only
    assert not torch.equal(val[0][0], TASKS.get("mqar")(seq_len=16, num_kv_pairs=2, vocab_size=64, seed=1).dataset("val")[0][0])
    shards = [list(BatchSamplerShard(torch.utils.data.BatchSampler(range(8), 2, False), 2, r)) for r in range(2)]
    seen = [i for shard in shards for batch in shard for i in batch]
    assert sorted(seen) == list(range(8))  # the processes read disjoint samples, together all of them


def test_extrapolation_split():
    task = TASKS.get("mqar")(seq_len=16, num_kv_pairs=2, vocab_size=64, test_seq_len=48, test_num_kv_pairs=8)
    assert task.dataset("train")[0][0].shape == task.dataset("val")[0][0].shape == (16,)
    x, y = task.dataset("test")[0]
    assert x.shape == (48,) and int((y != IGNORE).sum()) == 8
    parse(x.tolist(), y.tolist(), 8, 64)
    assert int((task.dataset("val")[0][1] != IGNORE).sum()) == 2  # val stays at the training set-up


def test_loss_and_accuracy_count_only_the_queries():
    V = 20
    task = TASKS.get("mqar")(seq_len=24, num_kv_pairs=3, vocab_size=V)
    x, y = zip(*(task.dataset("val")[i] for i in range(4)))
    y = torch.stack(y)
    out = torch.randn(4, 24, V, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nll, correct, count = 0.0, 0, 0  # the float64 reference, position by position
    for b in range(4):
        for t in range(24):
            if y[b, t] != IGNORE:
                row = out[b, t]
                nll += float(torch.logsumexp(row, 0) - row[y[b, t]])
                correct += int(row.argmax()) == int(y[b, t])
                count += 1
    assert count == 12
    assert task.loss(out, y).item() == pytest.approx(nll / count, rel=1e-6)
    metrics = task.compute_metrics({k: v.sum(0) for k, v in task.metric_stats(out, y).items()})
    assert metrics == pytest.approx({"loss": nll / count, "accuracy": correct / count}, rel=1e-6)
    noisy = out.clone()
    noisy[y == IGNORE] = torch.randn_like(noisy[y == IGNORE]) * 100  # off the queries: no effect
    assert task.loss(noisy, y).item() == pytest.approx(nll / count, rel=1e-6)
    right = torch.full_like(out, -10.0).scatter(-1, y.clamp(min=0).unsqueeze(-1), 10.0)
    assert task.compute_metrics({k: v.sum(0) for k, v in task.metric_stats(right, y).items()})["accuracy"] == 1.0


@pytest.mark.parametrize("options, message", [
    ({"seq_len": 15, "num_kv_pairs": 4}, "need seq_len >= 4 x 4 = 16"),
    ({"num_kv_pairs": 0}, "num_kv_pairs=0 must be an integer >= 1"),
    ({"vocab_size": 8, "num_kv_pairs": 4}, "need vocab_size >= 10"),
    ({"power_a": 0}, "power_a=0 must be a number in (0, 1]"),
    ({"random_non_queries": "yes"}, "random_non_queries='yes' must be true or false"),
    ({"test_seq_len": 32, "test_num_kv_pairs": 9}, "test_num_kv_pairs=9 pairs need test_seq_len >= 4 x 9 = 36"),
    ({"seq_len": 2.5}, "seq_len=2.5 must be an integer"),
])
def test_bad_options_one_line(options, message):
    with pytest.raises(ValueError) as e:
        TASKS.get("mqar")(**options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_trains_through_the_loop(tmp_path):
    from ssmkit.cli import app

    recipe = {"name": "tiny-mqar", "task": {"name": "mqar", "seq_len": 16, "num_kv_pairs": 2, "vocab_size": 32,
                                            "samples_per_epoch": 8, "val_samples": 4, "test_samples": 4,
                                            "test_seq_len": 32, "test_num_kv_pairs": 4},
              "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"batch_size": 4, "runs_dir": str(tmp_path / "runs"), "log_every": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", str(path), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "2 steps" in result.output
    run = next((tmp_path / "runs").iterdir())
    result = CliRunner().invoke(app, ["eval", str(run), "--split", "test"])  # at the extrapolated length
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
