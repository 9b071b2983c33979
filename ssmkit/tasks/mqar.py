"""Multi-query associative recall (MQAR), the synthetic task of Zoology (Arora, Eyuboglu et al. 2023, "Zoology:
Measuring and improving recall in efficient language models", arXiv 2312.04927), generated as HazyResearch/zoology
``zoology/data/associative_recall.py`` (``_mqar``) does; our own code, seeded per sample like the other synthetic
tasks.

One sample of length L = ``seq_len`` with P = ``num_kv_pairs`` pairs over a vocabulary of V = ``vocab_size``:

- keys: P distinct tokens from ``1 .. V/2 - 1``; values: P distinct tokens from ``V/2 .. V - 1`` (disjoint
  halves; token 0 is the blank);
- the context: ``k_0 v_0 k_1 v_1 ... k_{P-1} v_{P-1}`` (positions 0 .. 2P-1);
- the queries: every key once more, key i at position ``2P + 2 g_i``; the gaps ``g_i`` are P distinct draws from
  ``0 .. S-1`` with S = (L - 2P) // 2, without replacement, with probability ∝ ``power_a * (g + 1) ** (power_a - 1)``
  (zoology's power law: with ``power_a`` 0.01 a query falls most often right after the context, as a repeated
  bigram does in text; 1.0 is uniform);
- every other position is the blank 0, or, with ``random_non_queries`` (zoology's default; its Figure 2 turns it
  off), a uniform token from ``0 .. V-1`` (which may equal a key or value of the sample, as in zoology);
- the target (L,): the value of the key at each query position (zoology's shifted next-token label), the ignore
  index -100 everywhere else. Loss: cross-entropy over the query positions only; metrics: ``accuracy`` (of the
  argmax over the whole vocabulary, per query) and ``loss``, exact across processes.

Length extrapolation: the ``test`` split is drawn at ``test_seq_len`` / ``test_num_kv_pairs`` (default: the
training ones), so a model trained at one length and number of pairs is tested at another (``ssmkit eval RUN
--split test``); ``val`` stays at the training set-up, so nothing is selected on the extrapolated set.

The model reads token ids (``encoder: embedding``, ``d_input = V``) and predicts a token per position
(``pool: None``, ``d_output = V``): the embedding and the decoder are the LM head of zoology's models. Sample
``i`` of epoch ``e`` is drawn from a generator seeded with (seed, split, e, i) by ``SyntheticDataset``
(``ssmkit/tasks/synthetic.py``): fresh data each epoch, disjoint samples across workers and processes, the same
data after a resume; ``val``/``test`` depend only on the task's ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssmkit.tasks._shared import IGNORE_INDEX
from ssmkit.tasks.base import TASKS
from ssmkit.tasks.synthetic import SyntheticDataset, SyntheticTask, _mix


def gap_probabilities(space: int, power_a: float) -> torch.Tensor:
    """(space,) float64: zoology's power law over the gaps 0 .. space-1, p(g) ∝ power_a (g + 1) ** (power_a - 1)."""
    g = torch.arange(1, space + 1, dtype=torch.float64)
    p = power_a * g ** (power_a - 1)
    return p / p.sum()


@dataclass(frozen=True)
class MQARShape:
    """The generator of one split: its length, number of pairs, vocabulary and fill (what ``generate`` needs)."""

    seq_len: int
    num_kv_pairs: int
    vocab_size: int
    power_a: float
    random_non_queries: bool

    def generate(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample: tokens (L,) long, targets (L,) long (IGNORE_INDEX off the query positions)."""
        L, P, V = self.seq_len, self.num_kv_pairs, self.vocab_size
        half = V // 2
        keys = torch.randperm(half - 1, generator=g)[:P] + 1  # distinct, from 1 .. V/2 - 1
        values = torch.randperm(V - half, generator=g)[:P] + half  # distinct, from V/2 .. V - 1
        x = torch.zeros(L, dtype=torch.long)
        x[: 2 * P : 2], x[1 : 2 * P : 2] = keys, values
        gaps = torch.multinomial(gap_probabilities((L - 2 * P) // 2, self.power_a), P, replacement=False, generator=g)
        where = 2 * P + 2 * gaps  # key i is queried at where[i]
        x[where] = keys
        y = torch.full((L,), IGNORE_INDEX, dtype=torch.long)
        y[where] = values
        if self.random_non_queries:
            fill = torch.ones(L, dtype=torch.bool)
            fill[: 2 * P] = False
            fill[where] = False
            x[fill] = torch.randint(V, (int(fill.sum()),), generator=g)
        return x, y


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"task option {name}={value!r} must be an integer >= {minimum}")
    return value


@TASKS.register("mqar", description="Zoology: multi-query associative recall (every key queried once after the pairs)")
class MQAR(SyntheticTask):
    """Zoology's MQAR; options as zoology's ``_mqar`` (``input_seq_len`` is ``seq_len`` here) plus the test split's
    length and pairs for extrapolation. Output (B, L, V) scores, target (B, L) with IGNORE_INDEX off the queries."""

    name = "mqar"
    encoder = "embedding"
    pool = None
    main_metric = "accuracy"
    main_mode = "max"

    def __init__(self, seq_len: int = 64, num_kv_pairs: int = 4, vocab_size: int = 8192, power_a: float = 0.01,
                 random_non_queries: bool = True, test_seq_len: int | None = None, test_num_kv_pairs: int | None = None,
                 samples_per_epoch: int = 100_000, val_samples: int = 3_000, test_samples: int = 3_000, seed: int = 0):
        _check_int("seq_len", seq_len, 4)
        _check_int("vocab_size", vocab_size, 4)
        if isinstance(power_a, bool) or not isinstance(power_a, int | float) or not 0 < power_a <= 1:
            raise ValueError(f"task option power_a={power_a!r} must be a number in (0, 1] (zoology uses 0.01; 1 is uniform)")
        if not isinstance(random_non_queries, bool):
            raise ValueError(f"task option random_non_queries={random_non_queries!r} must be true or false")
        super().__init__(seq_len, samples_per_epoch, val_samples, test_samples, seed)
        test_seq_len = seq_len if test_seq_len is None else _check_int("test_seq_len", test_seq_len, 4)
        test_num_kv_pairs = num_kv_pairs if test_num_kv_pairs is None else test_num_kv_pairs
        train = self._shape("seq_len", seq_len, "num_kv_pairs", num_kv_pairs, vocab_size, float(power_a), random_non_queries)
        test = self._shape("test_seq_len", test_seq_len, "test_num_kv_pairs", test_num_kv_pairs, vocab_size,
                           float(power_a), random_non_queries)
        self.shapes = {"train": train, "val": train, "test": test}
        self.seq_len, self.num_kv_pairs, self.vocab_size = seq_len, num_kv_pairs, vocab_size
        self.test_seq_len, self.test_num_kv_pairs = test_seq_len, test_num_kv_pairs
        self.power_a, self.random_non_queries = float(power_a), random_non_queries
        self.d_input = self.d_output = vocab_size

    @staticmethod
    def _shape(len_name: str, L: int, pairs_name: str, P, V: int, power_a: float, fill: bool) -> MQARShape:
        _check_int(pairs_name, P, 1)
        if 4 * P > L:
            raise ValueError(f"{pairs_name}={P} pairs need {len_name} >= 4 x {P} = {4 * P} (zoology's bound: the pairs "
                             f"and a query slot per pair in every other position), got {L}; lower {pairs_name} or raise {len_name}")
        if P > V // 2 - 1:
            raise ValueError(f"{pairs_name}={P} distinct keys need vocab_size >= {2 * (P + 1)} (keys come from "
                             f"1 .. vocab_size/2 - 1), got {V}")
        return MQARShape(L, P, V, power_a, fill)

    def dataset(self, split: str, seed: int = 0) -> SyntheticDataset:
        if split not in self.shapes:
            raise ValueError(f"unknown split {split!r}; choose one of train, val, test")
        data_seed = _mix(self.seed, seed) if split == "train" else self.seed
        return SyntheticDataset(self.shapes[split], split, self.sizes[split], data_seed)

    def generate(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A training sample (the test split's shape may differ: ``self.shapes``)."""
        return self.shapes["train"].generate(g)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the query positions of the batch."""
        return F.cross_entropy(output.flatten(0, -2).float(), target.flatten(), ignore_index=IGNORE_INDEX)

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sample: summed cross-entropy and correct argmaxes over the queries, and the number of queries."""
        mask = target != IGNORE_INDEX  # (B, L)
        loss = F.cross_entropy(output.float().transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
        correct = (output.argmax(-1) == target) & mask
        return {"loss": loss.double().sum(1).detach(), "correct": correct.sum(1).double(), "count": mask.sum(1).double()}

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(float(totals["count"].sum()), 1.0)
        return {"loss": float(totals["loss"].sum()) / n, "accuracy": float(totals["correct"].sum()) / n}
