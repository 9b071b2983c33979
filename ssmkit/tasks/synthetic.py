"""The atomic synthetic tasks of the DLR paper (Gupta, Mehta, Berant 2022, "Simplifying and Understanding
State Space Models with Diagonal Linear RNNs", section 4), plus the classic adding and copying problems.

Every task but ``copying`` (a classification: cross-entropy and accuracy) is sequence-to-sequence regression: the input is (T, F) features, the target (l_out, d_out)
is read from the last ``l_out`` positions of the model's output; loss MSE; metrics MSE and
R^2 = 1 - MSE / Var(y) over the whole evaluated set (exact across processes).

"inf-normalised" noise is a N(0, 1) sequence divided by its max |value|. Most inputs carry two positional
features cos(2 pi t / T), sin(2 pi t / T).

Data are made on the fly. Sample ``i`` of epoch ``e`` is drawn from its own generator seeded with
(seed, split, e, i): every epoch is fresh, the DataLoader workers and the processes of a distributed
run read disjoint indices (the sampler shards them) and so never repeat each other's data, and a
resumed run sees exactly the data it would have seen. Validation and test sets are fixed by the
task's ``seed``.
"""
from __future__ import annotations

import functools
import math

import torch

from ssmkit.tasks.base import TASKS, Task

_SPLITS = {"train": 1, "val": 2, "test": 3}
_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from a few integers (splitmix64 steps), so nearby inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def inf_normalised(n: int, g: torch.Generator, *shape: int) -> torch.Tensor:
    """N(0, 1) noise of length n (and trailing ``shape``) divided by its max |value|."""
    x = torch.randn(n, *shape, generator=g)
    return x / x.abs().max()


@functools.lru_cache(maxsize=16)
def positions(T: int) -> torch.Tensor:
    """(T, 2): cos(2 pi t / T), sin(2 pi t / T). Cached (made once per length, read-only: callers copy it
    with ``torch.cat``); it was a fifth of the time of generating a sample."""
    angle = 2 * math.pi * torch.arange(T, dtype=torch.float64) / T
    return torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1).float()


def _with_positions(*features: torch.Tensor) -> torch.Tensor:
    """(T,) features -> (T, k + 2) with the positional features appended."""
    x = torch.stack(features, dim=-1)
    return torch.cat([x, positions(x.shape[0])], dim=-1)


class SyntheticDataset(torch.utils.data.Dataset):
    """Map-style: item i is generated from a generator seeded by (seed, split, epoch, i)."""

    def __init__(self, task: SyntheticTask, split: str, size: int, seed: int):
        self.task, self.split, self.size, self.seed = task, split, size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fresh training data each epoch; validation and test stay fixed."""
        if self.split == "train":
            self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        g = torch.Generator().manual_seed(_mix(self.seed, _SPLITS[self.split], self.epoch, index))
        return self.task.generate(g)


class SyntheticTask(Task):
    """Common options and the loss/metric contract. Subclasses set d_input, d_output and generate(), and
    ``l_output`` (how many final positions are the target) where it is not the whole ``seq_len``."""

    encoder = "linear"
    pool = None
    main_metric = "r2"
    main_mode = "max"
    min_L = 1

    def __init__(self, seq_len: int = 256, samples_per_epoch: int = 16000, val_samples: int = 1600,
                 test_samples: int = 1600, seed: int = 0):
        if seq_len < self.min_L:
            raise ValueError(f"seq_len must be >= {self.min_L} for task {self.name!r}, got {seq_len}")
        for key, value in (("samples_per_epoch", samples_per_epoch), ("val_samples", val_samples), ("test_samples", test_samples)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.L, self.seed = seq_len, seed
        self.l_output = seq_len  # the target is read from every position unless a task sets fewer
        self.sizes = {"train": samples_per_epoch, "val": val_samples, "test": test_samples}

    def generate(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample: input (T, d_input), target (l_output, d_output)."""
        raise NotImplementedError

    def dataset(self, split: str, seed: int = 0) -> SyntheticDataset:
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of train, val, test")
        # Training data also depend on the run's seed; validation and test only on the task's seed.
        data_seed = _mix(self.seed, seed) if split == "train" else self.seed
        return SyntheticDataset(self, split, self.sizes[split], data_seed)

    def _pred(self, output: torch.Tensor) -> torch.Tensor:
        """The last l_output positions of (B, T, d_output), in float32 at least."""
        return output[:, -self.l_output:].float()

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self._pred(output), target.float())

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sample: squared error, element count, sum and sum of squares of the target."""
        pred, y = self._pred(output).double(), target.double()  # (B, l_out, d_out)
        return {
            "sq_err": ((pred - y) ** 2).sum(dim=(1, 2)),
            "count": torch.full((y.shape[0],), float(y[0].numel()), dtype=torch.float64, device=y.device),
            "y_sum": y.sum(dim=(1, 2)),
            "y_sq": (y**2).sum(dim=(1, 2)),
        }

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(totals["count"])
        mse = float(totals["sq_err"]) / n
        var = float(totals["y_sq"]) / n - (float(totals["y_sum"]) / n) ** 2
        return {"mse": mse, "r2": 1.0 - mse / var if var > 0 else float("nan")}


@TASKS.register("shift", description="DLR: 8 outputs, the input delayed by h*L/8 for h=0..7")
class Shift(SyntheticTask):
    """y[t, h] = x[t - s_h] (0 for t < s_h) with s_h = h L / num_shifts."""

    name = "shift"
    d_input = 3

    def __init__(self, seq_len: int = 256, num_shifts: int = 8, **options):
        if num_shifts < 1 or num_shifts > seq_len:
            raise ValueError(f"num_shifts must be in [1, seq_len={seq_len}], got {num_shifts}")
        super().__init__(seq_len, **options)
        self.num_shifts = self.d_output = num_shifts
        self.shifts = [h * seq_len // num_shifts for h in range(num_shifts)]

    def generate(self, g):
        x = inf_normalised(self.L, g)  # (L,)
        y = torch.zeros(self.L, self.num_shifts)
        for h, s in enumerate(self.shifts):
            y[s:, h] = x[: self.L - s]
        return _with_positions(x), y


@TASKS.register("cumsum", description="DLR: running sum divided by sqrt(t+1)")
class CumSum(SyntheticTask):
    """y_t = (sum_{i<=t} x_i) / sqrt(t + 1)."""

    name = "cumsum"
    d_input, d_output = 3, 1

    def generate(self, g):
        x = inf_normalised(self.L, g)
        y = torch.cumsum(x.double(), 0) / torch.sqrt(torch.arange(1, self.L + 1, dtype=torch.float64))
        return _with_positions(x), y.float().unsqueeze(-1)


@TASKS.register("cummax", description="DLR: running maximum")
class CumMax(SyntheticTask):
    """y_t = max_{i<=t} x_i."""

    name = "cummax"
    d_input, d_output = 3, 1

    def generate(self, g):
        x = inf_normalised(self.L, g)
        return _with_positions(x), torch.cummax(x, 0).values.unsqueeze(-1)


@TASKS.register("reverse", description="DLR: read L values, then output them in reverse order")
class Reverse(SyntheticTask):
    """Input x followed by L zeros (length 2L); target y_j = x_{L-1-j} from the last L positions."""

    name = "reverse"
    d_input, d_output = 3, 1

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(0)

    def generate(self, g):
        x = inf_normalised(self.L, g)
        inp = torch.cat([x, torch.zeros(self.L)])  # (2L,)
        return _with_positions(inp), self.target(x).unsqueeze(-1)


@TASKS.register("sort", description="DLR: output the L values ordered by distance to the first one")
class Sort(Reverse):
    """As reverse; the target is x ordered by increasing |x_i - x_0| (stable, so x_0 comes first)."""

    name = "sort"

    def target(self, x: torch.Tensor) -> torch.Tensor:
        order = torch.sort((x - x[0]).abs(), stable=True).indices
        return x[order]


@TASKS.register("masked_select", description="DLR: output the M marked values among M+L noise values")
class MaskedSelect(SyntheticTask):
    """Values: M+L inf-normalised noise then M zeros; a marker feature is 1 at M random positions among
    the first M+L; target: the marked values in positional order (the last M outputs)."""

    name = "masked_select"
    d_input, d_output = 4, 1
    fixed = False

    def __init__(self, seq_len: int = 256, M: int = 32, **options):
        if M < 1:
            raise ValueError(f"M must be >= 1, got {M}")
        super().__init__(seq_len, **options)
        self.M = self.l_output = M
        if self.fixed:
            self.positions = self._positions(torch.Generator().manual_seed(_mix(self.seed, 7)))

    def _positions(self, g) -> torch.Tensor:
        return torch.randperm(self.M + self.L, generator=g)[: self.M].sort().values

    def generate(self, g):
        values = torch.cat([inf_normalised(self.M + self.L, g), torch.zeros(self.M)])  # (L + 2M,)
        pos = self.positions if self.fixed else self._positions(g)
        marker = torch.zeros_like(values)
        marker[pos] = 1.0
        return _with_positions(values, marker), values[pos].unsqueeze(-1)


@TASKS.register("masked_select_fixed", description="DLR: masked_select with the same M positions for the whole run")
class MaskedSelectFixed(MaskedSelect):
    name = "masked_select_fixed"
    fixed = True


@TASKS.register("solve", description="DLR: solve A x = b for x (A orthogonal) from the flattened [A | b]")
class Solve(SyntheticTask):
    """N = floor(sqrt(1 + L)) - 1; A a random orthogonal N x N matrix, x a random unit vector, b = A x;
    input: the rows of [A | b] flattened and zero-padded to L; target: x (the last N outputs)."""

    name = "solve"
    d_input, d_output = 3, 1
    fixed = False
    min_L = 3

    def __init__(self, seq_len: int = 256, **options):
        super().__init__(seq_len, **options)
        self.N = self.l_output = math.isqrt(1 + seq_len) - 1
        if self.fixed:
            self.A = self._orthogonal(torch.Generator().manual_seed(_mix(self.seed, 11)))

    def _orthogonal(self, g) -> torch.Tensor:
        """U Vh from the SVD of a Gaussian matrix: a random orthogonal matrix."""
        u, _, vh = torch.linalg.svd(torch.randn(self.N, self.N, generator=g, dtype=torch.float64))
        return u @ vh

    def generate(self, g):
        A = self.A if self.fixed else self._orthogonal(g)  # (N, N)
        x = torch.randn(self.N, generator=g, dtype=torch.float64)
        x = x / x.norm()
        b = A @ x
        flat = torch.cat([A, b.unsqueeze(-1)], dim=1).flatten()  # (N (N + 1),)
        values = torch.zeros(self.L, dtype=torch.float64)
        values[: flat.numel()] = flat
        return _with_positions(values.float()), x.float().unsqueeze(-1)


@TASKS.register("solve_fixed", description="DLR: solve with the same matrix A for the whole run")
class SolveFixed(Solve):
    name = "solve_fixed"
    fixed = True


@TASKS.register("context_shift", description="DLR: delay the input by an amount given only as content")
class ContextShift(SyntheticTask):
    """r ~ U{0..L-3}; sequence [cos(2 pi r/L), sin(2 pi r/L), x_0..x_{L-3}]; target: it delayed by r."""

    name = "context_shift"
    d_input, d_output = 3, 1
    min_L = 3

    def generate(self, g):
        L = self.L
        r = int(torch.randint(0, L - 2, (), generator=g))
        angle = torch.tensor(2 * math.pi * r / L, dtype=torch.float64)
        seq = torch.cat([torch.stack([torch.cos(angle), torch.sin(angle)]).float(), inf_normalised(L - 2, g)])  # (L,)
        y = torch.zeros(L)
        y[r:] = seq[: L - r]
        return _with_positions(seq), y.unsqueeze(-1)


@TASKS.register("mips", description="DLR: causal maximum inner-product search (associative recall)")
class Mips(SyntheticTask):
    """q, k, v rows are L2-normalised Gaussian vectors in R^D; y_i = v_{j*}, j* = argmax_{j<=i} q_i . k_j
    (all j when causal is false); input row i = [q_i, k_i, v_i, cos, sin]."""

    name = "mips"

    def __init__(self, seq_len: int = 256, D: int = 4, causal: bool = True, **options):
        if D < 1:
            raise ValueError(f"D must be >= 1, got {D}")
        super().__init__(seq_len, **options)
        self.D, self.causal = D, causal
        self.d_input, self.d_output, self.l_output = 3 * D + 2, D, seq_len

    def generate(self, g):
        qkv = torch.randn(3, self.L, self.D, generator=g)
        q, k, v = qkv / qkv.norm(dim=-1, keepdim=True)  # each (L, D)
        scores = q @ k.T  # (L, L): [i, j] = q_i . k_j
        if self.causal:
            future = torch.ones(self.L, self.L, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        y = v[scores.argmax(dim=-1)]  # (L, D)
        return torch.cat([q, k, v, positions(self.L)], dim=-1), y


@TASKS.register("adding", description="classic adding problem: sum the two marked values")
class Adding(SyntheticTask):
    """Hochreiter & Schmidhuber (1997): values U(0, 1), a marker feature 1 at one position in each half
    of the sequence; target: the sum of the two marked values, read from the last position."""

    name = "adding"
    d_input, d_output = 2, 1
    min_L = 2

    def __init__(self, seq_len: int = 256, **options):
        super().__init__(seq_len, **options)
        self.l_output = 1

    def generate(self, g):
        values = torch.rand(self.L, generator=g)
        half = self.L // 2
        first = int(torch.randint(0, half, (), generator=g))
        second = int(torch.randint(half, self.L, (), generator=g))
        marker = torch.zeros(self.L)
        marker[[first, second]] = 1.0
        return torch.stack([values, marker], dim=-1), (values[first] + values[second]).reshape(1, 1)


@TASKS.register("copying", description="classic copying memory: recall M symbols after a gap of L")
class Copying(SyntheticTask):
    """Hochreiter & Schmidhuber (1997), as in Arjovsky et al. (2016): M symbols drawn from {1..K}, a gap of
    L-1 blanks, a delimiter, then M blanks during which the model must output the M symbols in order.

    Input (M + L + M, K + 2): one-hot over {blank 0, symbols 1..K, delimiter K+1}. Target (M,): the symbols
    as classes 0..K-1, read from the last M positions. Loss cross-entropy; metric accuracy per symbol.
    """

    name = "copying"
    main_metric = "accuracy"

    def __init__(self, seq_len: int = 256, M: int = 10, K: int = 8, **options):
        super().__init__(seq_len, **options)
        if M < 1 or K < 2:
            raise ValueError(f"copying needs M >= 1 symbols and an alphabet of K >= 2, got M={M}, K={K}")
        self.M, self.K = M, K
        self.d_input, self.d_output, self.l_output = K + 2, K, M

    def generate(self, g):
        symbols = torch.randint(1, self.K + 1, (self.M,), generator=g)
        tokens = torch.zeros(self.M + self.L + self.M, dtype=torch.long)
        tokens[: self.M] = symbols
        tokens[self.M + self.L - 1] = self.K + 1  # the delimiter: "now copy"
        return torch.nn.functional.one_hot(tokens, self.K + 2).float(), symbols - 1

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self._pred(output).flatten(0, 1), target.flatten())

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        correct = (self._pred(output).argmax(-1) == target).float().sum(-1)  # (B,)
        return {"correct": correct, "count": torch.full_like(correct, float(self.M))}

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"accuracy": float(totals["correct"] / totals["count"])}
