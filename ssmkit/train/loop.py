"""The training loop: one readable PyTorch loop on Hugging Face Accelerate.

    set-up (seed, task, model, data, optimizer, schedule, accelerator.prepare, resume)
    for each epoch: for each batch: forward, loss, backward (accumulated), clip, step, schedule
        every log_every steps: a metrics.jsonl line; every eval_every steps (or each epoch): evaluate,
        checkpoint (best and last)
    end: final evaluation and checkpoint, summary.json

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
- SIGINT/SIGTERM finish the current step, save a checkpoint and return with status ``interrupted``.
"""
from __future__ import annotations

import math
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, gather_object, set_seed

from ssmkit.errors import RecipeError, UserError
from ssmkit.ops.cache import flush_kernel_caches, set_kernel_caching
from ssmkit.recipe import Recipe, build_model, build_task, validate  # noqa: F401  (build_task: used via loop.)
from ssmkit.tasks.download import prepare_data
from ssmkit.train.checkpoint import (
    device_rng_state,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_device_rng_state,
    set_rng_state,
)
from ssmkit.train.optim import build_optimizer, build_scheduler, describe_groups, param_groups
from ssmkit.train.progress import Progress
from ssmkit.train.rundir import append_metrics, new_run_dir, truncate_metrics, write_json


def make_accelerator(recipe: Recipe, run_dir: Path | None = None, trackers: bool = True) -> Accelerator:
    """An Accelerator for this recipe (CPU when no GPU is visible; fp16 and FSDP on CPU are refused).

    Works unchanged under ``accelerate launch`` and ``torchrun`` (Accelerate reads their environment).
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
    log_with = list(recipe.train.log_with) if trackers else []
    return Accelerator(
        cpu=on_cpu,
        mixed_precision=recipe.train.mixed_precision,
        fsdp_plugin=fsdp_plugin,
        gradient_accumulation_steps=recipe.train.grad_accum,
        log_with=log_with or None,
        project_dir=str(run_dir) if run_dir is not None and log_with else None,
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


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _print(accelerator: Accelerator, console, *args) -> None:
    if accelerator.is_main_process and console is not None:
        console.print(*args)


def train(recipe: Recipe, run_dir: str | Path | None = None, resume: str | Path | None = None,
          max_steps: int | None = None, dry_run: bool = False, console=None, return_model: bool = False,
          download: bool = False):
    """Trains ``recipe``; returns the summary (also written to ``summary.json``), and the prepared
    model too if ``return_model``.

    ``resume``: a run directory (or checkpoint) to continue; ``recipe`` must then be the run's recipe.
    ``max_steps`` overrides ``train.max_steps``. ``dry_run``: build everything, run one batch, write nothing.
    ``download`` (or the task option ``download: true``): fetch the task's dataset first when its files are
    missing (``ssmkit/tasks/download.py``).
    """
    cfg = recipe.train
    if max_steps is not None:
        cfg.max_steps = max_steps
    accelerator = make_accelerator(recipe, trackers=not dry_run)
    set_seed(cfg.seed)

    # --- task, model, data, optimizer, schedule ---
    task = prepare_data(recipe, download, accelerator)  # build_task, after fetching the data if asked
    task.check_data()
    model = build_loop_model(recipe, task)
    saved = None
    if resume is not None:  # full weights into the unwrapped model, before DDP/FSDP wraps (and shards) it
        ckpt = find_checkpoint(resume)
        saved = load_checkpoint(ckpt)
        _load_weights(model, saved["model"], ckpt)
    groups = param_groups(model, recipe.optimizer.lr, recipe.optimizer.weight_decay)
    optimizer = build_optimizer(model, recipe.optimizer)
    train_loader = make_loader(task, "train", recipe, cfg.seed)
    val_loader = make_loader(task, "val", recipe, cfg.seed)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    net = _Compiled(model) if cfg.compile else model  # what the loop calls; ``model`` is what is saved
    # Under accumulation, compute each kernel once per optimizer step. Single process only: under DDP the
    # kernel parameters would get their gradient after DDP's all-reduce.
    cache_kernels = cfg.grad_accum > 1 and accelerator.num_processes == 1
    set_kernel_caching(model, cache_kernels)
    batches_per_epoch = len(train_loader)  # this process's share
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, recipe.scheduler, total_steps, mode=task.main_mode, steps_per_epoch=steps_per_epoch)
    if batches_per_epoch == 0:
        raise RecipeError(
            f"{recipe.source}: train.batch_size={cfg.batch_size} x {accelerator.num_processes} process(es) is larger "
            f"than the training set ({len(train_loader.dataset)} samples); lower it or raise task.samples_per_epoch"
        )

    if dry_run:
        return _dry_run(recipe, model, groups, task, train_loader, accelerator, console)

    # --- run directory (made by the main process, shared with the others) ---
    if resume is not None:
        run_path = ckpt.parent.parent
    else:
        made = [str(new_run_dir(cfg.runs_dir, recipe.name, run_dir)) if accelerator.is_main_process else None]
        run_path = Path(broadcast_object_list(made)[0])
    if accelerator.is_main_process:
        (run_path / "recipe.yaml").write_text(recipe.to_yaml())
    if cfg.log_with:
        accelerator.init_trackers(recipe.name, config=_flat(recipe.to_dict()))

    # --- resume: weights, optimizer, schedule, RNG, position in the data ---
    step, epoch, batch_in_epoch, best = 0, 0, 0, None
    if saved is not None:
        _load_optimizer(accelerator, model, optimizer, saved["optimizer"])
        state = saved["state"]
        scheduler.load_state_dict(state["scheduler"])
        by_rank = saved["rng_by_rank"]
        # Each process continues its own dropout stream; on another process count, all take the main one's.
        same_layout = len(by_rank) == accelerator.num_processes
        set_rng_state(state["rng"], by_rank[accelerator.process_index] if same_layout else saved["rng_torch"])
        device_by_rank = saved["device_rng_by_rank"]
        if same_layout and len(device_by_rank) == accelerator.num_processes:
            set_device_rng_state(accelerator.device, device_by_rank[accelerator.process_index])
        step, epoch, batch_in_epoch, best = state["step"], state["epoch"], state["batch_in_epoch"], state.get("best")
        if accelerator.is_main_process:
            truncate_metrics(run_path, step)
        _print(accelerator, console, f"resuming {run_path} from step {step} (epoch {epoch})")

    def checkpoint(metric: float | None = None, is_best: bool = False) -> None:
        accelerator.wait_for_everyone()
        model_state, optimizer_state = _full_states(accelerator, model, optimizer)  # collective under FSDP
        mine = (torch.get_rng_state(), device_rng_state(accelerator.device))
        pairs = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
        if accelerator.is_main_process:
            state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "best": best,
                     "metric": metric, "main_metric": task.main_metric, "scheduler": scheduler.state_dict(),
                     "processes": accelerator.num_processes}
            save_checkpoint(run_path, model_state, optimizer_state,
                            state, recipe.to_yaml(), best=is_best, keep=cfg.keep_checkpoints,
                            rng_by_rank=[p[0] for p in pairs], device_rng_by_rank=[p[1] for p in pairs])
        accelerator.wait_for_everyone()

    def run_eval() -> dict:
        nonlocal best
        metrics = evaluate(model, val_loader, task, accelerator)
        value = metrics.get(task.main_metric)
        improved = _is_better(value, best, task.main_mode)
        if improved:
            best = value
        if recipe.scheduler.name == "plateau" and value is not None:
            scheduler.step(value)
        record = {"step": step, "epoch": epoch, "lr": _lr(optimizer), "loss": None,
                  "metrics": {f"val/{k}": v for k, v in metrics.items()}, "tokens_per_s": None}
        if accelerator.is_main_process:
            append_metrics(run_path, record)
            progress.eval_line(step, total_steps, epoch, metrics, task.main_metric)
        accelerator.log(record["metrics"], step=step)
        checkpoint(value, improved)
        return metrics

    # --- the loop ---
    model.train()
    start_time = time.time()
    window_loss, window_batches, window_tokens, window_start = torch.zeros((), device=accelerator.device), 0, 0, time.time()
    last_metrics: dict = {}
    evaluated_at = -1
    status = "finished"
    progress = Progress(accelerator.is_main_process, total_steps, step, console)
    with _StopFlag() as stop, progress:
        while step < total_steps and (cfg.max_steps or epoch < cfg.epochs):
            # A new shuffle, and fresh data for datasets with set_epoch (Accelerate skips the dataset's
            # set_epoch when the sampler has one, so call both).
            loader = accelerator.skip_first_batches(train_loader, batch_in_epoch) if batch_in_epoch else train_loader
            loader.set_epoch(epoch)
            if hasattr(train_loader.dataset, "set_epoch"):
                train_loader.dataset.set_epoch(epoch)
            for x, y in loader:
                with accelerator.accumulate(model):
                    loss = task.loss(forward(net, task, x), y)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cache_kernels:
                        flush_kernel_caches(model)  # the step's one kernel backward
                    if accelerator.sync_gradients and cfg.grad_clip:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad()
                batch_in_epoch += 1
                window_loss += loss.detach().float()
                window_batches += 1
                window_tokens += x.shape[0] * x.shape[1] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                step += 1
                if recipe.scheduler.name != "plateau" and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()

                if step % cfg.log_every == 0 or step == total_steps:
                    mean_loss = accelerator.reduce(window_loss / window_batches, "mean").item()
                    rate = window_tokens / max(time.time() - window_start, 1e-9)
                    record = {"step": step, "epoch": epoch, "lr": _lr(optimizer), "loss": mean_loss,
                              "metrics": {}, "tokens_per_s": rate}
                    if accelerator.is_main_process:
                        append_metrics(run_path, record)
                    accelerator.log({"train/loss": mean_loss, "lr": record["lr"]}, step=step)
                    progress.update(step, loss=mean_loss, lr=record["lr"], tokens_per_s=rate)
                    window_loss.zero_()
                    window_batches, window_tokens, window_start = 0, 0, time.time()
                else:
                    progress.update(step)

                if cfg.eval_every and step % cfg.eval_every == 0:
                    last_metrics, evaluated_at = run_eval(), step
                elif cfg.save_every and step % cfg.save_every == 0:
                    checkpoint()
                if _should_stop(stop, accelerator):
                    status = "interrupted"
                    break
                if step >= total_steps:
                    break
            if status == "interrupted":
                break
            if batch_in_epoch >= batches_per_epoch:  # the epoch is complete
                epoch += 1
                batch_in_epoch = 0
                if not cfg.eval_every and evaluated_at != step:
                    last_metrics, evaluated_at = run_eval(), step
                    if _should_stop(stop, accelerator):
                        status = "interrupted"
                        break

        if status == "finished" and evaluated_at != step:
            last_metrics, evaluated_at = run_eval(), step
        elif status == "interrupted":
            checkpoint()
            sig = signal.Signals(stop.signal).name if stop.signal else "a signal"
            _print(accelerator, console, f"stopped by {sig} at step {step}; checkpoint saved. Continue with: "
                   f"ssmkit train --resume {run_path}")

    summary = {
        "name": recipe.name, "run_dir": str(run_path), "status": status, "step": step, "epoch": epoch,
        "total_steps": total_steps, "main_metric": task.main_metric, "best": best,
        "final": {f"val/{k}": v for k, v in last_metrics.items()}, "time_s": time.time() - start_time,
        "parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
        "processes": accelerator.num_processes,
    }
    if cfg.compile:
        summary["compiled"] = net.failed is None
        summary["compile_error"] = net.failed
    if accelerator.is_main_process:
        write_json(run_path / "summary.json", summary)
    for tracker in accelerator.trackers:  # not end_training(): that also ends the process group
        tracker.finish()
    return (summary, model) if return_model else summary


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


def _should_stop(stop: _StopFlag, accelerator: Accelerator) -> bool:
    """All processes stop together if any of them got a signal."""
    flag = stop.signal is not None
    if accelerator.num_processes > 1:
        t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
        flag = bool(accelerator.reduce(t, "sum").item() > 0)
    return flag


def _lr(optimizer) -> float:
    """The largest group lr (the optimizer's base lr; kernels' own lrs may be lower)."""
    return max(g["lr"] for g in optimizer.param_groups)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


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
                 which: str = "latest") -> dict:
    """Loads a run's recipe and checkpoint and evaluates it on ``split``: {metrics..., samples, step, checkpoint}."""
    if split not in ("val", "test"):
        raise UserError(f"unknown split {split!r}; choose val or test")
    from ssmkit.generation.load import load  # the one loading path (ssmkit.load)

    run = load(path, which, overrides, check_data=True)
    recipe, task = run.recipe, run.task
    accelerator = make_accelerator(recipe, trackers=False)
    loader = make_loader(task, split, recipe, recipe.train.seed)
    model, loader = accelerator.prepare(run.model, loader)
    metrics = evaluate(model, loader, task, accelerator)
    return {"split": split, "checkpoint": str(run.checkpoint), "step": run.step,
            "rate": float(getattr(task, "rate", 1.0) or 1.0), **metrics}


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def eprint(*args) -> None:
    print(*args, file=sys.stderr)
