"""A diagonal multi-input multi-output linear recurrence as a token mixer: the common part of S5 and LRU.

    x_t = lambda * x_{t-1} + Bbar u_t          x_t in C^P, lambda (P,) complex, Bbar (P, H) complex
    y_t = scale * Re(C x_t) + D * u_t          C (H, P) complex, D (H,), scale 2 with conjugate symmetry

Unlike the depthwise kernels (one SISO system per feature, a (C, H, L) convolution kernel), the state mixes
all H features, so S5 and LRU are ``Mixer``s (``ssmkit/mixers/base.py``) that map (B, H, L) to (B, H, L)
themselves. The input projection and output map are GEMMs over features; the recurrence is
``ssmkit.ops.scan.linear_scan`` (time-invariant lambda: chunked Toeplitz GEMMs, bounded memory), or its
equivalent convolution x = lambda^l * (Bbar u) by FFT (``mode: conv``). A bidirectional mixer runs a second
scan over the reversed sequence with its own output matrix (S5, section 4). The SSM runs in float32 (float64
for double parameters) with autocast off.

The mixer ends as its paper's layer does: SSM -> activation -> dropout -> output map (``OutputMap`` in
``ssmkit/mixers/output.py``, ``self.post``; GELU and a GLU map by default), in ``forward`` and in ``step``.
Per-parameter lr / weight decay come from ``OwnParams`` (``ssmkit/mixers/params.py``).

Subclasses set ``self.P`` and implement ``discrete_log(rate) -> (log lambda (P,), Bbar (P, H))`` and
``C_matrix() -> (n_dir, H, P)``; ``discrete(rate)`` gives lambda itself. The convolution's powers lambda^l
are exp(l log lambda) from that log, not from log(lambda): a decayed lambda (exp(Lambda dt) at dt 1e4, or a
ring radius near 0) underflows to 0, and log 0 = -inf made exp(-inf * 0) a NaN at l = 0 and inf * 0 NaN
gradients; the log itself stays finite (-5000 + i phi), so every power and gradient does.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ssmkit.mixers.base import Mixer
from ssmkit.mixers.params import OwnParams
from ssmkit.ops.fftconv import _fft_len
from ssmkit.ops.padding import padding_mask
from ssmkit.ops.scan import linear_scan
from ssmkit.ops.vandermonde import _flush

MODES = ("scan", "conv")
_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch < 2.3 has none


def _apply_complex(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """M (O, I) complex @ x (B, I, L) real -> (B, O, L) complex, as one real GEMM with [Re M; Im M]."""
    y = torch.cat([M.real, M.imag]) @ x  # (B, 2 O, L)
    return torch.complex(*y.chunk(2, dim=-2))


def _real_output(C: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Re(C x): C (O, I) complex, x (B, I, L) complex -> (B, O, L), one real GEMM [Re C, -Im C] @ [Re x; Im x]."""
    xr = torch.view_as_real(x).movedim(-1, -3).flatten(-3, -2)  # (B, 2 I, L)
    return torch.cat([C.real, -C.imag], dim=-1) @ xr


def _conv_states(log_lam: torch.Tensor, Bu: torch.Tensor) -> torch.Tensor:
    """x[..., t] = sum_{s <= t} lam^(t-s) Bu[..., s] by a zero-padded complex FFT, lam^l = exp(l log lam) with
    the product l log lam in complex128 (phase exact at long l); denormal powers are flushed to 0."""
    L = Bu.shape[-1]
    n = _fft_len(2 * L)
    wide = torch.complex128 if log_lam.dtype == torch.complex128 else torch.complex64
    ell = torch.arange(L, device=log_lam.device, dtype=torch.float64)
    k = _flush(torch.exp(log_lam.to(torch.complex128).unsqueeze(-1) * ell), wide)  # (P, L)
    return torch.fft.ifft(torch.fft.fft(Bu, n) * torch.fft.fft(k, n), n)[..., :L]


class DiagonalMIMO(OwnParams, Mixer):
    """The shared forward, state passing and step of a diagonal MIMO recurrence (see the module docstring)."""

    #: Re(C x) is doubled: the conjugate half of the state is implied
    output_scale = 1.0

    def __init__(self, d_model: int, bidirectional: bool, mode: str, lr, wd):
        """Subclasses register their parameters after this and end with ``self.post = OutputMap(...)`` (drawn
        last, so a seed gives the weights the layer of the old layout had: SSM first, then its output map)."""
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive integer, got {d_model!r}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self.set_param_settings(lr, wd)
        self.d_model = d_model
        self.bidirectional, self.mode = bidirectional, mode
        self.n_dir = 2 if bidirectional else 1
        self.D = nn.Parameter(torch.randn(d_model))
        self._step, self._step_key, self._step_rate = None, None, 1.0

    @property
    def has_state(self) -> bool:
        return not self.bidirectional

    def no_state_reason(self) -> str:
        return "a bidirectional mixer sees the future"

    def discrete_log(self, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(log lambda (P,), Bbar (P, H)), complex."""
        raise NotImplementedError

    def discrete(self, rate: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda (P,), Bbar (P, H))."""
        log_lam, Bbar = self.discrete_log(rate)
        return torch.exp(log_lam), Bbar

    def C_matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def _states(self, log_lam: torch.Tensor, lam: torch.Tensor, Bu: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "conv" and h0 is None:
            return _conv_states(log_lam, Bu)
        return linear_scan(lam.unsqueeze(-1), Bu, h0)[0]

    def recurrence(self, u: torch.Tensor, state: torch.Tensor | None = None, rate: float = 1.0,
            lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrence alone: u (B, H, L) -> y = scale Re(C x) + D u (B, H, L) in u's dtype, and the states
        x (B, P, L) (complex64, complex128 for double parameters), before the output map."""
        dtype = u.dtype
        with torch.autocast(device_type=u.device.type, enabled=False):
            log_lam, Bbar = self.discrete_log(rate)  # (P,), (P, H)
            lam = torch.exp(log_lam)
            real = torch.float64 if lam.dtype == torch.complex128 else torch.float32
            u = u.to(real)
            Bu = _apply_complex(Bbar, u)  # (B, P, L)
            C = self.C_matrix()  # (n_dir, H, P)
            x = self._states(log_lam, lam, Bu, state)  # (B, P, L)
            y = self.output_scale * _real_output(C[0], x)
            if self.bidirectional:
                if lengths is not None:  # the reverse scan starts at each sample's end: nothing after it enters
                    Bu = Bu * padding_mask(lengths, Bu.shape[-1], Bu.device).unsqueeze(1)
                x_rev = self._states(log_lam, lam, Bu.flip(-1), None).flip(-1)
                y = y + self.output_scale * _real_output(C[1], x_rev)
            y = y + self.D.to(real).unsqueeze(-1) * u
        return y.to(dtype), x

    def forward(self, u: torch.Tensor, state: torch.Tensor | None = None, return_state: bool = False,
                lengths: torch.Tensor | None = None, rate: float = 1.0):
        """u (B, H, L) -> y (B, H, L) and, with ``return_state``, the state (B, P) after the last token.

        ``lengths`` (B,) marks suffix padding: the forward scan never reads what follows a position, and the
        reverse scan (bidirectional) sees no input after each sample's length, so both directions equal the
        sample run alone."""
        self.check_call(u, state, return_state, lengths, rate)
        y, x = self.recurrence(u, state, rate, lengths)
        y = self.post(y)
        return (y, x[..., -1]) if return_state else y

    # --- recurrent mode ---
    def default_state(self, *batch_shape: int, device=None) -> torch.Tensor:
        if not self.has_state:
            raise self.refuse_state()
        dtype = torch.complex128 if self.D.dtype == torch.float64 else torch.complex64
        return torch.zeros(*batch_shape, self.P, dtype=dtype, device=device or self.D.device)

    def setup_step(self, rate: float = 1.0) -> None:
        """Discretises for ``step`` at this ``rate``; kept until a parameter changes (``cache_key``)."""
        self.check_rate(rate)
        key = self.cache_key(rate)
        if key == self._step_key:
            return
        with torch.no_grad():
            lam, Bbar = self.discrete(rate)
            self._step = (lam, Bbar, self.C_matrix()[0], self.D.detach())
        self._step_key, self._step_rate = key, rate

    def step(self, u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u (B, H), state (B, P) -> y (B, H), next state, at the rate of the last ``setup_step`` (1 before any).
        A parameter changed since (a training step, ``load_state_dict``) is discretised again."""
        if not self.has_state:
            raise self.refuse_state("recurrent step")
        if not _is_compiling():  # a compiled step is traced after setup_step
            self.setup_step(self._step_rate)
        lam, Bbar, C, D = self._step
        real = D.dtype
        state = lam * state + _apply_complex(Bbar, u.to(real).unsqueeze(-1)).squeeze(-1)  # (B, P)
        y = self.output_scale * _real_output(C, state.unsqueeze(-1)).squeeze(-1) + D * u.to(real)
        return self.post.step(y.to(u.dtype)), state
