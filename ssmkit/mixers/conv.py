"""ConvMixer: a convolution kernel turned into a token mixer (s4, s4d, dss, dlr, lssl, sgconv).

    u (B, H, L) -> kernel K (C', H, L) -> FFT convolution (+ D u, folded into tap 0) -> activation
                -> dropout -> output map (Linear / GLU)                                  -> y (B, H, L)

The kernel (``ssmkit/mixers/kernels/``) makes K and, when its math has one, steps the recurrence; this class
does the rest. Channels the kernel makes: C (``channels``), doubled when the activation is ``glu`` (a GLU
halves them again), doubled again when ``bidirectional`` (the second half is the anticausal kernel).
The end (activation -> dropout -> output map) is ``self.post``, an ``OutputMap`` (``ssmkit/mixers/output.py``)
applied channels-first as one batched GEMM; a ``glu`` activation is applied here, over the kernel's doubled
channels, and ``post`` then only drops out and maps.

Each registered kernel has its own class, made by :func:`conv_mixer_class` (``S4DMixer`` = ConvMixer over
``S4DKernel``, ...), whose constructor signature is ConvMixer's options followed by the kernel's, so the
recipe validator, ``mixer_parameters`` and the error messages see one flat list of options. Every option has
one owner: ``channels`` and ``max_kernel_length`` (DLR) are passed on to the kernel (``ROUTED``); a kernel
option named like any other ConvMixer option could never be set and is refused when the class is made.

Without gradients (eval, ``no_grad``) the kernel is computed once and kept while its parameters, length and
rate are unchanged (``Kernel.cache_key`` follows in-place updates); with ``cache_in_training`` (set by the
training loop under gradient accumulation) once per optimizer step, its gradient sent by
``ssmkit.ops.cache.flush_kernel_caches`` (which finds ``self.kernel_cache``).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from ssmkit.mixers.base import Mixer
from ssmkit.mixers.kernels import KERNELS, Kernel
from ssmkit.mixers.output import OutputMap, check_activation
from ssmkit.ops.cache import KernelCache
from ssmkit.ops.fftconv import fftconv

_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch < 2.3 has none

#: ConvMixer options that a kernel's constructor may take too: the mixer passes its value on (``channels``:
#: the number it computes from channels, activation and direction; ``max_kernel_length`` to DLR, whose kernel
#: then knows it is cut). A kernel option with the name of any other ConvMixer option is refused.
ROUTED = ("d_model", "channels", "max_kernel_length")


class ConvMixer(Mixer):
    """A convolution kernel as a token mixer (see the module docstring).

    Args:
        d_model: H, the number of features.
        kernel: a ``Kernel`` subclass or a name from ``ssmkit.mixers.kernels.KERNELS``.
        channels: C, kernels per feature; the output map folds C*H back to H.
        bidirectional: add an anticausal kernel, so position t also sees the inputs after t (no recurrence).
        activation: after the convolution and skip: gelu, silu, relu, tanh, sigmoid, id/None, or glu (the kernel
            makes 2C channels and a GLU halves them).
        output: ``glu`` (Linear C*H -> 2H, then GLU), ``linear`` or None (only when C == 1).
        dropout: on the C*H mixed features, after the activation and before the output map; ``tie_dropout``
            shares its mask over the sequence (needs dropout > 0).
        D: learn the skip term y += D u (folded into the kernel's first tap).
        max_kernel_length: compute the kernel only up to this length (divided by ``rate``); the convolution still
            covers the whole input. A cut kernel has no recurrence.
        **kernel_options: the kernel's own options (d_state, init, lr, ...).
    """

    #: the kernel class (set by ``conv_mixer_class``; None for the generic ConvMixer(d_model, kernel))
    kernel_class: type[Kernel] | None = None
    has_rate = True

    def __init__(self, d_model: int, kernel: type[Kernel] | str, channels: int = 1, bidirectional: bool = False,
                 activation: str | None = "gelu", output: str | None = "glu", dropout: float = 0.0,
                 tie_dropout: bool = False, D: bool = True, max_kernel_length: int | None = None, **kernel_options):
        super().__init__()
        cls = KERNELS.get(kernel) if isinstance(kernel, str) else kernel
        check_activation(activation, extra=("glu",))
        if max_kernel_length is not None and (isinstance(max_kernel_length, bool) or max_kernel_length <= 0):
            raise ValueError(f"max_kernel_length must be a positive integer or null, got {max_kernel_length}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        _refuse_shadowed(cls)
        takes = inspect.signature(cls).parameters
        unknown = sorted(set(kernel_options) - (set(takes) - set(ROUTED)))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} for kernel {cls.__name__}; allowed: "
                             f"{', '.join(sorted(set(takes) - set(ROUTED)))}")
        self.d_model, self.channels, self.bidirectional = d_model, channels, bidirectional
        self.activation_name, self.max_kernel_length = activation, max_kernel_length
        # Channels the kernel makes: C, doubled for a GLU activation, doubled again for the reverse direction.
        self.kernel_channels = channels * (2 if activation == "glu" else 1)
        routed = {"max_kernel_length": max_kernel_length} if "max_kernel_length" in takes else {}
        self.kernel = cls(d_model, channels=self.kernel_channels * (2 if bidirectional else 1), **routed,
                          **kernel_options)
        self.D = torch.nn.Parameter(torch.randn(self.kernel_channels, d_model)) if D else None
        self.post = OutputMap(channels * d_model, d_model, None if activation == "glu" else activation, output,
                              dropout, tie_dropout)
        self.kernel_cache = KernelCache()
        self.cache_in_training = False
        self._step_key = None
        self._step_rate = 1.0

    # --- what this mixer can do ---
    def _why_no_state(self) -> str | None:
        if self.max_kernel_length is not None:  # before the kernel's own reason: DLR's kernel knows it too
            return f"max_kernel_length={self.max_kernel_length} cuts the kernel, so it is no recurrence"
        if not self.kernel.has_state:
            return f"its {type(self.kernel).__name__} with these options has no recurrence"
        if self.bidirectional:
            return "a bidirectional mixer sees the future"
        return None

    @property
    def has_state(self) -> bool:
        return self._why_no_state() is None

    def no_state_reason(self) -> str:
        return self._why_no_state() or "it has one"

    @property
    def real_step(self) -> bool:
        """The kernel steps (..., n, 2) real states too (S4D; see ``SequenceModel.compile_step``)."""
        return bool(getattr(self.kernel, "real_step", False))

    # --- the kernel ---
    def _kernel_length(self, L: int, rate: float) -> int:
        if self.max_kernel_length is None:
            return L
        return max(1, min(L, round(self.max_kernel_length / rate)))

    def kernel_fn(self, L: int, rate: float = 1.0) -> torch.Tensor:
        """The real convolution kernel (C', H, Lk) for inputs of length L (bidirectional: causal half first;
        without the D skip)."""
        self.check_rate(rate)
        return self.kernel(self._kernel_length(L, rate), rate=rate)[0]

    def _kernel(self, L: int, rate: float, state):
        """The kernel (C', H, L) and the state's response (cached, see the module docstring)."""
        if state is not None or (torch.is_grad_enabled() and not self.cache_in_training):
            return self.kernel(L, rate=rate, state=state)
        key = self.kernel.cache_key(L, rate)
        return self.kernel_cache.get(key, lambda: self.kernel(L, rate=rate)[0]), None

    def _mix(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C', H, ...) after convolution and skip -> (GLU) -> (B, C*H, ...); other activations are post's."""
        if self.activation_name == "glu":
            y = F.glu(y, dim=1)
        return y.flatten(1, 2)

    # --- the contract ---
    def forward(self, u: torch.Tensor, state=None, return_state: bool = False,
                lengths: torch.Tensor | None = None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L); with ``return_state`` also the state after the last position.

        ``lengths`` needs nothing here: the caller zeroes the input after each length, so neither direction
        reads the padding (``ssmkit/models/block.py``)."""
        self.check_call(u, state, return_state, lengths, rate)
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
        y = self.post(self._mix(y))  # (B, H, L)
        if not return_state:
            return y
        return y, self.kernel.forward_state(u, state, rate=rate)

    def default_state(self, *batch_shape: int, device=None):
        if not self.has_state:
            raise self.refuse_state()
        return self.kernel.default_state(*batch_shape, device=device)

    def setup_step(self, rate: float = 1.0) -> None:
        """Precomputes the discrete recurrence for ``rate`` (kept while the parameters are unchanged)."""
        self.check_rate(rate)
        if not self.has_state:
            raise self.refuse_state("recurrent step")
        key = self.kernel.cache_key(rate)
        if key != self._step_key:
            self.kernel.setup_step(rate=rate)
            self._step_key, self._step_rate = key, rate

    def step(self, u: torch.Tensor, state):
        """One token u (B, H) -> y (B, H), next state, at the rate of the last ``setup_step`` (default 1).
        Equals ``forward`` token by token."""
        if not self.has_state:
            raise self.refuse_state("recurrent step")
        if not _is_compiling():  # a compiled step is traced after setup (SequenceModel.compile_step)
            self.setup_step(self._step_rate)  # redone only when a parameter changed since
        y, state = self.kernel.step(u, state)  # (B, C', H)
        if self.D is not None:
            y = y + u.unsqueeze(1) * self.D.to(u.dtype)
        return self.post.step(self._mix(y.unsqueeze(-1)).squeeze(-1)), state


def _refuse_shadowed(cls: type[Kernel]) -> None:
    """A kernel option named like a ConvMixer option (other than the ``ROUTED`` ones) could never be set: the
    mixer's option would take the value. Refused, so that no such kernel can be registered unnoticed."""
    own = set(inspect.signature(ConvMixer.__init__).parameters) - {"self", "kernel", "kernel_options"}
    shadowed = sorted((set(inspect.signature(cls).parameters) & own) - set(ROUTED))
    if shadowed:
        raise TypeError(f"kernel {cls.__name__} takes {', '.join(shadowed)}, which ConvMixer's option(s) of the same "
                        "name would shadow; rename the kernel's option")


def _merged_signature(cls: type[Kernel]) -> inspect.Signature:
    """(self, d_model, *, ConvMixer's options, the kernel's options but the routed ones)."""
    P = inspect.Parameter
    own = [p.replace(kind=P.KEYWORD_ONLY) for name, p in inspect.signature(ConvMixer.__init__).parameters.items()
           if name not in ("self", "d_model", "kernel", "kernel_options")]
    taken = {p.name for p in own}
    kernel = [p.replace(kind=P.KEYWORD_ONLY) for name, p in inspect.signature(cls).parameters.items()
              if name not in ROUTED and name not in taken and p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)]
    return inspect.Signature([P("self", P.POSITIONAL_OR_KEYWORD), P("d_model", P.POSITIONAL_OR_KEYWORD,
                                                                     annotation=int), *own, *kernel])


def conv_mixer_class(name: str, kernel: type[Kernel], has_rate: bool = True) -> type[ConvMixer]:
    """The ConvMixer class of one kernel: ``cls(d_model, **options)`` with ConvMixer's and the kernel's options
    in one signature. ``has_rate`` False for kernels without a step size (a rate other than 1 is refused)."""
    _refuse_shadowed(kernel)

    def __init__(self, d_model: int, **options):
        ConvMixer.__init__(self, d_model, kernel, **options)

    __init__.__signature__ = _merged_signature(kernel)
    cls_name = kernel.__name__.removesuffix("Kernel") + "Mixer"
    __init__.__qualname__ = f"{cls_name}.__init__"
    doc = (f"ConvMixer over :class:`{kernel.__module__}.{kernel.__name__}` (mixer ``{name}``): ConvMixer's options "
           f"(channels, bidirectional, activation, output, dropout, tie_dropout, D, max_kernel_length) and the "
           f"kernel's.\n\n{inspect.getdoc(kernel) or ''}")
    return type(cls_name, (ConvMixer,), {"__init__": __init__, "__doc__": doc, "__module__": __name__,
                                         "kernel_class": kernel, "has_rate": has_rate, "name": name})


S4Mixer = conv_mixer_class("s4", KERNELS.get("s4"))
S4DMixer = conv_mixer_class("s4d", KERNELS.get("s4d"))
DSSMixer = conv_mixer_class("dss", KERNELS.get("dss"))
DLRMixer = conv_mixer_class("dlr", KERNELS.get("dlr"), has_rate=False)
LSSLMixer = conv_mixer_class("lssl", KERNELS.get("lssl"))
SGConvMixer = conv_mixer_class("sgconv", KERNELS.get("sgconv"), has_rate=False)

#: every convolution SSM's mixer class, by recipe name
CONV_MIXERS = {cls.name: cls for cls in (S4Mixer, S4DMixer, DSSMixer, DLRMixer, LSSLMixer, SGConvMixer)}
