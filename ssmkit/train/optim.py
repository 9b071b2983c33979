"""Optimizer parameter groups from per-parameter settings.

Kernels tag their parameters with ``param._optim = {"lr": ..., "weight_decay": ...}`` (see
``Kernel.register``). Everything else gets the optimizer's lr; weights of linear/embedding layers get
its weight decay, and norms, biases and skip terms (1-d tensors) get none, unless tagged
``_optim = {"regular": True}`` (the optimizer's lr and weight decay whatever the shape).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Groups of parameters sharing (lr, weight_decay), each with a ``names`` list for reporting."""
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        optim = getattr(p, "_optim", {})
        # ``regular``: the optimizer's lr and weight decay whatever the shape (S5's dt_global log_dt)
        default_wd = 0.0 if (p.dim() < 2 or name.endswith(".D")) and not optim.get("regular") else weight_decay
        key = (float(optim.get("lr", lr)), float(optim.get("weight_decay", default_wd)))
        group = groups.setdefault(key, {"params": [], "names": [], "lr": key[0], "weight_decay": key[1]})
        group["params"].append(p)
        group["names"].append(name)
    return sorted(groups.values(), key=lambda g: (g["lr"], g["weight_decay"]))


def describe_groups(groups: list[dict]) -> list[dict]:
    """A printable summary: lr, weight decay, number of tensors and elements, example names."""
    rows = []
    for g in groups:
        short = sorted({n.split(".")[-1] for n in g["names"]})
        rows.append(
            {
                "lr": g["lr"],
                "weight_decay": g["weight_decay"],
                "tensors": len(g["params"]),
                "elements": sum(p.numel() for p in g["params"]),
                "names": ", ".join(short[:8]) + (" ..." if len(short) > 8 else ""),
            }
        )
    return rows


def build_optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`param_groups` (``config`` is a recipe's ``OptimizerConfig``)."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, config.lr, config.weight_decay)]
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas), eps=config.eps)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    raise ValueError(f"unknown optimizer {config.name!r}; choose one of adamw, sgd")


def lr_factor(step: int, name: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
              steps_per_epoch: int | None = None) -> float:
    """The multiplier of every group's lr after ``step`` optimizer steps.

    Linear warmup from 0 over ``warmup_steps``, then ``constant``; ``cosine`` decay to ``min_lr_ratio``
    at ``total_steps`` (and held there, it does not rise again); ``linear`` decay likewise. With
    ``steps_per_epoch`` the decay moves only at epoch boundaries (the S4 code's ``interval: epoch``, e.g.
    ``CosineAnnealingLR`` stepped once per epoch in the S4D example); warmup stays per step.
    """
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    if steps_per_epoch:
        step = step // steps_per_epoch * steps_per_epoch
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if name == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if name == "linear":
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress)
    raise ValueError(f"unknown schedule {name!r}; choose one of constant, cosine, linear, plateau")


def build_scheduler(optimizer: torch.optim.Optimizer, config, total_steps: int, mode: str = "min",
                    steps_per_epoch: int | None = None):
    """A ``LambdaLR`` stepped once per optimizer step (whatever the number of processes; with
    ``config.interval == "epoch"`` its decay changes once per epoch of ``steps_per_epoch``), or
    ``ReduceLROnPlateau`` stepped once per evaluation with the task's main metric."""
    if config.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=config.factor, patience=config.patience)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        functools.partial(lr_factor, name=config.name, warmup_steps=config.warmup_steps,
                          total_steps=total_steps, min_lr_ratio=config.min_lr_ratio,
                          steps_per_epoch=steps_per_epoch if config.interval == "epoch" else None),
    )
