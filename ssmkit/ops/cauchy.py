"""Cauchy products: r[..., l] = sum_n v[..., n] / (z[l] - w[..., n]).

The inner product of the S4 (DPLR) kernel (S4 paper, Gu et al. 2022, Lemma C.3 / eq. 6: the
generating function evaluated at the roots of unity). With ``conj=True`` the conjugate pairs are
added too, sum_n v_n/(z - w_n) + conj(v_n)/(z - conj(w_n)), so N/2 stored states stand for N.

Backends, all with the same value and gradient (the tests check it):

* ``torch``: materialises the (..., N, L) matrix; the reference.
* ``chunked``: plain torch over blocks of L sized so that no more than ``CHUNK_ELEMENTS`` N x L
  entries exist at once, in forward and in backward (backward recomputes each block).
* ``keops``: pykeops ``Genred`` on the tensors' device (CPU tensors run on the CPU).
* ``extension``: the compiled ``ssmkit_cauchy`` (C++ / CUDA); no gradient for z.
* ``auto``: the extension when it runs here, else ``torch`` for small and ``chunked`` for large problems.

The table :data:`OP` says what each supports; ``ssmkit/ops/dispatch.py`` chooses (the same rules for every op).
"""
from __future__ import annotations

import math

import torch

from ssmkit.ops import backends as _b
from ssmkit.ops import dispatch as _d
from ssmkit.ops.chunked import chunked_positions

# Above this many batch x N x L elements ``auto`` stops materialising; also the chunk budget.
CHUNK_ELEMENTS = 1 << 22


def _check(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> None:
    if z.dim() != 1:
        raise ValueError(f"cauchy: z must be 1-D (L,), got shape {tuple(z.shape)}")
    if v.shape[-1] != w.shape[-1]:
        raise ValueError(f"cauchy: v and w need the same last dim N, got {tuple(v.shape)} and {tuple(w.shape)}")


def _terms(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, conj: bool) -> torch.Tensor:
    """(..., L) by materialising (..., N, L)."""
    zz = z.unsqueeze(-2)  # (1, L)
    r = (v.unsqueeze(-1) / (zz - w.unsqueeze(-1))).sum(dim=-2)  # (..., L)
    if conj:
        r = r + (v.conj().unsqueeze(-1) / (zz - w.conj().unsqueeze(-1))).sum(dim=-2)
    return r


def cauchy_torch(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, conj: bool = True) -> torch.Tensor:
    """Materialises the (..., N, L) matrix. v, w: (..., N) complex; z: (L,) complex -> (..., L)."""
    _check(v, z, w)
    return _terms(v, z, w, conj)


def cauchy_chunked(
    v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, conj: bool = True, budget: int = CHUNK_ELEMENTS
) -> torch.Tensor:
    """Like :func:`cauchy_torch` in blocks of L holding at most ``budget`` N x L elements (and its grad)."""
    _check(v, z, w)
    rows = math.prod(torch.broadcast_shapes(v.shape, w.shape)[:-1]) * v.shape[-1]
    chunk = max(1, min(z.shape[0], budget // max(rows, 1)))

    def block(l0: int, n: int, v_, z_, w_):
        return _terms(v_, z_[l0 : l0 + n], w_, conj)

    return chunked_positions(block, z.shape[0], chunk, v, z, w)


_keops_fns: dict = {}


def cauchy_keops(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, conj: bool = True) -> torch.Tensor:
    """pykeops reduction over N without materialising; complex numbers as real 2-vectors.

    conj=True uses v/(z-w) + conj(v)/(z-conj(w)) = 2 (Re(v) z - Re(v conj(w))) / ((z-w)(z-conj(w))).
    """
    _check(v, z, w)
    probe = _b.probe_keops()
    if not probe.ok:
        raise _d.BackendUnavailable(probe.reason)
    shape = torch.broadcast_shapes(v.shape, w.shape)
    batch = math.prod(shape[:-1])
    N, L = shape[-1], z.shape[0]
    vr = torch.view_as_real(v.expand(shape).reshape(batch, N, 1).resolve_conj())  # (batch, N, 1, 2)
    wr = torch.view_as_real(w.expand(shape).reshape(batch, N, 1).resolve_conj())
    zr = torch.view_as_real(z.resolve_conj()).unsqueeze(0).expand(batch, L, 2).contiguous()  # (batch, L, 2)
    if conj not in _keops_fns:
        if conj:
            formula = "ComplexDivide(ComplexRealScal(z, ComplexReal(v)) - Real2Complex(v | w), ComplexMult(z - w, z - Conj(w)))"
        else:
            formula = "ComplexDivide(v, z - w)"
        _keops_fns[conj] = probe.module.Genred(
            formula, ["v = Vj(2)", "z = Vi(2)", "w = Vj(2)"], reduction_op="Sum", axis=1
        )
    backend = "GPU" if v.is_cuda else "CPU"
    r = _keops_fns[conj](vr.reshape(batch, N, 2), zr, wr.reshape(batch, N, 2), backend=backend)  # (batch, L, 2)
    if conj:
        r = 2 * r
    return torch.view_as_complex(r.contiguous()).reshape(*shape[:-1], L)


def _pole_dims(w_shape: torch.Size, shape: torch.Size) -> torch.Size | None:
    """The dimensions (before N) that w spans, if w broadcast to ``shape`` (..., N) is only repeated over
    the leading ones: then flattened row b of the broadcast uses w row b % P, P = their product."""
    w_dims = [1] * (len(shape) - len(w_shape)) + list(w_shape)
    k = len(shape) - 1
    while k > 0 and w_dims[k - 1] == shape[k - 1]:
        k -= 1
    return None if any(d != 1 for d in w_dims[:k]) else shape[k:-1]


class _ExtensionCauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, z, w, conj):
        ext = _b.probe_extension().module
        shape = torch.broadcast_shapes(v.shape, w.shape)
        batch, N = math.prod(shape[:-1]), shape[-1]
        dims = _pole_dims(w.shape, shape) if getattr(ext, "shares_poles", False) else None
        v2 = v.expand(shape).reshape(batch, N).resolve_conj().contiguous()
        if dims is None:  # every row gets its own copy of its poles
            dims = shape[:-1]
            w2 = w.expand(shape).reshape(batch, N).resolve_conj().contiguous()
        else:  # rows share poles: the extension forms each 1/(z - w) once for all of them
            w2 = w.reshape(math.prod(dims), N).resolve_conj().contiguous()
        z2 = z.resolve_conj().contiguous()
        ctx.save_for_backward(v2, z2, w2)
        ctx.conj, ctx.shape, ctx.v_shape, ctx.w_shape, ctx.w_dims = conj, shape, v.shape, w.shape, dims
        return ext.cauchy_fwd(v2, z2, w2, conj).reshape(*shape[:-1], z.shape[0])

    @staticmethod
    def backward(ctx, grad):
        ext = _b.probe_extension().module
        v2, z2, w2 = ctx.saved_tensors
        g = grad.reshape(v2.shape[0], z2.shape[0]).resolve_conj().contiguous()
        dv, dw = ext.cauchy_bwd(v2, z2, w2, g, ctx.conj)  # dw: one row per pole row, summed over sharers
        dv = dv.reshape(ctx.shape).sum_to_size(ctx.v_shape) if ctx.needs_input_grad[0] else None
        dw = dw.reshape(*ctx.w_dims, ctx.shape[-1]).sum_to_size(ctx.w_shape) if ctx.needs_input_grad[2] else None
        return dv, None, dw, None


def _call(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> _d.Call:
    """What a product needs from a backend (``z_grad``: a gradient with respect to z)."""
    size = math.prod(torch.broadcast_shapes(v.shape, w.shape)) * z.shape[-1]
    return _d.Call(v.device, frozenset((v.dtype, z.dtype, w.dtype)),
                   frozenset(("z_grad",)) if z.requires_grad else frozenset(), size)


def _extension_check(call: _d.Call) -> str | None:
    if call.device.type == "cuda" and not _b.probe_extension().module.has_cuda():
        return "ssmkit_cauchy was built without its CUDA part (nvcc or a CUDA torch missing at build time)"
    if len(call.dtypes) != 1:
        return f"needs one complex dtype for v, z and w, got {', '.join(sorted(map(str, call.dtypes)))}"
    return None


def cauchy_extension(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, conj: bool = True) -> torch.Tensor:
    """The compiled kernel (O(N + L) memory, gradient for v and w)."""
    _check(v, z, w)
    why = OP.why_not("extension", _call(v, z, w), test=False)
    if why:
        raise _d.BackendUnavailable(why)
    return _ExtensionCauchy.apply(v, z, w, conj)


def _self_test_error(backend: str, device: torch.device) -> float:
    """``backend`` against :func:`cauchy_torch` on a tiny problem: values and the gradients for v and w."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 7, dtype=torch.complex64, generator=g).to(device)
    w = torch.complex(-torch.rand(3, 7, generator=g), torch.randn(3, 7, generator=g)).to(device)
    z = torch.exp(2j * math.pi * torch.arange(11) / 20).to(torch.complex64).to(device)
    return _d.max_relative_error(lambda v, w: OP.fns[backend](v, z, w, True), lambda v, w: cauchy_torch(v, z, w, True),
                                 [v, w], lambda r: r.abs().square().sum())


def _small(call: _d.Call) -> str | None:
    if call.size > CHUNK_ELEMENTS:
        return f"{call.size:,} elements > CHUNK_ELEMENTS ({CHUNK_ELEMENTS:,}): chunked bounds the memory"
    return None


def _example(device: torch.device) -> _d.Call:
    H, n, L = 256, 32, 4096
    return _d.Call(device, frozenset((torch.complex64,)), size=H * n * (L // 2 + 1))


#: the Cauchy product's backends, in the order ``auto`` prefers them
OP = _d.Op("cauchy", "Cauchy", [
    _d.Impl("extension", cauchy_extension, "compiled C++/CUDA kernel", probe=_b.probe_extension,
            devices=("cpu", "cuda"), dtypes=(torch.complex64, torch.complex128), features=frozenset(),
            check=_extension_check, self_test=lambda d: _self_test_error("extension", d), tol=1e-4),
    _d.Impl("torch", cauchy_torch, "materialised (N, L) matrix", auto=_small),
    _d.Impl("chunked", cauchy_chunked, "blocks of positions, bounded memory"),
    _d.Impl("keops", cauchy_keops, "pykeops reduction", probe=_b.probe_keops,
            self_test=lambda d: _self_test_error("keops", d), tol=1e-4, auto=False),
], needs={"z_grad": "it has no gradient with respect to z"}, example=_example, example_text="S4, H=256, N=64, L=4096")
BACKENDS = OP.names
_IMPLS = OP.fns  # name -> function: what cauchy() runs


def choose_backend(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, backend: str = "auto") -> str:
    """The backend :func:`cauchy` runs for these inputs (``ssmkit/ops/dispatch.py``: a name that cannot run them
    is a one-line ``BackendUnavailable``)."""
    return OP.choose(backend, _call(v, z, w))


def cauchy(v: torch.Tensor, z: torch.Tensor, w: torch.Tensor, conj: bool = True, backend: str = "auto") -> torch.Tensor:
    """sum_n v_n/(z_l - w_n) [+ conj(v_n)/(z_l - conj(w_n))]; v, w (..., N), z (L,) -> (..., L)."""
    return _IMPLS[choose_backend(v, z, w, backend)](v, z, w, conj)
