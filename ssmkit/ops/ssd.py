"""Mamba-2's state-space duality (SSD) scan: a selective SSM whose decay is one scalar per head and time step,
computed by the chunked (block-decomposition) algorithm in plain torch.

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T          h: (headdim P, d_state N) per head, A < 0 one scalar per head
    y_t = h_t C_t + D x_t                              B_t, C_t: (N,), shared by the heads of one group

    ssd_scan(x (b, heads, P, L), dt (b, heads, L), A (heads,), B, C (b, groups, N, L), D, h0) -> (y, h_last)

(Dao and Gu 2024, "Transformers are SSMs", section 6 and Listing 1; state-spaces/mamba
``mamba_ssm/modules/ssd_minimal.py``.) Head h reads the B/C of group h // (heads / groups), as the official kernels.

How it runs. Time is cut into chunks of Q positions (the sequence is right-padded with dt = 0, which leaves the
state unchanged, to a multiple of Q). With a_t = dt_t A (the log decay, <= 0) and its cumulative sums within each
chunk:
1. inside a chunk the output is the quadratic (attention-like) form y_l = sum_{s <= l} (C_l . B_s)
   exp(a_{s+1} + ... + a_l) dt_s x_s: the (Q x Q) decay matrix is exp(segsum(a)), the segment sums computed by a
   cumulative sum of a masked copy of a (no difference of cumulative sums, which cancels), -inf above the
   diagonal (exp gives exactly 0 there, and so does its gradient);
2. each chunk's own end state sum_s exp(a_{s+1} + ... + a_Q) dt_s x_s B_s^T, the suffix sums again computed
   without differences;
3. the states entering the chunks: the recurrence S_c = exp(sum of chunk c-1's a) S_{c-1} + state_{c-1} from h0,
   a time-varying diagonal scan over L / Q steps (``ssmkit.ops.scan.linear_scan``, doubling scan, its own backward);
4. each position adds C_l S_c exp(a_1 + ... + a_l) (the state entering its chunk, decayed to it).
Memory: O(b heads L Q) for the decay and score matrices, O(b heads P N L / Q) for the chunk states; never a
(L x L) matrix or a state per position. Computed in float32 (float64 for double inputs) with autocast off, so
bf16/fp16 training never accumulates the recurrence in half precision; y comes back in that dtype.

``backend``: ``torch`` (the above) or ``mamba_ssm`` (``mamba_chunk_scan_combined``, the Triton kernel of the
optional ``mamba_ssm`` package, CUDA only); ``auto`` takes ``mamba_ssm`` on CUDA tensors when it imports and passes
a self-test against the torch path, else torch (the table :data:`OP`, chosen from by ``ssmkit/ops/dispatch.py``).
``ssd_step`` is one position of the recurrence (decoding).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops import backends, dispatch

#: positions per chunk: the intra-chunk form costs O(Q) per position, the chunk states O(P N / Q)
CHUNK = 64


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def segsum(a: torch.Tensor) -> torch.Tensor:
    """a (..., Q) -> S (..., Q, Q): S[t, s] = a[s+1] + ... + a[t] for s <= t (0 on the diagonal), -inf above it.

    Each entry is a cumulative sum of a masked copy of a (the entries s < k <= t), never cumsum[t] - cumsum[s]:
    a difference of two large cumulative sums loses the small decays between them."""
    Q = a.shape[-1]
    strict = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)
    x = a[..., :, None].expand(*a.shape, Q).masked_fill(~strict, 0)  # x[k, s] = a[k] for k > s
    S = x.cumsum(dim=-2)
    return S.masked_fill(~strict.logical_or(torch.eye(Q, dtype=torch.bool, device=a.device)), float("-inf"))


def _check(x, dt, A, B, C, D, h0) -> None:
    if x.dim() != 4 or dt.dim() != 3 or B.dim() != 4 or C.shape != B.shape:
        raise ValueError("ssd_scan: need x (b, heads, P, L), dt (b, heads, L), B and C (b, groups, N, L); got "
                         f"{tuple(x.shape)}, {tuple(dt.shape)}, {tuple(B.shape)}, {tuple(C.shape)}")
    b, h, P, L = x.shape
    g, N = B.shape[1], B.shape[2]
    if dt.shape != (b, h, L) or A.shape != (h,) or B.shape[0] != b or B.shape[-1] != L or h % g:
        raise ValueError(f"ssd_scan: shapes do not agree: x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)} (heads must be a multiple of groups)")
    if D is not None and D.shape != (h,):
        raise ValueError(f"ssd_scan: D must be (heads,) = ({h},), got {tuple(D.shape)}")
    if h0 is not None and h0.shape != (b, h, P, N):
        raise ValueError(f"ssd_scan: h0 must be (b, heads, P, N) = {(b, h, P, N)}, got {tuple(h0.shape)}")


class _ChunkStates(torch.autograd.Function):
    """The states entering the chunks, S_0 = h0 and S_{k+1} = d_k S_k + s_k, one chunk after another.

    decay (n, c, r), states (n, c, r, M), h0 (n, r, M) -> entering (n, c, r, M) (S_0 .. S_{c-1}) and the final
    S_c (n, r, M). A sequential loop over the c = L / Q chunks on (n, r, M) slices (c is small: 64 at L 4096);
    the backward is the adjoint loop G_k = dS_k + d_k G_{k+1} from the end, so nothing but the entering states
    is kept."""

    @staticmethod
    def forward(ctx, decay, states, h0):
        n, c, r, M = states.shape
        entering = states.new_empty(n, c, r, M)
        S = entering[:, 0]
        S.zero_() if h0 is None else S.copy_(h0)
        for k in range(c - 1):
            torch.addcmul(states[:, k], decay[:, k, :, None], S, out=entering[:, k + 1])
            S = entering[:, k + 1]
        last = torch.addcmul(states[:, c - 1], decay[:, c - 1, :, None], S)
        ctx.save_for_backward(decay, entering)
        ctx.has_h0 = h0 is not None
        return entering, last

    @staticmethod
    def backward(ctx, g_entering, g_last):
        decay, entering = ctx.saved_tensors
        n, c, r, M = entering.shape
        g_states = torch.empty_like(entering)
        g_decay = decay.new_empty(n, c, r)
        G = g_last.clone()
        for k in range(c - 1, -1, -1):
            g_states[:, k] = G
            torch.linalg.vecdot(G, entering[:, k], out=g_decay[:, k])
            G = torch.addcmul(g_entering[:, k], decay[:, k, :, None], G)
        return g_decay, g_states, (G if ctx.has_h0 else None)


def _torch_ssd(x, dt, A, B, C, D, h0, chunk: int):
    b, h, P, L = x.shape
    g, N = B.shape[1], B.shape[2]
    r = h // g
    Q = min(chunk, L)
    pad = (-L) % Q
    if pad:  # dt = 0: decay 1 and no input, so the padded positions leave the state as it was
        x, dt, B, C = (F.pad(t, (0, pad)) for t in (x, dt, B, C))
    c = (L + pad) // Q
    n = b * g * c
    # internal layout: chunk-major (b, g, c, r, ...), so every GEMM is one bmm over the (b, g, c) or (b, g, c, r)
    # batch with no copy of its operands, and the chunk states of one chunk are contiguous
    a = (dt * A[:, None]).view(b, g, r, c, Q).permute(0, 1, 3, 2, 4).contiguous()  # log decay, <= 0
    a_cum = a.cumsum(-1)                                        # a_1 + ... + a_l within the chunk
    # a_{s+1} + ... + a_Q: suffix sums of the shifted a, not a_cum[-1] - a_cum[s]
    a_tail = F.pad(a[..., 1:].flip(-1).cumsum(-1).flip(-1), (0, 1))
    X = (x * dt[:, :, None]).view(b, g, r, P, c, Q).permute(0, 1, 4, 2, 3, 5).contiguous()  # dt_s x_s
    Bt = B.view(b, g, N, c, Q).permute(0, 1, 3, 4, 2).reshape(n, Q, N)
    Ct = C.view(b, g, N, c, Q).permute(0, 1, 3, 4, 2).reshape(n, Q, N)

    # 1. within each chunk: (C_l . B_s) exp(segsum) dt_s x_s
    scores = torch.bmm(Ct, Bt.transpose(1, 2))                                   # (n, Q_l, Q_s)
    M = scores.view(b, g, c, 1, Q, Q) * torch.exp(segsum(a))                      # (b, g, c, r, Q, Q)
    y = torch.bmm(X.view(n * r, P, Q), M.view(n * r, Q, Q).transpose(1, 2))     # (n r, P, Q_l)

    # 2. every chunk's end state from a zero start: sum_s exp(a_tail_s) dt_s x_s B_s^T
    Xd = X * torch.exp(a_tail)[..., None, :]
    states = torch.bmm(Xd.view(n, r * P, Q), Bt)                                  # (n, r P, N)

    # 3. the states entering the chunks: S_c = exp(sum a over chunk c-1) S_{c-1} + state_{c-1}
    decay = torch.exp(a_cum[..., -1]).view(b * g, c, r)
    h0_ = None if h0 is None else h0.reshape(b * g, r, P * N)
    entering, h_last = _ChunkStates.apply(decay, states.view(b * g, c, r, P * N), h0_)

    # 4. the entering state read at every position, decayed by a_1 + ... + a_l
    y_off = torch.bmm(entering.view(n, r * P, N), Ct.transpose(1, 2)).view(b, g, c, r, P, Q)
    y = y.view(b, g, c, r, P, Q) + y_off * torch.exp(a_cum)[..., None, :]
    y = y.permute(0, 1, 3, 4, 2, 5).reshape(b, h, P, c * Q)[..., :L]
    if D is not None:
        y = y + D[:, None, None] * x[..., :L]
    return y, h_last.view(b, h, P, N)


# --- the optional fused backend (mamba_ssm's Triton kernels) ---
#: ``mamba_ssm.ops.triton.ssd_combined`` (optional, CUDA only), imported once
probe_mamba_ssm_ssd = backends.optional_module("mamba_ssm.ops.triton.ssd_combined", "mamba_ssm",
                                               "optional, CUDA only: `pip install mamba-ssm`")


def _fused_ssd(x, dt, A, B, C, D, h0, chunk: int):
    fn = probe_mamba_ssm_ssd().module.mamba_chunk_scan_combined
    y, h_last = fn(x.permute(0, 3, 1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A.contiguous(),
                   B.permute(0, 3, 1, 2).contiguous(), C.permute(0, 3, 1, 2).contiguous(), chunk, D=D,
                   initial_states=h0, return_final_states=True)
    return y.permute(0, 2, 3, 1), h_last


def _self_test_error(name: str, device: torch.device) -> float:
    """Largest difference (relative to 1 + scale) of backend ``name`` against the torch path: outputs, final state
    and the gradients of every input."""
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(2, 4, 8, 100, generator=g), torch.rand(2, 4, 100, generator=g) * 0.2 + 1e-3,
            -torch.rand(4, generator=g) * 4 - 0.5, torch.randn(2, 2, 16, 100, generator=g),
            torch.randn(2, 2, 16, 100, generator=g), torch.randn(4, generator=g), torch.randn(2, 4, 8, 16, generator=g)]
    return dispatch.max_relative_error(lambda *a: OP.fns[name](*a, 64), lambda *a: _torch_ssd(*a, 64),
                                       [t.to(device) for t in args], lambda y, h: y.square().sum() + h.square().sum())


def _example(device: torch.device) -> dispatch.Call:
    return dispatch.Call(device, frozenset((torch.float32,)))


#: the SSD scan's backends, in the order ``auto`` prefers them
OP = dispatch.Op("ssd", "SSD", [
    dispatch.Impl("mamba_ssm", _fused_ssd, "Triton SSD kernel (mamba_chunk_scan_combined)", devices=("cuda",),
                  probe=probe_mamba_ssm_ssd, dtypes=(torch.float32,),
                  self_test=lambda d: _self_test_error("mamba_ssm", d), tol=1e-3),
    dispatch.Impl("torch", _torch_ssd, "chunked SSD in plain torch"),
], example=_example, example_text="Mamba-2, float32")
BACKENDS = OP.names


def choose_backend(x: torch.Tensor, backend: str = "auto") -> str:
    """The backend :func:`ssd_scan` runs for x (``ssmkit/ops/dispatch.py``): ``auto`` takes ``mamba_ssm`` on CUDA
    where it imports and passes its self-test, else torch; a name that cannot run x is a one-line
    ``BackendUnavailable``, an unknown name a ``BackendError`` (a ``ValueError``)."""
    return OP.choose(backend, dispatch.Call(x.device, frozenset((x.dtype,))))


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None = None, h0: torch.Tensor | None = None, chunk: int = CHUNK,
             backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The SSD recurrence over a whole sequence (see the module docstring).

    Args:
        x: (b, heads, P, L) inputs, time last.
        dt: (b, heads, L) step sizes (> 0, after the softplus).
        A: (heads,) decay rates (< 0).
        B, C: (b, groups, N, L); heads must be a multiple of groups.
        D: (heads,) skip, or None.
        h0: (b, heads, P, N) state before the first position, or None (zeros).
        chunk: positions per chunk.
        backend: ``auto`` | ``torch`` | ``mamba_ssm``.
    Returns:
        y (b, heads, P, L) and the state after the last position (b, heads, P, N), float32 (float64 for double
        inputs).
    """
    _check(x, dt, A, B, C, D, h0)
    if x.shape[-1] == 0:
        raise ValueError("ssd_scan needs at least one position (L >= 1)")
    if chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    dtype = _compute_dtype(x, dt, A, B, C, D, h0)
    with torch.autocast(device_type=x.device.type, enabled=False):
        args = [None if t is None else t.to(dtype) for t in (x, dt, A, B, C, D, h0)]
        return OP.fns[choose_backend(args[0], backend)](*args, chunk)


def ssd_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One position: x (b, heads, P), dt (b, heads), A (heads,), B, C (b, groups, N), D (heads,) or None,
    h (b, heads, P, N) -> y (b, heads, P), next h (in h's dtype, at least float32)."""
    nh, g = x.shape[1], B.shape[1]
    dtype = _compute_dtype(x, h)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C, h = (t.to(dtype) for t in (x, dt, A, B, C, h))
        Bh = B.repeat_interleave(nh // g, dim=1)  # (b, heads, N): head h reads group h // (heads / groups)
        Ch = C.repeat_interleave(nh // g, dim=1)
        h = torch.exp(dt * A)[..., None, None] * h + (dt[..., None] * x)[..., None] * Bh[:, :, None, :]
        y = (h * Ch[:, :, None, :]).sum(-1)
        if D is not None:
            y = y + D.to(dtype)[:, None] * x
    return y, h
