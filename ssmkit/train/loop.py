"""The training loop: one readable PyTorch loop on Hugging Face Accelerate.

    set-up (where to start, seed, task, model, data, optimizer, schedule, accelerator.prepare, resume, banner)
    for each epoch: for each batch: forward, loss, backward (accumulated); per optimizer step the finite
        check, clip, step, schedule; every log_every steps: a metrics.jsonl line (and a plain log line off a
        terminal); every eval_every steps (or each epoch): evaluate, checkpoint (best and last)
    end: final evaluation and checkpoint, summary.json

``train()`` sets up and ``_Run`` runs; each concern beside the loop has its own module: where a run starts
(``resume.py``), the non-finite check (``guard.py``), signals and exit codes (``signals.py``), the display
(``progress.py``, ``banner.py``), trackers (``trackers.py``), checkpoints and run directories
(``checkpoint.py``, ``rundir.py``).

Conventions:
- A *step* is an optimizer step (``grad_accum`` forward passes on every process). Schedules count steps,
  whatever the number of processes; the scheduler is not passed through ``accelerator.prepare``.
- Metrics are exact across processes: each batch's per-sample statistics go through
  ``gather_for_metrics`` (which drops the padding duplicates), are summed, and the task turns the sums into
  numbers.
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
import sys
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, gather_object, set_seed

from ssmkit.errors import DataError, RecipeError, UserError
from ssmkit.ops.cache import flush_kernel_caches, set_kernel_caching
from ssmkit.recipe import Recipe, build_model, build_task, validate  # noqa: F401  (build_task: used via loop.)
from ssmkit.tasks.base import no_validation_note
from ssmkit.tasks.download import prepare_data
from ssmkit.train.banner import print_banner, slow_step
from ssmkit.train.checkpoint import (
    device_rng_state,
    find_checkpoint,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_device_rng_state,
    set_rng_state,
)
from ssmkit.train.guard import LossGuard, NonFiniteLoss, causes, parameters_finite
from ssmkit.train.lock import hold_run_lock, releases_run_locks
from ssmkit.train.memory import one_line_out_of_memory
from ssmkit.train.optim import build_optimizer, build_scheduler, describe_groups, param_groups
from ssmkit.train.progress import Progress
from ssmkit.train.resume import Start, plan_start
from ssmkit.train.rundir import (
    append_metrics,
    new_run_dir,
    read_metrics,
    truncate_metrics,
    write_summary,
    write_text,
)
from ssmkit.train.signals import SecondInterrupt, StopFlag, StoppedAtOnce, resume_command
from ssmkit.train.trackers import check_trackers, finish_trackers, start_trackers


def make_accelerator(recipe: Recipe) -> Accelerator:
    """An Accelerator for this recipe (CPU when no GPU is visible; fp16 and FSDP on CPU are refused).

    Works unchanged under ``accelerate launch`` and ``torchrun`` (Accelerate reads their environment).
    Trackers are started later, once the run directory exists (``ssmkit/train/trackers.py``).
    """
    on_cpu = not torch.cuda.is_available()
    if recipe.train.mixed_precision == "fp16" and on_cpu:
        raise RecipeError(
            f"{recipe.source}: train.mixed_precision=fp16 needs a GPU (on the CPU it would be silently ignored); use bf16 or no"
        )
    fsdp_plugin = None
    if recipe.train.distributed == "fsdp":
        if on_cpu:
            raise RecipeError(f"{recipe.source}: train.distributed=fsdp needs GPUs (Accelerate shards only on accelerators; "
                              "on the CPU it would silently run unsharded); use ddp")
        fsdp_plugin = _fsdp_plugin()
    # One process may train several recipes (tests, notebooks): Accelerate's process-wide state keeps the
    # first mixed precision, so forget it (the process group in PartialState is kept).
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, recipe.train.mixed_precision):
        AcceleratorState._reset_state()
    return Accelerator(
        cpu=on_cpu,
        mixed_precision=recipe.train.mixed_precision,
        fsdp_plugin=fsdp_plugin,
        gradient_accumulation_steps=recipe.train.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.train.seed),
    )


def _fsdp_plugin():
    """FSDP through Accelerate: full (unsharded) state dicts gathered on rank 0, so our safetensors
    checkpoints are ordinary state dicts that load on any number of processes; original parameters kept
    so per-parameter learning rates (kernel groups) still apply."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        state_dict_type="FULL_STATE_DICT", use_orig_params=True, sync_module_states=True,
        auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["ResidualBlock"],
    )


def build_loop_model(recipe: Recipe, task) -> torch.nn.Module:
    """The recipe's backbone model, wrapped by the task where it needs a different head (``task.wrap_model``,
    e.g. AAN's two towers), with every layer's rate set to ``task.rate`` (zero-shot resolution change:
    speech at 8 kHz with a model whose steps were learned at 16 kHz gives rate 2)."""
    from ssmkit.models import BACKBONES

    model = build_model(recipe, task)
    rate = float(getattr(task, "rate", 1.0) or 1.0)
    if rate != 1.0:
        layer_rate = recipe.model.layer.get("rate", 1.0)
        if layer_rate != 1.0:  # set_rate would silently replace it
            raise RecipeError(f"{recipe.source}: model.layer.rate={layer_rate} and the task's sampling-rate factor {rate:g} "
                              "both set the layers' step-size factor; drop model.layer.rate (the task sets it)")
        model.set_rate(rate)
    if hasattr(task, "wrap_model"):
        model = task.wrap_model(model)
    backbones = tuple(BACKBONES.get(name) for name in BACKBONES.names())
    assert any(isinstance(m, backbones) for m in model.modules())
    return model


def forward(model, task, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, passing ``lengths=task.lengths(x)`` for padded tasks (masked layers, norms and pooling)."""
    lengths = task.lengths(x) if hasattr(task, "lengths") else None
    return model(x) if lengths is None else model(x, lengths=lengths)


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
        self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
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


def make_loader(task, split: str, recipe: Recipe, seed: int) -> torch.utils.data.DataLoader:
    train = split == "train"
    batch = recipe.train.batch_size if train else (recipe.train.eval_batch_size or recipe.train.batch_size)
    dataset = task.dataset(split, seed=seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=train, drop_last=train, num_workers=recipe.train.num_workers,
        # Every split gets its own generator: a loader without one draws its base seed from the global RNG
        # at each pass, so an evaluation would shift the dropout stream and a resumed run would diverge.
        generator=torch.Generator().manual_seed(seed),
    )


@torch.no_grad()
def evaluate(model, loader, task, accelerator: Accelerator) -> dict[str, float]:
    """The task's metrics over the whole split, exact across processes; also ``samples`` counted."""
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    samples = 0
    for x, y in loader:
        stats = accelerator.gather_for_metrics(task.metric_stats(forward(model, task, x), y))  # each (B_all,)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value.double().sum(0)
        samples += next(iter(stats.values())).shape[0]
    model.train(was_training)
    metrics = task.compute_metrics({k: v.cpu() for k, v in totals.items()})
    return {**metrics, "samples": samples}


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


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
    cfg = recipe.train
    start = plan_start(recipe, run_dir, resume)
    if max_steps is not None and not start.resuming:
        cfg.max_steps = max_steps  # a new run: its length, recorded in its recipe.yaml
    check_trackers(cfg.log_with, recipe.source)  # a missing package: one line before anything is built
    accelerator = make_accelerator(recipe)
    set_seed(cfg.seed)
    notes = console if accelerator.is_main_process else None

    # --- task, model, data, optimizer, schedule ---
    task = prepare_data(recipe, download, accelerator)  # build_task, after fetching the data if asked
    with slow_step(notes, f"checking the {recipe.task['name']} data"):
        task.check_data()
    with one_line_out_of_memory(recipe, "building the model"):
        model = build_loop_model(recipe, task)
    saved = None
    if start.resuming:  # full weights into the unwrapped model, before DDP/FSDP wraps (and shards) it
        saved = load_checkpoint(start.checkpoint)
        _load_weights(model, saved["model"], start.checkpoint)
    groups = param_groups(model, recipe.optimizer.lr, recipe.optimizer.weight_decay)
    optimizer = build_optimizer(model, recipe.optimizer)
    with slow_step(notes, f"reading the {recipe.task['name']} training split"):
        train_loader = make_loader(task, "train", recipe, cfg.seed)
    no_val = no_validation_note(task, recipe.scheduler.name)  # no validation split: never select on test
    with slow_step(notes, f"reading the {recipe.task['name']} validation split"):
        val_loader = make_loader(task, "val", recipe, cfg.seed) if no_val is None else None
    data = {"train": len(train_loader.dataset), "val": len(val_loader.dataset) if val_loader is not None else 0}
    if val_loader is not None and data["val"] == 0:  # an empty file: nothing to select on (and 0/0 metrics)
        raise DataError(f"{task.name}: the validation split is empty; check its data (ssmkit data check {task.name})")
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    batches_per_epoch = len(train_loader)  # this process's share
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, recipe.scheduler, total_steps, mode=task.main_mode, steps_per_epoch=steps_per_epoch)
    if batches_per_epoch == 0:
        raise RecipeError(
            f"{recipe.source}: train.batch_size={cfg.batch_size} x {accelerator.num_processes} process(es) is larger "
            f"than the training set ({len(train_loader.dataset)} samples); lower it or raise task.samples_per_epoch"
        )
    stop_at = _stop_point(max_steps if start.resuming else None, saved, total_steps)

    if dry_run:
        return _dry_run(recipe, model, groups, task, train_loader, accelerator, console)

    new = start.run_dir is None or not (start.run_dir.is_dir() and any(start.run_dir.iterdir()))
    run_path = _run_directory(start, recipe, run_dir, accelerator)
    start_trackers(accelerator, recipe, run_path)
    run = _Run(recipe, accelerator, task, model, optimizer, scheduler, train_loader, val_loader, run_path,
               console, total_steps, batches_per_epoch)
    if saved is not None:
        run.restore(saved)
    first_step = run.step
    parameters = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    print_banner(notes, run_dir=run_path, new=new, start_step=run.step, recipe=recipe,
                 parameters=parameters, accelerator=accelerator, total_steps=total_steps,
                 steps_per_epoch=steps_per_epoch, data=data)
    if notes is not None and no_val is not None:
        notes.print(no_val)
    # The handlers stay through the summary too: a signal arriving while it is written (a launcher passing one on
    # after a peer died) only sets the flag, and a second Ctrl-C no longer interrupts anything.
    with StopFlag() as stop:
        try:
            with one_line_out_of_memory(recipe, lambda: f"training (step {run.step + 1})"):
                run.run(stop_at, stop)
        finally:
            stop.hold()
            summary = run.summary(parameters)
            if accelerator.is_main_process:
                summary = write_summary(run_path, summary, first_step)  # time_s summed over resumed segments
            finish_trackers(accelerator)
    return (summary, model) if return_model else summary


def _stop_point(max_steps: int | None, saved: dict | None, total_steps: int) -> int:
    """Where a resumed run with ``--max-steps`` stops (the schedule keeps the run's ``total_steps``)."""
    if max_steps is None:
        return total_steps
    at = saved["state"]["step"]
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
            hold_run_lock(path)  # one trainer per run directory (ssmkit/train/lock.py)
        else:
            path = start.run_dir
            path.mkdir(parents=True, exist_ok=True)
            hold_run_lock(path)  # a second trainer of this run: one line naming the first one, exit 2
            if not start.resuming:  # a run that stopped before its first checkpoint starts again from step 0
                truncate_metrics(path, 0)
        write_text(path / "recipe.yaml", recipe.to_yaml())  # atomically, never through a planted symlink
        made = [str(path)]
    return Path(broadcast_object_list(made)[0])


class _Run:
    """One training run's state and steps: ``run`` goes through the epochs; the step, the logging, the
    evaluation and the checkpoint are methods, so each reads on its own."""

    def __init__(self, recipe, accelerator, task, model, optimizer, scheduler, train_loader, val_loader,
                 run_path: Path, console, total_steps: int, batches_per_epoch: int):
        self.recipe, self.cfg, self.accelerator, self.task = recipe, recipe.train, accelerator, task
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.val_loader, self.run_path = train_loader, val_loader, run_path
        self.total_steps, self.batches_per_epoch = total_steps, batches_per_epoch
        self.net = _Compiled(model) if self.cfg.compile else model  # what the loop calls; ``model`` is what is saved
        # Under accumulation, compute each kernel once per optimizer step. Single process only: under DDP the
        # kernel parameters would get their gradient after DDP's all-reduce.
        self.cache_kernels = self.cfg.grad_accum > 1 and accelerator.num_processes == 1
        set_kernel_caching(model, self.cache_kernels)
        self.guard = LossGuard(accelerator, self.cfg.on_nonfinite)
        self.console = console
        self.step, self.epoch, self.batch_in_epoch, self.best = 0, 0, 0, None
        self.status, self.signal = "finished", None
        self.last_metrics: dict = {}
        self.evaluated_at = -1
        self.start_time = time.time()
        self.stop: StopFlag | None = None

    # --- resume ---
    def restore(self, saved: dict) -> None:
        """Optimizer, schedule, every process's RNG streams and the position in the data, from a checkpoint."""
        _load_optimizer(self.accelerator, self.model, self.optimizer, saved["optimizer"])
        state = saved["state"]
        self.scheduler.load_state_dict(state["scheduler"])
        by_rank = saved["rng_by_rank"]
        # Each process continues its own dropout stream; on another process count, all take the main one's.
        same_layout = len(by_rank) == self.accelerator.num_processes
        rank = self.accelerator.process_index
        set_rng_state(state["rng"], by_rank[rank] if same_layout else saved["rng_torch"])
        device_by_rank = saved["device_rng_by_rank"]
        if same_layout and len(device_by_rank) == self.accelerator.num_processes:
            set_device_rng_state(self.accelerator.device, device_by_rank[rank])
        self.step, self.epoch, self.batch_in_epoch, self.best = (state["step"], state["epoch"], state["batch_in_epoch"],
                                                                 state.get("best"))
        if self.accelerator.is_main_process:
            truncate_metrics(self.run_path, self.step)
        # A checkpoint made by an evaluation: its metrics stand (a requeued finished run is not evaluated again).
        val = [r for r in read_metrics(self.run_path) if r["step"] == self.step and r.get("loss") is None
               and r.get("metrics")] if state.get("metric") is not None else []
        if val:
            self.last_metrics = {k.removeprefix("val/"): v for k, v in val[-1]["metrics"].items()}
            self.evaluated_at = self.step

    # --- checkpoints and evaluation ---
    def _check_weights(self) -> None:
        """Never evaluate or save a non-finite model (a finite loss can still overflow the update)."""
        if not parameters_finite(self.model, self.accelerator):
            raise NonFiniteLoss(self._nonfinite_line(f"step {self.step}: the weights became NaN or infinite "
                                                     "(the loss before the update was finite)"))

    def checkpoint(self, metric: float | None = None, is_best: bool = False) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        model_state, optimizer_state = _full_states(acc, self.model, self.optimizer)  # collective under FSDP
        mine = (torch.get_rng_state(), device_rng_state(acc.device))
        pairs = gather_object([mine]) if acc.num_processes > 1 else [mine]
        if acc.is_main_process:
            state = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best": self.best,
                     "metric": metric, "main_metric": self.task.main_metric, "scheduler": self.scheduler.state_dict(),
                     "processes": acc.num_processes}
            save_checkpoint(self.run_path, model_state, optimizer_state, state, self.recipe.to_yaml(), best=is_best,
                            keep=self.cfg.keep_checkpoints, rng_by_rank=[p[0] for p in pairs],
                            device_rng_by_rank=[p[1] for p in pairs])
        acc.wait_for_everyone()

    def run_eval(self) -> None:
        """Evaluates, logs, checkpoints (best when the main metric improved). A signal during the evaluation
        abandons it within a batch; the loop then saves and stops."""
        self._check_weights()
        if self.val_loader is None:  # no validation split (no_validation_note): the last step is the best
            self.checkpoint(None, True)
            self.last_metrics, self.evaluated_at = {}, self.step
            return
        loader = _StopAware(self.val_loader, self.stop, self.accelerator)
        metrics = evaluate(self.model, loader, self.task, self.accelerator)
        if loader.interrupted:
            return
        value = metrics.get(self.task.main_metric)
        improved = _is_better(value, self.best, self.task.main_mode)
        if improved:
            self.best = value
        if self.recipe.scheduler.name == "plateau" and value is not None:
            self.scheduler.step(value)
        record = {"step": self.step, "epoch": self.epoch, "lr": _lr(self.optimizer), "loss": None,
                  "metrics": {f"val/{k}": v for k, v in metrics.items()}, "tokens_per_s": None}
        if self.accelerator.is_main_process:
            append_metrics(self.run_path, record)
            self.progress.eval_line(self.step, self.total_steps, self.epoch, metrics, self.task.main_metric)
        self.accelerator.log(record["metrics"], step=self.step)
        self.checkpoint(value, improved)
        self.last_metrics, self.evaluated_at = metrics, self.step

    # --- one batch ---
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

    def _nonfinite_line(self, where: str) -> str:
        ckpt = "no checkpoint was written yet" if not has_checkpoint(self.run_path) else \
            f"the last checkpoint is good: {resume_command(self.run_path)} continues from it"
        skip = "" if self.cfg.on_nonfinite == "skip" else "; to skip such steps set train.on_nonfinite=skip"
        return f"{where}; likely causes: {causes(self.recipe)}; {ckpt}{skip}"

    def after_step(self, window: _Window) -> None:
        """Schedule, log line, progress, evaluation or checkpoint after an applied optimizer step."""
        cfg, acc = self.cfg, self.accelerator
        self.step += 1
        if self.recipe.scheduler.name != "plateau" and not acc.optimizer_step_was_skipped:
            self.scheduler.step()
        window.losses.append(self.step_loss)
        lr = _lr(self.optimizer)
        if self.step % cfg.log_every == 0 or self.step == self.total_steps:
            mean_loss, rate = window.close()
            record = {"step": self.step, "epoch": self.epoch, "lr": lr, "loss": mean_loss, "metrics": {},
                      "tokens_per_s": rate}
            if acc.is_main_process:
                append_metrics(self.run_path, record)
            acc.log({"train/loss": mean_loss, "lr": lr}, step=self.step)
            self.progress.update(self.step, self.epoch, self.step_loss, lr, tokens_per_s=rate, logged=True)
        else:
            self.progress.update(self.step, self.epoch, self.step_loss, lr)
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            self.run_eval()
        elif cfg.save_every and self.step % cfg.save_every == 0:
            self._check_weights()
            self.checkpoint()

    # --- the epochs ---
    def run(self, stop_at: int, stop: StopFlag) -> None:
        self.progress = Progress(self.accelerator.is_main_process, self.total_steps, self.step, self.console,
                                 self.cfg.log_every)
        self.model.train()
        self.stop = stop
        try:
            with self.progress:
                self._epochs(stop_at)
                self._finish(stop_at)
        except SecondInterrupt:
            self.status = "aborted"
            raise StoppedAtOnce(f"stopped at once by a second Ctrl-C at step {self.step}, without saving; "
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
        cfg, acc = self.cfg, self.accelerator
        window = _Window(acc.num_processes)
        while self.step < stop_at and (cfg.max_steps or self.epoch < cfg.epochs):
            # A new shuffle, and fresh data for datasets with set_epoch (Accelerate skips the dataset's
            # set_epoch when the sampler has one, so call both).
            resumed = self.batch_in_epoch
            loader = acc.skip_first_batches(self.train_loader, resumed) if resumed else self.train_loader
            loader.set_epoch(self.epoch)
            if hasattr(self.train_loader.dataset, "set_epoch"):
                self.train_loader.dataset.set_epoch(self.epoch)
            for x, y in loader:
                applied = self.train_batch(x, y)
                self.batch_in_epoch += 1
                window.tokens += x.shape[0] * x.shape[1]
                if applied is None:
                    continue
                if applied:
                    self.after_step(window)
                else:
                    self.guard.skip_or_stop(self.step, self._nonfinite_line)
                    self.progress.note(f"step {self.step + 1}: non-finite training loss, step skipped "
                                       f"(train.on_nonfinite=skip; {self.guard.skipped} skipped so far)")
                if self.stop.requested(acc):
                    self.status = "interrupted"
                    return
                if self.step >= stop_at:
                    break
            if self.batch_in_epoch >= self.batches_per_epoch:  # the epoch is complete
                self.epoch += 1
                self.batch_in_epoch = 0
                if not cfg.eval_every and self.evaluated_at != self.step:
                    self.run_eval()
                    if self.stop.requested(acc):
                        self.status = "interrupted"
                        return

    def _finish(self, stop_at: int) -> None:
        if self.status == "interrupted":
            self._check_weights()
            self.checkpoint()
            self.signal = self.stop.name
            self.progress.note(f"stopped by {self.stop.name} at step {self.step}; checkpoint saved. "
                               f"Continue with: {resume_command(self.run_path)}")
            return
        if self.evaluated_at != self.step:
            self.run_eval()
            if self.evaluated_at != self.step:  # a signal abandoned the final evaluation
                self.status = "interrupted"
                return self._finish(stop_at)
        if stop_at < self.total_steps and self.step >= stop_at:
            self.status = "stopped"
            self.progress.note(f"stopped at step {self.step} of {self.total_steps} (--max-steps); continue with: "
                               f"{resume_command(self.run_path)}")

    def summary(self, parameters: int) -> dict:
        acc = self.accelerator
        out = {
            "name": self.recipe.name, "run_dir": str(self.run_path), "status": self.status, "step": self.step,
            "epoch": self.epoch, "total_steps": self.total_steps, "main_metric": self.task.main_metric,
            "best": self.best, "final": {f"val/{k}": v for k, v in self.last_metrics.items()},
            "time_s": time.time() - self.start_time, "parameters": parameters, "processes": acc.num_processes,
            "skipped_steps": self.guard.skipped,
        }
        if self.signal is not None:
            out["signal"] = self.signal
        if self.cfg.compile:
            out["compiled"] = self.net.failed is None
            out["compile_error"] = self.net.failed
        return out


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


class _StopAware:
    """An evaluation loader that reports each batch (``on_batch``, a progress display) and ends early
    (``interrupted``) once a signal reached any process: all processes check after every batch, so they leave
    the evaluation together."""

    def __init__(self, loader, stop: StopFlag | None, accelerator: Accelerator, on_batch=None):
        self.loader, self.stop, self.accelerator, self.on_batch = loader, stop, accelerator, on_batch
        self.interrupted = False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield batch
            if self.on_batch is not None:
                self.on_batch()
            if self.stop is not None and self.stop.requested(self.accelerator):
                self.interrupted = True
                return


def _load_weights(model: torch.nn.Module, weights: dict, ckpt: Path) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"checkpoint {ckpt} does not fit the recipe's model: {first[1].strip() if len(first) > 1 else first[0]}") from None


def _is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type.name == "FSDP"


def _full_states(accelerator: Accelerator, model, optimizer) -> tuple[dict | None, dict | None]:
    """Full (unsharded) model and optimizer state dicts on the main process (None elsewhere under FSDP).
    Under FSDP every process must call this: it gathers the shards."""
    if _is_fsdp(accelerator):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        model_state = accelerator.get_state_dict(model)
        optimizer_state = FSDP.optim_state_dict(model, optimizer.optimizer)
        return model_state, optimizer_state
    return accelerator.unwrap_model(model).state_dict(), optimizer.state_dict()


def _load_optimizer(accelerator: Accelerator, model, optimizer, state: dict) -> None:
    """Loads a full optimizer state dict (any process count) into the (possibly sharded) optimizer."""
    if _is_fsdp(accelerator):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        state = FSDP.optim_state_dict_to_load(model, optimizer.optimizer, state)
    optimizer.load_state_dict(state)


def _lr(optimizer) -> float:
    """The largest group lr (the optimizer's base lr; kernels' own lrs may be lower)."""
    return max(g["lr"] for g in optimizer.param_groups)


def _dry_run(recipe, model, groups, task, loader, accelerator, console) -> dict:
    """Prints the model and its parameter groups, runs one batch forward and backward."""
    from rich.table import Table

    x, y = next(iter(loader))
    loss = task.loss(forward(model, task, x), y)
    accelerator.backward(loss)
    n_params = sum(p.numel() for p in model.parameters())
    if accelerator.is_main_process and console is not None:
        console.print(f"recipe {recipe.name} ({recipe.source}): task {recipe.task['name']}, "
                      f"kernel {recipe.model.layer['kernel']}, {recipe.model.n_layers} x d_model {recipe.model.d_model}")
        if hasattr(task, "describe"):  # what a task inferred from the user's data (vocabulary, classes, loss, ...)
            console.print(f"data: {task.describe()}")
        console.print(f"model: {n_params:,} parameters; input {tuple(x.shape)} -> target {tuple(y.shape)}")
        table = Table(title="parameter groups")
        columns = ("lr", "weight_decay", "tensors", "elements", "names")
        for col in columns:
            table.add_column(col)
        for row in describe_groups(groups):
            table.add_row(*(f"{row[c]:g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
        console.print(table)
        console.print(f"one batch: loss {loss.item():.4g}, gradients finite: "
                      f"{all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)}")
    return {"status": "dry-run", "parameters": n_params, "loss": loss.item()}


# --- evaluation of a finished (or running) run ---
def load_run_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), which: str = "latest"):
    """(recipe, checkpoint dir) of a run directory or checkpoint, with ``overrides`` applied."""
    from ssmkit.recipe import apply_overrides, load_yaml

    ckpt = find_checkpoint(path, which)
    source = str(ckpt / "recipe.yaml")
    data = load_yaml(ckpt / "recipe.yaml")  # missing, binary, malformed or not a mapping: one RecipeError naming it
    data = apply_overrides(data, list(overrides), source)
    return validate(data, source), ckpt


def evaluate_run(path: str | Path, split: str = "val", overrides: list[str] | tuple[str, ...] = (),
                 which: str = "latest", console=None) -> dict:
    """Loads a run's recipe and checkpoint and evaluates it on ``split``: {metrics..., samples, step, checkpoint}.
    ``console`` (stderr in ``ssmkit eval``): a progress bar over the batches, and notes for slow data reading."""
    if split not in ("val", "test"):
        raise UserError(f"unknown split {split!r}; choose val or test")
    from ssmkit.generation.load import load  # the one loading path (ssmkit.load)
    from ssmkit.train.progress import EvalProgress

    with slow_step(console, f"loading {path}"):
        run = load(path, which, overrides, check_data=True)
    recipe, task = run.recipe, run.task
    accelerator = make_accelerator(recipe)
    console = console if accelerator.is_main_process else None
    with slow_step(console, f"reading the {recipe.task['name']} {split} split"):
        loader = make_loader(task, split, recipe, recipe.train.seed)
    model, loader = accelerator.prepare(run.model, loader)
    with EvalProgress(console, len(loader), f"evaluating on {split}") as progress:
        metrics = evaluate(model, _StopAware(loader, None, accelerator, on_batch=progress), task, accelerator)
    return {"split": split, "checkpoint": str(run.checkpoint), "step": run.step,
            "rate": float(getattr(task, "rate", 1.0) or 1.0), **metrics}


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def eprint(*args) -> None:
    print(*args, file=sys.stderr)
