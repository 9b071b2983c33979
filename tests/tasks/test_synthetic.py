"""The DLR synthetic tasks against their definitions, written out with plain loops on tiny cases."""
import math

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from ssmkit.tasks import TASKS
from ssmkit.tasks.synthetic import SyntheticTask


def sample(name, index=0, **options):
    task = TASKS.get(name)(**options)
    return task, *task.dataset("train")[index]


def check_inputs(x, values, extra=()):
    """Column 0 holds the values; the last two columns cos/sin(2 pi t / T)."""
    T = x.shape[0]
    assert torch.equal(x[:, 0], values)
    for t in range(T):
        assert x[t, -2].item() == pytest.approx(math.cos(2 * math.pi * t / T), abs=1e-6)
        assert x[t, -1].item() == pytest.approx(math.sin(2 * math.pi * t / T), abs=1e-6)


def test_shift_L8():
    task, x, y = sample("shift", seq_len=8)
    v = x[:, 0]
    assert v.abs().max().item() == pytest.approx(1.0)  # inf-normalised
    check_inputs(x, v)
    assert y.shape == (8, 8)
    for t in range(8):
        for h in range(8):  # s_h = h * 8 / 8 = h
            assert y[t, h].item() == (v[t - h].item() if t >= h else 0.0)
    _, x16, y16 = sample("shift", seq_len=16)
    assert torch.equal(y16[4:, 2], x16[:12, 0]) and torch.all(y16[:4, 2] == 0)  # s_2 = 2 * 16 / 8 = 4


def test_cumsum_and_cummax_L8():
    _, x, y = sample("cumsum", seq_len=8)
    v = x[:, 0].double()
    for t in range(8):
        assert y[t, 0].item() == pytest.approx(sum(v[: t + 1].tolist()) / math.sqrt(t + 1), abs=1e-6)
    _, x, y = sample("cummax", seq_len=8)
    for t in range(8):
        assert y[t, 0].item() == max(x[: t + 1, 0].tolist())


def test_reverse_and_sort_L8():
    _, x, y = sample("reverse", seq_len=8)
    assert x.shape == (16, 3) and torch.all(x[8:, 0] == 0)
    check_inputs(x, x[:, 0])
    assert [y[j, 0].item() for j in range(8)] == [x[7 - j, 0].item() for j in range(8)]
    _, x, y = sample("sort", seq_len=8)
    v = x[:8, 0].tolist()
    expected = sorted(v, key=lambda a: abs(a - v[0]))  # Python's sort is stable
    assert y[:, 0].tolist() == expected and y[0, 0].item() == v[0]


@pytest.mark.parametrize("name", ["masked_select", "masked_select_fixed"])
def test_masked_select(name):
    task, x, y = sample(name, seq_len=8, M=3)
    assert x.shape == (8 + 2 * 3, 4) and y.shape == (3, 1)
    values, marker = x[:, 0], x[:, 1]
    assert torch.all(values[11:] == 0) and values[:11].abs().max().item() == pytest.approx(1.0)
    marked = [t for t in range(14) if marker[t] == 1]
    assert len(marked) == 3 and max(marked) < 11 and torch.all(marker[marked[0]:] >= 0)
    assert y[:, 0].tolist() == [values[t].item() for t in marked]
    others = [task.dataset("train")[i][0][:, 1].nonzero().flatten().tolist() for i in range(1, 6)]
    if name.endswith("fixed"):
        assert all(o == marked for o in others)
    else:
        assert any(o != marked for o in others)


@pytest.mark.parametrize("name", ["solve", "solve_fixed"])
def test_solve(name):
    task, x, y = sample(name, seq_len=16)
    N = 3  # floor(sqrt(17)) - 1
    assert task.N == N and y.shape == (N, 1)
    flat = x[:, 0].double()
    assert torch.all(flat[N * (N + 1):] == 0)
    Ab = flat[: N * (N + 1)].reshape(N, N + 1)
    A, b, sol = Ab[:, :N], Ab[:, N], y[:, 0].double()
    assert torch.allclose(A @ A.T, torch.eye(N, dtype=torch.float64), atol=1e-5)
    assert sol.norm().item() == pytest.approx(1.0, abs=1e-5)
    for i in range(N):
        assert sum(A[i, j].item() * sol[j].item() for j in range(N)) == pytest.approx(b[i].item(), abs=1e-5)
    A2 = task.dataset("train")[1][0][: N * (N + 1), 0].reshape(N, N + 1)[:, :N]
    assert torch.equal(A2, A.float()) == name.endswith("fixed")


def test_context_shift_L8():
    task = TASKS.get("context_shift")(seq_len=8)
    seen = set()
    for i in range(40):
        x, y = task.dataset("train")[i]
        seq = x[:, 0]
        r = round(math.atan2(seq[1].item(), seq[0].item()) / (2 * math.pi) * 8) % 8
        assert 0 <= r <= 5
        seen.add(r)
        assert seq[2:].abs().max().item() == pytest.approx(1.0)
        for t in range(8):
            assert y[t, 0].item() == (seq[t - r].item() if t >= r else 0.0)
    assert len(seen) > 3


@pytest.mark.parametrize("causal", [True, False])
def test_mips_L8(causal):
    _, x, y = sample("mips", seq_len=8, D=4, causal=causal)
    assert x.shape == (8, 14) and y.shape == (8, 4)
    q, k, v = x[:, 0:4].double(), x[:, 4:8].double(), x[:, 8:12].double()
    assert torch.allclose(q.norm(dim=-1), torch.ones(8, dtype=torch.float64), atol=1e-6)
    for i in range(8):
        candidates = range(i + 1) if causal else range(8)
        best = max(candidates, key=lambda j: sum(q[i, d].item() * k[j, d].item() for d in range(4)))
        assert torch.allclose(y[i].double(), v[best], atol=1e-6)


def test_adding():
    _, x, y = sample("adding", seq_len=8)
    marked = x[:, 1].nonzero().flatten().tolist()
    assert len(marked) == 2 and marked[0] < 4 <= marked[1]
    assert y.item() == pytest.approx(x[marked[0], 0].item() + x[marked[1], 0].item(), abs=1e-6)


def test_fresh_each_epoch_fixed_validation():
    task = TASKS.get("shift")(seq_len=8)
    train, val = task.dataset("train", seed=1), task.dataset("val", seed=1)
    first = train[0][0]
    train.set_epoch(1)
    val.set_epoch(1)
    assert not torch.equal(train[0][0], first)
    assert torch.equal(val[0][0], TASKS.get("shift")(seq_len=8).dataset("val", seed=2)[0][0])  # fixed by the task seed
    assert not torch.equal(task.dataset("train", seed=2)[0][0], first)  # the run's seed changes training data


def test_ranks_and_workers_never_repeat_each_other():
    task = TASKS.get("cumsum")(seq_len=8, samples_per_epoch=64)
    data = task.dataset("train")
    sampler = torch.utils.data.BatchSampler(range(64), batch_size=4, drop_last=True)
    per_rank = []
    for rank in range(2):
        shard = BatchSamplerShard(sampler, num_processes=2, process_index=rank)
        per_rank.append({tuple(data[i][0][:, 0].tolist()) for batch in shard for i in batch})
    assert len(per_rank[0]) == len(per_rank[1]) == 32 and not per_rank[0] & per_rank[1]
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2)
    rows = [tuple(r.tolist()) for xb, _ in loader for r in xb[:, :, 0]]
    assert len(set(rows)) == 64 and set(rows) == per_rank[0] | per_rank[1]


def test_metrics_are_mse_and_r2():
    task = TASKS.get("shift")(seq_len=8)
    y = torch.randn(5, 8, 8)
    out = torch.cat([torch.zeros(5, 3, 8), y + 0.1 * torch.randn(5, 8, 8)], dim=1)  # only the last 8 count
    stats = task.metric_stats(out, y)
    metrics = task.compute_metrics({k: v.sum(0) for k, v in stats.items()})
    err = ((out[:, 3:].double() - y.double()) ** 2).mean().item()
    assert metrics["mse"] == pytest.approx(err)
    assert metrics["r2"] == pytest.approx(1 - err / y.double().var(unbiased=False).item())
    assert task.loss(out, y).item() == pytest.approx(err, rel=1e-5)


def test_bad_options():
    with pytest.raises(ValueError, match="seq_len must be >= 3"):
        TASKS.get("solve")(seq_len=2)
    with pytest.raises(ValueError, match="num_shifts"):
        TASKS.get("shift")(seq_len=4, num_shifts=8)
    assert all(issubclass(TASKS.get(n), SyntheticTask) for n in ("shift", "mips", "adding"))


def test_copying_L4():
    task, x, y = sample("copying", seq_len=4, M=3, K=5)
    tokens = x.argmax(-1)  # one-hot back to tokens
    assert x.shape == (3 + 4 + 3, 7) and torch.equal(x.sum(-1), torch.ones(10))
    assert all(1 <= t <= 5 for t in tokens[:3].tolist())
    assert tokens[3:6].tolist() == [0, 0, 0] and tokens[6].item() == 6 and tokens[7:].tolist() == [0, 0, 0]
    assert y.tolist() == [t - 1 for t in tokens[:3].tolist()]
    # loss and accuracy read the last M positions: a perfect output there scores 1 and a small loss
    perfect = torch.full((1, 10, 5), -10.0)
    perfect[0, 7 + torch.arange(3), y] = 10.0
    assert task.compute_metrics({k: v.sum(0) for k, v in task.metric_stats(perfect, y[None]).items()}) == {"accuracy": 1.0}
    assert task.loss(perfect, y[None]).item() < 1e-6
    wrong = perfect.roll(1, dims=-1)
    assert task.compute_metrics({k: v.sum(0) for k, v in task.metric_stats(wrong, y[None]).items()}) == {"accuracy": 0.0}


def test_copying_trains_through_the_loop(tmp_path):
    from ssmkit.recipe import validate
    from ssmkit.train.loop import train

    summary = train(validate({
        "name": "copy", "task": {"name": "copying", "seq_len": 8, "M": 3, "samples_per_epoch": 16, "val_samples": 8},
        "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
        "train": {"batch_size": 8, "max_steps": 2, "runs_dir": str(tmp_path)},
    }))
    assert summary["step"] == 2 and 0.0 <= summary["final"]["val/accuracy"] <= 1.0
