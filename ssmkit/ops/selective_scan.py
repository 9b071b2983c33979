"""The selective scan of Mamba (Gu and Dao 2023, Algorithm 2): in plain torch, fused in ssmkit's C++ extension on
the CPU, and an optional fused CUDA backend.

    h_t = exp(delta_t * A) h_{t-1} + delta_t * B_t * u_t        h: (batch, D, N) per step
    y_t = C_t . h_t + D * u_t                 (times silu(z_t) with the block's gate z: ``selective_scan(..., z=)``)

with u, delta (batch, D, L), a real diagonal A (D, N) (Mamba: A = -exp(A_log) < 0), input-dependent
B, C (batch, N, L) shared by the D channels, an optional skip D (D,) and an optional start state h0
(batch, D, N). ``selective_scan`` returns y (batch, D, L) and the last state (batch, D, N).

How it runs (``backend="torch"``). Time is cut into chunks read one after another, the state carried
across them. Within a chunk, everything is parallel in log space: with S_t = sum_{0<s<=t} delta_s A (the
log of the decay after the chunk's first step),

    h_t = exp(S_t) * (exp(delta_0 A) h_start + sum_{s<=t} exp(-S_s) x_s),      x_s = delta_s B_s u_s,

one cumulative sum. exp(-S_s) grows within the chunk; a chunk whose total log decay exceeds
``LOG_LIMIT`` (60 in float32, 600 in float64; exp(60) ~ 1e26) is split in halves, recursively, so
nothing overflows whatever delta * A is (a chunk of length 1 is the plain recurrence). Only the chunks'
start states are kept; the backward pass walks the chunks from the end, recomputes each one's states
and applies its hand-written vector-Jacobian product (reverse cumulative sums; the gradient of the next
chunk's start state flows into the end state of this one), so memory is O(batch * D * L) plus one chunk's (batch, D, N, T)
temporaries, in forward and backward.

Precision: the scan runs in float32 (float64 for float64 inputs) with autocast disabled, so bf16/fp16
training never accumulates the recurrence in half precision; y comes back in u's dtype.

``backend="extension"`` is the fused CPU scan of ssmkit's compiled extension (``ssmkit_cauchy``, source
``extensions/cauchy/csrc/selective_scan_cpu.cpp``): one pass over time per (batch, channel) row with the N
states in vector registers, the decays by a vectorised exp, AVX2+FMA where the CPU has them; the same chunk
start states are kept and backward recomputes each chunk (memory O(batch * D * (L + N * L / chunk))). It
needs no splitting: the recurrence itself never divides by a decay. ``auto`` takes it on CPU tensors when the
extension is built and passed its self-test; at B 8, E 256, N 16, L 4096 it is 14x faster than the torch
scan forward+backward (``scripts/bench_mamba.py``, ``docs/performance.md``). The skip D and the gate z are fused
into it; the other backends apply them after the scan.

``backend="mamba_ssm"`` is the fused CUDA kernel of the ``mamba_ssm`` package (``selective_scan_fn``),
used only on CUDA tensors and without a start state (it has none); its final state carries no gradient (its
backward drops it: a Mamba that backpropagates through a returned state needs ``torch``); ``auto`` takes it when it imports and
passed its self-test against ours on that device, otherwise ``torch``. The table :data:`OP` says what each
supports and ``ssmkit/ops/dispatch.py`` chooses: self-tests (values and gradients) run with gradients on whatever
the caller's mode, so a first call under ``no_grad`` or ``inference_mode`` picks the same backend; an ``auto``
fallback is logged with its reason; a backend named that cannot run a call is a one-line error. Every backend is
checked against a float64 recurrence in ``tests/ops/test_selective_scan.py``.
"""
from __future__ import annotations

import torch

from ssmkit.ops import backends, dispatch

#: positions per chunk: the (batch, D, N, CHUNK) temporaries are the scan's working memory
CHUNK = 64
#: the largest |log decay| a chunk may span before it is split (exp(-S) must stay finite)
LOG_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}


def _too_long(S: torch.Tensor) -> bool:
    """Whether a chunk's log decays S (b, D, N, T) span more than exp can hold both ways."""
    lo, hi = torch.aminmax(S)
    return S.shape[-1] > 1 and max(-lo.item(), hi.item()) > LOG_LIMIT[S.dtype]


def _log_decays(dA: torch.Tensor) -> torch.Tensor:
    """S_t = sum_{0<s<=t} dA_s (b, D, N, T), S_0 = 0. Summed from step 1, not as cumsum(dA) - dA_0: a first step
    with a huge log decay (delta 1e4 times A -1e3 is -1e7) would swallow the later small ones in float32
    and leave only its rounding error (the scan was 1.4e-2 off the float64 recurrence that way)."""
    return torch.nn.functional.pad(dA[..., 1:].cumsum(-1), (1, 0))


def _chunk(u, delta, A, B, C, h):
    """One chunk: u, delta (b, D, T), A (D, N), B, C (b, N, T), h (b, D, N) -> y (b, D, T), h_end (b, D, N)."""
    dA = delta.unsqueeze(2) * A.unsqueeze(-1)  # (b, D, N, T): the log decay of each step
    S = _log_decays(dA)  # log of the decay from the end of step 0 to the end of step t
    if _too_long(S):
        half = u.shape[-1] // 2
        y1, h = _chunk(u[..., :half], delta[..., :half], A, B[..., :half], C[..., :half], h)
        y2, h = _chunk(u[..., half:], delta[..., half:], A, B[..., half:], C[..., half:], h)
        return torch.cat([y1, y2], -1), h
    x = (delta * u).unsqueeze(2) * B.unsqueeze(1)  # (b, D, N, T)
    hs = S.exp() * (dA[..., :1].exp() * h.unsqueeze(-1) + (x * (-S).exp()).cumsum(-1))  # (b, D, N, T)
    return (hs * C.unsqueeze(1)).sum(2), hs[..., -1]


def _reverse_cumsum(g: torch.Tensor) -> torch.Tensor:
    """sum_{t' >= t} g_t' over the last dimension, summed from the end: total - cumsum would lose the small
    late sums to cancellation, and exp(-S) multiplies them by up to exp(LOG_LIMIT)."""
    return g.flip(-1).cumsum(-1).flip(-1)


def _chunk_backward(u, delta, A, B, C, h, gy, gh):
    """The vector-Jacobian product of ``_chunk`` for output gradients gy (b, D, T), gh (b, D, N):
    du, ddelta (b, D, T), dA (D, N), dB, dC (b, N, T), dh (b, D, N). Recomputes the chunk's states."""
    du_ = u * delta
    dA = delta.unsqueeze(2) * A.unsqueeze(-1)
    S = _log_decays(dA)
    if _too_long(S):
        half = u.shape[-1] // 2
        first = [t[..., :half] for t in (u, delta)], [t[..., :half] for t in (B, C)]
        second = [t[..., half:] for t in (u, delta)], [t[..., half:] for t in (B, C)]
        _, h_mid = _chunk(*first[0], A, *first[1], h)
        g2 = _chunk_backward(*second[0], A, *second[1], h_mid, gy[..., half:], gh)
        g1 = _chunk_backward(*first[0], A, *first[1], h, gy[..., :half], g2[5])
        return (torch.cat([g1[0], g2[0]], -1), torch.cat([g1[1], g2[1]], -1), g1[2] + g2[2],
                torch.cat([g1[3], g2[3]], -1), torch.cat([g1[4], g2[4]], -1), g1[5])
    E, inv = S.exp(), (-S).exp()
    a0 = dA[..., :1].exp()  # (b, D, N, 1): the first step's decay
    base = a0 * h.unsqueeze(-1)
    x = du_.unsqueeze(2) * B.unsqueeze(1)  # (b, D, N, T)
    xi = x * inv
    hs = E * (base + xi.cumsum(-1))
    g_hs = gy.unsqueeze(2) * C.unsqueeze(1)
    g_hs[..., -1] += gh
    dC = (gy.unsqueeze(2) * hs).sum(1)
    g_c = g_hs * E  # the gradient of the running sum (base + cumsum) at each t
    g_xi = _reverse_cumsum(g_c)
    g_base = g_xi[..., :1]
    dh = (g_base * a0)[..., 0]
    g_S = g_hs * hs - g_xi * xi  # through exp(S) and exp(-S)
    # S_t sums the log decays of steps 1..t; step 0's enters through a0 only
    g_dA = torch.cat([g_base * base, _reverse_cumsum(g_S[..., 1:])], -1)
    g_x = g_xi * inv
    dA = (g_dA * delta.unsqueeze(2)).sum((0, 3))
    g_du = (g_x * B.unsqueeze(1)).sum(2)
    dB = (g_x * du_.unsqueeze(2)).sum(1)
    ddelta = (g_dA * A.unsqueeze(-1)).sum(2) + g_du * u
    return g_du * delta, ddelta, dA, dB, dC, dh


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk):
        L = u.shape[-1]
        h = h0
        starts, ys = [], []
        for t0 in range(0, L, chunk):
            t1 = min(L, t0 + chunk)
            starts.append(h)
            y, h = _chunk(u[..., t0:t1], delta[..., t0:t1], A, B[..., t0:t1], C[..., t0:t1], h)
            ys.append(y)
        ctx.save_for_backward(u, delta, A, B, C, *starts)
        ctx.chunk = chunk
        return torch.cat(ys, -1), h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dh_last):
        u, delta, A, B, C, *starts = ctx.saved_tensors
        L, chunk = u.shape[-1], ctx.chunk
        du, ddelta, dB, dC = (torch.empty_like(t) for t in (u, delta, B, C))
        dA = torch.zeros_like(A)
        dh = torch.zeros_like(starts[0]) if dh_last is None else dh_last.contiguous()
        dy = torch.zeros_like(u) if dy is None else dy
        for i in reversed(range(len(starts))):
            t0, t1 = i * chunk, min(L, (i + 1) * chunk)
            sl = [t[..., t0:t1] for t in (u, delta, B, C)]
            g = _chunk_backward(sl[0], sl[1], A, sl[2], sl[3], starts[i], dy[..., t0:t1], dh)
            du[..., t0:t1], ddelta[..., t0:t1], dB[..., t0:t1], dC[..., t0:t1] = g[0], g[1], g[3], g[4]
            dA += g[2]
            dh = g[5]
        return du, ddelta, dA, dB, dC, dh, None


def _check(u, delta, A, B, C, D, h0) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan: u and delta must both be (batch, D, L), got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, d, L = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (D, N) with D={d}, got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (b, n, L):
            raise ValueError(f"selective_scan: {name} must be (batch, N, L) = {(b, n, L)}, got {tuple(t.shape)}")
    if D is not None and D.shape != (d,):
        raise ValueError(f"selective_scan: D must be ({d},), got {tuple(D.shape)}")
    if h0 is not None and h0.shape != (b, d, n):
        raise ValueError(f"selective_scan: the start state must be (batch, D, N) = {(b, d, n)}, got {tuple(h0.shape)}")


def _as_scan_dtype(u, delta, A, B, C, h0):
    """The inputs in the scan's precision (float64 if any of u, delta, A is, else float32), h0 zeros if None."""
    dtype = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype) else torch.float32
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    h0 = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if h0 is None else h0.to(dtype)
    return u, delta, A, B, C, h0


def _torch_scan(u, delta, A, B, C, h0, chunk, D=None, z=None):
    u, delta, A, B, C, h0 = _as_scan_dtype(u, delta, A, B, C, h0)
    if u.shape[-1] == 0:  # an empty sequence: no output, the state unchanged
        y, last = u * 0, h0 * 1
    else:
        y, last = _SelectiveScan.apply(u, delta, A, B, C, h0, chunk)
    return _skip_and_gate(y, u, D, z), last


def _skip_and_gate(y, u, D, z):
    """y + D u, times silu(z): what a backend that does not fuse them leaves to do."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype).unsqueeze(-1)
    if z is not None:
        y = y * torch.nn.functional.silu(z.to(y.dtype))
    return y


# --- the fused CPU scan of ssmkit's extension ---
class _ExtensionScan(torch.autograd.Function):
    """B and C go to the extension transposed, (batch, L, N): a step then reads N contiguous numbers. The skip D
    and the gate z (either may be None) are fused into the scan."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, D, z, chunk):
        mod = backends.probe_extension().module
        u, delta, A, h0 = (t.contiguous() for t in (u, delta, A, h0))
        D, z = (None if t is None else t.contiguous() for t in (D, z))
        Bt, Ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        y, last, starts = mod.selective_scan_fwd(u, delta, A, Bt, Ct, h0, D, z, chunk)
        ctx.save_for_backward(u, delta, A, Bt, Ct, starts, D, z)
        ctx.chunk, ctx.mod = chunk, mod
        return y, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dh_last):
        u, delta, A, Bt, Ct, starts, D, z = ctx.saved_tensors
        dy = torch.zeros_like(u) if dy is None else dy.contiguous()
        dh = u.new_zeros(u.shape[0], u.shape[1], A.shape[1]) if dh_last is None else dh_last.contiguous()
        du, ddelta, dA, dBt, dCt, dh0, dD, dz = ctx.mod.selective_scan_bwd(u, delta, A, Bt, Ct, starts, D, z, dy, dh,
                                                                           ctx.chunk)
        return du, ddelta, dA, dBt.transpose(1, 2), dCt.transpose(1, 2), dh0, dD, dz, None


def _extension_scan(u, delta, A, B, C, h0, chunk, D=None, z=None):
    u, delta, A, B, C, h0 = _as_scan_dtype(u, delta, A, B, C, h0)
    D, z = (None if t is None else t.to(u.dtype) for t in (D, z))
    return _ExtensionScan.apply(u, delta, A, B, C, h0, D, z, chunk)


def _self_test_error(name: str, device: torch.device) -> float:
    """Max difference between backend ``name`` and the torch scan on a small problem (float32), values and
    gradients, with the skip D, the gate z and (where it takes one) a start state. The gradient flows from y and,
    except for mamba_ssm, from the final state: mamba_ssm's backward ignores the final state's gradient (as its
    Mamba never backpropagates through it), so testing that would fail the kernel on every machine."""
    g = torch.Generator().manual_seed(0)
    b, d, n, L = 2, 5, 6, 150  # n not a multiple of the vector width; L not a multiple of the chunk
    args = {"u": torch.randn(b, d, L, generator=g), "delta": torch.rand(b, d, L, generator=g) * 0.2 + 1e-3,
            "A": -torch.rand(d, n, generator=g) * 4, "B": torch.randn(b, n, L, generator=g),
            "C": torch.randn(b, n, L, generator=g), "h0": torch.randn(b, d, n, generator=g),
            "D": torch.randn(d, generator=g), "z": torch.randn(b, d, L, generator=g)}
    features = OP.impls[name].features
    if features is not None and "start_state" not in features:
        del args["h0"]
    keys = list(args)

    def run(backend):
        return lambda *a: OP.fns[backend](**{"h0": None, **dict(zip(keys, a)), "chunk": CHUNK})

    state_grad = name not in _NO_STATE_GRADIENT
    return dispatch.max_relative_error(run(name), run("torch"), [t.to(device) for t in args.values()],
                                       lambda y, h: y.square().sum() + (h.sum() if state_grad else 0))


#: backends whose final state carries no gradient (the values are still tested)
_NO_STATE_GRADIENT = frozenset(("mamba_ssm",))


def _extension_reason() -> str | None:
    """None if the extension's CPU scan can run (``OP``'s reason on the CPU), else why not."""
    return OP.why_not("extension", dispatch.float32_call(torch.device("cpu")))


# --- the optional fused backend (mamba_ssm) ---
def _fused_scan(u, delta, A, B, C, h0, chunk, D=None, z=None):
    """mamba_ssm's kernel (no start state: the table says so); the skip and the gate applied after it."""
    fn = backends.probe_mamba_ssm().module.selective_scan_fn
    dtype = torch.float32 if u.dtype in (torch.float16, torch.bfloat16) else u.dtype
    with torch.autocast(device_type=u.device.type, enabled=False):
        y, last = fn(u.to(dtype).contiguous(), delta.to(dtype).contiguous(), A.float().contiguous(),
                     B.to(dtype).contiguous(), C.to(dtype).contiguous(), return_last_state=True)
    return _skip_and_gate(y, u, D, z), last


#: the selective scan's backends, in the order ``auto`` prefers them
OP = dispatch.Op("selective_scan", "selective-scan", [
    dispatch.Impl("extension", _extension_scan, "fused C++ scan", devices=("cpu",),
                  probe=backends.extension_kernel("selective_scan_fwd", "selective scan"),
                  self_test=lambda d: _self_test_error("extension", d), tol=1e-4),
    dispatch.Impl("mamba_ssm", _fused_scan, "fused CUDA kernel", devices=("cuda",), probe=backends.probe_mamba_ssm,
                  dtypes=(torch.float32, torch.float16, torch.bfloat16), features=frozenset(),
                  self_test=lambda d: _self_test_error("mamba_ssm", d), tol=1e-3),
    dispatch.Impl("torch", _torch_scan, "chunked log-space scan"),
], needs={"start_state": "it takes no start state"}, example=dispatch.float32_call, example_text="Mamba, float32")
BACKENDS = OP.names


def choose_backend(u: torch.Tensor, h0, backend: str = "auto") -> str:
    """The backend :func:`selective_scan` runs for these inputs (``ssmkit/ops/dispatch.py``): ``auto`` takes the
    extension on CPU tensors and ``mamba_ssm`` on CUDA ones where they run; a name that cannot run them is a
    one-line ``BackendUnavailable``."""
    needs = frozenset(("start_state",)) if h0 is not None else frozenset()
    return OP.choose(backend, dispatch.Call(u.device, frozenset((u.dtype,)), needs))


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    chunk: int = CHUNK,
    backend: str = "auto",
    z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y (batch, D, L) and the last state (batch, D, N) of Mamba's selective SSM (see the module docstring);
    with a gate z, y = (C . h + D u) * silu(z), the Mamba block's gating fused into the scan where the backend can.

    Args:
        u, delta: (batch, D, L); delta > 0 (the discretisation step, already through softplus).
        A: (D, N), real (negative for a stable recurrence).
        B, C: (batch, N, L).
        D: (D,) skip, or None.
        h0: (batch, D, N) start state, or None for zeros.
        chunk: positions per chunk of the torch scan.
        backend: ``auto`` | ``torch`` | ``extension`` | ``mamba_ssm``.
        z: (batch, D, L) gate, or None.
    """
    _check(u, delta, A, B, C, D, h0)
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: the gate z must be (batch, D, L) = {tuple(u.shape)}, got {tuple(z.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    with torch.autocast(device_type=u.device.type, enabled=False):
        y, last = OP.fns[choose_backend(u, h0, backend)](u, delta, A, B, C, h0, chunk, D, z)
    return y.to(u.dtype) if u.dtype in (torch.float16, torch.bfloat16) else y, last


def selective_step(u, delta, A, B, C, D, h):
    """One step of the recurrence: u, delta (batch, D), B, C (batch, N), h (batch, D, N) -> y (batch, D), h."""
    with torch.autocast(device_type=u.device.type, enabled=False):
        dtype = h.dtype
        u, delta, B, C = (t.to(dtype) for t in (u, delta, B, C))
        h = torch.exp(delta.unsqueeze(-1) * A.to(dtype)) * h + (delta * u).unsqueeze(-1) * B.unsqueeze(1)
        y = (h * C.unsqueeze(1)).sum(-1)
        if D is not None:
            y = y + D.to(dtype) * u
    return y, h
