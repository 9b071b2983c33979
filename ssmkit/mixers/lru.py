"""LRU: the Linear Recurrent Unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long
Sequences").

A diagonal complex recurrence over all H features (MIMO, as the paper: B in C^{N x H}, C in C^{H x N}):

    x_t = lambda * x_{t-1} + gamma * (B u_t),   y_t = Re(C x_t) + D * u_t

- Exponential parameterisation (section 3.3): lambda = exp(-exp(nu) + i exp(theta)), so |lambda| < 1 always.
- Ring initialisation (Lemma 3.2): |lambda| uniform on the ring [r_min, r_max] of the complex plane
  (nu = log(-log(u1 (r_max^2 - r_min^2) + r_min^2) / 2)), phase uniform in [0, max_phase]
  (theta = log(max_phase u2)).
- Normalisation (section 3.4): gamma = sqrt(1 - |lambda|^2), learned through log gamma.
- B ~ N(0, 1/(2H)) and C ~ N(0, 1/N) per real and imaginary part (the paper's Glorot-like init); D ~ N(0, 1).

There is no step size, so ``rate`` must be 1. Because the state mixes features, LRU is a token mixer (like S5,
sharing ``ssmkit/mixers/mimo.py``), not a depthwise (C, H, L) kernel: its convolution form is
x = lambda^l * (gamma B u) in state space (``mode: conv``, an FFT per state), its recurrence the chunked
scan (``mode: scan``), with ``step`` and state passing. ``bidirectional`` adds a reversed scan with its own C.
The mixer ends as the paper's block: LRU -> activation (GELU) -> dropout -> output map (GLU), ``self.post``
(``ssmkit/mixers/output.py``).
"""
from __future__ import annotations

import math

import torch

from ssmkit.mixers.mimo import DiagonalMIMO
from ssmkit.mixers.output import OutputMap


def ring_init(N: int, r_min: float, r_max: float, max_phase: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(nu_log, theta_log) (N,) float64: |lambda| uniform on the ring r_min <= |lambda| <= r_max, phase in [0, max_phase]."""
    if not 0 <= r_min < r_max <= 1:
        raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    if max_phase <= 0:
        raise ValueError(f"max_phase must be positive, got {max_phase}")
    u1, u2 = torch.rand(N, dtype=torch.float64), torch.rand(N, dtype=torch.float64)
    nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = torch.log(max_phase * u2)
    return nu_log, theta_log


class LRU(DiagonalMIMO):
    """The Linear Recurrent Unit as a token mixer: u (B, H, L) -> LRU -> activation -> dropout -> output map.

    Args:
        d_model: H.
        bidirectional: add a reversed scan with its own C (no recurrent state then).
        d_state: N, complex states (the paper uses 256 on LRA with H = 128..512, hence N x H matrices B, C).
        r_min, r_max, max_phase: the ring initialisation (the paper's code defaults 0, 1, 6.28; its LRA runs
            use r_min 0.9 or higher and a smaller max_phase, see recipes/lru/).
        mode: scan | conv (see the module docstring).
        lr, wd: per-parameter settings with keys Lambda (nu and theta), gamma, B, C. The paper trains the
            recurrent parameters (lambda, gamma) at a reduced lr without weight decay.
        activation, output, dropout, tie_dropout: the end of the block, ``OutputMap`` (``self.post``):
            activation after the recurrence (gelu), dropout on its H features, output map glu | linear | None.
    """

    name = "lru"
    param_keys = ("Lambda", "gamma", "B", "C")

    def __init__(
        self,
        d_model: int,
        bidirectional: bool = False,
        d_state: int = 64,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 6.28,
        mode: str = "scan",
        lr=None,
        wd=None,
        activation: str | None = "gelu",
        output: str | None = "glu",
        dropout: float = 0.0,
        tie_dropout: bool = False,
    ):
        super().__init__(d_model, bidirectional, mode, lr, wd)
        if d_state <= 0:
            raise ValueError(f"d_state must be positive, got {d_state}")
        self.P = d_state
        nu_log, theta_log = ring_init(d_state, r_min, r_max, max_phase)
        modulus = torch.exp(-torch.exp(nu_log))
        self.register("nu_log", nu_log.float(), "Lambda")
        self.register("theta_log", theta_log.float(), "Lambda")
        self.register("gamma_log", (0.5 * torch.log1p(-modulus.square())).float(), "gamma")
        self.register("B", torch.randn(d_state, d_model, 2) / math.sqrt(2 * d_model), "B")
        self.register("C", torch.randn(self.n_dir, d_model, d_state, 2) / math.sqrt(d_state), "C", ssm=False)
        self.post = OutputMap(d_model, d_model, activation, output, dropout, tie_dropout)

    def C_matrix(self) -> torch.Tensor:
        return torch.view_as_complex(self.C)  # (n_dir, H, N)

    def discrete_log(self, rate: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """log lambda (N,) and gamma * B (N, H)."""
        self.check_rate(rate)
        log_lam = torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))
        return log_lam, torch.exp(self.gamma_log).unsqueeze(-1) * torch.view_as_complex(self.B)
