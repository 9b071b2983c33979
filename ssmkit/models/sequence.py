"""SequenceModel: encoder -> N residual blocks -> pooling -> decoder.

Each block is norm -> SequenceLayer -> dropout -> residual (prenorm), or
SequenceLayer -> dropout -> residual -> norm (postnorm), optionally followed by a position-wise MLP
sub-block with its own residual. The model works on (B, L, d_input) features or (B, L) token ids.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ssmkit.generation.generate import GenerationMixin
from ssmkit.mixers.sequence_layer import SequenceLayer
from ssmkit.ops.padding import padding_mask

NORMS = ("layer", "batch", None)
POOLS = ("mean", "last", None)
ENCODERS = ("linear", "embedding")


class _Norm(nn.Module):
    """LayerNorm or BatchNorm over the feature axis of (B, L, H) or (B, H) inputs."""

    def __init__(self, kind: str | None, d: int):
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"unknown norm {kind!r}; choose one of layer, batch, None")
        self.kind = kind
        self.norm = {"layer": nn.LayerNorm(d), "batch": nn.BatchNorm1d(d), None: nn.Identity()}[kind]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, L) (True = valid): batch norm takes its statistics from the valid positions only and
        leaves the padded ones as they are (layer norm is per position and ignores it)."""
        if self.kind == "batch" and x.dim() == 3:
            if mask is not None:
                return x.masked_scatter(mask.unsqueeze(-1), self.norm(x[mask]).to(x.dtype))
            return self.norm(x.transpose(-1, -2)).transpose(-1, -2)
        return self.norm(x)


class ResidualBlock(nn.Module):
    def __init__(self, d_model: int, layer: dict, prenorm: bool, norm: str | None, dropout: float, mlp_ratio: float = 0):
        super().__init__()
        self.prenorm = prenorm
        self.norm = _Norm(norm, d_model)
        for key, owner in (("d_model", "the model's d_model"), ("transposed", "the block (it works on (B, L, H))")):
            if key in layer:
                raise ValueError(f"layer option {key!r} is set by {owner}, not by the layer options; drop layer.{key}")
        self.layer = SequenceLayer(d_model, transposed=False, **layer)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.mlp = None
        if mlp_ratio:
            hidden = int(mlp_ratio * d_model)
            self.mlp_norm = _Norm(norm, d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model), self.drop)

    def _sub(self, x, fn, norm, mask=None):
        if self.prenorm:
            return x + fn(norm(x, mask))
        return norm(x + fn(x), mask)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, state=None, return_state: bool = False):
        next_state = None
        mask = None if lengths is None else padding_mask(lengths, x.shape[1], x.device)

        def mix(z):
            nonlocal next_state
            if return_state:
                z, next_state = self.layer(z, state=state, return_state=True)
            else:
                z = self.layer(z, lengths=lengths)
            return self.drop(z)

        x = self._sub(x, mix, self.norm, mask)
        if self.mlp is not None:
            x = self._sub(x, self.mlp, self.mlp_norm, mask)
        return (x, next_state) if return_state else x

    def step(self, x: torch.Tensor, state):
        def mix(z):
            nonlocal state
            z, state = self.layer.step(z, state)
            return self.drop(z)

        x = self._sub(x, mix, self.norm)
        if self.mlp is not None:
            x = self._sub(x, self.mlp, self.mlp_norm)
        return x, state


class SequenceModel(GenerationMixin, nn.Module):
    """A stack of residual SequenceLayer blocks with an encoder, pooling and a decoder.

    Args:
        d_input: input features (encoder ``linear``) or vocabulary size (encoder ``embedding``).
        d_output: outputs per position (pool None) or per sequence (pool mean/last).
        d_model, n_layers: width and depth.
        layer: options of every ``SequenceLayer`` (kernel, d_state, ...).
        prenorm: normalise before each sub-block (True) or after the residual sum (False).
        norm: ``layer``, ``batch`` or None.
        dropout: after each sub-block, before the residual sum (``layer["dropout"]`` is another one, inside each
            SequenceLayer before its output map; both apply when both are set).
        pool: ``mean``, ``last`` or None (a prediction per position).
        encoder: ``linear`` or ``embedding``.
        mlp_ratio: if > 0, each block also has a position-wise MLP of width mlp_ratio * d_model.
        checkpoint: recompute each block's activations in the backward pass (saves memory).
    """

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_model: int = 128,
        n_layers: int = 4,
        layer: dict | None = None,
        prenorm: bool = True,
        norm: str | None = "layer",
        dropout: float = 0.0,
        pool: str | None = "mean",
        encoder: str = "linear",
        mlp_ratio: float = 0,
        checkpoint: bool = False,
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of mean, last, None")
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
        if n_layers < 1 or d_model < 1:
            raise ValueError(f"n_layers and d_model must be positive, got {n_layers}, {d_model}")
        layer = dict(layer or {})
        self.pool, self.encoder_kind, self.use_checkpoint = pool, encoder, checkpoint
        self.encoder = nn.Embedding(d_input, d_model) if encoder == "embedding" else nn.Linear(d_input, d_model)
        self.blocks = nn.ModuleList(
            ResidualBlock(d_model, layer, prenorm, norm, dropout, mlp_ratio) for _ in range(n_layers)
        )
        self.final_norm = _Norm(norm if prenorm else None, d_model)  # postnorm blocks end normalised
        self.decoder = nn.Linear(d_model, d_output)

    @property
    def layers(self) -> list[SequenceLayer]:
        return [b.layer for b in self.blocks]

    def set_rate(self, rate: float) -> None:
        """Sets the sampling-rate factor of every layer (e.g. 2.0 for inputs at half the training rate)."""
        for layer in self.layers:
            layer.rate = rate

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

        ``lengths`` (B,) marks suffix padding: every layer zeroes the padding before and after its token
        mixing, batch norm and pooling ignore it, so each sample's output is the one it gets alone.
        ``state``/``return_state`` pass each layer's recurrent state (a list, one per block), for causal
        recurrent kernels (not with ``lengths``).
        """
        if lengths is not None and (return_state or state is not None):
            raise ValueError("lengths cannot be combined with state/return_state: the state after the padding is no "
                             "sample's state; pass unpadded sequences for state passing")
        x = self.encoder(x)  # (B, L, H)
        states = []
        for i, block in enumerate(self.blocks):
            if return_state or state is not None:
                x, s = block(x, state=None if state is None else state[i], return_state=True)
                states.append(s)
            elif self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, lengths, use_reentrant=False)
            else:
                x = block(x, lengths)
        mask = None if lengths is None else padding_mask(lengths, x.shape[1], x.device)
        x = self.decoder(self._pool(self.final_norm(x, mask), lengths))
        return (x, states) if return_state else x

    def default_state(self, *batch_shape: int, device=None, real: bool = False) -> list:
        """Each layer's zero state. ``real=True`` gives the states of kernels that can step in real
        arithmetic (S4D) as (..., 2) real tensors, the form :meth:`compile_step` runs fastest on."""
        states = [b.layer.default_state(*batch_shape, device=device) for b in self.blocks]
        if real:
            states = [
                torch.view_as_real(s) if getattr(b.layer.kernel, "real_step", False) else s
                for b, s in zip(self.blocks, states)
            ]
        return states

    def compile_step(self, backend: str = "auto"):
        """``step`` compiled for fast token-by-token inference: ``y, state = fast(x, state)``.

        Puts the model in eval mode and sets up every layer's recurrence. Use it with
        ``default_state(..., real=True)``: S4D then steps in real arithmetic, which compiles.

        backend:
            ``aot``: AOTInductor (:class:`ssmkit.models.fast_step.AOTStep`): the whole step becomes one
            C++ function with the weights frozen in; fastest (~6x eager on CPU) but 10-30 s to compile per
            input shape, and after changing the weights call ``fast.refresh()``.
            ``inductor``: ``torch.compile`` (follows weight changes after ``setup_step()``; ~3.4x eager).
            ``auto``: ``aot`` on CPU when every layer's state is a real tensor, otherwise ``inductor``
            (attention caches grow every step; complex states do not compile).
        """
        from ssmkit.models.fast_step import AOTStep, aot_unsupported

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
        for layer in self.layers:
            layer.setup_step()

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: list):
        """One token through the whole model: x (B, d_input) or (B,) ids -> (B, d_output), next states.

        The decoder is applied to each position's features (pooling is a whole-sequence operation).
        """
        x = self.encoder(x)
        next_states = []
        for block, s in zip(self.blocks, state):
            x, s = block.step(x, s)
            next_states.append(s)
        return self.decoder(self.final_norm(x)), next_states
