"""Sampling: top-k/top-p masks on hand-made distributions, temperature, seeds, the drawn frequencies."""
import math

import numpy as np
import pytest
import torch

from ssmkit.errors import UserError
from ssmkit.generation.sampling import check_sampling, filter_scores, make_generator, sample_next

PROBS = [0.1, 0.4, 0.2, 0.3]  # sorted: 1 (0.4), 3 (0.3), 2 (0.2), 0 (0.1)


def kept(top_k=None, top_p=None, probs=PROBS) -> set[int]:
    scores = torch.tensor(probs, dtype=torch.float64).log().unsqueeze(0)
    out = filter_scores(scores, top_k, top_p)[0]
    return {i for i in range(len(probs)) if math.isfinite(out[i].item())}


@pytest.mark.parametrize("top_k,expected", [(1, {1}), (2, {1, 3}), (3, {1, 2, 3}), (4, {0, 1, 2, 3}), (10, {0, 1, 2, 3})])
def test_top_k_keeps_the_k_most_likely(top_k, expected):
    assert kept(top_k=top_k) == expected


@pytest.mark.parametrize("top_p,expected", [
    (0.3, {1}),            # the most likely token alone already holds 0.4 >= 0.3
    (0.39, {1}),
    (0.41, {1, 3}),        # 0.4 < 0.41: the token that crosses p (0.3, total 0.7) is in
    (0.7, {1, 3}),
    (0.75, {1, 2, 3}),
    (0.95, {0, 1, 2, 3}),
    (1.0, {0, 1, 2, 3}),
])
def test_top_p_keeps_the_smallest_nucleus(top_p, expected):
    assert kept(top_p=top_p) == expected


def test_top_k_and_top_p_together_and_ties():
    assert kept(top_k=3, top_p=0.5) == {1, 3}
    assert kept(top_k=2, top_p=0.95) == {1, 3}
    assert kept(top_k=1, probs=[0.25, 0.25, 0.5]) == {2}
    assert kept(top_k=2, probs=[0.3, 0.3, 0.3, 0.1]) == {0, 1, 2}  # ties at the k-th score all stay


def test_filter_is_per_row():
    scores = torch.tensor([PROBS, PROBS[::-1]]).log()
    out = filter_scores(scores, top_k=1)
    assert torch.isfinite(out).sum(-1).tolist() == [1, 1]
    assert out.argmax(-1).tolist() == [1, 2]


def test_temperature_zero_is_argmax():
    scores = torch.randn(7, 13)
    assert torch.equal(sample_next(scores, temperature=0), scores.argmax(-1))


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.5, None, None), (2.0, 3, None), (1.0, None, 0.75)])
def test_draws_follow_the_filtered_tempered_distribution(temperature, top_k, top_p):
    """Frequencies over 40,000 draws match softmax(log p / T) renormalised over the kept tokens (numpy)."""
    p = np.array([0.05, 0.4, 0.15, 0.3, 0.1])
    want = p ** (1 / temperature)
    order = np.argsort(-p)
    keep = np.zeros(len(p), bool)
    if top_k is not None:
        keep[order[:top_k]] = True
    else:
        keep[:] = True
    if top_p is not None:
        cum = np.cumsum(p[order])
        nucleus = np.zeros(len(p), bool)
        nucleus[order[: int(np.searchsorted(cum, top_p) + 1)]] = True
        keep &= nucleus
    want = np.where(keep, want, 0)
    want /= want.sum()
    n = 40_000
    scores = torch.tensor(np.log(p), dtype=torch.float32).expand(n, -1)
    gen, _ = make_generator(0)
    draws = sample_next(scores, temperature, top_k, top_p, gen).numpy()
    freq = np.bincount(draws, minlength=len(p)) / n
    assert (freq[~keep] == 0).all()
    sigma = np.sqrt(want * (1 - want) / n)
    assert (np.abs(freq - want) <= 5 * sigma + 1e-12).all(), (freq, want)


def test_seeded_draws_repeat_and_differ_across_seeds_without_touching_global_rng():
    scores = torch.zeros(64, 50)
    before = torch.get_rng_state()
    a = sample_next(scores, 1.0, generator=make_generator(3)[0])
    b = sample_next(scores, 1.0, generator=make_generator(3)[0])
    c = sample_next(scores, 1.0, generator=make_generator(4)[0])
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)
    _, seed = make_generator(None)
    assert isinstance(seed, int)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-1, top_k=None, top_p=None), "temperature must be >= 0"),
    (dict(temperature=1, top_k=0, top_p=None), "top_k must be a positive"),
    (dict(temperature=1, top_k=None, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(temperature=1, top_k=None, top_p=1.5), r"top_p must be in \(0, 1\]"),
])
def test_bad_sampling_options(kwargs, match):
    with pytest.raises(UserError, match=match):
        check_sampling(**kwargs)
