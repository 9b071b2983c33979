"""The Accelerator a recipe runs on, for training (``ssmkit/train/loop.py``) and evaluation (``evaluate.py``).

CPU when no GPU is visible; fp16 and FSDP on the CPU are refused (Accelerate would silently ignore them). Works
unchanged under ``accelerate launch`` and ``torchrun`` (Accelerate reads their environment). Trackers are started
later, once the run directory exists (``ssmkit/train/trackers.py``).
"""
from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, FullyShardedDataParallelPlugin

from ssmkit.errors import RecipeError


def make_accelerator(recipe) -> Accelerator:
    """An Accelerator for ``recipe.train`` (mixed precision, FSDP or DDP, accumulation, the data seed)."""
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


def _fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """FSDP through Accelerate: full (unsharded) state dicts gathered on rank 0, so our safetensors
    checkpoints are ordinary state dicts that load on any number of processes; original parameters kept
    so per-parameter learning rates (kernel groups) still apply."""
    return FullyShardedDataParallelPlugin(
        state_dict_type="FULL_STATE_DICT", use_orig_params=True, sync_module_states=True,
        auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["ResidualBlock"],
    )


def is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type.name == "FSDP"
