"""The training loop: one readable PyTorch loop on Hugging Face Accelerate, in named phases around one
:class:`~ssmkit.runs.checkpoint.LoopState` (step, epoch, batches done in the epoch, best metric, schedule, every
process's RNG), which each checkpoint saves and a resume restores as one unit.

    set-up     set_up(): where to start, seed, task, model (+ checkpoint weights), data, optimizer, schedule,
               accelerator.prepare; then the run directory and the banner (train())
    resume     _Run.resume(): optimizer, schedule, RNG streams, position in the data, from the checkpoint
    step       _Run.train_batch(): forward, loss, backward (accumulated); per optimizer step the finite check,
               clip, optimizer step; _Run.after_step(): schedule, then log / evaluate / checkpoint when due
    log        _Run.log(): a metrics.jsonl line, the trackers, the progress display
    evaluate   _Run.run_evaluation(): the validation metrics (ssmkit/runs/evaluate.py), best, plateau schedule
    checkpoint _Run.checkpoint(): the weights, optimizer and LoopState (ssmkit/runs/checkpoint.py)
    end        _Run.finish(): final evaluation and checkpoint, a stop note; summary.json (train())

Each concern beside the loop has its own module: where a run starts (``resume.py``), the non-finite check
(``guard.py``), signals and exit codes (``signals.py``), the display (``progress.py``, ``banner.py``), trackers
(``trackers.py``); run directories, checkpoints, the run's model and evaluation live below training, in
``ssmkit/runs/`` (generation reads runs through the same room).

Conventions:
- A *step* is an optimizer step (``grad_accum`` forward passes on every process). Schedules count steps,
  whatever the number of processes; the scheduler is not passed through ``accelerator.prepare``.
- Metrics are exact across processes (``ssmkit/runs/evaluate.py``).
- Only the main process writes files and prints.
- ``train.batch_size`` is per process: one optimizer step sees ``batch_size * grad_accum * processes``
  samples. Each process reads its own share of every epoch (Accelerate shards the sampler); the learning
  rate is not scaled with the number of processes (scale it in the recipe if you want that).
- Kernels, Cauchy/Vandermonde products and FFTs run in float32/complex64 under bf16/fp16 autocast
  (``tests/train/test_precision.py`` checks every registered kernel).
- SIGINT/SIGTERM finish the current step (or abandon an evaluation within a batch), save a checkpoint and
  return with status ``interrupted`` (the CLI exits 130/143). A non-finite loss is never applied to the
  weights and no checkpoint holds NaN (``guard.py``).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from rich.table import Table

from ssmkit.errors import DataError, RecipeError, UserError, first_line
from ssmkit.ops.cache import flush_kernel_caches, set_kernel_caching
from ssmkit.recipe import Recipe, build_task, prepare_data  # noqa: F401  (build_task: tests reach it as loop.build_task)
from ssmkit.runs.accelerator import is_fsdp, make_accelerator
from ssmkit.runs.checkpoint import (
    Checkpoint,
    LoopState,
    device_rng_state,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ssmkit.runs.evaluate import StopAware, evaluate, make_loader
from ssmkit.runs.load import checkpoint_weights, load_weights
from ssmkit.runs.lock import hold_run_lock, releases_run_locks
from ssmkit.runs.model import build_loop_model, forward
from ssmkit.runs.rundir import (
    append_metrics,
    new_run_dir,
    read_metrics,
    truncate_metrics,
    write_summary,
    write_text,
)
from ssmkit.tasks.base import no_validation_note
from ssmkit.train.banner import print_banner, slow_step
from ssmkit.train.guard import LossGuard, NonFiniteLoss, causes, parameters_finite
from ssmkit.train.memory import one_line_out_of_memory
from ssmkit.train.optim import build_optimizer, build_scheduler, describe_groups, param_groups
from ssmkit.train.progress import Progress
from ssmkit.train.resume import Start, plan_start
from ssmkit.train.signals import SecondInterrupt, StopFlag, StoppedAtOnce, resume_command
from ssmkit.train.trackers import check_trackers, finish_trackers, start_trackers

__all__ = ["build_loop_model", "evaluate", "forward", "make_accelerator", "make_loader", "train"]


# ----------------------------------------------------------------------------------------------- set-up
@dataclass
class Setup:
    """Everything the set-up phase builds; ``saved`` is the checkpoint a resumed run continues (None: step 0)."""

    recipe: Recipe
    accelerator: Accelerator
    task: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    groups: list
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    no_validation: str | None
    data: dict
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    saved: Checkpoint | None


def set_up(recipe: Recipe, start: Start, download: bool, console) -> Setup:
    """The set-up phase: seed, task (data fetched if asked, then checked), model with the checkpoint's weights,
    optimizer, loaders, ``accelerator.prepare``, schedule."""
    cfg = recipe.train
    accelerator = make_accelerator(recipe)
    set_seed(cfg.seed)
    notes = console if accelerator.is_main_process else None
    task = prepare_data(recipe, download, accelerator)  # build_task, after fetching the data if asked
    with slow_step(notes, f"checking the {recipe.task['name']} data"):
        task.check_data()
    with one_line_out_of_memory(recipe, "building the model"):
        model = build_loop_model(recipe, task)
    saved = None
    if start.resuming:  # full weights into the unwrapped model, before DDP/FSDP wraps (and shards) it
        saved = load_checkpoint(start.checkpoint)
        load_weights(model, checkpoint_weights(saved), start.checkpoint)
    groups = param_groups(model, recipe.optimizer.lr, recipe.optimizer.weight_decay)
    optimizer = build_optimizer(model, recipe.optimizer)
    train_loader, val_loader, no_val = _loaders(recipe, task, notes)
    data = {"train": len(train_loader.dataset), "val": len(val_loader.dataset) if val_loader is not None else 0}
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    batches_per_epoch = len(train_loader)  # this process's share
    if batches_per_epoch == 0:
        raise RecipeError(
            f"{recipe.source}: train.batch_size={cfg.batch_size} x {accelerator.num_processes} process(es) is larger "
            f"than the training set ({data['train']} samples); lower it or raise task.samples_per_epoch"
        )
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, recipe.scheduler, total_steps, mode=task.main_mode,
                                steps_per_epoch=steps_per_epoch)
    return Setup(recipe, accelerator, task, model, optimizer, scheduler, groups, train_loader, val_loader, no_val,
                 data, batches_per_epoch, steps_per_epoch, total_steps, saved)


def _loaders(recipe: Recipe, task, notes):
    """(train loader, validation loader or None, the no-validation note or None)."""
    name, seed = recipe.task["name"], recipe.train.seed
    with slow_step(notes, f"reading the {name} training split"):
        train_loader = make_loader(task, "train", recipe, seed)
    no_val = no_validation_note(task, recipe.scheduler.name)  # no validation split: never select on test
    val_loader = None
    if no_val is None:
        with slow_step(notes, f"reading the {name} validation split"):
            val_loader = make_loader(task, "val", recipe, seed)
        if len(val_loader.dataset) == 0:  # an empty file: nothing to select on (and 0/0 metrics)
            raise DataError(f"{task.name}: the validation split is empty; check its data (ssmkit data check {task.name})")
    return train_loader, val_loader, no_val


def _stop_point(max_steps: int | None, saved: Checkpoint | None, total_steps: int) -> int:
    """Where a resumed run with ``--max-steps`` stops (the schedule keeps the run's ``total_steps``)."""
    if max_steps is None:
        return total_steps
    at = saved.state.step
    if max_steps > total_steps:
        raise UserError(f"--max-steps {max_steps} is past the end of this run ({total_steps} steps, which its schedule "
                        f"is planned for); to make the run longer set train.max_steps={max_steps} (re-plans the schedule)")
    if max_steps < at:
        raise UserError(f"--max-steps {max_steps}: the run is already at step {at}; give a later step (up to {total_steps})")
    return max_steps


def _run_directory(start: Start, recipe: Recipe, run_dir, accelerator: Accelerator) -> Path:
    """The run directory, made (or prepared for a restart) by the main process and shared with the others;
    ``recipe.yaml`` written into it."""
    made = [None]
    if accelerator.is_main_process:
        if start.run_dir is None:
            path = new_run_dir(recipe.train.runs_dir, recipe.name, run_dir)
            hold_run_lock(path)  # one trainer per run directory (ssmkit/runs/lock.py)
        else:
            path = start.run_dir
            path.mkdir(parents=True, exist_ok=True)
            hold_run_lock(path)  # a second trainer of this run: one line naming the first one, exit 2
            if not start.resuming:  # a run that stopped before its first checkpoint starts again from step 0
                truncate_metrics(path, 0)
        write_text(path / "recipe.yaml", recipe.to_yaml())  # atomically, never through a planted symlink
        made = [str(path)]
    return Path(broadcast_object_list(made)[0])


@releases_run_locks  # the run directory's lock (hold_run_lock) ends with the call, however it ends
def train(recipe: Recipe, run_dir: str | Path | None = None, resume: str | Path | None = None,
          max_steps: int | None = None, dry_run: bool = False, console=None, return_model: bool = False,
          download: bool = False):
    """Trains ``recipe``; returns the summary (also written to ``summary.json``), and the prepared
    model too if ``return_model``.

    ``resume``: a run directory (or checkpoint) to continue (one without a checkpoint starts again from step 0),
    or ``"auto"``: continue ``run_dir`` (default ``<runs_dir>/<name>``) if it has a checkpoint, else start it
    (``ssmkit/train/resume.py``). ``max_steps``: on a new run its length (``train.max_steps``, schedule
    included); on a resumed run a stop point that leaves the schedule as planned. ``dry_run``: build
    everything, run one batch, write nothing. ``download`` (or the task option ``download: true``): fetch the
    task's dataset first when its files are missing (``ssmkit/tasks/download.py``). A non-finite loss raises
    ``NonFiniteLoss`` after writing the summary (``ssmkit/train/guard.py``).
    """
    start = plan_start(recipe, run_dir, resume)
    if max_steps is not None and not start.resuming:
        recipe.train.max_steps = max_steps  # a new run: its length, recorded in its recipe.yaml
    check_trackers(recipe.train.log_with, recipe.source)  # a missing package: one line before anything is built
    setup = set_up(recipe, start, download, console)
    stop_at = _stop_point(max_steps if start.resuming else None, setup.saved, setup.total_steps)
    if dry_run:
        return _dry_run(setup, console)
    new = start.run_dir is None or not (start.run_dir.is_dir() and any(start.run_dir.iterdir()))
    run_path = _run_directory(start, recipe, run_dir, setup.accelerator)
    start_trackers(setup.accelerator, recipe, run_path)
    run = _Run(setup, run_path, console)
    if setup.saved is not None:
        run.resume(setup.saved)
    run.announce(new)
    summary = run.run_to_end(stop_at)
    return (summary, setup.model) if return_model else summary


def _dry_run(setup: Setup, console) -> dict:
    """Prints the model and its parameter groups, runs one batch forward and backward."""
    recipe, task, model, accelerator = setup.recipe, setup.task, setup.model, setup.accelerator
    x, y = next(iter(setup.train_loader))
    loss = task.loss(forward(model, task, x), y)
    accelerator.backward(loss)
    n_params = sum(p.numel() for p in model.parameters())
    if accelerator.is_main_process and console is not None:
        console.print(f"recipe {recipe.name} ({recipe.source}): task {recipe.task['name']}, "
                      f"mixer {recipe.model.mixer['name']}, {recipe.model.n_layers} x d_model {recipe.model.d_model}")
        if hasattr(task, "describe"):  # what a task inferred from the user's data (vocabulary, classes, loss, ...)
            console.print(f"data: {task.describe()}")
        console.print(f"model: {n_params:,} parameters; input {tuple(x.shape)} -> target {tuple(y.shape)}")
        table = Table(title="parameter groups")
        columns = ("lr", "weight_decay", "tensors", "elements", "names")
        for col in columns:
            table.add_column(col)
        for row in describe_groups(setup.groups):
            table.add_row(*(f"{row[c]:g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
        console.print(table)
        console.print(f"one batch: loss {loss.item():.4g}, gradients finite: "
                      f"{all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)}")
    return {"status": "dry-run", "parameters": n_params, "loss": loss.item()}


# --------------------------------------------------------------------------------------------- the run
class _Run:
    """One training run: the set-up's objects, the :class:`LoopState` and the phases as methods."""

    def __init__(self, setup: Setup, run_path: Path, console):
        self.recipe, self.cfg, self.accelerator, self.task = setup.recipe, setup.recipe.train, setup.accelerator, setup.task
        self.model, self.optimizer, self.scheduler = setup.model, setup.optimizer, setup.scheduler
        self.train_loader, self.val_loader, self.run_path = setup.train_loader, setup.val_loader, run_path
        self.total_steps, self.batches_per_epoch = setup.total_steps, setup.batches_per_epoch
        self.setup, self.console = setup, console
        self.net = _Compiled(self.model) if self.cfg.compile else self.model  # what the loop calls; ``model`` is saved
        # Under accumulation, compute each kernel once per optimizer step. Single process only: under DDP the
        # kernel parameters would get their gradient after DDP's all-reduce.
        self.cache_kernels = self.cfg.grad_accum > 1 and self.accelerator.num_processes == 1
        set_kernel_caching(self.model, self.cache_kernels)
        self.guard = LossGuard(self.accelerator, self.cfg.on_nonfinite)
        self.state = LoopState(main_metric=self.task.main_metric, processes=self.accelerator.num_processes)
        self.status, self.signal = "finished", None
        self.last_metrics: dict = {}
        self.evaluated_at = -1  # the step of the last evaluation (-1: none yet)
        self.first_step = 0
        self.start_time = time.time()
        self.stop: StopFlag | None = None
        self.progress: Progress | None = None
        self.step_loss: float | None = None

    @property
    def step(self) -> int:
        return self.state.step

    # --- resume ---
    def resume(self, saved: Checkpoint) -> None:
        """Optimizer, schedule, every process's RNG streams and the position in the data, from a checkpoint."""
        acc = self.accelerator
        _load_optimizer(acc, self.model, self.optimizer, saved.optimizer)
        self.scheduler.load_state_dict(saved.state.scheduler)
        saved.state.restore_rng(acc.process_index, acc.num_processes, acc.device)
        self.state = saved.state
        self.state.main_metric, self.state.processes = self.task.main_metric, acc.num_processes
        self.first_step = self.state.step
        if acc.is_main_process:
            truncate_metrics(self.run_path, self.state.step)
        # A checkpoint made by an evaluation: its metrics stand (a requeued finished run is not evaluated again).
        val = [r for r in read_metrics(self.run_path) if r["step"] == self.state.step and r.get("loss") is None
               and r.get("metrics")] if self.state.metric is not None else []
        if val:
            self.last_metrics = {k.removeprefix("val/"): v for k, v in val[-1]["metrics"].items()}
            self.evaluated_at = self.state.step

    def announce(self, new: bool) -> None:
        """The start banner (and the no-validation note), main process only."""
        notes = self.console if self.accelerator.is_main_process else None
        s = self.setup
        print_banner(notes, run_dir=self.run_path, new=new, start_step=self.state.step, recipe=self.recipe,
                     parameters=self.parameters(), accelerator=self.accelerator, total_steps=self.total_steps,
                     steps_per_epoch=s.steps_per_epoch, data=s.data)
        if notes is not None and s.no_validation is not None:
            notes.print(s.no_validation)

    def parameters(self) -> int:
        return sum(p.numel() for p in self.accelerator.unwrap_model(self.model).parameters())

    # --- the epochs ---
    def run_to_end(self, stop_at: int) -> dict:
        """Trains to ``stop_at`` (or a signal, or an error) and writes ``summary.json`` whatever happened."""
        # The handlers stay through the summary too: a signal arriving while it is written (a launcher passing one on
        # after a peer died) only sets the flag, and a second Ctrl-C no longer interrupts anything.
        with StopFlag() as stop:
            try:
                with one_line_out_of_memory(self.recipe, lambda: f"training (step {self.state.step + 1})"):
                    self.run(stop_at, stop)
            finally:
                stop.hold()
                summary = self.summary(self.parameters())
                if self.accelerator.is_main_process:  # time_s summed over resumed segments
                    summary = write_summary(self.run_path, summary, self.first_step)
                finish_trackers(self.accelerator)
        return summary

    def run(self, stop_at: int, stop: StopFlag) -> None:
        self.progress = Progress(self.accelerator.is_main_process, self.total_steps, self.state.step, self.console,
                                 self.cfg.log_every)
        self.model.train()
        self.stop = stop
        try:
            with self.progress:
                self._epochs(stop_at)
                self._finish(stop_at)
        except SecondInterrupt:
            self.status = "aborted"
            raise StoppedAtOnce(f"stopped at once by a second Ctrl-C at step {self.state.step}, without saving; "
                                + self._restart_hint()) from None
        except NonFiniteLoss:
            self.status = "nonfinite"
            raise
        except BaseException:
            self.status = "failed"  # summary.json never says finished for a run that raised
            raise

    def _restart_hint(self) -> str:
        if has_checkpoint(self.run_path):
            return f"continue from the last checkpoint with: {resume_command(self.run_path)}"
        return f"no checkpoint was written yet; start it again with: {resume_command(self.run_path)}"

    def _epochs(self, stop_at: int) -> None:
        cfg, state = self.cfg, self.state
        window = _Window(self.accelerator.num_processes)
        while state.step < stop_at and (cfg.max_steps or state.epoch < cfg.epochs):
            if self._epoch(window, stop_at):
                return
            if state.batch_in_epoch >= self.batches_per_epoch:  # the epoch is complete
                state.epoch += 1
                state.batch_in_epoch = 0
                if not cfg.eval_every and self.evaluated_at != state.step:
                    self.run_evaluation()
                    if self._stopped():
                        return

    def _epoch(self, window: _Window, stop_at: int) -> bool:
        """The batches of the current epoch from ``batch_in_epoch`` on, until it ends or ``stop_at``; True when a
        signal stopped the run."""
        acc, state = self.accelerator, self.state
        # A new shuffle, and fresh data for datasets with set_epoch (Accelerate skips the dataset's set_epoch when
        # the sampler has one, so call both).
        loader = acc.skip_first_batches(self.train_loader, state.batch_in_epoch) if state.batch_in_epoch else self.train_loader
        loader.set_epoch(state.epoch)
        if hasattr(self.train_loader.dataset, "set_epoch"):
            self.train_loader.dataset.set_epoch(state.epoch)
        for x, y in loader:
            applied = self.train_batch(x, y)
            state.batch_in_epoch += 1
            window.tokens += x.shape[0] * x.shape[1]
            if applied is None:
                continue
            if applied:
                self.after_step(window)
            else:
                self.guard.skip_or_stop(state.step, self._nonfinite_line)
                self.progress.note(f"step {state.step + 1}: non-finite training loss, step skipped "
                                   f"(train.on_nonfinite=skip; {self.guard.skipped} skipped so far)")
            if self._stopped():
                return True
            if state.step >= stop_at:
                break
        return False

    def _stopped(self) -> bool:
        """Whether a signal reached any process (then the run's status is ``interrupted``)."""
        if self.stop.requested(self.accelerator):
            self.status = "interrupted"
            return True
        return False

    # --- step ---
    def train_batch(self, x, y) -> bool | None:
        """Forward and backward; at the end of an accumulation, the finite check and the optimizer step.
        Returns None mid-accumulation, else whether the step was applied (False: non-finite, skipped)."""
        acc = self.accelerator
        with acc.accumulate(self.model):
            loss = self.task.loss(forward(self.net, self.task, x), y)
            self.guard.add(loss)
            acc.backward(loss)
            if not acc.sync_gradients:
                return None
            if self.cache_kernels:
                flush_kernel_caches(self.model)  # the step's one kernel backward
            finite, self.step_loss = self.guard.finish_step()
            if finite:
                if self.cfg.grad_clip:
                    acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                self.optimizer.step()
            self.optimizer.zero_grad()
            return finite

    def after_step(self, window: _Window) -> None:
        """After an applied optimizer step: the schedule, the log, then an evaluation or a checkpoint when due."""
        cfg, state = self.cfg, self.state
        state.step += 1
        if self.recipe.scheduler.name != "plateau" and not self.accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        window.losses.append(self.step_loss)
        self.log(window)
        if cfg.eval_every and state.step % cfg.eval_every == 0:
            self.run_evaluation()
        elif cfg.save_every and state.step % cfg.save_every == 0:
            self._check_weights()
            self.checkpoint()

    def _nonfinite_line(self, where: str) -> str:
        ckpt = "no checkpoint was written yet" if not has_checkpoint(self.run_path) else \
            f"the last checkpoint is good: {resume_command(self.run_path)} continues from it"
        skip = "" if self.cfg.on_nonfinite == "skip" else "; to skip such steps set train.on_nonfinite=skip"
        return f"{where}; likely causes: {causes(self.recipe)}; {ckpt}{skip}"

    # --- log ---
    def log(self, window: _Window) -> None:
        """The progress display after every step; every ``log_every`` steps (and the last) a metrics.jsonl line
        and the trackers."""
        step, epoch, lr = self.state.step, self.state.epoch, _lr(self.optimizer)
        if step % self.cfg.log_every and step != self.total_steps:
            self.progress.update(step, epoch, self.step_loss, lr)
            return
        mean_loss, rate = window.close()
        record = {"step": step, "epoch": epoch, "lr": lr, "loss": mean_loss, "metrics": {}, "tokens_per_s": rate}
        if self.accelerator.is_main_process:
            append_metrics(self.run_path, record)
        self.accelerator.log({"train/loss": mean_loss, "lr": lr}, step=step)
        self.progress.update(step, epoch, self.step_loss, lr, tokens_per_s=rate, logged=True)

    # --- evaluate ---
    def run_evaluation(self) -> None:
        """Evaluates, logs, checkpoints (best when the main metric improved). A signal during the evaluation
        abandons it within a batch; the loop then saves and stops."""
        self._check_weights()
        state = self.state
        if self.val_loader is None:  # no validation split (no_validation_note): the last step is the best
            self.checkpoint(None, True)
            self.last_metrics, self.evaluated_at = {}, state.step
            return
        loader = StopAware(self.val_loader, self.stop, self.accelerator)
        metrics = evaluate(self.model, loader, self.task, self.accelerator)
        if loader.interrupted:
            return
        value = metrics.get(self.task.main_metric)
        improved = _is_better(value, state.best, self.task.main_mode)
        if improved:
            state.best = value
        if self.recipe.scheduler.name == "plateau" and value is not None:
            self.scheduler.step(value)
        record = {"step": state.step, "epoch": state.epoch, "lr": _lr(self.optimizer), "loss": None,
                  "metrics": {f"val/{k}": v for k, v in metrics.items()}, "tokens_per_s": None}
        if self.accelerator.is_main_process:
            append_metrics(self.run_path, record)
            self.progress.eval_line(state.step, self.total_steps, state.epoch, metrics, self.task.main_metric)
        self.accelerator.log(record["metrics"], step=state.step)
        self.checkpoint(value, improved)
        self.last_metrics, self.evaluated_at = metrics, state.step

    # --- checkpoint ---
    def _check_weights(self) -> None:
        """Never evaluate or save a non-finite model (a finite loss can still overflow the update)."""
        if not parameters_finite(self.model, self.accelerator):
            raise NonFiniteLoss(self._nonfinite_line(f"step {self.state.step}: the weights became NaN or infinite "
                                                     "(the loss before the update was finite)"))

    def checkpoint(self, metric: float | None = None, is_best: bool = False) -> None:
        """Saves the weights, the optimizer and the LoopState (``metric``: the evaluation that made it, if any)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        model_state, optimizer_state = _full_states(acc, self.model, self.optimizer)  # collective under FSDP
        mine = (torch.get_rng_state(), device_rng_state(acc.device))
        pairs = gather_object([mine]) if acc.num_processes > 1 else [mine]
        if acc.is_main_process:
            self.state.metric, self.state.scheduler = metric, self.scheduler.state_dict()
            self.state.capture_rng(pairs)
            save_checkpoint(self.run_path, model_state, optimizer_state, self.state, self.recipe.to_yaml(),
                            best=is_best, keep=self.cfg.keep_checkpoints)
        acc.wait_for_everyone()

    # --- end ---
    def _finish(self, stop_at: int) -> None:
        if self.status == "interrupted":
            self._check_weights()
            self.checkpoint()
            self.signal = self.stop.name
            self.progress.note(f"stopped by {self.stop.name} at step {self.state.step}; checkpoint saved. "
                               f"Continue with: {resume_command(self.run_path)}")
            return
        if self.evaluated_at != self.state.step:
            self.run_evaluation()
            if self.evaluated_at != self.state.step:  # a signal abandoned the final evaluation
                self.status = "interrupted"
                return self._finish(stop_at)
        if stop_at < self.total_steps and self.state.step >= stop_at:
            self.status = "stopped"
            self.progress.note(f"stopped at step {self.state.step} of {self.total_steps} (--max-steps); continue with: "
                               f"{resume_command(self.run_path)}")

    def summary(self, parameters: int) -> dict:
        acc, state = self.accelerator, self.state
        out = {
            "name": self.recipe.name, "run_dir": str(self.run_path), "status": self.status, "step": state.step,
            "epoch": state.epoch, "total_steps": self.total_steps, "main_metric": self.task.main_metric,
            "best": state.best, "final": {f"val/{k}": v for k, v in self.last_metrics.items()},
            "time_s": time.time() - self.start_time, "parameters": parameters, "processes": acc.num_processes,
            "skipped_steps": self.guard.skipped,
        }
        if self.signal is not None:
            out["signal"] = self.signal
        if self.cfg.compile:
            out["compiled"] = self.net.failed is None
            out["compile_error"] = self.net.failed
        return out


# ------------------------------------------------------------------------------------------- helpers
class _Window:
    """The steps since the last log line: their losses (each already the mean over processes) and tokens."""

    def __init__(self, processes: int):
        self.processes = processes
        self.losses: list[float] = []
        self.tokens = 0
        self.t0 = time.time()

    def close(self) -> tuple[float | None, float]:
        """(mean loss, tokens/s over all processes) of the window; starts the next one."""
        mean = sum(self.losses) / len(self.losses) if self.losses else None
        rate = self.tokens * self.processes / max(time.time() - self.t0, 1e-9)
        self.losses, self.tokens, self.t0 = [], 0, time.time()
        return mean, rate


class _Compiled:
    """``torch.compile`` of the model with a fallback: if compiling (or running the compiled graph) fails,
    warn once naming the error and use the eager model from then on."""

    def __init__(self, model: torch.nn.Module):
        self.eager = model
        self.failed: str | None = None
        try:
            self.compiled = torch.compile(model)
        except Exception as e:  # noqa: BLE001 - any compile failure falls back; the warning names it
            self._fallback(e)

    def _fallback(self, e: Exception) -> None:
        self.failed = f"{type(e).__name__}: {first_line(e, empty='')}"
        self.compiled = None
        warnings.warn(f"train.compile: torch.compile of the model did not work ({self.failed}); "
                      "training continues uncompiled", RuntimeWarning, stacklevel=3)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                self._fallback(e)
        return self.eager(*args, **kwargs)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _lr(optimizer) -> float:
    """The largest group lr (the optimizer's base lr; kernels' own lrs may be lower)."""
    return max(g["lr"] for g in optimizer.param_groups)


def _full_states(accelerator: Accelerator, model, optimizer) -> tuple[dict | None, dict | None]:
    """Full (unsharded) model and optimizer state dicts on the main process (None elsewhere under FSDP).
    Under FSDP every process must call this: it gathers the shards."""
    if is_fsdp(accelerator):
        # lazy: see tests/test_floors.py LAZY
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return accelerator.get_state_dict(model), FSDP.optim_state_dict(model, optimizer.optimizer)
    return accelerator.unwrap_model(model).state_dict(), optimizer.state_dict()


def _load_optimizer(accelerator: Accelerator, model, optimizer, state: dict) -> None:
    """Loads a full optimizer state dict (any process count) into the (possibly sharded) optimizer."""
    if is_fsdp(accelerator):
        # lazy: see tests/test_floors.py LAZY
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        state = FSDP.optim_state_dict_to_load(model, optimizer.optimizer, state)
    optimizer.load_state_dict(state)
