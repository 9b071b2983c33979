"""LSSL: the Linear State-Space Layer (Gu, Johnson, Goel, Saab, Dao, Rudra, Re 2021, "Combining Recurrent,
Convolutional, and Continuous-time Models with Linear State-Space Layers"), the predecessor of S4.

The continuous SSM x' = A x + B u, y = C x has a dense HiPPO state matrix A (N, N) (``ssmkit.ops.hippo``:
legs, legt, lagt, fourier). It is discretised with the bilinear transform (LSSL eq. 3, the generalised
bilinear transform with alpha = 1/2), one step size dt per feature (or per channel and feature):

    dA = (I - dt/2 A)^{-1} (I + dt/2 A),   dB = (I - dt/2 A)^{-1} dt B

and its convolution kernel is K_l = C dA^l dB (LSSL Sec. 3.3), C (channels, H, N). Instead of L sequential
matrix-vector products (or the N x L Krylov matrix [dB, dA dB, ...] of the reference code),
``ssmkit.ops.krylov.power_series`` writes l = a m + b with m ~ sqrt(L) and builds the m vectors dA^b dB
and the L/m rows C dA^(a m) by doubling (ceil(log2 L) batched squarings in all), then one GEMM of the two:
O(N^3 log L + N^2 sqrt(L) + N L) work and O(N sqrt(L) + L) memory per system, forward and backward, all
batched GEMMs that autograd differentiates directly. LSSL-fixed (learn 0) keeps the Krylov matrix itself
while A, B and dt are unchanged (as the reference caches it), so each training step is the GEMM C X.

``learn`` follows the reference code (state-spaces ``modules/lssl.py``): 0 is the paper's LSSL-fixed (A, B
and dt frozen, only C trains), 1 trains one (A, B) shared by all features, 2 one (A, B) per feature. dt
trains whenever learn > 0 (the reference config ties ``dt.learn`` to ``learn``). Difference from the
reference: it trains A through structured parameterisations (e.g. LegS as a tridiagonal inverse); here A
is the dense matrix itself, initialised at the same HiPPO matrix. The reference's ``noise`` option (state
noise during training) is not implemented.

States are real: (B, H, N), or (B, C, H, N) with ``dt_per_channel``.
"""
from __future__ import annotations

import torch

from ssmkit.mixers.kernels.base import Kernel, log_uniform
from ssmkit.mixers.kernels.s4 import matrix_power
from ssmkit.ops.hippo import MEASURES, transition
from ssmkit.ops.krylov import krylov, power_series
from ssmkit.ops.linalg import solve

LEARN = (0, 1, 2)


def bilinear(A: torch.Tensor, B: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dA (..., N, N), dB (..., N)) of the bilinear transform, A (..., N, N), B (..., N), dt (...)."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    half = (dt / 2)[..., None, None] * A
    shape = torch.broadcast_shapes(half.shape[:-2], B.shape[:-1], dt.shape)
    rhs = torch.cat([(eye + half).expand(*shape, *eye.shape), (dt[..., None] * B).expand(*shape, B.shape[-1]).unsqueeze(-1)], -1)
    sol = solve(eye - half, rhs)  # (..., N, N + 1)
    return sol[..., :-1], sol[..., -1]


class LSSLKernel(Kernel):
    """The LSSL convolution kernel and its recurrence.

    Args:
        d_model: H, the number of features.
        d_state: N, the order of the HiPPO projection (the dense state size).
        channels: C, output channels per feature (the reference's ``channels``, M in its code).
        init: the HiPPO measure of A and B: legs, legt, lagt, fourier (alias fout).
        learn: 0 (LSSL-fixed: A, B, dt frozen), 1 (A, B trained, shared over features), 2 (one A, B per feature).
        dt_min, dt_max: step sizes drawn log-uniformly from [dt_min, dt_max] (reference: 0.001, 0.1).
        dt_per_channel: one step size per channel and feature (C x H systems, "multiple timescales")
            instead of one per feature shared by its channels. Needs channels > 1 (with one channel it would
            be the default, so it is refused).
        lr, wd: per-parameter learning rate / weight decay, a float or a dict with keys A, B, C, dt. The
            reference's defaults are lr A = B = 1e-4 and dt = 1e-3 (set them in the recipe).
    """

    has_state = True
    param_keys = ("A", "B", "C", "dt")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        init: str = "legs",
        learn: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_per_channel: bool = False,
        lr=None,
        wd=None,
    ):
        super().__init__(d_model, channels, lr, wd)
        if init not in MEASURES:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(MEASURES)}")
        if learn not in LEARN:
            raise ValueError(f"unknown learn {learn!r}; choose 0 (A, B, dt frozen: LSSL-fixed), 1 (shared A, B) or 2 (A, B per feature)")
        if d_state <= 0:
            raise ValueError(f"d_state must be positive, got {d_state}")
        frozen_keys = sorted(k for spec in (lr, wd) if isinstance(spec, dict) for k in spec if k != "C")
        if learn == 0 and frozen_keys:
            raise ValueError(f"learn=0 (LSSL-fixed) freezes A, B and dt, so lr/wd for {frozen_keys} cannot apply; drop them or use learn 1 or 2")
        if dt_per_channel and channels == 1:
            raise ValueError("dt_per_channel=True needs channels > 1: with one channel there is one step size per "
                             "feature already; drop dt_per_channel or set channels")
        H, N = d_model, d_state
        self.N, self.init, self.learn, self.dt_per_channel = N, init, learn, dt_per_channel
        A, B = transition(init, N)
        if learn == 2:
            A, B = A.expand(H, N, N), B.expand(H, N)
        dt_shape = (channels, H) if dt_per_channel else (1, H)
        log_dt = torch.log(log_uniform(dt_shape, dt_min, dt_max))
        if learn == 0:
            self.register_buffer("A", A.float().contiguous())
            self.register_buffer("B", B.float().contiguous())
            self.register_buffer("log_dt", log_dt)
        else:
            self.register("A", A.float().contiguous(), "A")
            self.register("B", B.float().contiguous(), "B")
            self.register("log_dt", log_dt, "dt")
        self.register("C", torch.randn(channels, H, N), "C", ssm=False)  # reference: C ~ N(0, 1)
        self._krylov_cache = None
        self._step = None

    # --- parameters -> discrete SSM ---
    def discretize(self, rate: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(dA (G, H, N, N), dB (G, H, N)) with G = C under ``dt_per_channel``, else 1."""
        dt = torch.exp(self.log_dt) * rate  # (G, H)
        return bilinear(self.A, self.B, dt)

    def _state4(self, state: torch.Tensor) -> torch.Tensor:
        """The state as (B, G, H, N)."""
        return state if self.dt_per_channel else state.unsqueeze(1)

    # --- convolution mode ---
    def forward(self, L: int, rate: float = 1.0, state: torch.Tensor | None = None):
        """K (C, H, L); and, given a state (B, H, N) ((B, C, H, N) with dt_per_channel), K_state (B, C, H, L):
        its free response C dA^(l+1) s."""
        with torch.autocast(device_type=self.C.device.type, enabled=False):
            dA, dB = self.discretize(rate)  # (G, H, N, N), (G, H, N)
            X = self._frozen_krylov(dA, dB, L, rate)
            rights = [dB.unsqueeze(0)] if X is None else []  # (1, G, H, N): the impulse response
            if state is not None:
                # the free response C dA^l (dA s): the state enters as one more right-hand vector
                s = self._state4(state.to(dA.dtype))  # (B, G, H, N)
                rights.append((dA @ s.unsqueeze(-1)).squeeze(-1))
            series = power_series(dA, self.C, torch.cat(rights), L) if rights else None  # (1 (+ B) or B, C, H, L)
            if X is None:
                return series[0], (series[1:] if state is not None else None)
            K = torch.einsum("chn,hnl->chl", self.C, X[0]) if X.shape[0] == 1 else torch.einsum("chn,chnl->chl", self.C, X)
            return K, series

    def _frozen_krylov(self, dA: torch.Tensor, dB: torch.Tensor, L: int, rate: float) -> torch.Tensor | None:
        """LSSL-fixed (A, B and dt all frozen): the Krylov matrix [dB, ..., dA^(L-1) dB] (G, H, N, L), kept
        while they, L and the rate are unchanged, so that a training step (C only) costs one GEMM
        instead of the O(N^3 log L) squarings. None when anything the matrix depends on trains."""
        if any(t.requires_grad for t in (self.A, self.B, self.log_dt)):
            return None
        key = tuple((id(t), t._version, t.dtype, t.device) for t in (self.A, self.B, self.log_dt)) + (L, rate)
        if self._krylov_cache is None or self._krylov_cache[0] != key:
            self._krylov_cache = (key, krylov(dA, dB, L))
        return self._krylov_cache[1]

    def forward_state(self, u: torch.Tensor, state: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
        """The state after reading u (B, H, L) from ``state``: dA^L s + sum_l dA^(L-1-l) dB u_l."""
        L = u.shape[-1]
        with torch.autocast(device_type=self.C.device.type, enabled=False):
            dA, dB = self.discretize(rate)
            X = krylov(dA, dB, L)  # (G, H, N, L): [dB, dA dB, ..., dA^(L-1) dB]
            s = self._state4(state.to(X.dtype))  # (B, G, H, N)
            s = torch.einsum("ghnm,bghm->bghn", matrix_power(dA, L), s) + torch.einsum("ghnl,bhl->bghn", X.flip(-1), u.to(X.dtype))
        return s if self.dt_per_channel else s.squeeze(1)

    # --- recurrent mode ---
    def default_state(self, *batch_shape: int, device=None) -> torch.Tensor:
        ref = self.C
        shape = (self.channels, self.H, self.N) if self.dt_per_channel else (self.H, self.N)
        return torch.zeros(*batch_shape, *shape, dtype=ref.dtype, device=device or ref.device)

    @torch.no_grad()
    def setup_step(self, rate: float = 1.0) -> None:
        dA, dB = self.discretize(rate)
        self._step = (dA, dB, self.C.detach().clone())

    def step(self, u: torch.Tensor, state: torch.Tensor):
        """u (B, H), state (B, H, N) or (B, C, H, N) -> y (B, C, H), next state."""
        if getattr(self, "_step", None) is None:
            self.setup_step()
        dA, dB, C = self._step
        s = self._state4(state)
        s = torch.einsum("ghnm,bghm->bghn", dA, s) + dB * u.to(dA.dtype)[:, None, :, None]  # (B, G, H, N)
        y = torch.einsum("chn,bchn->bch", C, s.expand(-1, self.channels, -1, -1))
        return y.to(u.dtype), (s if self.dt_per_channel else s.squeeze(1))
