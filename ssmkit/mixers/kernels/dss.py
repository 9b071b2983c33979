"""DSS: Diagonal State Spaces (Gupta, Gu, Berant 2022, "Diagonal State Spaces are as Effective as
Structured State Spaces").

A diagonal SSM with eigenvalues Lambda in C^N shared by all H features, a step size dt_h per feature,
and output weights W in C^{C x H x N} (B is absorbed into W). With z[h, n] = dt_h * Lambda_n
(or dt_re_h Re Lambda_n + i dt_im_h Im Lambda_n with ``sep_dt_re_im``) the kernels are (DSS, Prop. 1):

    DSS-exp:      K[c, h, l] = Re sum_n W[c, h, n] * (exp(z) - 1)/Lambda_n * exp(z l)
    DSS-softmax:  K[c, h, l] = Re sum_n W[c, h, n] / Lambda_n * exp(z l) / sum_{k<L} exp(z k)

DSS-exp is zero-order-hold with B = 1 and Re Lambda = -exp(theta) < 0. DSS-softmax leaves Lambda free;
its normaliser sum_{k<L} exp(z k) = (exp(z L) - 1)/(exp(z) - 1) depends on the kernel length L. States
with Re Lambda > 0 are evaluated from the end of the kernel (softmax's max-shift: exp(z (l - L + 1))),
so every exponential that is formed has a non-positive real part.

Recurrence (the reference code has none). Both kernels are the impulse response of

    s_t = exp(z) * s_{t-1} + dB * u_t,    y_t = Re sum_n W[c, h, n] s_t[h, n]

with dB = (exp(z) - 1)/Lambda (exp) or dB = (exp(z) - 1)/((exp(z S) - 1) Lambda) (softmax, normalised
over S positions). For softmax the kernel of a length-L input normalises over S = L, so it is a
different SSM for every L and has no length-independent state. Set ``softmax_length=S`` to normalise
over a fixed S for every input: the kernel is then one SSM (still exactly the DSS-softmax kernel of a
length-S input), and ``step``, ``default_state`` and forward-with-state work. Without it, a softmax
kernel has ``has_state = False`` and the recurrent methods raise an error saying so.

Deliberately more exact than the reference code: its softmax normaliser 1/x, x = Lambda (exp(z L) - 1),
is conj(x) / (|x|^2 + 1e-7), which shrinks every kernel by a relative 1e-7 / |x|^2; here the division by
(exp(w L) - 1) is exact and 1/Lambda uses 1e-7 only as a floor of |Lambda|^2.
"""
from __future__ import annotations

import torch

from ssmkit.mixers.kernels.base import KERNEL_TO_REAL, LINEAR_TO_REAL, Kernel, complex_to_real, log_uniform
from ssmkit.ops.hippo import legs_diagonal, s4d_inverse_imag
from ssmkit.ops.vandermonde import BACKENDS, log_vandermonde, log_vandermonde_transpose
from ssmkit.registry import check_choice

VERSIONS = ("exp", "softmax")
LAMBDA_INITS = ("hippo", "lin", "inv", "randn")

_NO_STATE = (
    "DSS version='softmax' normalises its kernel over the input length, so it has no length-independent "
    "recurrence; pass softmax_length=<S> to normalise over a fixed S and get step/state, or use version='exp'"
)


def dss_lambda_init(init: str, N: int, version: str = "exp", generator: torch.Generator | None = None) -> torch.Tensor:
    """The N initial eigenvalues Lambda (complex128).

    ``hippo``: -1/2 + i w, the N eigenvalues with positive imaginary part of the normal part of the
    2N x 2N HiPPO-LegS matrix (-1/2 I + skew-symmetric), i.e. S4D-LegS with 2N states.
    ``lin``: -1/2 + i pi n. ``inv``: S4D-Inv of 2N states, -1/2 + i 2N/pi (2N/(2n+1) - 1).
    ``randn``: -1/2 + i N(0, 1) for version exp (which needs Re Lambda < 0); a complex standard normal
    (Re may be > 0) for softmax, as in the DSS repository.
    """
    check_choice("Lambda_init", init, LAMBDA_INITS)
    if init == "hippo":
        return legs_diagonal(2 * N)[0]
    if init == "randn" and version == "softmax":
        return torch.randn(N, dtype=torch.complex128, generator=generator)
    if init == "lin":
        imag = torch.pi * torch.arange(N, dtype=torch.float64)
    elif init == "inv":
        imag = s4d_inverse_imag(2 * N)
    else:
        imag = torch.randn(N, dtype=torch.float64, generator=generator)
    return torch.complex(torch.full_like(imag, -0.5), imag)


def _expm1(z: torch.Tensor) -> torch.Tensor:
    """exp(z) - 1 for complex z, accurate for small |z| (no cancellation)."""
    a, b = z.real, z.imag
    re = torch.expm1(a) * torch.cos(b) - 2 * torch.sin(b / 2) ** 2
    return torch.complex(re, torch.exp(a) * torch.sin(b))


def _reciprocal(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1/x as conj(x)/max(|x|^2, eps), finite at x = 0 (as the DSS paper's code)."""
    return x.conj() / (x.real**2 + x.imag**2).clamp(min=eps)


class DSSKernel(Kernel):
    """The DSS-exp and DSS-softmax convolution kernels and their recurrence.

    Args:
        d_model: H, the number of features (one step size each).
        d_state: N, the number of complex eigenvalues Lambda (shared by all features; no conjugate pairs,
            the real part of the sum is taken instead).
        channels: C, output channels per feature (doubled by ``ConvMixer`` when bidirectional).
        version: ``exp`` (Re Lambda = -exp(theta) < 0, ZOH) or ``softmax`` (Lambda free, normalised over
            the kernel length; stable for Re Lambda > 0).
        Lambda_init: ``hippo``, ``lin``, ``inv`` or ``randn`` (see :func:`dss_lambda_init`).
        sep_dt_re_im: separate step sizes for the real and imaginary parts of Lambda (log_dt is (H, 2)).
        dt_min, dt_max: the step sizes are log-uniform in [dt_min, dt_max] (stored as log dt).
        softmax_length: version softmax only: normalise over this fixed length S instead of the input
            length; gives the kernel a recurrence (see the module docstring). None: the paper's kernel.
        kernel_to_real: how the complex sum becomes the real kernel: ``real`` (the paper), ``imag``,
            ``sum``, ``prod`` (Re * Im) or ``real-prod`` (the DLR repository's options). The products are
            not linear in the states, so with them the kernel has no recurrence.
        lr, wd: per-parameter learning rate / weight decay, a float or a dict with keys Lambda, W, log_dt
            (the DSS paper's code uses 1e-3 for all three, wd 0). lr 0 (or null in the dict) freezes it.
        backend: Vandermonde backend (see ``ssmkit.ops.vandermonde``).

    ``rate`` multiplies every step size (rate 2: an input sampled at half the training rate).
    """

    has_state = True
    param_keys = ("Lambda", "W", "log_dt")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        version: str = "exp",
        Lambda_init: str = "hippo",
        sep_dt_re_im: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        softmax_length: int | None = None,
        kernel_to_real: str = "real",
        lr=None,
        wd=None,
        backend: str = "auto",
    ):
        super().__init__(d_model, channels, lr, wd)
        check_choice("version", version, VERSIONS)
        check_choice("Lambda_init", Lambda_init, LAMBDA_INITS)
        check_choice("Vandermonde backend", backend, BACKENDS)
        check_choice("kernel_to_real", kernel_to_real, KERNEL_TO_REAL)
        if d_state <= 0:
            raise ValueError(f"d_state must be positive, got {d_state}")
        if softmax_length is not None:
            if version != "softmax":
                raise ValueError(f"softmax_length only applies to version='softmax', got version={version!r}")
            if softmax_length <= 0:
                raise ValueError(f"softmax_length must be a positive integer or null, got {softmax_length}")
        self.N, self.version, self.Lambda_init, self.backend = d_state, version, Lambda_init, backend
        self.sep_dt_re_im, self.softmax_length = sep_dt_re_im, softmax_length
        self.kernel_to_real = kernel_to_real
        self.has_state = (version == "exp" or softmax_length is not None) and kernel_to_real in LINEAR_TO_REAL

        Lam = dss_lambda_init(Lambda_init, d_state, version)  # (N,)
        if version == "exp":
            if (Lam.real >= 0).any():
                raise ValueError(f"version='exp' needs Re Lambda < 0, but Lambda_init={Lambda_init!r} gave Re >= 0")
            self.register("Lambda_log_neg_re", torch.log(-Lam.real).float(), "Lambda")
        else:
            self.register("Lambda_re", Lam.real.float(), "Lambda")
        self.register("Lambda_im", Lam.imag.float(), "Lambda")
        log_dt = torch.log(log_uniform((d_model,), dt_min, dt_max))  # (H,)
        if sep_dt_re_im:
            log_dt = log_dt.unsqueeze(-1).repeat(1, 2)  # (H, 2): [real, imag]
        self.register("log_dt", log_dt, "log_dt")
        self.register("W", torch.randn(channels, d_model, d_state, 2), "W", ssm=False)  # (C, H, N, Re/Im)
        self._step = None

    # --- parameters ---
    def eigenvalues(self) -> torch.Tensor:
        """Lambda (N,) complex."""
        re = -torch.exp(self.Lambda_log_neg_re) if self.version == "exp" else self.Lambda_re
        return torch.complex(re, self.Lambda_im)

    def _z(self, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(Lambda (N,), z = dt Lambda (H, N)) with step sizes rate * dt."""
        Lam = self.eigenvalues()
        dt = torch.exp(self.log_dt) * rate
        if self.sep_dt_re_im:
            z = torch.complex(dt[:, :1] * Lam.real, dt[:, 1:] * Lam.imag)  # (H, N)
        else:
            z = dt.unsqueeze(-1) * Lam  # (H, N)
        return Lam, z

    def _softmax_parts(self, Lam: torch.Tensor, z: torch.Tensor, S: int):
        """For the softmax kernel normalised over S: (flip (N,) bool, w (H, N), c (H, N)).

        States with Re Lambda > 0 are flipped: w = -z, and the normalised term is c * exp(w (S-1-l)).
        Otherwise w = z and the term is c * exp(w l). c = (1/Lambda) expm1(w)/expm1(w S); Re w <= 0.
        """
        flip = Lam.real > 0  # (N,): the sign of Re z, since dt > 0
        w = torch.where(flip, -z, z)  # (H, N)
        den = _expm1(w * S)
        zero = den == 0  # only at w = 0 (limit 1/S) or a vanishing normaliser
        ratio = _expm1(w) / torch.where(zero, torch.ones_like(den), den)
        ratio = torch.where(w == 0, torch.full_like(ratio, 1.0 / S), ratio)
        return flip, w, ratio * _reciprocal(Lam)

    def discretize(self, rate: float = 1.0, L: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z = log dA (H, N), dB (H, N), W (C, H, N)) of the recurrence; L: the softmax length."""
        Lam, z = self._z(rate)
        W = torch.view_as_complex(self.W)
        if self.version == "exp":
            return z, _expm1(z) * _reciprocal(Lam), W
        S = self.softmax_length or L
        if S is None:
            raise ValueError(_NO_STATE)
        flip, w, c = self._softmax_parts(Lam, z, S)
        dB = torch.where(flip, c * torch.exp(w * (S - 1)), c)  # (H, N)
        return z, dB, W

    # --- convolution mode ---
    def forward(self, L: int, rate: float = 1.0, state: torch.Tensor | None = None):
        """K (C, H, L); and, given a state (B, H, N), K_state (B, C, H, L): the free response to it."""
        if state is not None and not self.has_state:
            raise ValueError(self._no_state())
        Lam, z = self._z(rate)
        W = torch.view_as_complex(self.W)  # (C, H, N)
        if self.version == "exp":
            K = log_vandermonde(W * (_expm1(z) * _reciprocal(Lam)), z, L, self.backend)  # (C, H, L) complex
        else:
            S = self.softmax_length or L
            flip, w, c = self._softmax_parts(Lam, z, S)
            v = W * c  # (C, H, N)
            K = torch.zeros(W.shape[0], self.H, L, dtype=W.dtype, device=W.device)
            if not bool(flip.all()):
                K = K + log_vandermonde(torch.where(flip, 0, v), w, L, self.backend)
            if bool(flip.any()):
                # c exp(w (S-1-l)) for l < L is, with m = L-1-l, c exp(w (S-L)) exp(w m): reversed in l.
                v_end = torch.where(flip, v * torch.exp(w * (S - L)), 0)
                K = K + log_vandermonde(v_end, w, L, self.backend).flip(-1)
        K = complex_to_real(K, self.kernel_to_real)
        K_state = None
        if state is not None:
            _, _, Wc = self.discretize(rate)
            v = Wc.unsqueeze(0) * (torch.exp(z) * state).unsqueeze(1)  # (B, C, H, N)
            K_state = complex_to_real(log_vandermonde(v, z, L, self.backend), self.kernel_to_real)  # (B, C, H, L)
        return K, K_state

    def _no_state(self) -> str:
        if self.kernel_to_real not in LINEAR_TO_REAL:
            return (f"DSS with kernel_to_real={self.kernel_to_real!r} multiplies two responses, so it has no "
                    "recurrence; use kernel_to_real real/imag/sum for step/state")
        return _NO_STATE

    def forward_state(self, u: torch.Tensor, state: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
        """The state after reading u (B, H, L) from ``state`` (B, H, N): dA^L s + sum_l dA^(L-1-l) dB u_l."""
        if not self.has_state:
            raise ValueError(self._no_state())
        z, dB, _ = self.discretize(rate)
        L = u.shape[-1]
        return torch.exp(z * L) * state + log_vandermonde_transpose(u, dB, z, L)

    # --- recurrent mode ---
    def default_state(self, *batch_shape: int, device=None) -> torch.Tensor:
        if not self.has_state:
            raise ValueError(self._no_state())
        ref = self.Lambda_im
        dtype = torch.complex128 if ref.dtype == torch.float64 else torch.complex64
        return torch.zeros(*batch_shape, self.H, self.N, dtype=dtype, device=device or ref.device)

    def setup_step(self, rate: float = 1.0) -> None:
        if not self.has_state:
            raise ValueError(self._no_state())
        z, dB, W = self.discretize(rate)
        self._step = (torch.exp(z).detach(), dB.detach(), W.detach())

    def step(self, u: torch.Tensor, state: torch.Tensor):
        """u (B, H), state (B, H, N) -> y (B, C, H), next state."""
        if getattr(self, "_step", None) is None:
            self.setup_step()
        dA, dB, W = self._step
        state = dA * state + dB * u.unsqueeze(-1)  # (B, H, N)
        y = complex_to_real(torch.einsum("chn,bhn->bch", W, state), self.kernel_to_real)
        return y.to(u.dtype), state
