"""The synthetic tasks of the Mamba paper (Gu and Dao 2023, section 4.1) that separate selective
(input-dependent) SSMs from time-invariant ones: an LTI kernel has the same weights at every position, so it
cannot skip tokens by their content.

- ``selective_copying``: M symbols at random positions of L noise (blank) tokens, then M marker tokens during
  which the model outputs the symbols in order. Unlike ``copying`` (fixed positions, solvable by a fixed delay
  kernel), where to read depends on the content.
- ``induction_heads``: L random tokens; a trigger token appears once, followed by an answer token, and again
  at the last position, where the model must output the answer (associative recall).

Both are classifications read from the last positions, like ``copying`` (``ssmkit/tasks/synthetic.py``), whose
one-hot input, loss and accuracy they reuse; data are made per sample from a generator seeded by
(seed, split, epoch, index), so epochs are fresh, workers and processes read disjoint samples, and a resumed run
sees the same data.
"""
from __future__ import annotations

import torch

from ssmkit.tasks.base import TASKS
from ssmkit.tasks.synthetic import Copying


@TASKS.register("selective_copying", description="Mamba: recall M symbols scattered among L noise tokens, in order")
class SelectiveCopying(Copying):
    """Input (L + M, K + 2): one-hot over {blank 0, symbols 1..K, marker K+1}. The first L positions hold M
    symbols (uniform from 1..K) at M distinct random positions, in order, blanks elsewhere; the last M positions
    are markers. Target (M,): the symbols as classes 0..K-1, read from the last M positions. The Mamba paper
    uses L = 4096 with 16 symbols to memorise."""

    name = "selective_copying"

    def __init__(self, seq_len: int = 256, M: int = 16, K: int = 8, **options):
        super().__init__(seq_len, M=M, K=K, **options)
        if M > seq_len:
            raise ValueError(f"selective_copying places M={M} symbols among seq_len={seq_len} positions: need M <= seq_len")

    def generate(self, g):
        symbols = torch.randint(1, self.K + 1, (self.M,), generator=g)
        where = torch.randperm(self.L, generator=g)[: self.M].sort().values
        tokens = torch.zeros(self.L + self.M, dtype=torch.long)
        tokens[where] = symbols
        tokens[self.L :] = self.K + 1  # "now output the symbols"
        return torch.nn.functional.one_hot(tokens, self.K + 2).float(), symbols - 1


@TASKS.register("induction_heads", description="Mamba: after the trigger token recurs, output the token that followed it")
class InductionHeads(Copying):
    """Input (L, K + 1): one-hot over {tokens 0..K-1, trigger K}. Positions 0..L-2 are uniform random tokens
    except one trigger at a random position p <= L-3; position p+1 is the answer; the last position is the
    trigger again. Target (1,): the answer token. The Mamba paper trains at L = 256 with a vocabulary of 16 and
    tests longer sequences (the same task at a larger ``seq_len``)."""

    name = "induction_heads"
    min_L = 3

    def __init__(self, seq_len: int = 256, K: int = 16, **options):
        super().__init__(seq_len, M=1, K=K, **options)
        self.d_input = K + 1

    def generate(self, g):
        tokens = torch.randint(0, self.K, (self.L,), generator=g)
        p = int(torch.randint(0, self.L - 2, (), generator=g))
        tokens[p] = tokens[-1] = self.K
        return torch.nn.functional.one_hot(tokens, self.K + 1).float(), tokens[p + 1 : p + 2].clone()
