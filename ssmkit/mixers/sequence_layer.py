"""SequenceLayer: a token mixer by name, plus the position-wise parts around it.

    u (B, H, L) -> kernel K (C, H, L) -> FFT convolution -> + D u -> activation -> dropout -> output linear/GLU

or, for a token mixer (attention, S5, LRU, Mamba), u -> mixer -> activation -> dropout -> output linear/GLU.
Recurrent kernels also run token by token (``step``) and from/to a state (``forward(..., state=...)``);
both give the same numbers as the convolution.

Every argument reaches one owner. The layer's own arguments (``channels``, ``bidirectional``,
``max_kernel_length``, ``dropout``, ...) are the layer's; the ones a kernel also takes are passed on to it
(``ROUTED``), and no kernel may take another layer argument's name (a kernel option that the layer's
argument would silently shadow is refused when the layer is built; attention's weight dropout is therefore
``attn_dropout``). A layer argument that cannot act on the chosen kernel is refused with a one-line
``ValueError`` instead of being ignored (``D``, ``max_kernel_length``, ``rate`` != 1 or a GLU activation on a
token mixer without them, ``tie_dropout`` without dropout).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.mixers.kernels import KERNELS
from ssmkit.ops.cache import KernelCache
from ssmkit.ops.fftconv import fftconv
from ssmkit.ops.linear import channels_first_linear
from ssmkit.ops.padding import padding_mask
from ssmkit.registry import check_options, did_you_mean

ACTIVATIONS = {
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "id": nn.Identity,
    None: nn.Identity,
    "glu": None,  # halves the (doubled) channels: GLU over the kernel's channel axis
}
OUTPUTS = ("glu", "linear", None)
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch < 2.3 has none


#: SequenceLayer arguments that a kernel's constructor may take too: the layer passes its value on (d_model;
#: the kernel channels it computes from ``channels``, the activation and the direction; ``bidirectional`` to
#: mixers; ``max_kernel_length`` to DLR, whose kernel then knows it is cut). Any other shared name is refused.
ROUTED = ("d_model", "channels", "bidirectional", "max_kernel_length")
DEFAULT_ACTIVATION = "auto"


class SequenceLayer(nn.Module):
    """A sequence-to-sequence layer around a named kernel.

    Args:
        d_model: H, the number of features.
        kernel: a name from ``ssmkit.mixers.kernels.KERNELS`` (``s4d``, ...).
        channels: C, kernels per feature; the output linear maps C*H back to H (convolution kernels only).
        bidirectional: add an anticausal kernel so position t also sees the inputs after t (token mixers get
            it as their own ``bidirectional``).
        activation: after the convolution and skip (or after the token mixer): gelu, silu, relu, tanh,
            sigmoid, id/None, or glu (convolution kernels only: the kernel makes 2C channels and a GLU halves
            them). ``auto`` (the default): gelu, except after attention and Mamba, whose blocks end in their
            own output projection (no activation); an activation named explicitly is always applied.
        output: position-wise output map: ``glu`` (Linear C*H -> 2H, then GLU), ``linear``, or None
            (only when C == 1).
        dropout: the layer's dropout, applied once: after the activation, before the output map (on the C*H
            mixed features). ``tie_dropout`` shares the mask over the sequence (Dropout1d; needs dropout > 0).
            Attention's dropout on its weights is the kernel option ``attn_dropout``; the model's dropout
            after each block is ``SequenceModel(dropout=...)`` (recipe ``model.dropout``).
        transposed: inputs and outputs are (B, H, L) if True, (B, L, H) if False.
        D: learn the skip term y += D u (convolution kernels; S5, LRU and Mamba learn their own D, so
            ``D=False`` on a token mixer is refused).
        rate: default sampling-rate factor: the step size of every discretised kernel is multiplied by it
            (refused, unless 1, by kernels without a step size).
        max_kernel_length: compute the kernel only up to this length (the convolution still covers the input);
            convolution kernels only.
        **kernel_options: passed to the kernel (d_state, init, lr, ...); unknown names are errors.
    """

    def __init__(
        self,
        d_model: int,
        kernel: str = "s4d",
        channels: int = 1,
        bidirectional: bool = False,
        activation: str | None = DEFAULT_ACTIVATION,
        output: str | None = "glu",
        dropout: float = 0.0,
        tie_dropout: bool = False,
        transposed: bool = True,
        D: bool = True,
        rate: float = 1.0,
        max_kernel_length: int | None = None,
        **kernel_options,
    ):
        super().__init__()
        if activation not in ACTIVATIONS and activation != DEFAULT_ACTIVATION:
            raise ValueError(
                f"unknown activation {activation!r}{did_you_mean(activation, [a for a in ACTIVATIONS if a])}; "
                f"choose one of auto, {', '.join(str(a) for a in ACTIVATIONS)}"
            )
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of glu, linear, None")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if tie_dropout and not dropout:
            raise ValueError("tie_dropout=True shares the dropout mask over the sequence, but dropout is 0; "
                             "set dropout > 0 or drop tie_dropout")
        if max_kernel_length is not None and max_kernel_length <= 0:
            raise ValueError(f"max_kernel_length must be positive or null, got {max_kernel_length}")
        cls = KERNELS.get(kernel)
        self.kind = KERNELS.meta(kernel)["kind"]
        _refuse_shadowed(kernel, cls)
        takes = inspect.signature(cls).parameters
        self.d_model, self.kernel_name, self.channels = d_model, kernel, channels
        self.bidirectional, self.transposed, self.rate = bidirectional, transposed, rate
        self.max_kernel_length = max_kernel_length
        mixer = self.kind == "mixer"
        if activation == DEFAULT_ACTIVATION:
            # token mixers get an activation by default only if their block has one (S5, LRU: SSM -> GELU -> GLU)
            activation = "gelu" if not mixer or getattr(cls, "takes_activation", False) else None
        self.activation_name = activation

        if mixer:
            check_options(cls, kernel_options, f"kernel {kernel!r}", skip=ROUTED)
            self._refuse_for_mixer(channels != 1, f"it has no channels, set channels=1 (got {channels})")
            self._refuse_for_mixer(activation == "glu", "activation='glu' halves a convolution kernel's doubled "
                                   "channels; use output='glu' for a gate after it, or another activation")
            self._refuse_for_mixer(not D, "the layer's D skip belongs to convolution kernels (S5, LRU and Mamba learn "
                                   "their own D, attention has none); drop D")
            self._refuse_for_mixer(max_kernel_length is not None, "max_kernel_length cuts a convolution kernel and a "
                                   "token mixer has none (attention: chunk_size); drop max_kernel_length")
            self.mixer = cls(d_model, bidirectional=bidirectional, **kernel_options)
            # what the mixer's forward accepts beyond (u, state, return_state), read once, not per call
            self._mixer_params = frozenset(inspect.signature(self.mixer.forward).parameters) & {"lengths", "rate"}
            self.kernel = None
            self._check_rate(rate)
            d_mixed = d_model
        else:
            # Channels the kernel makes: C, doubled for GLU activation, doubled again for the reverse direction.
            self.kernel_channels = channels * (2 if activation == "glu" else 1)
            n_kernel = self.kernel_channels * (2 if bidirectional else 1)
            check_options(cls, kernel_options, f"kernel {kernel!r}", skip=ROUTED)
            routed = {"max_kernel_length": max_kernel_length} if "max_kernel_length" in takes else {}
            self.kernel = cls(d_model, channels=n_kernel, **routed, **kernel_options)
            self.D = nn.Parameter(torch.randn(self.kernel_channels, d_model)) if D else None
            d_mixed = channels * d_model

        self.act = nn.Identity() if activation == "glu" else ACTIVATIONS[activation]()
        if output is None and d_mixed != d_model:
            raise ValueError(f"output=None needs channels=1 (the output map folds C*H={d_mixed} back to H={d_model})")
        if output == "glu":
            self.out = nn.Sequential(nn.Linear(d_mixed, 2 * d_model), nn.GLU(dim=-1))
        elif output == "linear":
            self.out = nn.Linear(d_mixed, d_model)
        else:
            self.out = nn.Identity()
        drop = nn.Dropout1d if tie_dropout else nn.Dropout
        self.dropout = drop(dropout) if dropout > 0 else nn.Identity()
        self._step_key = None
        self.kernel_cache = KernelCache()
        self.cache_in_training = False

    def _refuse_for_mixer(self, refused: bool, why: str) -> None:
        if refused:
            raise ValueError(f"kernel {self.kernel_name!r} is a token mixer: {why}")

    def _check_rate(self, rate: float) -> None:
        """A token mixer without a step size (attention, Mamba) cannot take a sampling-rate factor."""
        if self.kernel is None and rate != 1.0 and "rate" not in self._mixer_params:
            raise ValueError(f"kernel {self.kernel_name!r} has no step size, so a sampling-rate factor cannot rescale "
                             f"it; got rate={rate}, use rate=1")

    def _mixer_lengths(self, lengths: torch.Tensor) -> dict:
        """A token mixer masks padded keys itself (``forward(..., lengths=)``); a causal one that does not
        need not (its valid outputs never read the zeroed padding after them)."""
        if "lengths" in self._mixer_params:
            return {"lengths": lengths}
        if self.bidirectional:
            raise ValueError(f"kernel {self.kernel_name!r} cannot mask padding (its forward takes no lengths); "
                             "use it causally or drop lengths")
        return {}

    @property
    def has_state(self) -> bool:
        return self._no_state_reason() is None

    def _no_state_reason(self) -> str | None:
        core = self.mixer if self.kernel is None else self.kernel
        if self.kernel is not None and self.max_kernel_length is not None:  # before has_state: DLR gets it too
            return f"max_kernel_length={self.max_kernel_length} cuts the kernel, so it is no recurrence"
        if not core.has_state:
            return f"kernel {self.kernel_name!r} with these options has no recurrence"
        if self.kernel is not None and self.bidirectional:
            return "a bidirectional layer sees the future"
        return None

    def _refuse_state(self, what: str = "recurrent state") -> ValueError:
        return ValueError(
            f"this {self.kernel_name!r} layer has no {what}: {self._no_state_reason()}; "
            "use a causal recurrent kernel without max_kernel_length, or drop state/step"
        )

    def kernel_fn(self, L: int, rate: float | None = None) -> torch.Tensor:
        """The real convolution kernel (C, H, L) (for bidirectional layers: causal half first)."""
        if self.kernel is None:
            raise TypeError(f"kernel {self.kernel_name!r} is a token mixer, it has no convolution kernel")
        rate = self.rate if rate is None else rate
        return self.kernel(self._kernel_length(L, rate), rate=rate)[0]

    def _kernel(self, L: int, rate: float, state):
        """The kernel (C', H, L) and the state's response.

        Without gradients (eval, no_grad) the kernel is computed once and kept while its parameters,
        length and rate are unchanged (the key follows in-place parameter updates). With
        ``cache_in_training`` (set by the loop under gradient accumulation) it is computed once per
        optimizer step and its gradient flushed by ``ssmkit.ops.cache.flush_kernel_caches``.
        """
        if state is not None or (torch.is_grad_enabled() and not self.cache_in_training):
            return self.kernel(L, rate=rate, state=state)
        key = self.kernel.cache_key(L, rate)
        return self.kernel_cache.get(key, lambda: self.kernel(L, rate=rate)[0]), None

    def _kernel_length(self, L: int, rate: float) -> int:
        if self.max_kernel_length is None:
            return L
        return max(1, min(L, round(self.max_kernel_length / rate)))

    def _mix(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C', H, ...) after conv + skip -> activation -> (B, C*H, ...)."""
        if self.activation_name == "glu":
            y = F.glu(y, dim=1)
        else:
            y = self.act(y)
        return y.flatten(1, 2)

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C*H, L) -> dropout -> output map -> (B, H, L).

        The output map is applied channels-first as one batched GEMM W @ y[b] + bias with the ``nn.Linear``
        weights (``ssmkit.ops.linear``; the parameters and state dict are those of ``self.out``): whole DLR/SGConv
        layers 1.05-1.18x faster than with the equivalent 1x1 ``conv1d`` (docs/performance.md)."""
        y = self.dropout(y)
        linear = self.out[0] if isinstance(self.out, nn.Sequential) else self.out
        if not isinstance(linear, nn.Linear):
            return y
        y = channels_first_linear(y, linear.weight, linear.bias)
        return F.glu(y, dim=1) if linear is not self.out else y

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None = None,
        return_state: bool = False,
        rate: float | None = None,
        lengths: torch.Tensor | None = None,
    ):
        """x: (B, H, L) if transposed else (B, L, H). With ``return_state``, also the final state.

        ``lengths`` (B,) marks suffix padding: the input after each sample's length is zeroed before the
        token mixing (so neither direction of a bidirectional kernel reads it, and attention masks those
        keys) and the output there is zeroed after it; the valid positions then equal the sample run alone.
        A state at the padded end is no sample's state, so ``state``/``return_state`` refuse ``lengths``.
        """
        if x.dim() != 3:
            raise ValueError(f"SequenceLayer expects a 3-d input, got shape {tuple(x.shape)}")
        rate = self.rate if rate is None else rate
        u = x if self.transposed else x.transpose(-1, -2)  # (B, H, L)
        if u.shape[1] != self.d_model:
            raise ValueError(f"expected {self.d_model} features, got input of shape {tuple(x.shape)} (transposed={self.transposed})")
        if (state is not None or return_state) and not self.has_state:
            raise self._refuse_state()
        mask = None
        if lengths is not None:
            if state is not None or return_state:
                raise ValueError(
                    "lengths cannot be combined with state/return_state: the state after the padding is no "
                    "sample's state; run unpadded sequences (or equal lengths without lengths) for state passing"
                )
            mask = padding_mask(lengths, u.shape[-1], u.device).unsqueeze(1)  # (B, 1, L)
            u = u * mask.to(u.dtype)
        if self.kernel is None:
            masked = {} if lengths is None else self._mixer_lengths(lengths)
            self._check_rate(rate)
            if "rate" in self._mixer_params:
                masked["rate"] = rate  # mixers with a step size (S5)
            y, next_state = self.mixer(u, state=state, return_state=return_state, **masked)  # (B, H, L)
            y = self.dropout(self.act(y)).transpose(-1, -2)
            y = self.out(y)
        else:
            L = u.shape[-1]
            if return_state and state is None:
                state = self.default_state(u.shape[0], device=u.device)
            k, k_state = self._kernel(self._kernel_length(L, rate), rate, state)  # (C', H, Lk)
            k_bwd = None
            if self.bidirectional:
                k, k_bwd = k.chunk(2, dim=0)
            if self.D is not None:
                # The skip D u is a convolution with D at lag 0: fold it into the kernel's first tap
                # (a (C, H) add instead of a (B, C, H, L) pass forward and backward).
                k = torch.cat([k[..., :1] + self.D.unsqueeze(-1).to(k.dtype), k[..., 1:]], dim=-1)
            y = fftconv(u, k, k_bwd)  # (B, C', H, L)
            if k_state is not None:
                y = y + k_state.to(y.dtype)
            y = self._output(self._mix(y)).transpose(-1, -2)  # (B, L, H), a view of the (B, H, L) result
            next_state = self.kernel.forward_state(u, state, rate=rate) if return_state else None
        if mask is not None:
            y = y * mask.transpose(-1, -2).to(y.dtype)  # y is (B, L, H) here
        y = y.transpose(-1, -2) if self.transposed else y
        return (y, next_state) if return_state else y

    # --- recurrent mode ---
    def default_state(self, *batch_shape: int, device=None):
        if not self.has_state:
            raise self._refuse_state()
        core = self.mixer if self.kernel is None else self.kernel
        return core.default_state(*batch_shape, device=device)

    def setup_step(self, rate: float | None = None) -> None:
        """Precomputes the discrete recurrence (done on demand by ``step``; redone when parameters change)."""
        rate = self.rate if rate is None else rate
        self._check_rate(rate)
        core = self.mixer if self.kernel is None else self.kernel
        if hasattr(core, "cache_key"):
            key = core.cache_key(rate)
            if key == self._step_key:
                return
            self._step_key = key
        core.setup_step(rate=rate)

    def step(self, x: torch.Tensor, state, rate: float | None = None):
        """One token: x (B, H) -> y (B, H), next state. Equals the convolution mode, token by token."""
        if not self.has_state:
            raise self._refuse_state("recurrent step")
        if not _is_compiling():  # a compiled step is traced after setup (see SequenceModel.compile_step)
            self.setup_step(rate)
        if self.kernel is None:
            y, state = self.mixer.step(x, state)  # (B, H)
            return self.out(self.dropout(self.act(y))), state
        y, state = self.kernel.step(x, state)  # (B, C', H)
        if self.D is not None:
            y = y + x.unsqueeze(1) * self.D.to(x.dtype)
        y = self.dropout(self._mix(y.unsqueeze(-1)).squeeze(-1))  # (B, C*H)
        return self.out(y), state  # one token: nn.Linear (+ GLU) on (B, C*H) is the cheaper call


def _refuse_shadowed(name: str, cls) -> None:
    """A kernel option named like a SequenceLayer argument (other than the ``ROUTED`` ones) could never be set:
    the layer's argument would take the value. Refused, so that no such kernel can be registered unnoticed."""
    layer_args = set(inspect.signature(SequenceLayer.__init__).parameters) - {"self", "kernel_options", "kernel"}
    shadowed = sorted((set(inspect.signature(cls).parameters) & layer_args) - set(ROUTED))
    if shadowed:
        raise TypeError(f"kernel {name!r} takes {', '.join(shadowed)}, which SequenceLayer's argument(s) of the same "
                        "name would shadow; rename the kernel's option")
