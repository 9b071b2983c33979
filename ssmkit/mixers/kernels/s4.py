"""S4: structured state spaces (Gu, Goel, Re 2022, "Efficiently Modeling Long Sequences with Structured
State Spaces"), with the HiPPO initialisations of "How to Train Your HiPPO" (Gu et al. 2023).

The continuous SSM x' = A x + B u, y = C x has a diagonal plus low-rank A = Lambda - P P^* in the eigenbasis
of the normal part of a HiPPO matrix (``ssmkit.ops.hippo``). With the bilinear discretisation
dA = (I - dt/2 A)^{-1} (I + dt/2 A), dB = (I - dt/2 A)^{-1} dt B, the kernel K_l = C dA^l dB of length L is
computed from its truncated generating function at the roots of unity omega_k = exp(-2 pi i k / L)
(S4, Lemma C.3 and Alg. 1):

    K^(omega) = 2/(1 + omega) * Ct (z - dt A)^{-1} dt B,   z = 2 (1 - omega)/(1 + omega),   Ct = C (I - dA^L)

and the Woodbury identity turns (z - dt Lambda + dt P P^*)^{-1} into Cauchy products (S4, eq. 6):

    K^ = 2/(1 + omega) [k00 - k01 (I + k11)^{-1} k10],   k_ab(z) = sum_n a_n b_n dt / (z - dt Lambda_n)

with (a, b) in {Ct, P^*} x {B, P}. An inverse FFT gives K. At omega = -1 (even L) the formula reads
K^(-1) = Ct dt B / 2, used directly. The trainable C parameter holds Ct for the current kernel length
``l_kernel`` (saved in the state dict); a longer input doubles it: Ct <- Ct (I + dA^L).

States come in conjugate pairs: N/2 complex numbers stand for N (``ssmkit.ops.hippo``).

Initialisation as in the reference code (state-spaces/s4): the HiPPO B in the eigenbasis has Im(B) clamped
to [-2, 2] (``B_clip``; ``B_clip: null`` for the exact HiPPO B). Deliberately more exact than the reference:
at ``rate != 1`` the reference reuses Ct = C (I - dA^L), built for the step size at rate 1, with the rescaled
dA (and an FFT of round(l_kernel / rate) points), so its kernel is not C dA_r^l dB_r; here Ct is rebuilt for
the scaled step and the kernel is exactly that of the SSM with step size rate * dt.
"""
from __future__ import annotations

import math

import torch

from ssmkit.mixers.kernels.base import Kernel, log_uniform
from ssmkit.mixers.kernels.s4d import B_CLIP, S4DKernel, s4d_init
from ssmkit.mixers.kernels.s4d import INITS as DIAG_INITS
from ssmkit.ops.cauchy import cauchy
from ssmkit.ops.hippo import MEASURES, dplr_dense, nplr
from ssmkit.ops.linalg import solve
from ssmkit.registry import check_choice

MODES = ("nplr", "dplr", "diag")
HIPPO_INITS = MEASURES  # legs, legt, lagt, fourier, fout
DPLR_INITS = (*HIPPO_INITS, "lin", "inv")
STEP_MODES = ("linear", "dense")
PRECISIONS = ("auto", "single", "double")
#: inits whose spectrum sits on the imaginary axis: their generating function is evaluated next to its poles,
#: and complex64 Cauchy + Woodbury loses digits (measured: legt N=64 L=1024 5e-3 relative error, FouT N=8 3e-4;
#: 1e-5 and 5e-7 in complex128)
ILL_CONDITIONED_INITS = ("legt", "fourier", "fout")
#: -Re(Lambda) is kept >= this at initialisation (legt, lagt and FouT have Re(Lambda) = 0) so that its log exists
MIN_DECAY = 1e-4


def _conj_full(x: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (..., 2n): the conjugate-completed vector [x, conj x]."""
    return torch.cat([x, x.conj()], dim=-1)


def matrix_power(M: torch.Tensor, L: int) -> torch.Tensor:
    """M^L for a batch of square matrices (..., N, N), by repeated squaring."""
    result = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device).expand_as(M)
    while L:
        if L & 1:
            result = result @ M
        L >>= 1
        if L:
            M = M @ M
    return result


def roots_of_unity_nodes(L: int, dtype: torch.dtype, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z (F,), 2/(1+omega) (F,)) at omega_k = exp(-2 pi i k/L), k < L/2 (the Nyquist node is left out).

    z = 2(1 - omega)/(1 + omega) = 2i tan(pi k/L), computed in float64.
    """
    theta = 2 * math.pi * torch.arange((L + 1) // 2, dtype=torch.float64, device=device) / L
    z = torch.complex(torch.zeros_like(theta), 2 * torch.tan(theta / 2))
    gain = 2 / (1 + torch.exp(torch.complex(torch.zeros_like(theta), -theta)))
    return z.to(dtype), gain.to(dtype)


class S4Kernel(Kernel):
    """The S4 convolution kernel (NPLR / DPLR, or diagonal via S4D) and its recurrence.

    Args:
        d_model: H, the number of independent SSMs (one per feature).
        d_state: N, the state size; N/2 complex states are stored (conjugate pairs). Must be even.
        channels: C, output channels per feature (doubled by ``ConvMixer`` when bidirectional).
        mode: ``nplr`` (a HiPPO matrix in its normal plus low-rank form, the S4 paper), ``dplr`` (the
            same kernel, also allowing S4D-style diagonals ``lin``/``inv`` with a random complex low-rank
            term P ~ N(0, 1); with a HiPPO init it builds exactly the ``nplr`` kernel, as in the reference,
            where both names select one kernel class), ``diag`` (no low-rank term: the S4D kernel, ZOH,
            shared with ``s4d``).
        init: nplr: ``legs``, ``legt``, ``lagt``, ``fourier`` (alias ``fout``); dplr: those and ``lin``,
            ``inv``; diag: ``legs``, ``lin``, ``inv``, ``real`` (see ``S4DKernel``).
        rank: the rank of the low-rank term P (legt needs >= 2; larger ranks add zero rows at init).
            Woodbury is closed form for rank 1 and 2, a batched inverse above. Unused in diag mode.
        n_ssm: the number of independent (A, B, P) copies tied across the H features (dt and C stay per
            feature); must divide d_model. None means d_model (untied). Not available in diag mode.
        B_clip: HiPPO inits (and diag ``legs``): clamp Im(B) in the eigenbasis to [-B_clip, B_clip] at
            initialisation, as the reference code does (default 2: at N=64 it changes LegS's B by 91%); null
            keeps the exact HiPPO B, so that the SSM is the HiPPO SSM itself.
        deterministic: dt log-spaced over [dt_min, dt_max] instead of random, and C = e_0 in the HiPPO
            basis (the first HiPPO coefficient; all-ones for the non-HiPPO inits).
        dt_min, dt_max: the step sizes are drawn log-uniformly from [dt_min, dt_max], one per feature.
        step_mode: recurrent step: ``linear`` (O(N rank) diagonal plus low rank, the default) or ``dense``
            (the materialised N x N transition). Unused in diag mode.
        precision: the Cauchy products and Woodbury correction in ``single`` (the parameters' dtype) or
            ``double`` (complex128) precision; ``auto`` picks double for legt and fourier/fout, whose
            purely imaginary spectrum makes complex64 lose digits (see ``ILL_CONDITIONED_INITS``).
        lr, wd: per-parameter learning rate / weight decay, a float or a dict with keys A (Lambda), P
            (defaults to A's setting), B, C, dt. lr 0 (or null in the dict) freezes that parameter.
        backend: Cauchy backend (see ``ssmkit.ops.cauchy``; the Vandermonde backend in diag mode).
    """

    has_state = True
    param_keys = ("A", "B", "C", "dt", "P")

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        mode: str = "nplr",
        init: str = "legs",
        rank: int = 1,
        n_ssm: int | None = None,
        deterministic: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        step_mode: str = "linear",
        precision: str = "auto",
        B_clip: float | None = B_CLIP,
        lr=None,
        wd=None,
        backend: str = "auto",
    ):
        super().__init__(d_model, channels, lr, wd)
        check_choice("mode", mode, MODES)
        check_choice("step_mode", step_mode, STEP_MODES)
        check_choice("precision", precision, PRECISIONS)
        check_choice("init", init, {"nplr": HIPPO_INITS, "dplr": DPLR_INITS, "diag": DIAG_INITS}[mode])
        if d_state <= 0 or d_state % 2:
            raise ValueError(f"d_state must be even and positive (states come in conjugate pairs), got {d_state}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        H = d_model
        self.N, self.mode, self.init, self.rank, self.step_mode, self.backend = d_state, mode, init, rank, step_mode, backend
        self.deterministic = deterministic
        self.cauchy_double = precision == "double" or (precision == "auto" and init in ILL_CONDITIONED_INITS)
        self._step = None

        if mode == "diag":
            if n_ssm not in (None, H):
                raise ValueError(f"n_ssm={n_ssm} is not available with mode='diag' (S4D keeps one A, B per feature); use mode='dplr'")
            no_p = lambda s: {k: v for k, v in s.items() if k != "P"} if isinstance(s, dict) else s  # noqa: E731
            self.diag = S4DKernel(
                d_model, d_state, channels, init=init, disc="zoh", dt_min=dt_min, dt_max=dt_max, B_clip=B_clip,
                lr=no_p(lr), wd=no_p(wd), backend=backend,
            )
            if deterministic:
                with torch.no_grad():
                    self.diag.log_dt.copy_(torch.linspace(math.log(dt_min), math.log(dt_max), H))
                    self.diag.C.zero_()
                    (self.diag.C if init == "real" else self.diag.C[..., 0]).fill_(1.0)
            return

        self.n_ssm = H if n_ssm is None else n_ssm
        if self.n_ssm <= 0 or H % self.n_ssm:
            raise ValueError(f"n_ssm must divide d_model={H}, got n_ssm={n_ssm}")
        n = d_state // 2
        if init in HIPPO_INITS:
            Lambda, P, B, V = nplr(init, d_state, rank, B_clip=B_clip)  # (n,), (r, n), (n,), (N, n)
            P = P.unsqueeze(1).expand(rank, self.n_ssm, n)
            c0 = V[0]  # C = e_0 in the HiPPO basis: y = x_0
        else:
            Lambda, B = s4d_init(init, d_state, B_clip)
            P = torch.randn(rank, self.n_ssm, n, dtype=torch.complex128)
            c0 = torch.ones(n, dtype=torch.complex128)
        Lambda, B = Lambda.expand(self.n_ssm, n), B.expand(self.n_ssm, n)

        self.register("A_real", torch.log((-Lambda.real).clamp(min=MIN_DECAY)).float().contiguous(), "A")
        self.register("A_imag", Lambda.imag.float().contiguous(), "A")
        self.register("B", torch.view_as_real(B.to(torch.complex64)).contiguous(), "B")
        p_key = "P" if any(isinstance(s, dict) and "P" in s for s in (lr, wd)) else "A"
        self.register("P", torch.view_as_real(P.to(torch.complex64)).contiguous(), p_key)
        if deterministic:
            log_dt = torch.linspace(math.log(dt_min), math.log(dt_max), H)
            C = c0.to(torch.complex64).expand(channels, H, n)
        else:
            log_dt = torch.log(log_uniform((H,), dt_min, dt_max))
            C = torch.randn(channels, H, n, dtype=torch.complex64)  # E|C|^2 = 1
        self.register("log_dt", log_dt, "dt")
        # Holds C itself until the first forward, then Ct = C (I - dA^l_kernel).
        self.register("C", torch.view_as_real(C).contiguous(), "C", ssm=False)
        self.register_buffer("l_kernel", torch.tensor(0, dtype=torch.long))

    # --- parameters -> continuous and discrete SSM ---
    @property
    def _cdtype(self) -> torch.dtype:
        return torch.complex128 if self.A_real.dtype == torch.float64 else torch.complex64

    def ssm(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dt (H,), Lambda (H, n), P (rank, H, n), B (H, n), C (C, H, n)) with the tied copies repeated.
        C is the stored Ct once a kernel length is set (``l_kernel`` > 0)."""
        v = self.H // self.n_ssm
        Lambda = torch.complex(-torch.exp(self.A_real), self.A_imag).repeat(v, 1)
        P = torch.view_as_complex(self.P).repeat(1, v, 1)
        B = torch.view_as_complex(self.B).repeat(v, 1)
        return torch.exp(self.log_dt), Lambda, P, B, torch.view_as_complex(self.C)

    @staticmethod
    def dense_discretization(dt, Lambda, P, B) -> tuple[torch.Tensor, torch.Tensor]:
        """Bilinear (dA (H, N, N), dB (H, N)) of the conjugate-completed state (S4, eq. 3)."""
        A = dplr_dense(Lambda, P)  # (H, N, N)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        half = (dt / 2).to(A.dtype)[:, None, None] * A
        rhs = torch.cat([eye + half, (dt.to(A.dtype)[:, None] * _conj_full(B)).unsqueeze(-1)], dim=-1)
        sol = solve(eye - half, rhs)  # (H, N, N+1)
        return sol[..., :-1], sol[..., -1]

    def _dense128(self, rate: float = 1.0):
        dt, Lambda, P, B, C = self.ssm()
        c128 = torch.complex128
        dA, dB = self.dense_discretization((dt * rate).double(), Lambda.to(c128), P.to(c128), B.to(c128))
        return dA, dB, C.to(c128)

    def output_matrix(self) -> torch.Tensor:
        """The plain C (C, H, N) of the conjugate-completed state, recovered from Ct by a linear solve,
        in complex128."""
        dA, _, Ct = self._dense128(1.0)
        Lk = int(self.l_kernel)
        if Lk == 0:
            return _conj_full(Ct)
        M = torch.eye(dA.shape[-1], dtype=dA.dtype, device=dA.device) - matrix_power(dA, Lk)
        # Ct_f = (I - dA^L)^T C_f
        return solve(M.transpose(-1, -2), _conj_full(Ct).unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def _set_length(self, L: int) -> None:
        """Makes C hold Ct for a kernel length >= L: set it on first use, double it when L is longer."""
        Lk = int(self.l_kernel)
        if Lk >= L:
            return
        dA, _, C = self._dense128(1.0)
        C = _conj_full(C)  # (C, H, N)
        if Lk == 0:
            Lk = L
            C = C - torch.einsum("hmn,chm->chn", matrix_power(dA, L), C)  # (I - dA^L)^T C
        else:
            power = matrix_power(dA, Lk)
            while Lk < L:
                C = C + torch.einsum("hmn,chm->chn", power, C)  # Ct (I + dA^Lk) = C (I - dA^2Lk)
                power = power @ power
                Lk *= 2
        self.C.copy_(torch.view_as_real(C[..., : self.N // 2].to(self._cdtype)))
        self.l_kernel.fill_(Lk)

    # --- convolution mode ---
    def forward(self, L: int, rate: float = 1.0, state: torch.Tensor | None = None):
        """K (C, H, L); and, given a state (B, H, N/2), K_state (B, C, H, L): the free response to it."""
        if self.mode == "diag":
            return self.diag(L, rate=rate, state=state)
        with torch.autocast(device_type=self.A_real.device.type, enabled=False):
            return self._forward(L, rate, state)

    def _forward(self, L: int, rate: float, state: torch.Tensor | None):
        self._set_length(L)
        dt, Lambda, P, B, Ct = self.ssm()
        cdtype = Lambda.dtype
        if rate == 1.0:
            Lk = int(self.l_kernel)
        else:
            # Ct belongs to dA at rate 1; at another rate, rebuild it from C for exactly length L.
            Lk = L
            dA, _, _ = self._dense128(rate)
            C = self.output_matrix()
            Ct = (C - torch.einsum("hmn,chm->chn", matrix_power(dA, L), C))[..., : self.N // 2].to(cdtype)
        dt = dt * rate
        n_c = Ct.shape[0]
        right = [B.unsqueeze(0)]
        if state is not None:
            # Fold the state in as extra input rows: (I - dt/2 A) dA s / dt = (I + dt/2 A) s / dt.
            s = state.to(cdtype)  # (B, H, n)
            Ps = 2 * torch.einsum("rhn,bhn->rbh", P.conj(), s).real  # P_f^* s_f: (r, B, H)
            As = Lambda * s - torch.einsum("rhn,rbh->bhn", P, Ps.to(cdtype))
            right.append(s / dt[:, None] + As / 2)
        n_in = sum(x.shape[0] for x in right)
        right = torch.cat([*right, P], dim=0)  # (n_in + r, H, n)
        left = torch.cat([Ct, P.conj()], dim=0)  # (C + r, H, n)
        v = left.unsqueeze(1) * right.unsqueeze(0) * dt[:, None]  # (C + r, n_in + r, H, n)
        work = torch.complex128 if self.cauchy_double else cdtype
        z, gain = roots_of_unity_nodes(Lk, work, device=v.device)
        w = (dt[:, None] * Lambda).to(work)
        k = cauchy(v.to(work), z, w, conj=True, backend=self.backend)  # (C + r, n_in + r, H, F)
        # split, not slices: a slice's backward zero-fills a tensor of k's full size, four times over
        top, bottom = k.split([n_c, k.shape[0] - n_c], dim=0)
        k00, k01 = top.split([n_in, k.shape[1] - n_in], dim=1)
        k10, k11 = bottom.split([n_in, k.shape[1] - n_in], dim=1)
        k_f = (k00 - self._woodbury(k01, k11, k10)) * gain  # (C, n_in, H, F)
        if Lk % 2 == 0:
            # omega = -1: K^ = Ct dt B / 2 over the full state, i.e. dt Re(sum_n Ct_n B_n).
            nyquist = dt * torch.einsum("chn,ihn->cih", Ct, right[:n_in]).real
            k_f = torch.cat([k_f, nyquist.to(work).unsqueeze(-1)], dim=-1)
        K = torch.fft.irfft(k_f, n=Lk)[..., :L].to(dt.dtype)  # (C, n_in, H, L)
        K_state = K[:, 1:].transpose(0, 1) if state is not None else None  # (B, C, H, L)
        return K[:, 0], K_state

    def _woodbury(self, k01: torch.Tensor, k11: torch.Tensor, k10: torch.Tensor) -> torch.Tensor:
        """k01 (I + k11)^{-1} k10 for k01 (C, r, H, F), k11 (r, r, H, F), k10 (r, M, H, F)."""
        r = k11.shape[0]
        if r == 1:
            return k01 * k10 / (1 + k11[0, 0])
        if r == 2:
            a, b, c, d = 1 + k11[0, 0], k11[0, 1], k11[1, 0], 1 + k11[1, 1]
            inv = torch.stack([torch.stack([d, -b]), torch.stack([-c, a])]) / (a * d - b * c)
        else:
            eye = torch.eye(r, dtype=k11.dtype, device=k11.device)
            inv = torch.linalg.inv(eye + k11.permute(2, 3, 0, 1)).permute(2, 3, 0, 1)  # (r, r, H, F)
        return torch.einsum("cihf,ijhf,jmhf->cmhf", k01, inv, k10)

    def forward_state(self, u: torch.Tensor, state: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
        """The state after reading u (B, H, L) from ``state`` (B, H, N/2): dA^L s + sum_l dA^(L-1-l) dB u_l,
        by pairwise doubling with the dense transition (O(B H N^2 L))."""
        if self.mode == "diag":
            return self.diag.forward_state(u, state, rate=rate)
        dA, dB, _ = self._dense128(rate)
        cdtype = self._cdtype
        dA, dB = dA.to(cdtype), dB.to(cdtype)
        L = u.shape[-1]
        x = torch.einsum("hnm,bhm->bhn", matrix_power(dA, L), _conj_full(state.to(cdtype)))  # (B, H, N)
        v = dB[:, :, None] * u.to(cdtype).unsqueeze(-2)  # (B, H, N, L)
        width = 1 << (L - 1).bit_length()
        v = torch.nn.functional.pad(v, (width - L, 0))  # zeros in front contribute nothing
        power = dA
        while v.shape[-1] > 1:
            pairs = v.unflatten(-1, (-1, 2))  # (B, H, N, L/2, 2)
            v = torch.einsum("hnm,bhmk->bhnk", power, pairs[..., 0]) + pairs[..., 1]
            power = power @ power
        return (x + v[..., 0])[..., : self.N // 2]

    # --- recurrent mode ---
    def default_state(self, *batch_shape: int, device=None) -> torch.Tensor:
        if self.mode == "diag":
            return self.diag.default_state(*batch_shape, device=device)
        ref = self.A_real
        return torch.zeros(*batch_shape, self.H, self.N // 2, dtype=self._cdtype, device=device or ref.device)

    @torch.no_grad()
    def setup_step(self, rate: float = 1.0) -> None:
        """Precomputes the recurrence at step size rate * dt: dense dA, or the DPLR factors of the linear step."""
        if self.mode == "diag":
            self.diag.setup_step(rate)
            return
        n, cdtype = self.N // 2, self._cdtype
        C = self.output_matrix()[..., :n].to(cdtype)
        if self.step_mode == "dense":
            dA, dB, _ = self._dense128(rate)
            self._step = ("dense", dA[:, :n].to(cdtype), dB[:, :n].to(cdtype), C)
            return
        dt, Lambda, P, B, _ = self.ssm()
        dt = (dt * rate)[:, None]  # (H, 1)
        D = 1 / (1 - dt / 2 * Lambda)  # (H, n)
        M = 2 * torch.einsum("ihn,hn,jhn->hij", P.conj(), D, P).real  # Q_f^* D P_f: (H, r, r)
        eye = torch.eye(P.shape[0], dtype=M.dtype, device=M.device)
        G = torch.linalg.inv(eye + dt[..., None] / 2 * M)  # (H, r, r)
        self._step = ("linear", dt, Lambda, P, B, D, G, C)

    def step(self, u: torch.Tensor, state: torch.Tensor):
        """u (B, H), state (B, H, N/2) -> y (B, C, H), next state."""
        if self.mode == "diag":
            return self.diag.step(u, state)
        if getattr(self, "_step", None) is None:
            self.setup_step()
        uc = u.to(self._cdtype).unsqueeze(-1)  # (B, H, 1)
        if self._step[0] == "dense":
            _, dA, dB, C = self._step
            state = torch.einsum("hnm,bhm->bhn", dA, _conj_full(state)) + dB * uc
        else:
            _, dt, Lambda, P, B, D, G, C = self._step
            # (I + dt/2 A) x + dt B u, then (I - dt/2 A)^{-1} by Woodbury with D = (I - dt/2 Lambda)^{-1}.
            Px = 2 * torch.einsum("rhn,bhn->bhr", P.conj(), state).real  # (B, H, r)
            y1 = state + dt / 2 * (Lambda * state - torch.einsum("rhn,bhr->bhn", P, Px.to(state.dtype))) + dt * B * uc
            beta = 2 * torch.einsum("rhn,bhn->bhr", P.conj(), D * y1).real  # Q^* D y1: (B, H, r)
            w = torch.einsum("hij,bhj->bhi", G, beta).to(state.dtype)
            state = D * (y1 - dt / 2 * torch.einsum("rhn,bhr->bhn", P, w))
        y = 2 * torch.einsum("chn,bhn->bch", C, state).real
        return y.to(u.dtype), state
