"""Optimizer parameter groups from per-parameter settings.

Kernels tag their parameters with ``param._optim = {"lr": ..., "weight_decay": ...}`` (see
``Kernel.register``). Everything else gets the optimizer's lr; weights of linear/embedding layers get
its weight decay, and norms, biases and skip terms (1-d tensors) get none.
"""
from __future__ import annotations

import torch.nn as nn


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Groups of parameters sharing (lr, weight_decay), each with a ``names`` list for reporting."""
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        optim = getattr(p, "_optim", {})
        default_wd = 0.0 if p.dim() < 2 or name.endswith(".D") else weight_decay
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
