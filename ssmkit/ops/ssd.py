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
   a sequential loop over the L / Q chunks on (b, heads, P, N) slices (64 steps at L 4096);
4. each position adds C_l S_c exp(a_1 + ... + a_l) (the state entering its chunk, decayed to it).
Speed (CPU): steps 1-4 and the skip D are one autograd Function (``_SSDChunked``) with a hand-written backward,
laid out chunk-major (b, groups, chunk, heads per group, ...) so that every product is one ``bmm`` over the
chunks with no copy of its operands (B and C shared by the heads of a group fold into the GEMM's rows); the
backward keeps the (Q x Q) decay matrices but recomputes the score matrices and dt x, and the state loop's
adjoint runs from the end. (``scripts/bench_mamba2.py``; a doubling scan over time-last chunk states, as
``ops/scan.linear_scan``, and autograd through the (Q x Q) temporaries made the Mamba-2 layer ~5x slower.)
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


def _decay_matrix(a: torch.Tensor) -> torch.Tensor:
    """exp(segsum(a)) (..., Q, Q) without autograd, in place on one buffer: the masked copy of a, its cumulative
    sum down the rows, exp, and exact zeros above the diagonal (as :func:`segsum`, no difference of sums)."""
    Q = a.shape[-1]
    strict = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)
    S = a[..., :, None] * strict.to(a.dtype)                                # S[k, s] = a[k] for k > s
    S.cumsum_(dim=-2).exp_()
    return S.masked_fill_(strict.logical_not_().triu_(1), 0)                 # s > t: exactly 0


def _pass_states(decay: torch.Tensor, states: torch.Tensor, h0: torch.Tensor | None):
    """The states entering the chunks, S_0 = h0 and S_{k+1} = d_k S_k + s_k, one chunk after another.

    decay (n, c, r), states (n, c, r, M), h0 (n, r, M) or None -> entering (n, c, r, M) (S_0 .. S_{c-1}) and the
    final S_c (n, r, M). A sequential loop over the c = L / Q chunks on (n, r, M) slices (c is small: 64 at L
    4096), where a parallel scan would make log2(c) passes over all the states."""
    n, c, r, M = states.shape
    entering = states.new_empty(n, c, r, M)
    S = entering[:, 0]
    S.zero_() if h0 is None else S.copy_(h0)
    for k in range(c - 1):
        torch.addcmul(states[:, k], decay[:, k, :, None], S, out=entering[:, k + 1])
        S = entering[:, k + 1]
    return entering, torch.addcmul(states[:, c - 1], decay[:, c - 1, :, None], S)


def _pass_states_backward(decay, entering, g_entering, g_last):
    """The adjoint of :func:`_pass_states`, G_k = dS_k + d_k G_{k+1} from the end: the gradients of the chunk
    states (G_{k+1}), of the decays (G_{k+1} . S_k) and of h0 (G_0)."""
    c = entering.shape[1]
    g_states = torch.empty_like(entering)                      # g_states[:, k] = G_{k+1}, written in place
    g_states[:, c - 1] = g_last
    for k in range(c - 1, 0, -1):
        torch.addcmul(g_entering[:, k], decay[:, k, :, None], g_states[:, k], out=g_states[:, k - 1])
    g_h0 = torch.addcmul(g_entering[:, 0], decay[:, 0, :, None], g_states[:, 0])
    return g_states, torch.linalg.vecdot(g_states, entering), g_h0


class _SSDChunked(torch.autograd.Function):
    """The chunked SSD core with a hand-written backward (no autograd graph of (Q x Q) temporaries).

    x (b, h, P, L), dt (b, h, L) with L a multiple of Q; a = dt A in the chunk-major layout (b, g, c, r, Q); B and
    C as Bt, Ct (b g c, Q, N); D (h,) or None; h0 (b g, r, P N) or None -> y (b, h, P, L) and the final state
    (b g, r, P N). Heads are (g, r): head g r + j reads group g. Inside, everything is chunk-major (b, g, c, r, ...)
    so that every product is one bmm over the (b, g, c) or (b, g, c, r) batch with no copy of its operands.

    Saved for the backward: the inputs, the states entering the chunks (b h P N L / Q), the inter-chunk part of
    y before its decay (b h P L) and the decay matrices (b h L Q); the scores and dt x are recomputed."""

    @staticmethod
    def forward(ctx, x, dt, a, Bt, Ct, D, h0):
        b, g, c, r, Q = a.shape
        P, N = x.shape[2], Bt.shape[-1]
        n = b * g * c
        X = _chunk_major(x, dt, a.shape)                                          # dt_s x_s (b, g, c, r, P, Q)
        a_cum = a.cumsum(-1)                                    # a_1 + ... + a_l within the chunk
        # a_{s+1} + ... + a_Q: suffix sums of the shifted a, not a_cum[-1] - a_cum[s]
        a_tail = F.pad(a[..., 1:].flip(-1).cumsum(-1).flip(-1), (0, 1))

        # 1. within each chunk: (C_l . B_s) exp(segsum) dt_s x_s
        Lm = _decay_matrix(a)
        M = Lm * torch.bmm(Ct, Bt.transpose(1, 2)).view(b, g, c, 1, Q, Q)
        y = torch.bmm(X.view(n * r, P, Q), M.view(n * r, Q, Q).transpose(1, 2)).view(b, g, c, r, P, Q)
        del M
        # 2. every chunk's end state from a zero start: sum_s exp(a_tail_s) dt_s x_s B_s^T
        states = torch.bmm(X.mul_(torch.exp(a_tail)[..., None, :]).view(n, r * P, Q), Bt)      # (n, r P, N)
        del X
        # 3. the states entering the chunks: S_c = exp(sum a over chunk c-1) S_{c-1} + state_{c-1}
        decay = torch.exp(a_cum[..., -1]).view(b * g, c, r)
        entering, h_last = _pass_states(decay, states.view(b * g, c, r, P * N), h0)
        del states
        # 4. the entering state read at every position, decayed by a_1 + ... + a_l
        y_off = torch.bmm(entering.view(n, r * P, N), Ct.transpose(1, 2)).view(b, g, c, r, P, Q)
        out = x.new_empty(b, g, r, P, c, Q)
        torch.addcmul(y, y_off, torch.exp(a_cum)[..., None, :], out=out.permute(0, 1, 4, 2, 3, 5))
        out = out.view(b, g * r, P, c * Q)
        if D is not None:
            out.addcmul_(x, D[:, None, None])
        ctx.save_for_backward(x, dt, a, Bt, Ct, D, entering, y_off, Lm)
        ctx.has_h0 = h0 is not None
        return out, h_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, g_last):
        # a backward runs under the caller's autocast (the forward turned it off): off here too, or bf16 autocast
        # casts one operand of each bmm/baddbmm_ into bf16 against float32 accumulators
        with torch.autocast(device_type=gy.device.type, enabled=False):
            return _SSDChunked._backward(ctx, gy, g_last)

    @staticmethod
    def _backward(ctx, gy, g_last):
        x, dt, a, Bt, Ct, D, entering, y_off, Lm = ctx.saved_tensors
        b, g, c, r, Q = a.shape
        P, N = x.shape[2], Bt.shape[-1]
        n = b * g * c
        a_cum = a.cumsum(-1)
        w = torch.exp(F.pad(a[..., 1:].flip(-1).cumsum(-1).flip(-1), (0, 1)))   # exp(a_tail)
        v = torch.exp(a_cum)
        decay = torch.exp(a_cum[..., -1]).view(b * g, c, r)
        gD = None if D is None else torch.linalg.vecdot(gy, x, dim=-1).sum((0, 2))
        g_skip = gy
        gy = gy.reshape(b, g, r, P, c, Q).permute(0, 1, 4, 2, 3, 5).contiguous()       # (b, g, c, r, P, Q)
        X = _chunk_major(x, dt, a.shape)

        # 4. y_off = (S C^T) v: the exponent a_cum, the entering states and C
        ga_cum = torch.linalg.vecdot(gy, y_off, dim=-2).mul_(v)        # d/d a_cum (b, g, c, r, Q)
        del y_off
        gyv = gy * v[..., None, :]
        g_entering = torch.bmm(gyv.view(n, r * P, Q), Ct)                            # (n, r P, N)
        gCt = torch.bmm(gyv.view(n, r * P, Q).transpose(1, 2), entering.view(n, r * P, N))
        del gyv
        # 3. the states passed between chunks
        g_last = torch.zeros_like(entering[:, 0]) if g_last is None else g_last
        g_states, g_decay, g_h0 = _pass_states_backward(decay, entering.view(b * g, c, r, P * N),
                                                        g_entering.view(b * g, c, r, P * N), g_last)
        del g_entering
        ga_cum[..., -1] += (g_decay * decay).view(b, g, c, r)
        # 2. states = (X w) B: the exponent a_tail, X and B
        g_states = g_states.view(n, r * P, N)
        gX = torch.bmm(g_states, Bt.transpose(1, 2)).view(b, g, c, r, P, Q)      # gradient of X w
        Xw = X * w[..., None, :]
        gBt = torch.bmm(Xw.view(n, r * P, Q).transpose(1, 2), g_states)
        del g_states
        ga_tail = torch.linalg.vecdot(gX, Xw, dim=-2)                 # d/d a_tail
        del Xw
        gX.mul_(w[..., None, :])
        # 1. y = X M^T with M = scores * exp(segsum a)
        scores = torch.bmm(Ct, Bt.transpose(1, 2)).view(b, g, c, 1, Q, Q)
        M = Lm * scores
        gX.view(n * r, P, Q).baddbmm_(gy.view(n * r, P, Q), M.view(n * r, Q, Q))
        gM = torch.bmm(gy.view(n * r, P, Q).transpose(1, 2), X.view(n * r, P, Q)).view(b, g, c, r, Q, Q)
        del gy, X
        g_scores = (gM * Lm).sum(3).view(n, Q, Q) if r > 1 else (gM * Lm).view(n, Q, Q)
        del Lm
        gCt.baddbmm_(g_scores, Bt)
        gBt.baddbmm_(g_scores.transpose(1, 2), Ct)
        # the exponent segsum(a)[l, s] = a_{s+1} + ... + a_l: a_k gets sum over l >= k > s of gM M
        R = gM.mul_(M).cumsum_(-1)                                # R[l, j] = sum_{s <= j} (gM M)[l, s]
        del M
        strict = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)
        ga_seg = R.masked_fill_(~strict, 0).sum(-2)                      # [j]: sum over l > j of R[l, j]
        del R
        # a_cum[l] = a_1 + ... + a_l, a_tail[s] = a_{s+1} + ... + a_Q, segsum: back to a
        ga = ga_cum.flip(-1).cumsum(-1).flip(-1)
        ga[..., 1:] += ga_tail[..., :-1].cumsum(-1) + ga_seg[..., :-1]
        # X = dt x
        gX = gX.permute(0, 1, 3, 4, 2, 5)                                         # (b, g, r, P, c, Q)
        xv = x.reshape(b, g, r, P, c, Q)
        gdt = torch.linalg.vecdot(gX, xv, dim=3).reshape(dt.shape)
        gx = x.new_empty(b, g, r, P, c, Q)
        torch.mul(gX, dt.view(b, g, r, 1, c, Q), out=gx)
        gx = gx.view(x.shape)
        if D is not None:
            gx.addcmul_(g_skip, D[:, None, None])
        return gx, gdt, ga, gBt, gCt, gD, (g_h0 if ctx.has_h0 else None)


def _chunk_major(x: torch.Tensor, dt: torch.Tensor, shape) -> torch.Tensor:
    """dt x in the chunk-major layout (b, g, c, r, P, Q), written in one pass."""
    b, g, c, r, Q = shape
    P = x.shape[2]
    X = x.new_empty(b, g, c, r, P, Q)
    torch.mul(x.reshape(b, g, r, P, c, Q).permute(0, 1, 4, 2, 3, 5),
              dt.view(b, g, r, 1, c, Q).permute(0, 1, 4, 2, 3, 5), out=X)
    return X


def _torch_ssd(x, dt, A, B, C, D, h0, chunk: int):
    b, h, P, L = x.shape
    g, N = B.shape[1], B.shape[2]
    r = h // g
    Q = min(chunk, L)
    pad = (-L) % Q
    if pad:  # dt = 0: decay 1 and no input, so the padded positions leave the state as it was
        x, dt, B, C = (F.pad(t, (0, pad)) for t in (x, dt, B, C))
    c = (L + pad) // Q
    a = (dt * A[:, None]).view(b, g, r, c, Q).permute(0, 1, 3, 2, 4).contiguous()  # log decay, <= 0
    Bt = B.view(b, g, N, c, Q).permute(0, 1, 3, 4, 2).reshape(b * g * c, Q, N)
    Ct = C.view(b, g, N, c, Q).permute(0, 1, 3, 4, 2).reshape(b * g * c, Q, N)
    h0_ = None if h0 is None else h0.reshape(b * g, r, P * N)
    y, h_last = _SSDChunked.apply(x, dt.contiguous(), a, Bt, Ct, D, h0_)
    return (y[..., :L] if pad else y), h_last.view(b, h, P, N)


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


#: the SSD scan's backends, in the order ``auto`` prefers them
OP = dispatch.Op("ssd", "SSD", [
    dispatch.Impl("mamba_ssm", _fused_ssd, "Triton SSD kernel (mamba_chunk_scan_combined)", devices=("cuda",),
                  probe=probe_mamba_ssm_ssd, dtypes=(torch.float32,),
                  self_test=lambda d: _self_test_error("mamba_ssm", d), tol=1e-3),
    dispatch.Impl("torch", _torch_ssd, "chunked SSD in plain torch"),
], example=dispatch.float32_call, example_text="Mamba-2, float32")
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
