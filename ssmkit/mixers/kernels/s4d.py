"""S4D: diagonal state spaces (Gu, Gupta, Goel, Re 2022, "On the Parameterization and Initialization
of Diagonal State Space Models").

Continuous SSM x' = A x + B u, y = C x with diagonal complex A. Discretised with step size dt (ZOH or
bilinear), its convolution kernel is a Vandermonde product (S4D, eq. 6):

    K[c, h, l] = 2 * Re( sum_n C[c, h, n] * dB[h, n] * dA[h, n]^l )

where the 2 counts the conjugate of each of the N/2 stored complex states. S4D-Real (``init: real``) keeps
the same factor 2 on its N real states, as the reference code does (its kernel and step are 2 Re(...) for
every init), so that the initial kernel matches the reference's. ZOH: dA = exp(dt A), dB = (exp(dt A) - 1)/A B.
Bilinear: dA = (1 + dt A/2)/(1 - dt A/2), dB = dt/(1 - dt A/2) B.

Initialisations as in the reference code (state-spaces/s4): S4D-LegS takes B from the HiPPO-LegS
diagonalisation with Im(B) clamped to [-B_clip, B_clip] (default 2; ``B_clip: null`` for the exact B),
and ``real_transform: relu`` makes Re A = -(relu(p) + 1e-4) (strictly negative) from p = max(-Re A_0, 1e-4).
C is a complex standard normal (E|C|^2 = 1) for every init; S4D-Real takes its real part (std 1/sqrt 2), as the
reference's ``SSMKernelDiag`` registers ``C.real`` of the same complex draw.
"""
from __future__ import annotations

import math

import torch

from ssmkit.mixers.kernels.base import Kernel, log_uniform
from ssmkit.ops.discretize import bilinear_log, phi1
from ssmkit.ops.hippo import legs_diagonal, s4d_inverse_imag
from ssmkit.ops.vandermonde import log_vandermonde, log_vandermonde_transpose
from ssmkit.registry import check_choice

INITS = ("legs", "lin", "inv", "real")
DISCS = ("zoh", "bilinear")
REAL_TRANSFORMS = ("exp", "relu", "none")

#: the reference code's floor of -Re A under ``real_transform: relu`` (its ``param_transform``: relu(p) + 1e-4)
RELU_FLOOR = 1e-4
#: the reference code's clamp of Im(B) for S4D-LegS and the HiPPO NPLR forms (``nplr(..., B_clip=2.0)``)
B_CLIP = 2.0


def s4d_init(init: str, N: int, B_clip: float | None = B_CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) complex128 of the stored states: N/2 for complex inits, N for ``real``. ``B_clip`` clamps
    Im(B) of ``legs`` (the other inits have B = 1)."""
    check_choice("init", init, INITS)
    if B_clip is not None and not B_clip > 0:
        raise ValueError(f"B_clip must be positive or null, got {B_clip}")
    if init == "real":
        n = torch.arange(N, dtype=torch.float64)
        return (-(n + 1)).to(torch.complex128), torch.ones(N, dtype=torch.complex128)
    if N % 2:
        raise ValueError(f"d_state must be even for init={init!r} (states come in conjugate pairs), got {N}")
    if init == "legs":
        return legs_diagonal(N, B_clip)
    n = torch.arange(N // 2, dtype=torch.float64)
    imag = math.pi * n if init == "lin" else s4d_inverse_imag(N)
    return torch.complex(torch.full_like(imag, -0.5), imag), torch.ones(N // 2, dtype=torch.complex128)


class S4DKernel(Kernel):
    """The S4D convolution kernel and its recurrence.

    Args:
        d_model: H, the number of independent SSMs (one per feature).
        d_state: N, the state size (N/2 complex states are stored for the complex inits).
        channels: C, output channels per feature (doubled by ``ConvMixer`` when bidirectional).
        init: ``legs`` (diagonal of HiPPO-LegS), ``lin`` (S4D-Lin), ``inv`` (S4D-Inv), ``real`` (S4D-Real).
        disc: ``zoh`` or ``bilinear``.
        real_transform: how the stored parameter p becomes Re(A) < 0: ``exp`` (-exp(p)), ``relu``
            (-(relu(p) + 1e-4), the reference's floor), ``none`` (-p, unconstrained).
        B_clip: ``legs`` only: clamp Im(B) to [-B_clip, B_clip] at initialisation (the reference's 2);
            null keeps the exact HiPPO B.
        dt_min, dt_max: the step sizes are drawn log-uniformly from [dt_min, dt_max], one per feature.
        lr, wd: per-parameter learning rate / weight decay, a float or a dict with keys A, B, C, dt.
            lr 0 (or null in the dict) freezes that parameter.
        backend: Vandermonde backend (see ``ssmkit.ops.vandermonde``).
    """

    has_state = True
    real_step = True  # step() also takes (..., n, 2) real states (see SequenceModel.compile_step)
    param_keys = ("A", "B", "C", "dt")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        init: str = "legs",
        disc: str = "zoh",
        real_transform: str = "exp",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        B_clip: float | None = B_CLIP,
        lr=None,
        wd=None,
        backend: str = "auto",
    ):
        super().__init__(d_model, channels, lr, wd)
        check_choice("disc", disc, DISCS)
        check_choice("real_transform", real_transform, REAL_TRANSFORMS)
        if d_state <= 0:
            raise ValueError(f"d_state must be positive, got {d_state}")
        self.N, self.init, self.disc, self.real_transform, self.backend = d_state, init, disc, real_transform, backend
        self.is_real = init == "real"
        self.scale = 2.0  # conjugate pairs; for S4D-Real the reference's factor (module docstring)

        A, B = s4d_init(init, d_state, B_clip)  # (n,)
        n = A.shape[0]
        H = d_model
        A, B = A.expand(H, n), B.expand(H, n)
        minus_re = (-A.real).float()  # > 0
        if real_transform == "exp":
            a_real = torch.log(minus_re)
        elif real_transform == "relu":
            a_real = minus_re.clamp(min=RELU_FLOOR)
        else:
            a_real = minus_re.clone()
        self.register("A_real", a_real.contiguous(), "A")
        if not self.is_real:
            self.register("A_imag", A.imag.float().contiguous(), "A")
        self.register("log_dt", torch.log(log_uniform((H,), dt_min, dt_max)), "dt")
        # C ~ complex standard normal (E|C|^2 = 1, each part std 1/sqrt 2) for every init; S4D-Real keeps its real
        # part (std 1/sqrt 2 = 0.707), as the reference registers ``C.real`` of that draw. (A real standard normal,
        # std 1, made S4D-Real's initial kernel 1.41x the reference's.)
        C = torch.randn(channels, H, n, dtype=torch.complex64)
        if self.is_real:
            self.register("B", B.real.float().contiguous(), "B")
            C = C.real
        else:
            self.register("B", torch.view_as_real(B.to(torch.complex64)).contiguous(), "B")
            C = torch.view_as_real(C)
        self.register("C", C.contiguous(), "C", ssm=False)
        self._step = None

    # --- parameters -> continuous and discrete SSM ---
    def _complex(self, t: torch.Tensor) -> torch.Tensor:
        return torch.complex(t, torch.zeros_like(t)) if self.is_real else torch.view_as_complex(t)

    def ssm(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The continuous (dt (H,), A (H, n), B (H, n), C (C, H, n)), complex where complex."""
        if self.real_transform == "exp":
            re = -torch.exp(self.A_real)
        elif self.real_transform == "relu":
            re = -(torch.relu(self.A_real) + RELU_FLOOR)
        else:
            re = -self.A_real
        im = torch.zeros_like(re) if self.is_real else self.A_imag
        return torch.exp(self.log_dt), torch.complex(re, im), self._complex(self.B), self._complex(self.C)

    def discretize(self, rate: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log dA, dB, C): dA = exp(log dA), with step size rate * dt."""
        dt, A, B, C = self.ssm()
        dtA = (dt * rate).unsqueeze(-1) * A  # (H, n)
        if self.disc == "zoh":
            log_dA = dtA
            dB = (dt * rate).unsqueeze(-1) * phi1(dtA) * B  # expm1: no cancellation at small dt
        else:
            log_dA = bilinear_log(dtA)  # 2 atanh(dtA/2): the log of a ratio near 1 keeps its digits
            dB = (dt * rate).unsqueeze(-1) / (1 - dtA / 2) * B
        return log_dA, dB, C

    # --- convolution mode ---
    def forward(self, L: int, rate: float = 1.0, state: torch.Tensor | None = None):
        """K (C, H, L); and, given a state (B, H, n), K_state (B, C, H, L): the free response to it."""
        log_dA, dB, C = self.discretize(rate)
        K = self.scale * log_vandermonde(C * dB, log_dA, L, self.backend).real  # (C, H, L)
        K_state = None
        if state is not None:
            v = C.unsqueeze(0) * (torch.exp(log_dA) * state).unsqueeze(1)  # (B, C, H, n)
            K_state = self.scale * log_vandermonde(v, log_dA, L, self.backend).real  # (B, C, H, L)
        return K, K_state

    def forward_state(self, u: torch.Tensor, state: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
        """The state after reading u (B, H, L) from ``state`` (B, H, n): dA^L s + sum_l dA^(L-1-l) dB u_l."""
        log_dA, dB, _ = self.discretize(rate)
        L = u.shape[-1]
        return torch.exp(log_dA * L) * state + log_vandermonde_transpose(u, dB, log_dA, L)

    # --- recurrent mode ---
    def default_state(self, *batch_shape: int, device=None) -> torch.Tensor:
        ref = self.A_real
        dtype = torch.complex128 if ref.dtype == torch.float64 else torch.complex64
        return torch.zeros(*batch_shape, self.H, ref.shape[-1], dtype=dtype, device=device or ref.device)

    def setup_step(self, rate: float = 1.0) -> None:
        log_dA, dB, C = self.discretize(rate)
        self._step = (torch.exp(log_dA).detach(), dB.detach(), (self.scale * C).detach())
        # The same recurrence in real arithmetic, for states given as (..., n, 2) real tensors:
        # torch.compile cannot generate code for complex tensors, but fuses these into a few loops.
        self._step_real = tuple(t for z in self._step for t in (z.real.contiguous(), z.imag.contiguous()))

    def step(self, u: torch.Tensor, state: torch.Tensor):
        """u (B, H), state (B, H, n) complex -> y (B, C, H), next state.

        A real state (B, H, n, 2) (real and imaginary parts, e.g. ``torch.view_as_real`` of the default
        state) runs the same recurrence in real arithmetic and returns a real next state.
        """
        if getattr(self, "_step", None) is None:
            self.setup_step()
        if not state.is_complex():
            ar, ai, br, bi, cr, ci = self._step_real
            sr, si = state[..., 0], state[..., 1]  # (B, H, n)
            u_ = u.unsqueeze(-1).to(ar.dtype)
            nr = ar * sr - ai * si + br * u_
            ni = ai * sr + ar * si + bi * u_
            y = (cr * nr.unsqueeze(1) - ci * ni.unsqueeze(1)).sum(-1)  # (B, C, H): fuses under compile
            return y.to(u.dtype), torch.stack([nr, ni], dim=-1)
        dA, dB, C = self._step
        state = dA * state + dB * u.unsqueeze(-1)
        y = torch.einsum("chn,bhn->bch", C, state).real
        return y.to(u.dtype), state
