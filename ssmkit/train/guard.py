"""The non-finite guard: a NaN or infinite training loss never reaches the weights, and no checkpoint holds NaN.

Per forward pass :meth:`LossGuard.add` adds the loss on the device (no host sync). Once per optimizer step,
before ``optimizer.step()``, :meth:`LossGuard.finish_step` sums (non-finite passes, finite loss sum, passes)
over every process in one all-reduce of three numbers and reads them once on the host. So every process takes
the same decision, and the same number also gives the step's loss (the progress bar's running loss and the log
lines' mean). ``train.on_nonfinite``:

- ``stop`` (default): the step is not applied; the run stops with one line naming the step, the loss and the
  likely causes (data, learning rate, precision) and exit code 3 (:class:`NonFiniteLoss`). The last checkpoint
  is the last good one.
- ``skip``: the step's gradients are dropped (no optimizer or schedule step, the step counter does not move) and
  the run goes on; after :data:`MAX_CONSECUTIVE_SKIPS` skipped steps in a row it stops as above.

A finite loss can still leave non-finite weights (an overflowing gradient); :func:`parameters_finite` is checked
before every checkpoint, so a NaN model is never saved, let alone marked best.
"""
from __future__ import annotations

import torch

from ssmkit.errors import UserError

ON_NONFINITE = ("stop", "skip")
#: ``skip`` gives up after this many skipped optimizer steps in a row (the weights themselves are likely gone).
MAX_CONSECUTIVE_SKIPS = 10


class NonFiniteLoss(UserError):
    """The training loss (or the weights) became NaN/inf; exit code 3."""

    exit_code = 3


class LossGuard:
    """Collects a step's forward losses and checks them once per optimizer step (see the module docstring)."""

    def __init__(self, accelerator, mode: str = "stop"):
        if mode not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {mode!r}")
        self.accelerator, self.mode = accelerator, mode
        self._sums = torch.zeros(3, device=accelerator.device)  # non-finite passes, finite loss sum, passes
        self.skipped = 0  # steps skipped in the whole run
        self._in_a_row = 0

    def add(self, loss: torch.Tensor) -> None:
        value = loss.detach().float().reshape(())
        finite = torch.isfinite(value)
        self._sums += torch.stack(((~finite).float(), torch.where(finite, value, torch.zeros_like(value)),
                                   torch.ones_like(value)))

    def finish_step(self) -> tuple[bool, float | None]:
        """(step is finite on every process, mean loss of the step over every process or None). Collective."""
        sums = self._sums
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums.clone(), "sum")
        bad, total, passes = sums.tolist()
        self._sums.zero_()
        if bad:
            self._in_a_row += 1
            return False, None
        self._in_a_row = 0
        return True, total / max(passes, 1.0)

    def skip_or_stop(self, step: int, describe) -> None:
        """After a non-finite step: returns if the step is to be skipped, else raises :class:`NonFiniteLoss`
        with ``describe(reason)``'s one line."""
        if self.mode == "skip" and self._in_a_row < MAX_CONSECUTIVE_SKIPS:
            self.skipped += 1
            return
        reason = (f"{self._in_a_row} optimizer steps in a row had a non-finite training loss"
                  if self.mode == "skip" else "the training loss is NaN or infinite")
        raise NonFiniteLoss(describe(f"step {step + 1}: {reason}"))


def causes(recipe) -> str:
    """The likely causes of a non-finite loss, with this recipe's values."""
    parts = ["NaN/inf in the data (check the input files)", f"a learning rate too high (optimizer.lr={recipe.optimizer.lr:g})"]
    if recipe.train.mixed_precision != "no":
        parts.append(f"half-precision overflow (train.mixed_precision={recipe.train.mixed_precision}; try no)")
    if not recipe.train.grad_clip:
        parts.append("exploding gradients (set train.grad_clip, e.g. 1.0)")
    return ", ".join(parts)


def parameters_finite(model: torch.nn.Module, accelerator) -> bool:
    """Whether every parameter and buffer is finite on every process (each checks its own shards). Collective."""
    tensors = [t.detach() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point() or t.is_complex()]
    ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all().float() if tensors else torch.ones(())
    ok = ok.to(accelerator.device)
    if accelerator.num_processes > 1:
        ok = accelerator.reduce(ok.float(), "sum") / accelerator.num_processes
    return bool(ok.item() == 1)
