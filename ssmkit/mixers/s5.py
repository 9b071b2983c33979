"""S5: the simplified state space layer (Smith, Warrington, Linderman 2023, "Simplified State Space Layers
for Sequence Modeling").

One MIMO diagonal SSM over all H features instead of H SISO ones (S5, sections 3-4):

    x_t = Lambda_bar x_{t-1} + B_bar u_t,   y_t = 2 Re(C~ x_t) + D u_t        (conjugate symmetry)

- Lambda: the eigenvalues of HiPPO-N, the normal part of HiPPO-LegS (A_LegS + p p^T / 2, Re = -1/2), via
  ``ops.hippo.nplr``; with ``blocks`` J the state is J copies of the P/J HiPPO-N block on the diagonal
  (S5, appendix B.1.1), and its eigenvectors V are block diagonal.
- The initialisation is the official code's (lindermanlab/S5, ``s5/ssm_init.py`` and ``s5/ssm.py``), whose
  ``jax.nn.initializers.lecun_normal()`` is ``variance_scaling(1, "fan_in", "truncated_normal", in_axis=-2,
  out_axis=-1)``: for a shape s, fan_in = s[-2] * prod(s) / (s[-2] s[-1]) (the size of axis -2 times every
  axis but the last two), and a draw is a standard normal truncated to [-2, 2] times sqrt(1 / fan_in) /
  0.87962566103423978 (the std of that truncated normal), so its std is exactly 1 / sqrt(fan_in) and it is cut
  at +-2.2737 of it (``lecun_normal`` below). With P the full (conjugate-completed) state size:
  B~ = V^-1 B, B real (P, H) lecun-normal on shape (P, H): fan_in P, std 1/sqrt(P).
  C~ = C V, C complex (H, P) stored as (H, P, 2), by ``C_init``:
  ``trunc_standard_normal`` draws each of the H rows lecun-normal on shape (1, P, 2): fan_in P, each part std
  1/sqrt(P); ``lecun_normal`` draws all of it on shape (H, P, 2): fan_in P*H, std 1/sqrt(P H) (a bidirectional
  layer draws its two C the same way, one after the other); ``complex_normal`` samples C~ directly, each part
  N(0, 1/2) (not truncated, not multiplied by V). D (H,) ~ N(0, 1).
- A log step size per state, log-uniform in [dt_min, dt_max] = [1e-3, 1e-1] (``dt_shared``: one for all
  states); ``disc`` zoh (Lambda_bar = exp(Lambda dt), B_bar = (Lambda_bar - 1) / Lambda B~) or bilinear.
- ``dt_global`` is the official training code's flag (``s5/train_helpers.py``, ``create_train_state``): the
  step sizes stay one per state, but log_dt leaves the SSM group and is trained with the regular AdamW group,
  at the optimizer's lr and weight decay (``param._optim = {"regular": True}``, read by
  ``ssmkit.train.optim.param_groups``), so ``lr``/``wd`` dicts may not name ``dt`` with it.
- ``conj_sym``: P/2 states are stored and Re is doubled (the other half are their conjugates).
- ``bidirectional``: a second scan over the reversed input, with its own C~ (y = 2 Re(C1 x_fwd + C2 x_bwd)).
- ``rate`` multiplies dt, the paper's zero-shot resolution change (S5, section 6.3).

The recurrence is ``ops.scan.linear_scan`` (``mode: scan``) or the equivalent FFT convolution in state
space (``mode: conv``); both are in ``ssmkit/mixers/mimo.py``, shared with LRU. The mixer ends as the paper's
layer: SSM -> activation (GELU) -> dropout -> output map (GLU), ``self.post`` (``ssmkit/mixers/output.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ssmkit.mixers.mimo import DiagonalMIMO
from ssmkit.mixers.output import OutputMap
from ssmkit.mixers.params import log_uniform
from ssmkit.ops.discretize import bilinear_log, phi1
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


#: the standard deviation of a standard normal truncated to [-2, 2] (JAX's variance_scaling divides by it)
TRUNC_STD = 0.87962566103423978


def lecun_normal(*shape: int) -> torch.Tensor:
    """JAX's ``lecun_normal()`` (in_axis -2, out_axis -1) in float64: a standard normal truncated to [-2, 2],
    times sqrt(1 / fan_in) / TRUNC_STD, with fan_in = shape[-2] * prod(shape[:-2]) (module docstring)."""
    fan_in = shape[-2] * math.prod(shape[:-2])
    std = math.sqrt(1.0 / fan_in) / TRUNC_STD
    return torch.nn.init.trunc_normal_(torch.empty(*shape, dtype=torch.float64), std=1.0, a=-2.0, b=2.0) * std


class S5(DiagonalMIMO):
    """The S5 layer as a token mixer: u (B, H, L) -> SSM -> activation -> dropout -> output map -> y (B, H, L).

    Args:
        d_model: H.
        bidirectional: add a second scan over the reversed sequence with its own C~ (no recurrent state then).
        d_state: P, the state size (the conjugate-completed one: P/2 complex states are stored with conj_sym).
        blocks: J, HiPPO-N blocks of size P/J on the diagonal (the paper uses J = 3..16 on LRA).
        conj_sym: store P/2 states and double Re(C x) (False: all P states, Re(C x)).
        C_init: trunc_standard_normal | lecun_normal | complex_normal (see the module docstring).
        disc: zoh | bilinear.
        dt_min, dt_max: the range of the initial step sizes (log-uniform).
        dt_global: train log_dt with the optimizer's lr and weight decay (the official code's regular AdamW
            group) instead of the SSM settings in ``lr``/``wd``; dt stays one per state.
        dt_shared: one step size shared by all states instead of one per state (not an option of the
            official code; before it existed, ``dt_global`` meant this).
        clip_eigs: keep Re(Lambda) <= -1e-4 (the paper's option for stability on long inputs).
        mode: scan (chunked parallel scan) | conv (FFT convolution in state space; from a given state, the scan).
        lr, wd: per-parameter settings with keys Lambda, B, C, dt. The paper trains Lambda, B and dt at its
            "ssm_lr" with no weight decay; C and D at the global lr (with weight decay by default).
        activation, output, dropout, tie_dropout: the end of the layer, ``OutputMap`` (``self.post``):
            activation after the SSM (gelu), dropout on its H features, output map glu | linear | None.
    """

    name = "s5"
    has_rate = True
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
        dt_shared: bool = False,
        clip_eigs: bool = False,
        mode: str = "scan",
        lr=None,
        wd=None,
        activation: str | None = "gelu",
        output: str | None = "glu",
        dropout: float = 0.0,
        tie_dropout: bool = False,
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
        if dt_global:
            for name, spec in (("lr", lr), ("wd", wd)):
                if isinstance(spec, dict) and "dt" in spec:
                    raise ValueError(f"dt_global=True trains log_dt with the optimizer's lr and weight decay (the S5 code's "
                                     f"regular AdamW group), so {name}.dt cannot apply; drop {name}.dt or dt_global")
        self.dt_global, self.dt_shared = dt_global, dt_shared
        H = d_model
        B = lecun_normal(d_state, H)  # (P, H): fan_in P
        B_tilde = V.conj().T @ B.to(V.dtype)  # V^-1 B, V orthonormal (P_stored, H)
        if C_init == "complex_normal":
            C_tilde = torch.randn(self.n_dir, H, self.P, 2, dtype=torch.float64) * math.sqrt(0.5)
        else:
            if C_init == "trunc_standard_normal":  # row by row on (1, P, 2): fan_in P
                C = torch.stack([torch.cat([lecun_normal(1, d_state, 2) for _ in range(H)]) for _ in range(self.n_dir)])
            else:  # on (H, P, 2): fan_in P * H
                C = torch.stack([lecun_normal(H, d_state, 2) for _ in range(self.n_dir)])
            C_tilde = torch.view_as_real(torch.view_as_complex(C.contiguous()) @ V)  # (n_dir, H, P_stored, 2)
        self.register("Lambda_re", Lambda.real.float(), "Lambda")
        self.register("Lambda_im", Lambda.imag.float(), "Lambda")
        self.register("B", torch.view_as_real(B_tilde).float().contiguous(), "B")
        self.register("C", C_tilde.float().contiguous(), "C", ssm=False)
        log_dt = torch.log(log_uniform((1 if dt_shared else self.P,), dt_min, dt_max))
        if dt_global:
            self.log_dt = nn.Parameter(log_dt)
            self.log_dt._optim = {"regular": True}  # the optimizer's lr and weight decay, though it is 1-d
        else:
            self.register("log_dt", log_dt, "dt")
        self.post = OutputMap(d_model, d_model, activation, output, dropout, tie_dropout)

    def C_matrix(self) -> torch.Tensor:
        return torch.view_as_complex(self.C)  # (n_dir, H, P)

    def discrete_log(self, rate: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """log Lambda_bar (P,) and B_bar (P, H) for step sizes dt * rate (S5, eq. 6 for ZOH), by
        ``ops.discretize``: B_bar = dt phi1(Lambda dt) B = (Lambda_bar - 1)/Lambda B without its cancellation
        at small dt, and the log finite where Lambda_bar underflows (dt 1e4)."""
        re = self.Lambda_re.clamp(max=-1e-4) if self.clip_eigs else self.Lambda_re
        Lambda = torch.complex(re, self.Lambda_im)
        dt = torch.exp(self.log_dt) * rate
        B = torch.view_as_complex(self.B)
        z = Lambda * dt
        if self.disc == "zoh":
            return z, (dt * phi1(z)).unsqueeze(-1) * B
        return bilinear_log(z), (dt / (1 - z / 2)).unsqueeze(-1) * B
