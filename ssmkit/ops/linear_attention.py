"""Chunked gated linear attention and the chunked gated delta rule: the recurrences of ``gla`` and
``gated_deltanet`` (``ssmkit/mixers/gla.py``, ``ssmkit/mixers/gated_deltanet.py``) in plain torch.

Shapes: q, k (B, h, L, dk), v (B, h, L, dv), the state S (B, h, dk, dv), time in dimension -2; everything is
computed in float32 (float64 for float64 inputs) with autocast off, and returned in that dtype.

Gated linear attention (Yang, Wang, Shen, Panda, Kim 2024, "Gated Linear Attention Transformers with
Hardware-Efficient Training", eq. 3; fla-org/flash-linear-attention ``fla/ops/gla``):

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,      o_t = scale q_t S_t,      g_t = log alpha_t <= 0 (dk per head)

Chunked form (their section 4.2): positions are cut into chunks of C (64); b_t = sum of g within the chunk up to t.
The output is o = scale [(q exp(b)) S_chunk + A V] with the intra-chunk matrix A_ts = sum_d q_td k_sd exp(b_td - b_sd)
(s <= t), and the states entering the chunks follow S_{i+1} = diag(exp(b_C)) S_i + (k exp(b_C - b))^T V, a loop
over the L/C chunks on (dk, dv) slices. A is formed stably without ever computing a growing exponential, bottom-up
over nested blocks (``_gla_intra``; C factored into primes, halvings first, as the paper's secondary chunking
applied recursively): the diagonal is q_t.k_t, and inside a parent block, for a target child i and an earlier child
j, exp(b_t - b_s) = exp(b_t - r_i) exp(r_i - e_j) exp(e_j - b_s) with r_i the cumulative gate entering child i and
e_j the one leaving child j: each factor is <= 1, so nothing overflows, and a factor that underflows bounds a
product that is itself below the float range. For a halving r_1 = e_0 and the middle factor is 1; a power-of-two C
runs as one autograd Function (``_GLAIntraHalvings``) whose backward is the same halvings on dA. Each level is
O(dk) elementwise work per position and one bmm, so memory stays
O(L (C + dk + dv)) plus the L/C chunk states, never (L, L), (c, c, dk) blocks or per-position states. The
chunk_size rule (<= 16 or a multiple of 16) is kept from the sub-chunked form (the options are unchanged).

Gated delta rule (Yang, Kautz, Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with Delta Rule", eq. 10;
fla ``fla/ops/gated_delta_rule``), in the (dk, dv) layout of the state:

    S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,       o_t = scale S_t^T q_t

with a scalar alpha_t = exp(g_t) per head. Chunked with the WY/UT representation (their section 3.3): with
gamma_t the cumulative log decay within the chunk and S_0 the state entering it, S_t = exp(gamma_t) S_0 +
sum_{s<=t} exp(gamma_t - gamma_s) k_s u_s^T, where the pseudo-values u solve the unit lower-triangular system
(I + A) u = diag(beta) (V - exp(gamma) K S_0), A_ts = beta_t exp(gamma_t - gamma_s) k_t.k_s (s < t). So with
T = (I + A)^-1 (a triangular solve): U~ = T diag(beta) V and W = T diag(beta exp(gamma)) K are computed for all
chunks at once, and only u = U~ - W S_0 and S_C = exp(gamma_C) S_0 + (K exp(gamma_C - gamma))^T u run chunk by
chunk (a loop over the L/C chunks of (C, dk) x (dk, dv) products, over ``unbind`` slices: indexing U[:, :, i]
would give each step's backward a zero-filled gradient as large as U, quadratic in L). The output is o = scale [(q exp(gamma)) S_0 +
(Q K^T * exp(gamma_t - gamma_s), s <= t) u]. Every exponent is <= 0.

Both take an initial state and return the final one; ``*_step`` are the recurrences for one token.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: GLA's secondary chunk (the paper's and fla's 16)
SUB_CHUNK = 16


def _dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_chunk(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def _to_chunks(x: torch.Tensor, n: int, C: int) -> torch.Tensor:
    """(B, h, L, ...) -> (B, h, n, C, ...), zero-padded after L."""
    L = x.shape[2]
    if n * C != L:
        pad = [0, 0] * (x.dim() - 3) + [0, n * C - L]
        x = F.pad(x, pad)
    return x.reshape(*x.shape[:2], n, C, *x.shape[3:])


def _exp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """exp of a float64 exponent (a difference of float64 cumulative gates) in ``dtype``."""
    return torch.exp(x.to(dtype))


class _GateDecay(torch.autograd.Function):
    """D[..., i, j, :] = exp(x_i - y_j) where ``keep[i, j]``, else 0: x, y (..., f, d) float64 cumulative gates ->
    (..., f, f, d) in ``dtype``. The difference is taken in float64, rounded once and exponentiated; the dropped
    entries are never exponentiated. The backward is written out (P = G D; dx = sum_j P, dy = -sum_i P): two
    reductions over the kept D instead of autograd's where/copy/sub chain."""

    @staticmethod
    def forward(ctx, x, y, keep, dtype):
        diff = x.unsqueeze(-2) - y.unsqueeze(-3)
        D = diff.masked_fill_(~keep, -math.inf).to(dtype).exp_()
        ctx.save_for_backward(D)
        ctx.dtypes = x.dtype, y.dtype
        return D

    @staticmethod
    def backward(ctx, G):
        (D,) = ctx.saved_tensors
        P = G * D
        return P.sum(-2).to(ctx.dtypes[0]), P.sum(-3).neg_().to(ctx.dtypes[1]), None, None


def _gate_decay(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """exp(x_i - y_j) where keep[i, j] (a (f, f, 1) mask), else 0 (``_GateDecay``)."""
    return _GateDecay.apply(x, y, keep, dtype)


def _block_factors(C: int) -> list[int]:
    """C as a product of primes, least first: the branching of the blocks (64: six halvings)."""
    factors = []
    while C > 1:
        f = next(p for p in range(2, C + 1) if C % p == 0)
        factors.append(f)
        C //= f
    return factors


def _quadrant(A: torch.Tensor, c: int) -> torch.Tensor:
    """The lower-left (c, c) quadrant of every diagonal (2c, 2c) block of A (..., C, C): a view (..., C/2c, c, c)."""
    *batch, C, _ = A.shape
    P = 2 * c
    blocks = A.reshape(*batch, C // P, P, C // P, P).diagonal(dim1=-4, dim2=-2).movedim(-1, -3)  # (..., C/P, P, P)
    return blocks[..., c:, :c]


class _GLAIntraHalvings(torch.autograd.Function):
    """``_gla_intra`` for a power-of-two C with the backward written out: every level writes its quadrant of A in
    place (no graph), and the backward of A_ts = sum_d q_td k_sd exp(b_td - b_sd) is the same halving structure run
    on dA: dq_t = sum_s dA_ts exp(b_t - b_s) k_s, dk_s = sum_t dA_ts exp(b_t - b_s) q_t, db = q dq - k dk."""

    @staticmethod
    def forward(ctx, q, k, b):
        q, k = q.contiguous(), k.contiguous()
        *batch, C, dk = q.shape
        A = q.new_zeros(*batch, C, C)
        A.diagonal(dim1=-2, dim2=-1).copy_((q * k).sum(-1))
        sign = torch.tensor([-1.0, 1.0], dtype=torch.float64, device=q.device).view(2, 1, 1)
        decays, c = [], 1
        while c < C:
            shape = (*batch, C // (2 * c), 2, c, dk)
            bs = b.reshape(shape)
            D = _exp((bs - bs[..., :1, -1:, :]) * sign, q.dtype)  # exp(b - e0) second half, exp(e0 - b) first
            decays.append(D)
            qg = q.reshape(shape)[..., 1, :, :] * D[..., 1, :, :]
            kg = k.reshape(shape)[..., 0, :, :] * D[..., 0, :, :]
            _quadrant(A, c).copy_(qg @ kg.transpose(-1, -2))
            c *= 2
        ctx.save_for_backward(q, k, *decays)
        ctx.b_dtype = b.dtype
        return A

    @staticmethod
    def backward(ctx, dA):
        q, k, *decays = ctx.saved_tensors
        *batch, C, dk = q.shape
        dA = dA.contiguous()
        diag = dA.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
        dq, dk_ = diag * k, diag * q
        c = 1
        for D in decays:
            shape = (*batch, C // (2 * c), 2, c, dk)
            blk = _quadrant(dA, c)  # (..., C/2c, c, c): rows in the second half, columns in the first
            D0, D1 = D[..., 0, :, :], D[..., 1, :, :]
            kg = k.reshape(shape)[..., 0, :, :] * D0
            qg = q.reshape(shape)[..., 1, :, :] * D1
            dq.view(shape)[..., 1, :, :].addcmul_(D1, blk @ kg)
            dk_.view(shape)[..., 0, :, :].addcmul_(D0, blk.transpose(-1, -2) @ qg)
            c *= 2
        db = (q * dq).sub_(k * dk_).to(ctx.b_dtype)
        return dq, dk_, db


def _gla_intra(q: torch.Tensor, k: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The intra-chunk matrix A[t, s] = sum_d q_td k_sd exp(b_td - b_sd) for s <= t, 0 above: q, k (..., C, dk) in
    their dtype, b (..., C, dk) the float64 cumulative gate -> A (..., C, C).

    Built bottom-up over nested blocks: the diagonal is q_t.k_t (exp(0)); a parent block of f children of c
    positions takes its children's A as its diagonal blocks, and for children j < i the block
    (q_i exp(b - r_i)) diag(exp(r_i - e_j)) (k_j exp(e_j - b))^T, r_i the gate entering child i and e_j the one
    leaving child j: three factors with exponents <= 0 (nothing overflows; one that underflows bounds a product
    that is itself below the float range). A halving (f = 2, every level of a power of two) has one pair and
    r_1 = e_0, so the block is (q_1 exp(b - e_0)) (k_0 exp(e_0 - b))^T: O(dk) elementwise work per position and
    one bmm per level, never a (c, c, dk) tensor; other primes take all f^2 pairs (O(f dk) per position)."""
    *batch, C, dk = q.shape
    if C & (C - 1) == 0:
        return _GLAIntraHalvings.apply(q, k, b)
    dtype = q.dtype
    A = (q * k).sum(-1).reshape(*batch, C, 1, 1)  # blocks of one position
    c = 1
    for f in _block_factors(C):
        P = c * f
        qs, ks, bs = (t.reshape(*batch, C // P, f, c, dk) for t in (q, k, b))
        if f == 2:  # one pair: the second half reads the first through the gate between them (mid = exp(0))
            # the gate between the halves (leaving the first = entering the second), e0: exp(b - e0) on the second
            # half, exp(e0 - b) on the first (exponents <= 0), in one pass over all positions by a constant sign
            # (not abs(), whose derivative at a zero difference would be 0; and slicing the halves out first would
            # cost a zero-filled gradient per slice)
            sign = torch.tensor([-1.0, 1.0], dtype=torch.float64, device=q.device).view(2, 1, 1)
            decay = _exp((bs - bs[..., :1, -1:, :]) * sign, dtype)  # (..., C/P, 2, c, dk)
            qg = (qs * decay).unbind(-3)[1]
            kg = (ks * decay).unbind(-3)[0]
            if c <= 4:  # small rows: a product and a sum, not tiny matmuls
                block = (qg.unsqueeze(-2) * kg.unsqueeze(-3)).sum(-1)  # (..., C/P, c, c)
            else:
                block = qg @ kg.transpose(-1, -2)
            A = A.reshape(*batch, C // P, 2, c, c)
            A0, A1 = A[..., 0, :, :], A[..., 1, :, :]
            A = torch.cat([torch.cat([A0, torch.zeros_like(A0)], -1), torch.cat([block, A1], -1)], -2)
            c = P
            continue
        e = bs[..., -1:, :]  # the gate leaving each child (..., C/P, f, 1, dk)
        r = torch.cat([bs[..., :1, :1, :], e[..., :-1, :, :]], dim=-3)  # entering child i (child 0: its first b)
        earlier = torch.ones(f, f, dtype=torch.bool, device=q.device).tril(-1).unsqueeze(-1)  # j < i
        mid = _gate_decay(r.squeeze(-2), e.squeeze(-2), earlier, dtype)  # (..., C/P, i, j, dk)
        qg = qs * _exp(bs - r, dtype)  # (..., C/P, i, t, dk)
        right = mid.unsqueeze(-2) * (ks * _exp(e - bs, dtype)).unsqueeze(-4)  # (..., C/P, i, j, s, dk)
        right = right.reshape(*batch, C // P, f, P, dk)
        if c == 1:  # rows of one position: a product and a sum, not (1 x dk) matmuls
            blocks = (qg * right).sum(-1, keepdim=True).transpose(-1, -2)  # (..., C/P, i, 1, j s)
        else:
            blocks = qg @ right.transpose(-1, -2)  # (..., C/P, i, t, j s): one bmm per child, no copy
        blocks = blocks.reshape(*batch, C // P, f, c, f, c)
        # the children's own A on the diagonal blocks (i = j), in place on the product
        blocks.diagonal(dim1=-4, dim2=-2).add_(A.reshape(*batch, C // P, f, c, c).movedim(-3, -1))
        A = blocks.reshape(*batch, C // P, P, P)
        c = P
    return A.reshape(*batch, C, C)


def chunk_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float | None = None,
              initial_state: torch.Tensor | None = None, chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated linear attention (module docstring): q, k, g (B, h, L, dk) with g = log alpha <= 0, v (B, h, L, dv),
    initial_state (B, h, dk, dv) or None -> o (B, h, L, dv), final state (B, h, dk, dv).

    ``scale`` defaults to dk^-1/2; ``chunk_size`` must be <= 16 or a multiple of 16 (the sub-chunk)."""
    _check_chunk(chunk_size)
    c = min(chunk_size, SUB_CHUNK)
    if chunk_size % c:
        raise ValueError(f"chunk_size must be at most {SUB_CHUNK} or a multiple of {SUB_CHUNK}, got {chunk_size}")
    B, h, L, dk = q.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    dtype = _dtype(q)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, g = (t.to(dtype) for t in (q, k, v, g))
        S0 = q.new_zeros(B, h, dk, dv) if initial_state is None else initial_state.to(dtype)
        if L == 0:
            return v.new_zeros(B, h, 0, dv), S0
        C = chunk_size
        n = -(-L // C)
        # padded positions: k = v = 0 adds nothing, g = 0 decays nothing, so the final state is exact
        qc, kc, vc, gc = (_to_chunks(t, n, C) for t in (q, k, v, g))  # (B, h, n, C, d)
        # cumulative log gate within each chunk, <= 0 and non-increasing, in float64: a float32 sum of large gates
        # (|b| ~ 1e4) would lose the digits of the differences b_t - b_s that the exponentials take
        b = gc.to(torch.float64).cumsum(-2)
        b_last = b[..., -1:, :]  # (B, h, n, 1, dk)

        # --- the states entering each chunk: S_{i+1} = diag(exp(b_C)) S_i + (k exp(b_C - b))^T v, a loop over the
        # L/C chunks on (B, h, dk, dv) slices (unbind: one gradient buffer for all, not one per chunk) ---
        kd = kc * _exp(b_last - b, dtype)
        contrib = kd.transpose(-1, -2) @ vc  # (B, h, n, dk, dv)
        decay = _exp(b_last, dtype).transpose(-1, -2)  # (B, h, n, dk, 1)
        S, prev = S0, []
        for d_i, c_i in zip(decay.unbind(2), contrib.unbind(2)):
            prev.append(S)
            S = d_i * S + c_i
        S_final = S
        o = (qc * _exp(b, dtype)) @ torch.stack(prev, dim=2)  # (B, h, n, C, dv)
        A = _gla_intra(qc, kc, b)  # (B, h, n, C, C)
        o = o + A @ vc
        o = (scale * o).reshape(B, h, n * C, dv)[:, :, :L]
    return o, S_final.to(dtype)


def gla_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor,
             scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k, g (B, h, dk), v (B, h, dv), state (B, h, dk, dv) -> o (B, h, dv), next state."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = _dtype(state)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, g = (t.to(dtype) for t in (q, k, v, g))
        state = torch.exp(g).unsqueeze(-1) * state + k.unsqueeze(-1) * v.unsqueeze(-2)
        return scale * (q.unsqueeze(-2) @ state).squeeze(-2), state


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                           scale: float | None = None, initial_state: torch.Tensor | None = None,
                           chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule (module docstring): q, k (B, h, L, dk) (L2-normalised by the caller), v (B, h, L, dv),
    g = log alpha (B, h, L) <= 0, beta (B, h, L), initial_state (B, h, dk, dv) or None -> o (B, h, L, dv), final
    state (B, h, dk, dv). ``scale`` defaults to dk^-1/2."""
    _check_chunk(chunk_size)
    B, h, L, dk = q.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    dtype = _dtype(q)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, g, beta = (t.to(dtype) for t in (q, k, v, g, beta))
        S = q.new_zeros(B, h, dk, dv) if initial_state is None else initial_state.to(dtype)
        if L == 0:
            return v.new_zeros(B, h, 0, dv), S
        C = chunk_size
        n = -(-L // C)
        # padded positions: k = v = 0 and g = 0 leave the state as it is
        qc, kc, vc = (_to_chunks(t, n, C) for t in (q, k, v))  # (B, h, n, C, d)
        gc, bc = (_to_chunks(t.unsqueeze(-1), n, C).squeeze(-1) for t in (g, beta))  # (B, h, n, C)
        gam = gc.to(torch.float64).cumsum(-1)  # <= 0, non-increasing; float64 as GLA's (differences keep their digits)
        # exp(gamma_t - gamma_s) for s <= t, 0 above: one exponential for both the solve and the output; the solve
        # reads only the strictly lower triangle of A (unitriangular), and its backward gives the rest no gradient
        lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril().unsqueeze(-1)
        decay_ts = _gate_decay(gam.unsqueeze(-1), gam.unsqueeze(-1), lower, dtype).squeeze(-1)  # exp(gam_t - gam_s)
        A = ((bc.unsqueeze(-1) * kc) @ kc.transpose(-1, -2)) * decay_ts  # beta on the (C, dk) side: one (C, C) pass less
        eye = torch.eye(C, dtype=dtype, device=q.device)
        rhs = torch.cat([bc.unsqueeze(-1) * vc, (bc * _exp(gam, dtype)).unsqueeze(-1) * kc], dim=-1)
        sol = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
        U, W = sol.split([dv, dk], dim=-1)  # T diag(beta) V, T diag(beta exp(gamma)) K
        kd = kc * _exp(gam[..., -1:] - gam, dtype).unsqueeze(-1)  # k exp(gamma_C - gamma) (B, h, n, C, dk)
        decay = _exp(gam[..., -1], dtype).unsqueeze(-1).unsqueeze(-1)  # (B, h, n, 1, 1)
        us, S_prev = [], []
        # the only sequential part: L/C steps of small products. unbind, not U[:, :, i]: each indexing's backward
        # would write a zero-filled gradient as large as U (L/C of them: quadratic in L)
        for U_i, W_i, kd_i, d_i in zip(*(t.unbind(2) for t in (U, W, kd.transpose(-1, -2), decay))):
            S_prev.append(S)
            u = U_i - W_i @ S  # (B, h, C, dv)
            us.append(u)
            S = d_i * S + kd_i @ u
        u, S_prev = torch.stack(us, dim=2), torch.stack(S_prev, dim=2)
        QK = (qc @ kc.transpose(-1, -2)) * decay_ts
        o = (qc * _exp(gam, dtype).unsqueeze(-1)) @ S_prev + QK @ u
        o = (scale * o).reshape(B, h, n * C, dv)[:, :, :L]
    return o, S


def gated_delta_rule_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                          state: torch.Tensor, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: q, k (B, h, dk), v (B, h, dv), g, beta (B, h), state (B, h, dk, dv) -> o (B, h, dv), next state."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = _dtype(state)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, g, beta = (t.to(dtype) for t in (q, k, v, g, beta))
        state = torch.exp(g)[..., None, None] * state
        u = beta.unsqueeze(-1) * (v - (k.unsqueeze(-2) @ state).squeeze(-2))  # beta (v - S^T k)
        state = state + k.unsqueeze(-1) * u.unsqueeze(-2)
        return scale * (q.unsqueeze(-2) @ state).squeeze(-2), state
