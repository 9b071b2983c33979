"""The Mamba paper's synthetic tasks against their definitions, checked position by position."""
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from ssmkit.tasks import TASKS


def tokens_of(x):
    assert torch.all(x.sum(-1) == 1)  # one-hot rows
    return x.argmax(-1).tolist()


def test_selective_copying_definition():
    task = TASKS.get("selective_copying")(seq_len=20, M=4, K=5)
    assert (task.d_input, task.d_output, task.l_output) == (7, 5, 4)
    positions_seen = set()
    for i in range(30):
        x, y = task.dataset("train")[i]
        assert x.shape == (24, 7) and y.shape == (4,)
        tok = tokens_of(x)
        data, tail = tok[:20], tok[20:]
        assert tail == [6] * 4  # the markers
        symbols = [t for t in data if t != 0]
        assert len(symbols) == 4 and all(1 <= t <= 5 for t in symbols)
        assert [s - 1 for s in symbols] == y.tolist()  # in order of position, as classes 0..K-1
        positions_seen.add(tuple(t for t, v in enumerate(data) if v))
    assert len(positions_seen) > 25  # the positions move from sample to sample (what makes it selective)


def test_induction_heads_definition():
    task = TASKS.get("induction_heads")(seq_len=12, K=5)
    assert (task.d_input, task.d_output, task.l_output) == (6, 5, 1)
    for i in range(30):
        x, y = task.dataset("val")[i]
        tok = tokens_of(x)
        assert len(tok) == 12 and tok[-1] == 5
        triggers = [t for t in range(11) if tok[t] == 5]
        assert len(triggers) == 1 and triggers[0] <= 9  # one earlier trigger, with an answer after it
        assert y.tolist() == [tok[triggers[0] + 1]] and 0 <= y.item() < 5


@pytest.mark.parametrize("name", ["selective_copying", "induction_heads"])
def test_seeding_epochs_and_shards(name):
    task = TASKS.get(name)(seq_len=16, samples_per_epoch=8, val_samples=4)
    train = task.dataset("train", seed=3)
    first = [train[i][0] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, [task.dataset("train", seed=3)[i][0] for i in range(8)]))
    assert not torch.equal(first[0], first[1])
    train.set_epoch(1)
    assert not any(torch.equal(first[i], train[i][0]) for i in range(8))  # a fresh epoch
    val = task.dataset("val")
    val.set_epoch(5)
    assert torch.equal(val[0][0], task.dataset("val", seed=9)[0][0])  # fixed by the task's seed only
    shards = [list(BatchSamplerShard(torch.utils.data.BatchSampler(range(8), 2, False), 2, r)) for r in range(2)]
    seen = [i for shard in shards for batch in shard for i in batch]
    assert sorted(seen) == list(range(8))  # the processes read disjoint samples, together all of them


def test_loss_and_accuracy_read_the_last_positions():
    task = TASKS.get("selective_copying")(seq_len=10, M=3, K=4)
    batch = [task.dataset("train")[i] for i in range(5)]
    y = torch.stack([b[1] for b in batch])
    out = torch.full((5, 13, 4), -5.0)
    out[:, -3:].scatter_(-1, y.unsqueeze(-1), 5.0)  # right on the last M positions
    stats = task.metric_stats(out, y)
    assert task.compute_metrics({k: v.sum() for k, v in stats.items()})["accuracy"] == 1.0
    assert task.loss(out, y).item() < 1e-3
    out[:, -3:] = out[:, -3:].roll(1, dims=-1)
    assert task.compute_metrics({k: v.sum() for k, v in task.metric_stats(out, y).items()})["accuracy"] == 0.0


def test_bad_options():
    with pytest.raises(ValueError, match="need M <= seq_len"):
        TASKS.get("selective_copying")(seq_len=4, M=5)
    with pytest.raises(ValueError, match="seq_len must be >= 3"):
        TASKS.get("induction_heads")(seq_len=2)
