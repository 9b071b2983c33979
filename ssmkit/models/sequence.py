"""SequenceModel: encoder -> N residual blocks (``ssmkit/models/block.py``) -> pooling -> decoder.

The model works on (B, L, d_input) features or (B, L) token ids, holds the sampling-rate factor ``rate`` that
every mixer's ``forward`` and ``setup_step`` receive, and runs the whole stack token by token (``step``) or
from a state (``forward(state=..., return_state=True)``). The checks and the encoder every backbone shares are
the module functions ``check_backbone``, ``make_encoder`` and ``refuse_removed`` (SaShiMi uses them too).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ssmkit.mixers import ConvMixer
from ssmkit.models.block import NORMS, Norm, ResidualBlock
from ssmkit.models.fast_step import AOTStep, aot_unsupported
from ssmkit.ops.padding import padding_mask

POOLS = ("mean", "last", None)
ENCODERS = ("linear", "embedding")
DEFAULT_MIXER = {"name": "s4d"}
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch < 2.3 has none

__all__ = ["ENCODERS", "NORMS", "POOLS", "SequenceModel", "check_backbone", "make_encoder", "refuse_removed"]


def refuse_removed(model: str, removed: dict) -> None:
    """TypeError for a keyword a backbone no longer takes, naming the one that replaced it."""
    for key in removed:
        if key == "layer":
            raise TypeError(f"{model} takes mixer={{'name': ..., **options}} instead of layer= (whose kernel: key is now "
                            "the mixer's name:, and whose rate is the model's rate=)")
        raise TypeError(f"{model}.__init__() got an unexpected keyword argument {key!r}")


def check_backbone(d_model: int, n_layers: int, encoder: str, rate: float) -> None:
    """ValueError naming the first impossible option shared by every backbone."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
    if n_layers < 1 or d_model < 1:
        raise ValueError(f"n_layers and d_model must be positive, got {n_layers}, {d_model}")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0:
        raise ValueError(f"rate (the sampling-rate factor) must be a positive number, got {rate!r}")


def make_encoder(encoder: str, d_input: int, d_model: int) -> nn.Module:
    """``embedding`` (d_input = vocabulary size) or ``linear`` (d_input features)."""
    return nn.Embedding(d_input, d_model) if encoder == "embedding" else nn.Linear(d_input, d_model)


class SequenceModel(nn.Module):
    """A stack of residual mixer blocks with an encoder, pooling and a decoder.

    Args:
        d_input: input features (encoder ``linear``) or vocabulary size (encoder ``embedding``).
        d_output: outputs per position (pool None) or per sequence (pool mean/last).
        d_model, n_layers: width and depth.
        mixer: every block's mixer, ``{"name": "s4d", **options}`` (``ssmkit.mixers.MIXERS``; default s4d).
        prenorm: normalise before each sub-block (True) or after the residual sum (False).
        norm: ``layer``, ``batch`` or None.
        dropout: after each sub-block, before the residual sum (a mixer's own ``dropout`` is another one, inside
            the mixer before its output map; both apply when both are set).
        pool: ``mean``, ``last`` or None (a prediction per position).
        encoder: ``linear`` or ``embedding``.
        mlp_ratio: if > 0, each block also has a position-wise MLP of width mlp_ratio * d_model.
        checkpoint: recompute each block's activations in the backward pass (saves memory).
        rate: the sampling-rate factor: every discretised mixer's step size is multiplied by it (``set_rate``);
            a mixer without a step size refuses any other value than 1.
    """

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_model: int = 128,
        n_layers: int = 4,
        mixer: dict | None = None,
        prenorm: bool = True,
        norm: str | None = "layer",
        dropout: float = 0.0,
        pool: str | None = "mean",
        encoder: str = "linear",
        mlp_ratio: float = 0,
        checkpoint: bool = False,
        rate: float = 1.0,
        **removed,
    ):
        super().__init__()
        refuse_removed("SequenceModel", removed)
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of mean, last, None")
        check_backbone(d_model, n_layers, encoder, rate)
        mixer = dict(DEFAULT_MIXER if mixer is None else mixer)
        self.pool, self.encoder_kind, self.use_checkpoint = pool, encoder, checkpoint
        self.encoder = make_encoder(encoder, d_input, d_model)
        self.blocks = nn.ModuleList(
            ResidualBlock(d_model, mixer, prenorm, norm, dropout, mlp_ratio) for _ in range(n_layers)
        )
        self.final_norm = Norm(norm if prenorm else None, d_model)  # postnorm blocks end normalised
        self.decoder = nn.Linear(d_model, d_output)
        self.rate = 1.0
        self._step_rate = None  # the rate the mixers' recurrences were last set up for
        self.set_rate(rate)

    @property
    def mixers(self) -> list:
        """Every block's mixer, in order."""
        return [b.mixer for b in self.blocks]

    def set_rate(self, rate: float) -> None:
        """Sets the sampling-rate factor (e.g. 2.0 for inputs at half the training rate); a mixer without a step
        size refuses any rate but 1 here."""
        check_backbone(1, 1, "linear", rate)
        for mixer in self.mixers:
            mixer.check_rate(rate)
        self.rate = float(rate)

    def _pool(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if self.pool is None:
            return x
        if lengths is None:
            return x.mean(dim=1) if self.pool == "mean" else x[:, -1]
        lengths = lengths.to(x.device)
        if self.pool == "last":
            return x[torch.arange(x.shape[0], device=x.device), lengths - 1]
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
        return (x * mask.unsqueeze(-1)).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(x.dtype)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, state=None, return_state: bool = False):
        """x: (B, L, d_input) floats or (B, L) token ids -> (B, d_output) or (B, L, d_output).

        ``lengths`` (B,) marks suffix padding: every block zeroes the padding before and after its mixer, batch
        norm and pooling ignore it, so each sample's output is the one it gets alone. ``state``/``return_state``
        pass each mixer's recurrent state (a list, one per block), for causal recurrent mixers (not with
        ``lengths``).
        """
        if lengths is not None and (return_state or state is not None):
            raise ValueError("lengths cannot be combined with state/return_state: the state after the padding is no "
                             "sample's state; pass unpadded sequences for state passing")
        x = self.encoder(x)  # (B, L, H)
        states = []
        for i, block in enumerate(self.blocks):
            if return_state or state is not None:
                x, s = block(x, state=None if state is None else state[i], return_state=True, rate=self.rate)
                states.append(s)
            elif self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, lengths, rate=self.rate, use_reentrant=False)
            else:
                x = block(x, lengths, rate=self.rate)
        mask = None if lengths is None else padding_mask(lengths, x.shape[1], x.device)
        x = self.decoder(self._pool(self.final_norm(x, mask), lengths))
        return (x, states) if return_state else x

    def default_state(self, *batch_shape: int, device=None, real: bool = False) -> list:
        """Each mixer's zero state. ``real=True`` gives the states of mixers that can step in real arithmetic
        (S4D) as (..., 2) real tensors, the form :meth:`compile_step` runs fastest on."""
        states = [m.default_state(*batch_shape, device=device) for m in self.mixers]
        if real:
            states = [torch.view_as_real(s) if isinstance(m, ConvMixer) and m.real_step else s
                      for m, s in zip(self.mixers, states)]
        return states

    def compile_step(self, backend: str = "auto"):
        """``step`` compiled for fast token-by-token inference: ``y, state = fast(x, state)``.

        Puts the model in eval mode and sets up every mixer's recurrence. Use it with
        ``default_state(..., real=True)``: S4D then steps in real arithmetic, which compiles.

        backend:
            ``aot``: AOTInductor (:class:`ssmkit.models.fast_step.AOTStep`): the whole step becomes one
            C++ function with the weights frozen in; fastest (~6x eager on CPU) but 10-30 s to compile per
            input shape, and after changing the weights call ``fast.refresh()``.
            ``inductor``: ``torch.compile`` (follows weight changes after ``setup_step()``; ~3.4x eager).
            ``auto``: ``aot`` on CPU when every mixer's state is a real tensor, otherwise ``inductor``
            (attention caches grow every step; complex states do not compile).
        """
        if backend not in ("auto", "aot", "inductor"):
            raise ValueError(f"unknown step backend {backend!r}; choose auto, aot or inductor")
        self.eval()
        self.setup_step()
        if backend == "auto":
            device = next(self.parameters()).device
            why = aot_unsupported(self, self.default_state(1, device=device, real=True))
            backend = "aot" if why is None and device.type == "cpu" else "inductor"
        if backend == "aot":
            return AOTStep(self)
        guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
        options = {"guard_filter_fn": guards} if guards is not None else {}
        return torch.compile(self.step, dynamic=False, options=options)

    def setup_step(self) -> None:
        """Sets up every mixer's recurrence at the model's rate (``step`` does it when the rate changed)."""
        for mixer in self.mixers:
            mixer.setup_step(self.rate)
        self._step_rate = self.rate

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: list):
        """One token through the whole model: x (B, d_input) or (B,) ids -> (B, d_output), next states.

        The decoder is applied to each position's features (pooling is a whole-sequence operation).
        """
        if self._step_rate != self.rate and not _is_compiling():
            self.setup_step()
        x = self.encoder(x)
        next_states = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            next_states.append(s)
        return self.decoder(self.final_norm(x)), next_states
