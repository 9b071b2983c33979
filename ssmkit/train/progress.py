"""What a run prints while it works: a rich progress bar on a terminal, plain lines everywhere else.

On a terminal the bar shows the step, the running loss (from step 1: the mean of the steps since the last
``log_every``), the last validation metric, lr, tokens/s, elapsed time and ETA. Off a terminal (``> run.log``,
``| tee``, nohup, SLURM) there is no bar: every ``log_every`` steps one plain line
``step 100/420 (24%) epoch 1 | loss 0.1234 | lr 0.001 | 12,345 tok/s | elapsed 0:01:23 | eta 0:04:10``, flushed
at once (a redirected stdout is block-buffered), and never wrapped (``soft_wrap``: a log line is one line
whatever the console width). Evaluations and notes (stops, skipped steps) are plain lines in both modes.
Only the main process prints.
"""
from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from ssmkit.console import number_text


def clock(seconds: float | None) -> str:
    """``H:MM:SS`` (``-`` when unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def say(console, text: str) -> None:
    """One unwrapped line on ``console``, flushed (for a pipe or a file)."""
    if console is None:
        return
    console.print(text, soft_wrap=True, highlight=False, markup=False)
    flush = getattr(console.file, "flush", None)
    if flush is not None:
        flush()


class Progress:
    """The training display (see the module docstring). Silent on non-main processes."""

    def __init__(self, enabled: bool, total_steps: int, start_step: int, console, log_every: int = 50):
        self.enabled = enabled and console is not None
        self.console, self.total, self.start, self.log_every = console, total_steps, start_step, log_every
        self.live = self.enabled and console.is_terminal
        self.t0 = time.time()
        self._bar = None
        self._losses: list[float] = []  # the steps' losses since the last log line

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
            self._bar = None

    def eta(self, step: int) -> float | None:
        done = step - self.start
        if done <= 0:
            return None
        return (time.time() - self.t0) / done * max(self.total - step, 0)

    def update(self, step: int, epoch: int, loss: float | None, lr: float, tokens_per_s: float | None = None,
               logged: bool = False) -> None:
        """After each optimizer step: ``loss`` is the step's loss; ``logged`` marks a ``log_every`` step, where
        ``tokens_per_s`` is the window's rate (the plain line is printed then)."""
        if not self.enabled:
            return
        if loss is not None:
            self._losses.append(loss)
        running = sum(self._losses) / len(self._losses) if self._losses else None
        if self._bar is not None:
            fields = {"loss": number_text(running, ".4g"), "lr": f"{lr:.3g}"}
            if tokens_per_s is not None:
                fields["tps"] = f"{tokens_per_s:,.0f}"
            self._bar.update(self._task, completed=step, **fields)
        elif logged:
            say(self.console, self.line(step, epoch, running, lr, tokens_per_s))
        if logged:
            self._losses = []

    def line(self, step: int, epoch: int, loss: float | None, lr: float, tokens_per_s: float | None) -> str:
        percent = f" ({100 * step // self.total}%)" if self.total else ""
        rate = f"{tokens_per_s:,.0f} tok/s" if tokens_per_s is not None else "- tok/s"
        return (f"step {step}/{self.total}{percent} epoch {epoch} | loss {number_text(loss, '.4g')} | lr {lr:.3g} | {rate} | "
                f"elapsed {clock(time.time() - self.t0)} | eta {clock(self.eta(step))}")

    def eval_line(self, step: int, total: int, epoch: int, metrics: dict, main_metric: str) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k} {number_text(v, '.4g')}" for k, v in metrics.items() if k != "samples")
        if self._bar is not None:
            self._bar.update(self._task, metric=f"val {main_metric} {number_text(metrics.get(main_metric), '.4g')}")
            say(self._bar.console, f"step {step}/{total} epoch {epoch} | val {text}")
        else:
            say(self.console, f"step {step}/{total} epoch {epoch} | val {text} | elapsed {clock(time.time() - self.t0)}")

    def note(self, text: str) -> None:
        """A line of its own (a stop, a skipped step), above the bar on a terminal."""
        if self.enabled:
            say(self._bar.console if self._bar is not None else self.console, text)


class EvalProgress:
    """``ssmkit eval``'s display on stderr: a transient bar over the batches on a terminal; off a terminal a
    plain line at every tenth of the batches. Nothing when ``console`` is None."""

    def __init__(self, console, total_batches: int, what: str = "evaluating"):
        self.console, self.total, self.what = console, max(int(total_batches), 1), what
        self.t0 = time.time()
        self._bar = None
        self._done = 0

    def __enter__(self):
        if self.console is not None and self.console.is_terminal:
            self._bar = RichProgress(TextColumn(self.what), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                                     TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def __call__(self, batches: int = 1) -> None:
        before, self._done = self._done, self._done + batches
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done)
        elif self.console is not None and self._done * 10 // self.total > before * 10 // self.total:
            elapsed = time.time() - self.t0
            eta = elapsed / self._done * max(self.total - self._done, 0)
            say(self.console, f"{self.what}: {self._done}/{self.total} batches | elapsed {clock(elapsed)} | eta {clock(eta)}")

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
