"""DLR: the Diagonal Linear RNN (Gupta, Mehta, Berant 2022, "Simplifying and Understanding State Space
Models with Diagonal Linear RNNs").

No continuous system and no discretisation: N complex eigenvalues lambda_n = exp(-p_n^2 + i theta_n),
shared by all features and channels, and output weights W in C^{C x H x N}. The kernel (DLR, eq. 3) is

    K[c, h, l] = sum_n W[c, h, n] * lambda_n^l,    l = 0 .. L-1,

the impulse response of s_t = lambda * s_{t-1} + u_t, y_t = sum_n W[c, h, n] s_t[h, n] (B is absorbed
into W). The complex kernel becomes real by ``kernel_to_real``:

    real: Re K    imag: Im K    sum: Re K + Im K    prod: Re K * Im K
    real-prod: Re K for the first H//2 features, Re K * Im K for the others

``real``, ``imag`` and ``sum`` are linear in the state, so the kernel has a recurrence (step, state).
``prod`` and ``real-prod`` are products of two impulse responses (an N^2-state system), and a kernel cut
at ``max_kernel_length`` is not the impulse response of any N-state system: those have ``has_state =
False`` and the recurrent methods raise an error saying why.

DLR has no step size, so ``rate`` (the sampling-rate factor of discretised kernels) must be 1.

Memory: lambda is shared across features, so the Vandermonde product needs exp(log lambda * l) only as
an (N, L) matrix; the ``auto`` backend walks L in blocks when N*L is large, so d_state 4096 and beyond
never materialise an N x L tensor. ``forward_state`` also reads the input in blocks.
"""
from __future__ import annotations

import math

import torch

from ssmkit.mixers.kernels.base import KERNEL_TO_REAL, LINEAR_TO_REAL, Kernel, complex_to_real, log_uniform
from ssmkit.ops.vandermonde import BACKENDS, log_vandermonde, log_vandermonde_transpose
from ssmkit.registry import check_choice

LAMBDA_INITS = ("omega", "randn")
VERSIONS = ("", "Lambda_imag", "Lambda_imag_W_real", "Lambda_real_W_real")

_STATE_CHUNK = 1 << 12


def dlr_lambda_init(
    init: str, N: int, dt_min: float, dt_max: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """log lambda (N,) complex128: -dt_n/2 + i theta_n, dt_n log-uniform in [dt_min, dt_max].

    ``omega``: theta_n = 2 pi n / N (the N-th roots of unity, slightly damped: a DFT-like basis).
    ``randn``: theta_n ~ N(0, 1). In both theta is reduced to [0, 2 pi).
    """
    check_choice("Lambda_init", init, LAMBDA_INITS)
    dt = log_uniform((N,), dt_min, dt_max, generator=generator).double()
    if init == "omega":
        theta = 2 * math.pi * torch.arange(N, dtype=torch.float64) / N
    else:
        theta = torch.randn(N, dtype=torch.float64, generator=generator)
    return torch.complex(-0.5 * dt, torch.remainder(theta, 2 * math.pi))


class DLRKernel(Kernel):
    """The DLR convolution kernel and its recurrence.

    Args:
        d_model: H, the number of features.
        d_state: N, the number of complex eigenvalues (shared by all features). The paper uses 4096 for
            the atomic tasks and 1024 for ListOpsSubTrees and Pathfinder-128/256.
        channels: C, output channels per feature (doubled by ``ConvMixer`` when bidirectional).
        Lambda_init: ``omega`` or ``randn`` (see :func:`dlr_lambda_init`).
        version: ``''`` (complex lambda and W), ``Lambda_imag`` (|lambda| = 1: pure rotations),
            ``Lambda_imag_W_real`` (rotations, real W), ``Lambda_real_W_real`` (real decays 0 < lambda < 1,
            real W; its kernel is real, so kernel_to_real must be ``real`` or ``sum``).
        kernel_to_real: ``real``, ``imag``, ``sum``, ``prod`` or ``real-prod`` (see the module docstring).
        dt_min, dt_max: only set the initial decay: Re log lambda = -dt/2, dt log-uniform in [dt_min, dt_max].
        W_scale: W ~ N(0, 1) * W_scale (each of Re and Im); None means 1/d_state.
        max_kernel_length: compute the kernel only up to this length (inputs longer than it are still
            convolved over their whole length, with a kernel that is zero beyond it). None: as long as the
            input. The DLR mixer's ``max_kernel_length`` (``ssmkit/mixers/conv.py``, recipe
            ``model.mixer.max_kernel_length``) passes its value here and cuts the kernel itself too (one option,
            both places agree); set on the kernel afterwards, the shorter of the two wins.
        lr, wd: per-parameter learning rate / weight decay, a float or a dict with keys Lambda (the
            imaginary part, and the real part unless Lambda_re is given), Lambda_re, W. The paper's runs
            use lr 1e-4 for Lambda and W on the atomic tasks. lr 0 (or null in the dict) freezes it.
        backend: Vandermonde backend (see ``ssmkit.ops.vandermonde``).
    """

    has_state = True
    param_keys = ("Lambda", "Lambda_re", "W")

    def __init__(
        self,
        d_model: int,
        d_state: int = 1024,
        channels: int = 1,
        Lambda_init: str = "omega",
        version: str = "",
        kernel_to_real: str = "real",
        dt_min: float = 1e-4,
        dt_max: float = 1e-1,
        W_scale: float | None = None,
        max_kernel_length: int | None = None,
        lr=None,
        wd=None,
        backend: str = "auto",
    ):
        super().__init__(d_model, channels, lr, wd)
        check_choice("Lambda_init", Lambda_init, LAMBDA_INITS)
        check_choice("version", version, VERSIONS)
        check_choice("kernel_to_real", kernel_to_real, KERNEL_TO_REAL)
        check_choice("Vandermonde backend", backend, BACKENDS)
        if d_state <= 0:
            raise ValueError(f"d_state must be positive, got {d_state}")
        if max_kernel_length is not None and max_kernel_length <= 0:
            raise ValueError(f"max_kernel_length must be a positive integer or null, got {max_kernel_length}")
        if version == "Lambda_real_W_real" and kernel_to_real not in ("real", "sum"):
            raise ValueError(
                f"version='Lambda_real_W_real' makes a real kernel, so kernel_to_real={kernel_to_real!r} would "
                "give zeros; use kernel_to_real='real'"
            )
        # The real part's lr/wd follow Lambda's unless Lambda_re is set (the reference code drops this
        # fallback and silently trains Re(lambda) at the optimizer's lr).
        for attr in ("_lr", "_wd"):
            spec = getattr(self, attr)
            if isinstance(spec, dict) and "Lambda" in spec and "Lambda_re" not in spec:
                setattr(self, attr, {**spec, "Lambda_re": spec["Lambda"]})
        self.N, self.Lambda_init, self.version, self.kernel_to_real = d_state, Lambda_init, version, kernel_to_real
        self.max_kernel_length, self.backend = max_kernel_length, backend
        self.has_state = kernel_to_real in LINEAR_TO_REAL and max_kernel_length is None
        self.learn_re = version in ("", "Lambda_real_W_real")
        self.learn_im = version != "Lambda_real_W_real"
        self.complex_W = version in ("", "Lambda_imag")

        log_lam = dlr_lambda_init(Lambda_init, d_state, dt_min, dt_max)  # (N,)
        if self.learn_re:
            # Re log lambda = -p^2: p = sqrt(dt/2)
            self.register("Lambda_sqrt_neg_re", torch.sqrt(-log_lam.real).float(), "Lambda_re")
        if self.learn_im:
            self.register("Lambda_im", log_lam.imag.float(), "Lambda")
        scale = 1.0 / d_state if W_scale is None else W_scale
        shape = (channels, d_model, d_state, 2) if self.complex_W else (channels, d_model, d_state)
        self.register("W", torch.randn(*shape) * scale, "W", ssm=False)
        self._step = None

    # --- parameters ---
    def _ref(self) -> torch.Tensor:
        return self.Lambda_im if self.learn_im else self.Lambda_sqrt_neg_re

    def log_lambda(self) -> torch.Tensor:
        """log lambda (N,) complex: -p^2 + i theta."""
        ref = self._ref()
        re = -self.Lambda_sqrt_neg_re**2 if self.learn_re else torch.zeros_like(ref)
        im = self.Lambda_im if self.learn_im else torch.zeros_like(ref)
        return torch.complex(re, im)

    def weights(self) -> torch.Tensor:
        """W (C, H, N) complex."""
        if self.complex_W:
            return torch.view_as_complex(self.W)
        return torch.complex(self.W, torch.zeros_like(self.W))

    def to_real(self, K: torch.Tensor) -> torch.Tensor:
        """Complex kernel or response (..., H, L) -> real, by ``kernel_to_real``."""
        return complex_to_real(K, self.kernel_to_real)

    def _check_rate(self, rate: float) -> None:
        if rate != 1.0:
            raise ValueError(
                f"DLR has no step size, so a sampling-rate factor cannot rescale it; got rate={rate}, use rate=1"
            )

    def _no_state(self) -> ValueError:
        why = (
            f"kernel_to_real={self.kernel_to_real!r} multiplies two responses"
            if self.kernel_to_real not in LINEAR_TO_REAL
            else f"max_kernel_length={self.max_kernel_length} cuts the kernel"
        )
        return ValueError(f"this DLR kernel has no recurrent state: {why}; use kernel_to_real real/imag/sum "
                          "and max_kernel_length=None to step it")

    # --- convolution mode ---
    def forward(self, L: int, rate: float = 1.0, state: torch.Tensor | None = None):
        """K (C, H, min(L, max_kernel_length)); given a state (B, H, N), also K_state (B, C, H, L)."""
        self._check_rate(rate)
        if state is not None and not self.has_state:
            raise self._no_state()
        Lk = L if self.max_kernel_length is None else min(L, self.max_kernel_length)
        log_lam = self.log_lambda()  # (N,)
        W = self.weights()  # (C, H, N)
        K = self.to_real(log_vandermonde(W, log_lam, Lk, self.backend))  # (C, H, Lk)
        K_state = None
        if state is not None:
            v = W.unsqueeze(0) * (torch.exp(log_lam) * state).unsqueeze(1)  # (B, C, H, N)
            K_state = self.to_real(log_vandermonde(v, log_lam, L, self.backend))  # (B, C, H, L)
        return K, K_state

    def forward_state(self, u: torch.Tensor, state: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
        """The state after reading u (B, H, L) from ``state`` (B, H, N): lambda^L s + sum_l lambda^(L-1-l) u_l.

        Reads u in blocks of 4096 so that no (N, L) tensor is formed.
        """
        self._check_rate(rate)
        if not self.has_state:
            raise self._no_state()
        log_lam = self.log_lambda()  # (N,)
        ones = torch.ones_like(log_lam)
        for t0 in range(0, u.shape[-1], _STATE_CHUNK):
            block = u[..., t0 : t0 + _STATE_CHUNK]  # (B, H, n)
            n = block.shape[-1]
            state = torch.exp(log_lam * n) * state + log_vandermonde_transpose(block, ones, log_lam, n)
        return state

    # --- recurrent mode ---
    def default_state(self, *batch_shape: int, device=None) -> torch.Tensor:
        if not self.has_state:
            raise self._no_state()
        ref = self._ref()
        dtype = torch.complex128 if ref.dtype == torch.float64 else torch.complex64
        return torch.zeros(*batch_shape, self.H, self.N, dtype=dtype, device=device or ref.device)

    def setup_step(self, rate: float = 1.0) -> None:
        self._check_rate(rate)
        if not self.has_state:
            raise self._no_state()
        self._step = (torch.exp(self.log_lambda()).detach(), self.weights().detach())

    def step(self, u: torch.Tensor, state: torch.Tensor):
        """u (B, H), state (B, H, N) -> y (B, C, H), next state."""
        if getattr(self, "_step", None) is None:
            self.setup_step()
        lam, W = self._step
        state = lam * state + u.unsqueeze(-1)  # (B, H, N)
        y = self.to_real(torch.einsum("chn,bhn->bch", W, state).unsqueeze(-1)).squeeze(-1)  # (B, C, H)
        return y.to(u.dtype), state
