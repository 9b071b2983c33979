"""SGConv: Structured Global Convolution (Li, Cai, Zhang, Chen, Dey 2022, "What Makes Convolutional
Models Great on Long Sequence Modeling?").

The kernel is built from n small sub-kernels w_i (C, H, d) of ``kernel_dim`` = d taps each (section 3.1,
eq. 3). Sub-kernel i is stretched to cover a span that doubles with i and is damped by a decay, so the
parameter count grows with log L while the kernel covers the whole sequence:

    n        = 1 + ceil(log2(l_max / d)) - s                     (s = ``init_scale``)
    cat mode: k = concat_i  Up(w_i, 2^(max(0, i-1) + s)) * m^(n-1-i)       segments d, d, 2d, 4d, ... (times 2^s)
    sum mode: k = sum_i  right-pad(Up(w_i, 2^(i + s))) * m^(n-1-i)

where Up is linear interpolation (``nearest`` in the mode: nearest-neighbour) with half-pixel centres and
m = m_h the per-feature decay, linspace(decay_min, decay_max, H). The full kernel has d * 2^(n-1+s) taps.
After the concatenation the kernel is divided by its own L2 norm over the taps, ||k[c, h, :]||, measured
once at initialisation and kept fixed (a buffer that is saved with the weights; the reference code keeps it
in a buffer created on the first forward pass, and the DLR re-implementation does not save it at all).
The norm is measured in float64 and the buffer stays float64 whatever the module's dtype (it is cast where
it is used), so a float64 model divides by the exact norm, as the reference does when it runs in float64.

Variants of the reference code, all selectable:
- ``mode`` = ``cat`` | ``sum``, ``randn`` | ``cos`` init, optional ``nearest``, optional ``learnable``
  (no per-scale decay; instead k_l *= (l+1)^(-gamma_h), gamma_h ~ U[decay_min, decay_max], learned unless
  ``fixed`` is also in the mode), e.g. ``cat_randn`` (default), ``cat_cos``, ``cat_randn_learnable_fixed``.
- ``alpha_min``/``alpha_max``: the DLR paper's re-implementation: a learned alpha[c, h] ~ U[alpha_min,
  alpha_max] multiplies sub-kernel i by alpha^i instead of the fixed decay.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from ssmkit.mixers.kernels.base import Kernel

COMBINES = ("cat", "sum")
INITS = ("randn", "cos")
MODE_HELP = (
    "a mode is 'cat' or 'sum', then '_randn' or '_cos', optionally '_nearest', optionally '_learnable' "
    "or '_learnable_fixed' (e.g. cat_randn, cat_cos, sum_randn, cat_randn_learnable_fixed)"
)


def parse_mode(mode: str) -> dict:
    """'cat_randn_learnable_fixed' -> {combine, init, interpolation, learnable, fixed}; ValueError if malformed."""
    tokens = str(mode).split("_")
    allowed = {*COMBINES, *INITS, "nearest", "learnable", "fixed"}
    combine = [t for t in tokens if t in COMBINES]
    init = [t for t in tokens if t in INITS]
    bad = (
        len(combine) != 1
        or len(init) != 1
        or any(t not in allowed for t in tokens)
        or len(tokens) != len(set(tokens))
        or ("fixed" in tokens and "learnable" not in tokens)
    )
    if bad:
        raise ValueError(f"unknown sgconv mode {mode!r}; {MODE_HELP}")
    return {
        "combine": combine[0],
        "init": init[0],
        "interpolation": "nearest" if "nearest" in tokens else "linear",
        "learnable": "learnable" in tokens,
        "fixed": "fixed" in tokens,
    }


def n_scales_for(l_max: int, kernel_dim: int, init_scale: int = 0) -> int:
    """The number of sub-kernels, 1 + ceil(log2(l_max / kernel_dim)) - init_scale, at least 1."""
    return max(1, 1 + math.ceil(math.log2(l_max / kernel_dim)) - init_scale)


class SGConvKernel(Kernel):
    """The SGConv multi-scale global convolution kernel (no recurrence: a pure convolution).

    Args:
        d_model: H, the number of features.
        channels: C, kernels per feature (doubled by ``ConvMixer`` when bidirectional).
        l_max: the sequence length the kernel is built to cover; it sets the number of scales. Longer
            inputs see zero taps beyond the kernel's d * 2^(n-1+s) taps (with a one-time warning).
        kernel_dim: d, the taps of each sub-kernel.
        n_scales: the number of sub-kernels; None derives it from l_max.
        init_scale: s, every sub-kernel is stretched by a further 2^s (and n shrinks by s).
        mode: how sub-kernels are initialised and combined (see the module docstring).
        decay_min, decay_max: the per-feature decay m_h = linspace(decay_min, decay_max, H) (default 2,
            i.e. each coarser scale weighs 1/2 of the previous one); in ``learnable`` modes the range of the
            polynomial decay exponent gamma_h. Default 2.0 for both.
        alpha_min, alpha_max: if set, a learned alpha[c, h] ~ U[alpha_min, alpha_max] multiplies sub-kernel
            i by alpha^i (the DLR paper's SGConv); excludes decay_min/decay_max.
        lr, wd: per-parameter learning rate / weight decay, a float or a dict with keys ``kernel`` (the
            sub-kernels) and ``decay`` (gamma or alpha when learned); lr 0 (or null in the dict) freezes.
            Default weight decay 0 for both; the SGConv LRA recipes used the optimizer's weight decay on the
            sub-kernels, so set ``wd: {kernel: 0.05}`` to reproduce them.
    """

    has_state = False
    param_keys = ("kernel", "decay")

    def __init__(
        self,
        d_model: int,
        channels: int = 1,
        l_max: int = 1024,
        kernel_dim: int = 64,
        n_scales: int | None = None,
        init_scale: int = 0,
        mode: str = "cat_randn",
        decay_min: float | None = None,
        decay_max: float | None = None,
        alpha_min: float | None = None,
        alpha_max: float | None = None,
        lr=None,
        wd=None,
    ):
        super().__init__(d_model, channels, lr, wd)
        self.mode = mode
        self.options = parse_mode(mode)
        for name, value in (("l_max", l_max), ("kernel_dim", kernel_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(init_scale, int) or init_scale < 0:
            raise ValueError(f"init_scale must be an integer >= 0, got {init_scale!r}")
        if n_scales is not None and (not isinstance(n_scales, int) or n_scales < 1):
            raise ValueError(f"n_scales must be a positive integer or null, got {n_scales!r}")
        self.use_alpha = alpha_min is not None or alpha_max is not None
        if self.use_alpha:
            if alpha_min is None or alpha_max is None or not 0 < alpha_min <= alpha_max:
                raise ValueError(f"need 0 < alpha_min <= alpha_max (set both), got alpha_min={alpha_min}, alpha_max={alpha_max}")
            if decay_min is not None or decay_max is not None:
                raise ValueError("set either alpha_min/alpha_max (learned decay, DLR) or decay_min/decay_max (SGConv), not both")
        decay_min = 2.0 if decay_min is None else decay_min
        decay_max = 2.0 if decay_max is None else decay_max
        if not 0 < decay_min <= decay_max:
            raise ValueError(f"need 0 < decay_min <= decay_max, got decay_min={decay_min}, decay_max={decay_max}")

        self.l_max, self.kernel_dim, self.init_scale = l_max, kernel_dim, init_scale
        self.n_scales = n_scales_for(l_max, kernel_dim, init_scale) if n_scales is None else n_scales
        self.length = kernel_dim * 2 ** (self.n_scales - 1 + init_scale)  # taps of the full kernel
        C, H, d = channels, d_model, kernel_dim

        for i in range(self.n_scales):
            if self.options["init"] == "randn":
                w = torch.randn(C, H, d)
            else:
                # feature h gets a cosine of h periods over the d taps; features shuffled per scale
                t = torch.linspace(0, 1, d, dtype=torch.float64)
                w = torch.cos(2 * math.pi * torch.arange(H, dtype=torch.float64)[:, None] * t)  # (H, d)
                w = w[torch.randperm(H)].float().expand(C, H, d).contiguous()
            self.register(f"kernel_{i}", w, "kernel")

        if self.use_alpha:
            self.register("alpha", alpha_min + (alpha_max - alpha_min) * torch.rand(C, H), "decay")
        elif self.options["learnable"]:
            gamma = decay_min + (decay_max - decay_min) * torch.rand(H)
            if self.options["fixed"]:
                self.register_buffer("gamma", gamma)
            else:
                self.register("gamma", gamma, "decay")
        else:
            self.register_buffer("multiplier", torch.linspace(decay_min, decay_max, H))
        with torch.no_grad():
            # In float64 from the float32 initial weights (a lossless round trip), as the reference measures
            # it in the model's precision: a float64 run divides by the exact norm of its initial kernel.
            self.double()
            norm = self._taps(self.length).norm(dim=-1, keepdim=True)  # (C, H, 1)
            self.float()
        self.register_buffer("kernel_norm", norm)
        self._warned_short = False

    def _apply(self, fn, recurse: bool = True):
        """Moves ``kernel_norm`` with the module but keeps it float64, so that ``.float()`` followed by
        ``.double()`` (or a float32 module turned float64) never divides by a float32-rounded norm."""
        norm = self._buffers.get("kernel_norm")
        super()._apply(fn, recurse)
        moved = self._buffers.get("kernel_norm")
        if norm is not None and moved.device.type != "mps":  # MPS has no float64
            self._buffers["kernel_norm"] = norm.to(device=moved.device, dtype=torch.float64)
        return self

    def _scale_weights(self, norm: torch.Tensor | None) -> list[torch.Tensor]:
        """The factor of each sub-kernel, (C, H, 1) or (H, 1): the fixed decay m^(n-1-i), alpha^i, or 1,
        divided by ``norm``. Applied to the d taps before upsampling (which is linear), never to the L taps.

        The powers and the division are formed in float64 (the norm's precision) and only the quotient is
        cast: a decay of 1e4 over 12 scales is 1e44, past float32's range, while power / norm is of order 1
        (its norm was measured with the same powers), so a float32 kernel stays finite for any decay."""
        n = self.n_scales
        dtype, device = self.kernel_0.dtype, self.kernel_0.device
        wide = torch.float64 if device.type != "mps" else dtype  # MPS has no float64
        if self.use_alpha:
            base = self.alpha.to(wide).unsqueeze(-1)
            factors = [base**i for i in range(n)]
        elif self.options["learnable"]:
            factors = [torch.ones((), dtype=wide, device=device)] * n
        else:
            base = self.multiplier.to(wide)
            factors = [(base ** (n - 1 - i)).unsqueeze(-1) for i in range(n)]
        if norm is not None:
            factors = [f / norm.to(wide) for f in factors]
        return [f.to(dtype) for f in factors]

    def _up(self, w: torch.Tensor, factor: int, taps: int) -> torch.Tensor:
        """The first ``taps`` samples of w (C, H, d) upsampled by ``factor``, reading only the taps needed."""
        need = min(w.shape[-1], math.ceil(taps / factor) + 1)  # later taps do not reach the first ``taps``
        w = w[..., :need]
        if factor > 1:
            w = F.interpolate(w, scale_factor=float(factor), mode=self.options["interpolation"])
        return w[..., :taps]

    def _taps(self, taps: int, norm: torch.Tensor | None = None) -> torch.Tensor:
        """The first ``taps`` (<= self.length) taps of the kernel divided by ``norm`` (C, H, 1), (C, H, taps)."""
        s = self.init_scale
        factors = self._scale_weights(norm)
        weights = [getattr(self, f"kernel_{i}") for i in range(self.n_scales)]
        if self.options["combine"] == "cat":
            segments, offset = [], 0
            for i, w in enumerate(weights):
                if offset >= taps:
                    break
                factor = 2 ** (max(0, i - 1) + s)
                seg_len = min(taps - offset, self.kernel_dim * factor)
                segments.append(self._up(w * factors[i], factor, seg_len))  # (C, H, seg_len)
                offset += seg_len
            k = torch.cat(segments, dim=-1)
        else:
            k = None
            for i, w in enumerate(weights):
                factor = 2 ** (i + s)
                seg = self._up(w * factors[i], factor, min(taps, self.kernel_dim * factor))  # (C, H, <= taps)
                seg = F.pad(seg, (0, taps - seg.shape[-1]))
                k = seg if k is None else k + seg
        if self.options["learnable"]:
            # polynomial decay (l+1)^(-gamma_h)
            log_pos = torch.log1p(torch.arange(taps, device=k.device, dtype=k.dtype))  # (taps,)
            k = k * torch.exp(-self.gamma.to(k.dtype).unsqueeze(-1) * log_pos)
        return k

    def forward(self, L: int, rate: float = 1.0, state: torch.Tensor | None = None):
        """K (C, H, L): the normalised kernel cut to L taps, or zero-padded when L exceeds its length.

        ``rate`` is accepted for the common kernel interface; SGConv has no step size, so it must be 1.
        """
        if state is not None:
            raise ValueError("sgconv has no recurrent state (it is a pure convolution); drop state")
        if rate != 1.0:
            raise ValueError(f"sgconv has no step size to rescale; rate must be 1.0, got {rate}")
        taps = min(L, self.length)
        k = self._taps(taps, self.kernel_norm)  # (C, H, taps); the norm is divided in float64 (``_scale_weights``)
        if L > self.length:
            if not self._warned_short:
                warnings.warn(
                    f"sgconv kernel covers {self.length} taps (l_max={self.l_max}) but the input has L={L}; "
                    "positions further apart than the kernel do not interact. Raise l_max (or n_scales) to cover L.",
                    stacklevel=2,
                )
                self._warned_short = True
            k = F.pad(k, (0, L - self.length))
        return k, None
