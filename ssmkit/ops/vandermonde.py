"""(Log-)Vandermonde products: K[..., l] = sum_n v[..., n] * exp(x[..., n] * l), l = 0..L-1.

The inner product of every diagonal SSM kernel (S4D paper, Gu et al. 2022, eq. 6: K = (C dB) . V_L(dA)
with dA = exp(x)). Backends, all with the same value and gradient (the tests check it):

* ``torch``: materialises the (..., N, L) matrix exp(x l); the reference.
* ``chunked``: factorises l = l0 + j c + m, so a block of positions is one matrix product
  (v exp(x (l0 + j c)))_{j n} @ (exp(x m))_{n m}: O(N sqrt(L)) intermediates instead of O(N L), and
  GEMM speed. Blocks are sized so that no more than ``CHUNK_ELEMENTS`` intermediates exist at once,
  in forward and in backward (backward recomputes each block).
* ``keops``: pykeops ``Genred`` on the tensors' device (CPU tensors run on the CPU).
* ``extension``: a name S4 may pass (one backend name for both of its ops in ``mode: diag``), but the compiled
  extension has no Vandermonde kernel: never available, and asked for by name a one-line error that says so.
* ``auto``: ``chunked`` (the fastest here at every size measured, see docs/performance.md), except
  ``torch`` for tiny problems where one einsum beats the block bookkeeping; ``keops`` by name only.

The table :data:`OP` says what each supports; ``ssmkit/ops/dispatch.py`` chooses (the same rules for every op).
"""
from __future__ import annotations

import math

import torch

from ssmkit.ops import backends as _b
from ssmkit.ops import dispatch as _d
from ssmkit.ops.chunked import chunked_positions

# The most batch x N x (J + c) intermediate elements a ``chunked`` block may hold.
CHUNK_ELEMENTS = 1 << 23
# Below this many batch x N x L elements ``auto`` materialises.
_TINY = 1 << 14


def _rows(v: torch.Tensor, x: torch.Tensor) -> tuple[torch.Size, int]:
    shape = torch.broadcast_shapes(v.shape, x.shape)
    return shape, math.prod(shape[:-1]) * shape[-1]


def log_vandermonde_torch(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """v, x: (..., N) complex -> (..., L) complex, by materialising exp(x * l)."""
    ell = torch.arange(L, device=x.device, dtype=x.real.dtype)
    return torch.einsum("...n,...nl->...l", v, torch.exp(x.unsqueeze(-1) * ell))  # (..., L)


def _split(S: int) -> tuple[int, int]:
    """A block of S positions as J rows of c: J c >= S, c ~ sqrt(S)."""
    c = math.isqrt(max(S - 1, 0)) + 1
    return -(-S // c), c


def _flush(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t cast to dtype, with every real or imaginary part below dtype's smallest normal number set to 0.

    exp(x l) of a decaying node underflows into float32's denormals (|lambda|^l < 1.2e-38), and a denormal GEMM
    operand costs a microcode assist on every use on x86: DLR's kernel GEMM (256 x 4096 @ 4096 x 64) took 133 ms
    with them and 2.2 ms without. Such an entry changes no sum of terms of normal size."""
    tiny = torch.finfo(torch.empty((), dtype=dtype).real.dtype).tiny
    parts = torch.view_as_real(t) if t.is_complex() else t
    parts = torch.where(parts.abs() < tiny, torch.zeros((), dtype=parts.dtype, device=parts.device), parts)
    return (torch.view_as_complex(parts) if t.is_complex() else parts).to(dtype)


def _exp_far(x: torch.Tensor, ell: torch.Tensor | int) -> torch.Tensor:
    """exp(x l) for large l, with the product x l formed in float64: in float32 the phase Im(x) l
    loses |Im(x) l| * 6e-8 radians (0.2 rad at l = 1M), which would ruin long kernels. Denormals are
    flushed to 0 (``_flush``)."""
    wide = torch.complex128 if x.dtype == torch.complex64 else x.dtype
    return _flush(torch.exp(x.to(wide) * ell), x.dtype)


def _bases(x: torch.Tensor, J: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(x j c) (..., J, N) and exp(x m) (..., N, c): shared by every block."""
    jc = c * torch.arange(J, device=x.device, dtype=torch.float64)  # (J,)
    m = torch.arange(c, device=x.device, dtype=x.real.dtype)  # (c,)
    return _exp_far(x.unsqueeze(-2), jc.unsqueeze(-1)), _flush(torch.exp(x.unsqueeze(-1) * m), x.dtype)


def _block(l0: int, n: int, v: torch.Tensor, x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Positions l0 .. l0+n-1: (v exp(x l0) exp(x j c))_{j n} @ (exp(x m))_{n m} -> (..., n)."""
    v0 = v if l0 == 0 else v * _exp_far(x, l0)  # (..., N)
    out = torch.matmul(v0.unsqueeze(-2) * left, right)  # (..., J, c)
    return out.flatten(-2)[..., :n]


def log_vandermonde_chunked(v: torch.Tensor, x: torch.Tensor, L: int, budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Same as :func:`log_vandermonde_torch`, by blocked matrix products with bounded memory.

    A block of S = J c positions holds rows x (J + c) intermediates (rows = batch x N); S is the
    largest with rows (J + c) <= budget. The two bases are computed once and shared by all blocks.
    """
    if x.dim() == 1 and v.dim() > 1:
        return _SharedNodes.apply(v, x, L, budget)
    _, rows = _rows(v, x)
    side = max(1, budget // (2 * max(rows, 1)))
    J, c = _split(min(L, side * side))
    left, right = _bases(x, J, c)  # (..., J, N), (..., N, c)
    if J * c >= L:
        return _block(0, L, v, x, left, right)
    return chunked_positions(_block, L, J * c, v, x, left, right)


def _shared_base(x: torch.Tensor, L: int, budget: int) -> torch.Tensor:
    """exp(x m) (N, S) for m < S = min(L, budget / N), formed in double precision then cast."""
    S = max(1, min(L, budget // max(x.shape[-1], 1)))
    wide = torch.complex128 if x.dtype == torch.complex64 else x.dtype
    m = torch.arange(S, device=x.device, dtype=torch.float64)
    return _flush(torch.exp(x.to(wide).unsqueeze(-1) * m), x.dtype)


class _SharedNodes(torch.autograd.Function):
    """The chunked product when every row shares its nodes: x (N,), v (..., N), as in DLR where lambda
    is shared by all channels. With V[n, l0 + m] = exp(x_n l0) B[n, m], B = exp(x m) (N, S) built once,
    a block of S positions is one GEMM (v exp(x l0)) @ B, and backward is one GEMM per block too:

        dv[r, n] = conj(e0[n]) (g_blk @ B^H)[r, n]
        dx[n]    = conj(e0[n]) sum_r conj(v[r, n]) ((l g_blk) @ B^H)[r, n]       (e0 = exp(x l0))

    Nothing of size N x L exists; besides inputs and the (rows, L) output, memory is B (<= budget) and
    (rows, N)-sized block results. exp(x l0) takes its phase in float64 (see ``_exp_far``)."""

    @staticmethod
    def forward(ctx, v, x, L, budget):
        ctx.L, ctx.budget = L, budget
        ctx.save_for_backward(v, x)
        rows = v.reshape(-1, v.shape[-1])
        out = torch.empty(rows.shape[0], L, dtype=torch.promote_types(v.dtype, x.dtype), device=v.device)
        base = _shared_base(x, L, budget)
        S = base.shape[-1]
        for l0 in range(0, L, S):
            n = min(S, L - l0)
            scaled = rows if l0 == 0 else rows * _exp_far(x, l0)
            torch.matmul(scaled, base[:, :n], out=out[:, l0 : l0 + n])
        return out.reshape(*v.shape[:-1], L)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        v, x = ctx.saved_tensors
        need_v, need_x = ctx.needs_input_grad[:2]
        rows = v.reshape(-1, v.shape[-1])
        R = rows.shape[0]
        g = grad.reshape(R, ctx.L).to(rows.dtype)
        base = _shared_base(x, ctx.L, ctx.budget)
        S = base.shape[-1]
        base_h = base.conj().transpose(0, 1)  # (S, N)
        dv = torch.zeros_like(rows)
        dxr = torch.zeros_like(rows)
        ell = torch.arange(ctx.L, device=x.device, dtype=x.real.dtype)
        for l0 in range(0, ctx.L, S):
            n = min(S, ctx.L - l0)
            gb = g[:, l0 : l0 + n]
            both = torch.cat([gb, gb * ell[l0 : l0 + n]]) if need_x else gb  # (R or 2R, n)
            P = both @ base_h[:n]  # (., N)
            e0 = 1 if l0 == 0 else _exp_far(x, l0).conj()
            dv += e0 * P[:R]
            if need_x:
                dxr += e0 * P[R:]
        dx = (rows.conj() * dxr).sum(0) if need_x else None
        return (dv.reshape(v.shape) if need_v else None), dx, None, None


_keops_fn: list = []


def log_vandermonde_keops(v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """pykeops reduction over N of v_n exp(x_n l); complex numbers as real 2-vectors."""
    probe = _b.probe_keops()
    if not probe.ok:
        raise _d.BackendUnavailable(probe.reason)
    shape, _ = _rows(v, x)
    batch, N = math.prod(shape[:-1]), shape[-1]
    vr = torch.view_as_real(v.expand(shape).reshape(batch, N).resolve_conj())  # (batch, N, 2)
    xr = torch.view_as_real(x.expand(shape).reshape(batch, N).resolve_conj())
    ell = torch.arange(L, device=x.device, dtype=x.real.dtype).view(1, L, 1).expand(batch, L, 1).contiguous()
    if not _keops_fn:
        _keops_fn.append(
            probe.module.Genred(
                "ComplexMult(v, ComplexExp(ComplexRealScal(l, x)))",
                ["v = Vj(2)", "x = Vj(2)", "l = Vi(1)"],
                reduction_op="Sum",
                axis=1,
            )
        )
    backend = "GPU" if v.is_cuda else "CPU"
    r = _keops_fn[0](vr.contiguous(), xr.contiguous(), ell, backend=backend)  # (batch, L, 2)
    return torch.view_as_complex(r.contiguous()).reshape(*shape[:-1], L)


def _self_test_error(backend: str, device: torch.device) -> float:
    """``backend`` against :func:`log_vandermonde_torch` on a tiny problem: values and the gradients for v and x."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 5, dtype=torch.complex64, generator=g).to(device)
    x = torch.complex(-torch.rand(3, 5, generator=g) * 0.1, torch.randn(3, 5, generator=g)).to(device)
    return _d.max_relative_error(lambda v, x: OP.fns[backend](v, x, 13), lambda v, x: log_vandermonde_torch(v, x, 13),
                                 [v, x], lambda r: r.abs().square().sum())


def _tiny(call: _d.Call) -> str | None:
    return None if call.size <= _TINY else f"{call.size:,} elements > {_TINY:,}: blocked GEMMs are faster"


def _no_extension() -> _d.Probe:
    return _d.Probe(False, "the compiled extension has no Vandermonde kernel (only the Cauchy product); use chunked "
                           "(what auto takes)")


def _no_kernel(*args) -> torch.Tensor:
    raise _d.BackendUnavailable(_no_extension().reason)


def _example(device: torch.device) -> _d.Call:
    H, n, L = 256, 32, 4096
    return _d.Call(device, frozenset((torch.complex64,)), size=H * n * L)


#: the Vandermonde product's backends, in the order ``auto`` prefers them
OP = _d.Op("log_vandermonde", "Vandermonde", [
    _d.Impl("torch", log_vandermonde_torch, "materialised (N, L) matrix, tiny problem", auto=_tiny),
    _d.Impl("chunked", log_vandermonde_chunked, "blocked GEMMs, bounded memory"),
    _d.Impl("keops", log_vandermonde_keops, "pykeops reduction", probe=_b.probe_keops,
            self_test=lambda d: _self_test_error("keops", d), tol=1e-4, auto=False),
    _d.Impl("extension", _no_kernel, "none", probe=_no_extension, auto=False),
], example=_example, example_text="S4D, H=256, N=64, L=4096")
BACKENDS = OP.names
_IMPLS = OP.fns  # name -> function: what log_vandermonde() runs


def _call(v: torch.Tensor, x: torch.Tensor, L: int) -> _d.Call:
    return _d.Call(v.device, frozenset((v.dtype, x.dtype)), size=_rows(v, x)[1] * L)


def choose_backend(v: torch.Tensor, x: torch.Tensor, L: int, backend: str = "auto") -> str:
    """The backend :func:`log_vandermonde` runs for these inputs (``ssmkit/ops/dispatch.py``: a name that cannot
    run them is a one-line ``BackendUnavailable``)."""
    return OP.choose(backend, _call(v, x, L))


def log_vandermonde(v: torch.Tensor, x: torch.Tensor, L: int, backend: str = "auto") -> torch.Tensor:
    """sum_n v[..., n] exp(x[..., n] l) for l = 0..L-1; v, x (..., N) complex -> (..., L)."""
    return _IMPLS[choose_backend(v, x, L, backend)](v, x, L)


def log_vandermonde_transpose(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, L: int) -> torch.Tensor:
    """sum_l u[..., l] * v[..., n] * exp(x[..., n] * (L - 1 - l)) -> (..., N).

    The state reached after feeding u through s_k = exp(x) s_{k-1} + v u_k from a zero state (S4D
    eq. 5 unrolled). Computed blocked like ``chunked``: with l' = L-1-l = j c + m,
    sum_j exp(x j c) sum_m u'[j c + m] exp(x m), so nothing of size N x L is materialised.
    """
    c = max(1, math.isqrt(max(L - 1, 0)) + 1)
    J = -(-L // c)
    real = x.real.dtype
    u_rev = torch.nn.functional.pad(u.flip(-1), (0, J * c - L)).to(x.dtype)  # (..., J*c)
    u_blocks = u_rev.unflatten(-1, (J, c))  # (..., J, c)
    right = torch.exp(x.unsqueeze(-1) * torch.arange(c, device=x.device, dtype=real))  # (..., N, c)
    inner = torch.matmul(u_blocks, right.transpose(-1, -2))  # (..., J, N)
    outer = _exp_far(x.unsqueeze(-2), (c * torch.arange(J, device=x.device, dtype=torch.float64)).unsqueeze(-1))  # (..., J, N)
    return v * (inner * outer).sum(dim=-2)  # (..., N)
