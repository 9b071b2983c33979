"""S5: the simplified state space layer (Smith, Warrington, Linderman 2023, "Simplified State Space Layers
for Sequence Modeling").

One MIMO diagonal SSM over all H features instead of H SISO ones (S5, sections 3-4):

    x_t = Lambda_bar x_{t-1} + B_bar u_t,   y_t = 2 Re(C~ x_t) + D u_t        (conjugate symmetry)

- Lambda: the eigenvalues of HiPPO-N, the normal part of HiPPO-LegS (A_LegS + p p^T / 2, Re = -1/2), via
  ``ops.hippo.nplr``; with ``blocks`` J the state is J copies of the P/J HiPPO-N block on the diagonal
  (S5, appendix B.1.1), and its eigenvectors V are block diagonal.
- B~ = V^-1 B with B (P, H) lecun-normal; C~ = C V with C by ``C_init``: ``trunc_standard_normal`` or
  ``lecun_normal`` (a complex C in the HiPPO basis, each part N(0, 1) truncated at 2 std, or N(0, 1/P)),
  or ``complex_normal`` (C~ sampled directly, each part N(0, 1/2)). D (H,) ~ N(0, 1).
- A log step size per state (``dt_global``: one for all), log-uniform in [dt_min, dt_max] = [1e-3, 1e-1];
  ``disc`` zoh (Lambda_bar = exp(Lambda dt), B_bar = (Lambda_bar - 1) / Lambda B~) or bilinear.
- ``conj_sym``: P/2 states are stored and Re is doubled (the other half are their conjugates).
- ``bidirectional``: a second scan over the reversed input, with its own C~ (y = 2 Re(C1 x_fwd + C2 x_bwd)).
- ``rate`` multiplies dt, the paper's zero-shot resolution change (S5, section 6.3).

The recurrence is ``ops.scan.linear_scan`` (``mode: scan``) or the equivalent FFT convolution in state
space (``mode: conv``); both are in ``kernels/mimo.py``, shared with LRU.
"""
from __future__ import annotations

import math

import torch

from ssmkit.kernels.base import log_uniform
from ssmkit.kernels.mimo import DiagonalMIMO
from ssmkit.ops.hippo import conj_basis, nplr

C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")
DISCS = ("zoh", "bilinear")


def hippo_n(P: int, blocks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """HiPPO-N eigenvalues (P/2,) with Im >= 0 and eigenvectors V (P, P/2) (complex128), J blocks on the diagonal."""
    if blocks < 1 or P % blocks or (P // blocks) % 2:
        raise ValueError(f"d_state={P} must split into blocks={blocks} blocks of an even size; choose blocks dividing d_state/2")
    n = P // blocks
    Lambda, _, _, V = nplr("legs", n)  # (n/2,), (n, n/2)
    V_full = torch.zeros(P, P // 2, dtype=V.dtype)
    for j in range(blocks):
        V_full[j * n : (j + 1) * n, j * n // 2 : (j + 1) * n // 2] = V
    return Lambda.repeat(blocks), V_full


def _trunc_normal(*shape: int, std: float) -> torch.Tensor:
    return torch.nn.init.trunc_normal_(torch.empty(*shape, dtype=torch.float64), std=std, a=-2 * std, b=2 * std)


class S5(DiagonalMIMO):
    """The S5 layer's SSM as a token mixer: u (B, H, L) -> y (B, H, L).

    Args:
        d_model: H.
        bidirectional: set by ``SequenceLayer(bidirectional=...)``.
        d_state: P, the state size (the conjugate-completed one: P/2 complex states are stored with conj_sym).
        blocks: J, HiPPO-N blocks of size P/J on the diagonal (the paper uses J = 3..16 on LRA).
        conj_sym: store P/2 states and double Re(C x) (False: all P states, Re(C x)).
        C_init: trunc_standard_normal | lecun_normal | complex_normal (see the module docstring).
        disc: zoh | bilinear.
        dt_min, dt_max: the range of the initial step sizes (log-uniform).
        dt_global: one step size shared by all states instead of one per state.
        clip_eigs: keep Re(Lambda) <= -1e-4 (the paper's option for stability on long inputs).
        mode: scan (chunked parallel scan) | conv (FFT convolution in state space; from a given state, the scan).
        lr, wd: per-parameter settings with keys Lambda, B, C, dt. The paper trains Lambda, B and dt at its
            "ssm_lr" with no weight decay; C and D at the global lr (with weight decay by default).
    """

    output_scale = 2.0
    param_keys = ("Lambda", "B", "C", "dt")

    def __init__(
        self,
        d_model: int,
        bidirectional: bool = False,
        d_state: int = 64,
        blocks: int = 1,
        conj_sym: bool = True,
        C_init: str = "trunc_standard_normal",
        disc: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_global: bool = False,
        clip_eigs: bool = False,
        mode: str = "scan",
        lr=None,
        wd=None,
    ):
        super().__init__(d_model, bidirectional, mode, lr, wd)
        if C_init not in C_INITS:
            raise ValueError(f"unknown C_init {C_init!r}; choose one of {', '.join(C_INITS)}")
        if disc not in DISCS:
            raise ValueError(f"unknown disc {disc!r}; choose one of {', '.join(DISCS)}")
        self.disc, self.clip_eigs, self.conj_sym = disc, clip_eigs, conj_sym
        self.output_scale = 2.0 if conj_sym else 1.0
        Lambda, V = hippo_n(d_state, blocks)  # (P/2,), (P, P/2)
        if not conj_sym:
            Lambda, V = torch.cat([Lambda, Lambda.conj()]), conj_basis(V)
        self.P = Lambda.shape[0]
        H = d_model
        B = torch.randn(d_state, H, dtype=torch.float64) / math.sqrt(H)  # lecun normal, fan_in H
        B_tilde = V.conj().T @ B.to(V.dtype)  # V^-1 B, V orthonormal (P_stored, H)
        if C_init == "complex_normal":
            C_tilde = torch.randn(self.n_dir, H, self.P, 2, dtype=torch.float64) * math.sqrt(0.5)
        else:
            std = 1.0 if C_init == "trunc_standard_normal" else 1 / math.sqrt(d_state)
            C = torch.complex(_trunc_normal(self.n_dir, H, d_state, std=std), _trunc_normal(self.n_dir, H, d_state, std=std))
            C_tilde = torch.view_as_real(C @ V)
        self.register("Lambda_re", Lambda.real.float(), "Lambda")
        self.register("Lambda_im", Lambda.imag.float(), "Lambda")
        self.register("B", torch.view_as_real(B_tilde).float().contiguous(), "B")
        self.register("C", C_tilde.float().contiguous(), "C", ssm=False)
        self.register("log_dt", torch.log(log_uniform((1 if dt_global else self.P,), dt_min, dt_max)), "dt")

    def C_matrix(self) -> torch.Tensor:
        return torch.view_as_complex(self.C)  # (n_dir, H, P)

    def discrete(self, rate: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Lambda_bar (P,) and B_bar (P, H) for step sizes dt * rate (S5, eq. 6 for ZOH)."""
        re = self.Lambda_re.clamp(max=-1e-4) if self.clip_eigs else self.Lambda_re
        Lambda = torch.complex(re, self.Lambda_im)
        dt = torch.exp(self.log_dt) * rate
        B = torch.view_as_complex(self.B)
        if self.disc == "zoh":
            lam = torch.exp(Lambda * dt)
            return lam, ((lam - 1) / Lambda).unsqueeze(-1) * B
        denom = 1 - Lambda * dt / 2
        return (1 + Lambda * dt / 2) / denom, (dt / denom).unsqueeze(-1) * B
