"""(Log-)Vandermonde products: K[..., l] = sum_n v[..., n] * exp(x[..., n] * l), l = 0..L-1.

This is the inner product of every diagonal SSM kernel (S4D, DSS, DLR). Backends:
``torch`` materialises the (..., N, L) matrix; ``chunked`` walks L in blocks so memory stays bounded.
"""
from __future__ import annotations

import torch

BACKENDS = ("auto", "torch", "chunked")

# Above this many N*L elements per batch row the auto choice stops materialising.
_MATERIALISE_LIMIT = 1 << 22
_CHUNK = 1 << 12


def log_vandermonde_torch(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """v, x: (..., N) complex -> (..., L) complex, by materialising exp(x * l)."""
    ell = torch.arange(L, device=x.device, dtype=x.real.dtype)
    return torch.einsum("...n,...nl->...l", v, torch.exp(x.unsqueeze(-1) * ell))  # (..., L)


def log_vandermonde_chunked(v: torch.Tensor, x: torch.Tensor, L: int, chunk: int = _CHUNK) -> torch.Tensor:
    """Same as :func:`log_vandermonde_torch`, computed in blocks of ``chunk`` positions.

    Block j starts at l0 = j*chunk: sum_n (v_n exp(x_n l0)) exp(x_n m), m = 0..chunk-1.
    """
    outs = []
    ell = torch.arange(min(chunk, L), device=x.device, dtype=x.real.dtype)
    basis = torch.exp(x.unsqueeze(-1) * ell)  # (..., N, chunk)
    for l0 in range(0, L, chunk):
        n = min(chunk, L - l0)
        v0 = v * torch.exp(x * l0)  # (..., N)
        outs.append(torch.einsum("...n,...nl->...l", v0, basis[..., :n]))
    return torch.cat(outs, dim=-1)


def log_vandermonde(v: torch.Tensor, x: torch.Tensor, L: int, backend: str = "auto") -> torch.Tensor:
    """Dispatch to a backend; ``auto`` materialises small problems and chunks large ones."""
    if backend == "auto":
        backend = "torch" if x.shape[-1] * L <= _MATERIALISE_LIMIT else "chunked"
    if backend == "torch":
        return log_vandermonde_torch(v, x, L)
    if backend == "chunked":
        return log_vandermonde_chunked(v, x, L)
    raise ValueError(f"unknown Vandermonde backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def log_vandermonde_transpose(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """sum_l u[..., l] * v[..., n] * exp(x[..., n] * (L - 1 - l)) -> (..., N).

    The state reached after feeding u through x_{k} = exp(x) x_{k-1} + v u_k from a zero state.
    """
    ell = torch.arange(L - 1, -1, -1, device=x.device, dtype=x.real.dtype)
    return v * torch.einsum("...l,...nl->...n", u.to(x.dtype), torch.exp(x.unsqueeze(-1) * ell))
