"""Generative tasks: next-token prediction with teacher forcing, for causal models.

The shared base of ``lm`` (``tasks/lm.py``), ``cifar-density``/``mnist-density`` (``tasks/density.py``) and
``sc09`` (``tasks/sc09.py``): the loss is the mean cross-entropy of the next token over every position, the
metrics are the loss (nats per token), ``perplexity`` = exp(loss) and bits per token = loss / ln 2 (named
``bits_per_byte``, ``bits_per_dim``, ... by each task), exact across processes (per-sample sums of the
negative log-likelihood and of the counted tokens).

The contract the training loop and generation (``ssmkit generate``) rely on:

- ``task.generative`` is True; ``pool`` is None (a prediction per position); ``encoder`` is ``embedding``;
  ``d_input == d_output == vocab_size`` (V), except for the word-level adaptive softmax (below).
- Dataset items are ``(x, y)``, both LongTensor (L,), with ``y[t]`` the token after ``x[t]`` (teacher
  forcing). ``y[t] == IGNORE_INDEX`` (-100) marks padding (the last, partial window of a language-model
  split), which no loss or metric counts. The first input is
    * ``lm``: the stream's previous token (windows of one contiguous token stream; the very first token of a
      split is context only), ``task.start_token`` is None;
    * density and ``sc09``: ``task.start_token`` (0 for pixels, 128 = silence for mu-law audio), i.e. the
      sequence shifted right by one, as the reference does; a sequence of ``seq_len`` tokens is preceded by it.
- ``ssmkit.train.loop.build_loop_model(recipe, task)`` maps x (B, L) long -> scores (B, L, V), and its
  ``step(x_t (B,), state) -> (scores (B, V), state)``; scores are logits, or log-probabilities for the
  adaptive head (sampling treats both as logits: log-probs differ from logits by a constant per row).
  ``task.wrap_model`` checks that no mixer is bidirectional (a generative model must not see the future).
- ``task.seq_len``: the training length L (tokens per input). ``task.vocab_size``: V.
- ``task.prompts(n, seed) -> LongTensor (n, Lp)``: prefixes to continue (lm: n windows of test text;
  density: the start token and the top half of n test images; sc09: the start token and the first quarter
  second of n test clips). When ``task.start_token`` is not None every prompt begins with it, and an
  unconditional sample starts from ``torch.full((n, 1), task.start_token)``.
- ``task.save_samples(samples (n, L'), out: Path, prompt_len) -> list[Path]`` writes what a person looks at
  into the folder ``out`` (made if missing): lm one text file, density one PNG grid (prompt rows above
  sampled rows), sc09 one WAV file per sample (mu-law decoded, 16 kHz). ``samples`` are in the prompts'
  token space (beginning with the start token where there is one); ``prompt_len`` is the number of leading
  tokens that came from the prompt.
- ``lm`` also has ``encode(text) -> LongTensor (L,)`` and ``decode(ids) -> str``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ssmkit.errors import RecipeError
from ssmkit.tasks._shared import IGNORE_INDEX
from ssmkit.tasks.base import Task

LN2 = math.log(2.0)


def shift_right(seq: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole sequence (L,) -> teacher-forcing pair: x = [start, seq[:-1]], y = seq."""
    x = torch.cat([seq.new_full((1,), start), seq[:-1]])
    return x, seq


def check_causal(model: torch.nn.Module, task_name: str) -> None:
    """Refuses a model with a bidirectional mixer: its next-token loss would read the answer. Every mixer that can
    see the future says so with a true ``bidirectional`` attribute (``ssmkit/mixers/``); tasks sit below the
    mixers (floors), so the attribute is read, not the class."""
    for name, m in model.named_modules():
        if getattr(m, "bidirectional", False) is True:
            raise RecipeError(f"task {task_name!r} is generative and needs a causal model, but mixer {name or 'model'} "
                              "is bidirectional; set model.mixer.bidirectional=false")


class GenerativeTask(Task):
    """Next-token cross-entropy over (B, L, V) scores; metrics loss, perplexity and ``bits_name``."""

    generative = True
    encoder = "embedding"
    pool = None
    main_mode = "min"
    vocab_size: int = 256
    seq_len: int = 1
    start_token: int | None = None
    bits_name = "bits_per_token"

    @property
    def main_metric(self) -> str:  # the bits figure each task reports
        return self.bits_name

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        check_causal(model, self.name)
        return model

    # --- loss and metrics ---
    def token_nll(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of each target token, (B, L) float32; 0 where the target is padding."""
        nll = F.cross_entropy(output.float().flatten(0, -2), target.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        return nll.view(target.shape)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) over the non-padding targets of the batch."""
        counted = (target != IGNORE_INDEX).sum().clamp(min=1)
        return self.token_nll(output, target).sum() / counted

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sample: summed negative log-likelihood (nats) and the number of predicted tokens."""
        nll = self.token_nll(output, target).double().sum(-1)
        return {"nll": nll.detach(), "tokens": (target != IGNORE_INDEX).sum(-1).double()}

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        tokens = float(totals["tokens"].sum())
        loss = float(totals["nll"].sum()) / tokens if tokens else float("nan")
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), self.bits_name: loss / LN2}

    # --- generation hooks (each task implements them) ---
    def prompts(self, n: int, seed: int = 0) -> torch.Tensor:
        """(n, Lp) token prefixes from the test split, chosen by ``seed``."""
        raise NotImplementedError(f"task {self.name!r} has no prompts")

    def save_samples(self, samples: torch.Tensor, out: Path, prompt_len: int) -> list[Path]:
        """Writes ``samples`` (n, L') into the folder ``out``; returns the files written."""
        raise NotImplementedError(f"task {self.name!r} cannot save samples")

    def _pick(self, count: int, n: int, seed: int) -> list[int]:
        """``n`` distinct indices of range(count) drawn with ``seed`` (all of them, in order, if n >= count)."""
        if n < 1:
            raise ValueError(f"ask for at least one prompt, got n={n}")
        if n >= count:
            return list(range(count)) + [i % count for i in range(n - count)]
        return sorted(torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n].tolist())
