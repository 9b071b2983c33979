"""The linear recurrence h_t = a_t * h_{t-1} + b_t, computed in parallel over time in plain torch.

    linear_scan(a, b, h0=None) -> (h (..., L), h_last (...))

Elementwise (diagonal) recurrences, real or complex: b is (..., L) with time last; a broadcasts against b
(e.g. (P, 1) for one time-invariant eigenvalue per state shared by a (B, P, L) batch, or (B, D, N, L) for
a selective, time-varying scan); h0 broadcasts against b[..., 0] (zeros when None).

How it runs. Time is cut into chunks read one after another (the state is carried across chunks), and
every chunk is solved in parallel:
- time-varying a: a Hillis-Steele (doubling) scan, log2(chunk) steps of elementwise products and sums,
  only ever multiplying a's together (no division by cumulative products, which underflow);
- time-invariant a (its time dimension is 1): every chunk from a zero state is h = M b with the
  (chunk x chunk) lower-triangular Toeplitz matrix M[t, s] = a^(t-s) (one batched GEMM for all chunks);
  the states entering the chunks are the same recurrence over the chunk ends with decay a^chunk (solved
  by this function again, L / chunk long), added as a^(t+1) h_start.
The backward pass is the adjoint recurrence g_t = dh_t + conj(a_{t+1}) g_{t+1}, the same scan run from the
end (an autograd Function), so neither direction keeps per-step intermediates: memory is the output h,
its gradient, and chunk-sized temporaries.

Precision: the scan runs in float32 / complex64 (float64 / complex128 for double inputs) with autocast
disabled, so bf16/fp16 training never accumulates a recurrence in half precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops.vandermonde import _flush

#: chunk lengths: doubling steps are log2(chunk) passes; the Toeplitz GEMM costs chunk MACs per element
CHUNK_VARYING = 256
CHUNK_INVARIANT = 32


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.complex32: torch.complex64}.get(dtype, dtype)


def _reduce_to(grad: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Sums ``grad`` over the dimensions that were broadcast to reach it from ``shape``; real part for real inputs."""
    if not dtype.is_complex and grad.is_complex():
        grad = grad.real
    extra = grad.dim() - len(shape)
    if extra:
        grad = grad.sum(dim=tuple(range(extra)))
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad.to(dtype)


def _toeplitz_powers(a: torch.Tensor, T: int, a_wide: torch.Tensor | None = None):
    """a (..., 1) -> M (..., T, T) with M[t, s] = a^(t-s) for s <= t (else 0), a^(t+1) (..., T), and a^T (..., 1)
    in double precision (the next level's decay).

    The powers are repeated products (a cumulative product of [1, a, ..., a]) in float64 / complex128, never
    ``a ** k`` or exp(k log a): torch gives NaN for the complex 0 ** 0 (a decay that underflowed to 0 at an
    upper level of the recursion: 0.05^1024, or 0.9^1024 in float32), and log 0 = -inf. A product that
    underflows is an exact 0, and |a| <= 1 never overflows. Double precision keeps the phase: k products
    lose ~k ulps of float64, where a float32 exp(k log a) would lose ~k ulps of float32 and compound over
    the levels. ``a_wide`` is a in double precision when the caller has it (a^T of the level above), so no
    level starts from a value rounded to float32. Entries below the smallest normal number are flushed to 0
    (``vandermonde._flush``): decayed powers land in float32's denormals, which slow a GEMM on x86 many-fold.
    """
    wide = torch.complex128 if a.is_complex() else torch.float64
    aw = a.to(wide) if a_wide is None else a_wide
    powers = torch.cat([torch.ones_like(aw), aw.expand(*aw.shape[:-1], T)], dim=-1).cumprod(dim=-1)  # a^0 .. a^T
    k = torch.arange(T, device=a.device)
    lag = k[:, None] - k[None, :]  # (T, T): t - s
    M = powers[..., lag.clamp(min=0)] * (lag >= 0)
    return _flush(M, a.dtype), _flush(powers[..., 1:], a.dtype), powers[..., T:]


def _scan_chunked(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, chunk: int | None, a_wide: torch.Tensor | None = None
) -> torch.Tensor:
    """The forward recurrence without autograd: all h (shape of a * b). ``a_wide``: a time-invariant a in
    double precision (see ``_toeplitz_powers``)."""
    L = b.shape[-1]
    shape = torch.broadcast_shapes(a.shape, b.shape)
    if a.shape[-1] == 1:
        T = min(L, chunk or CHUNK_INVARIANT)
        n_chunks = -(-L // T)
        M, a_pow, a_T = _toeplitz_powers(a, T, a_wide)  # (..., T, T), (..., T), (..., 1) double
        bc = F.pad(b, (0, n_chunks * T - L)).unflatten(-1, (n_chunks, T))  # (..., n_chunks, T)
        # every chunk from a zero state; einsum makes it one GEMM per state row of M (2x faster than matmul's broadcast)
        local = torch.einsum("...ct,...st->...cs", bc, M)
        # the state entering each chunk: the same recurrence over the chunk ends, with decay a^T
        ends = local[..., T - 1]  # (..., n_chunks)
        if n_chunks > 1:
            starts = _scan_chunked(a_pow[..., T - 1 :], ends[..., :-1], h0, chunk, a_T)
        else:
            starts = ends[..., :0]
        if h0 is not None:
            starts = torch.cat([h0.expand(starts.shape[:-1]).unsqueeze(-1), starts], dim=-1)
        else:
            starts = F.pad(starts, (1, 0))
        out = local + a_pow.unsqueeze(-2) * starts.unsqueeze(-1)  # (..., n_chunks, T)
        return out.flatten(-2)[..., :L].expand(shape)
    T = min(L, chunk or CHUNK_VARYING)
    out = torch.empty(shape, dtype=b.dtype, device=b.device)
    h = None if h0 is None else h0.expand(shape[:-1])
    for t0 in range(0, L, T):
        n = min(T, L - t0)
        x = b[..., t0 : t0 + n].expand(*shape[:-1], n).clone()
        A = a[..., t0 : t0 + n].expand(*shape[:-1], n).clone()
        k = 1
        while k < n:  # Hillis-Steele: after the step for k, x_t sums the last 2k inputs, A_t their decay
            x[..., k:] = x[..., k:] + A[..., k:] * x[..., :-k]
            if 2 * k < n:
                A[..., k:] = A[..., k:] * A[..., :-k]
            k *= 2
        if h is not None:
            x = x + torch.cumprod(a[..., t0 : t0 + n].expand(*shape[:-1], n), dim=-1) * h.unsqueeze(-1)
        out[..., t0 : t0 + n] = x
        h = out[..., t0 + n - 1]
    return out


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0, chunk):
        h = _scan_chunked(a, b, h0, chunk)
        ctx.save_for_backward(a, h0, h)
        ctx.shapes = (a.shape, b.shape, None if h0 is None else h0.shape)
        ctx.dtypes = (a.dtype, b.dtype, None if h0 is None else h0.dtype)
        ctx.chunk = chunk
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh):
        a, h0, h = ctx.saved_tensors
        a_shape, b_shape, h0_shape = ctx.shapes
        a_dtype, b_dtype, h0_dtype = ctx.dtypes
        dh = dh.to(h.dtype)
        ac = a.conj()
        # g_t = dh_t + conj(a_{t+1}) g_{t+1}: the forward scan on reversed time, with a shifted by one
        if a.shape[-1] == 1:
            a_rev = ac
        else:
            a_rev = torch.cat([torch.zeros_like(ac[..., :1]), ac[..., 1:].flip(-1)], dim=-1)
        g = _scan_chunked(a_rev, dh.flip(-1), None, ctx.chunk).flip(-1)
        da = dh0 = None
        if ctx.needs_input_grad[0]:
            if a.shape[-1] == 1:
                da = (g[..., 1:] * h[..., :-1].conj()).sum(-1, keepdim=True)
                if h0 is not None:
                    da = da + g[..., :1] * h0.conj().unsqueeze(-1)
            else:
                first = torch.zeros_like(h[..., :1]) if h0 is None else h0.expand(h.shape[:-1]).unsqueeze(-1)
                da = g * torch.cat([first, h[..., :-1]], dim=-1).conj()  # g_t conj(h_{t-1})
            da = _reduce_to(da, a_shape, a_dtype)
        db = _reduce_to(g, b_shape, b_dtype) if ctx.needs_input_grad[1] else None
        if h0 is not None and ctx.needs_input_grad[2]:
            dh0 = _reduce_to(ac[..., 0] * g[..., 0], h0_shape, h0_dtype)
        return da, db, dh0, None


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All states of h_t = a_t * h_{t-1} + b_t (h_{-1} = h0 or 0) and the last one.

    Args:
        a: the decays, broadcastable to b; a time dimension of 1 means the same a at every step.
        b: the inputs (..., L), time last.
        h0: the state before the first input, broadcastable to b.shape[:-1]; None means zeros.
        chunk: positions solved in parallel at once (default 32 for time-invariant a, 256 otherwise).
    Returns:
        h (broadcast shape of a and b, dtype at least float32 / complex64) and h[..., -1].
    """
    if b.dim() < 1 or b.shape[-1] == 0:
        raise ValueError(f"linear_scan needs b of shape (..., L) with L >= 1, got {tuple(b.shape)}")
    if a.dim() == 0 or a.shape[-1] not in (1, b.shape[-1]):
        raise ValueError(f"linear_scan: a's last (time) dimension must be 1 or L={b.shape[-1]}, got a of shape {tuple(a.shape)}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive integer or None, got {chunk}")
    dtype = _compute_dtype(a, b, h0)
    with torch.autocast(device_type=b.device.type, enabled=False):
        a, b = a.to(dtype), b.to(dtype)
        h0 = None if h0 is None else h0.to(dtype)
        h = _LinearScan.apply(a, b, h0, chunk)
    return h, h[..., -1]
