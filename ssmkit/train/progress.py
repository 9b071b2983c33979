"""Progress display: a rich progress bar on a terminal, one plain line per evaluation elsewhere (CI, clusters)."""
from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Shows loss, the task's main metric, lr, tokens/s and ETA. Silent on non-main processes."""

    def __init__(self, enabled: bool, total_steps: int, start_step: int, console):
        self.enabled = enabled and console is not None
        self.console, self.total, self.start = console, total_steps, start_step
        self.live = self.enabled and console.is_terminal
        self.fields = {"loss": None, "metric": "-", "lr": None, "tokens_per_s": None}
        self.t0 = time.time()
        self._bar = None

    def __enter__(self):
        if self.live:
            self._bar = RichProgress(
                TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("loss {task.fields[loss]} | {task.fields[metric]} | lr {task.fields[lr]} | {task.fields[tps]} tok/s"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start,
                                            loss="-", metric="-", lr="-", tps="-")
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, step: int, loss: float | None = None, lr: float | None = None, tokens_per_s: float | None = None):
        if self._bar is None:
            return
        fields = {}
        if loss is not None:
            fields = {"loss": _fmt(loss), "lr": f"{lr:.3g}", "tps": f"{tokens_per_s:,.0f}"}
        self._bar.update(self._task, completed=step, **fields)

    def eval_line(self, step: int, total: int, epoch: int, metrics: dict, main_metric: str) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "samples")
        if self._bar is not None:
            self._bar.update(self._task, metric=f"val {main_metric} {_fmt(metrics.get(main_metric))}")
            self._bar.console.print(f"step {step}/{total} epoch {epoch} | val {text}")
        else:
            elapsed = time.time() - self.t0
            self.console.print(f"step {step}/{total} epoch {epoch} | val {text} | {elapsed:.1f}s", highlight=False)
