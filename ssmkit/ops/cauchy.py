"""Cauchy products: r[..., l] = sum_n v[..., n] / (z[l] - w[..., n]).

The inner product of the S4 (DPLR) kernel. With ``conj=True`` the conjugate pairs are added too,
sum_n v_n/(z - w_n) + conj(v_n)/(z - conj(w_n)), so N/2 stored states stand for N.
"""
from __future__ import annotations

import torch

BACKENDS = ("auto", "torch")


def cauchy_torch(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, conj: bool = True) -> torch.Tensor:
    """Materialises the (..., N, L) matrix. v, w: (..., N) complex; z: (L,) complex -> (..., L)."""
    if conj:
        v = torch.cat([v, v.conj()], dim=-1)
        w = torch.cat([w, w.conj()], dim=-1)
    return (v.unsqueeze(-1) / (z - w.unsqueeze(-1))).sum(dim=-2)


def cauchy(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, conj: bool = True, backend: str = "auto") -> torch.Tensor:
    if backend in ("auto", "torch"):
        return cauchy_torch(v, z, w, conj)
    raise ValueError(f"unknown Cauchy backend {backend!r}; choose one of {', '.join(BACKENDS)}")
