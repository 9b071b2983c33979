"""ssmkit.ops.ssd: the chunked SSD scan (Mamba-2) against the recurrence written out as a float64 loop, per token:

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,    y_t = h_t C_t + D x_t    (head h reads group h // (heads/groups))
"""
import pytest
import torch
from helpers import MaxTensor

from ssmkit.ops.dispatch import BackendUnavailable
from ssmkit.ops.ssd import choose_backend, segsum, ssd_scan, ssd_step


def loop_reference(x, dt, A, B, C, D=None, h0=None):
    """The recurrence, one position at a time, in float64 (independent of the chunked code)."""
    b, nh, P, L = x.shape
    g, N = B.shape[1], B.shape[2]
    h = torch.zeros(b, nh, P, N, dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(L):
        y_t = []
        h_new = []
        for head in range(nh):
            grp = head // (nh // g)
            dA = torch.exp(dt[:, head, t].double() * A[head].double())                      # (b,)
            hh = dA[:, None, None] * h[:, head] + (dt[:, head, t].double()[:, None] * x[:, head, :, t].double())[
                :, :, None] * B[:, grp, :, t].double()[:, None, :]
            h_new.append(hh)
            yy = (hh * C[:, grp, :, t].double()[:, None, :]).sum(-1)
            if D is not None:
                yy = yy + D[head].double() * x[:, head, :, t].double()
            y_t.append(yy)
        h = torch.stack(h_new, 1)
        ys.append(torch.stack(y_t, 1))
    return torch.stack(ys, -1), h


def make(b=2, nh=4, P=3, N=5, g=2, L=37, seed=0, dt_scale=0.5, a_scale=2.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, nh, P, L, generator=gen, dtype=dtype)
    dt = torch.rand(b, nh, L, generator=gen, dtype=dtype) * dt_scale + 1e-3
    A = -(torch.rand(nh, generator=gen, dtype=dtype) * a_scale + 0.1)
    B = torch.randn(b, g, N, L, generator=gen, dtype=dtype)
    C = torch.randn(b, g, N, L, generator=gen, dtype=dtype)
    D = torch.randn(nh, generator=gen, dtype=dtype)
    h0 = torch.randn(b, nh, P, N, generator=gen, dtype=dtype)
    return x, dt, A, B, C, D, h0


@pytest.mark.parametrize("chunk", [1, 4, 8, 64])
@pytest.mark.parametrize("g", [1, 2, 4])
def test_matches_loop(chunk, g):
    x, dt, A, B, C, D, h0 = make(g=g)
    y_ref, h_ref = loop_reference(x, dt, A, B, C, D, h0)
    y, h = ssd_scan(x, dt, A, B, C, D, h0, chunk=chunk)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    # no D, no h0
    y_ref, h_ref = loop_reference(x, dt, A, B, C)
    y, h = ssd_scan(x, dt, A, B, C, chunk=chunk)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


def test_segsum():
    a = torch.randn(3, 6, dtype=torch.float64)
    S = segsum(a)
    for t in range(6):
        for s in range(6):
            want = a[:, s + 1:t + 1].sum(-1) if s <= t else torch.full((3,), float("-inf"), dtype=torch.float64)
            torch.testing.assert_close(S[:, t, s], want, rtol=0, atol=1e-14)


def test_step_and_state_passing():
    x, dt, A, B, C, D, h0 = make(L=21)
    y_full, h_full = ssd_scan(x, dt, A, B, C, D, h0, chunk=4)
    # two pieces, the state passed
    y1, h1 = ssd_scan(x[..., :9], dt[..., :9], A, B[..., :9], C[..., :9], D, h0, chunk=4)
    y2, h2 = ssd_scan(x[..., 9:], dt[..., 9:], A, B[..., 9:], C[..., 9:], D, h1, chunk=4)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y_full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, h_full, rtol=1e-12, atol=1e-12)
    # token by token
    h, ys = h0, []
    for t in range(21):
        y_t, h = ssd_step(x[..., t], dt[..., t], A, B[..., t], C[..., t], D, h)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, -1), y_full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_full, rtol=1e-12, atol=1e-12)


def test_gradients_match_loop():
    args = make(b=1, nh=2, P=2, N=3, g=1, L=11)
    leaves = [t.clone().requires_grad_() for t in args]
    ref = [t.clone().requires_grad_() for t in args]
    y, h = ssd_scan(*leaves, chunk=4)
    y_r, h_r = loop_reference(*ref)
    w_y, w_h = torch.randn_like(y), torch.randn_like(h)
    grads = torch.autograd.grad((y * w_y).sum() + (h * w_h).sum(), leaves)
    grads_r = torch.autograd.grad((y_r * w_y).sum() + (h_r * w_h).sum(), ref)
    for name, g1, g2 in zip("x dt A B C D h0".split(), grads, grads_r):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("nh,g,L,chunk", [(4, 2, 13, 4), (2, 2, 9, 3), (3, 1, 8, 8)])
def test_hand_written_backward_gradcheck(nh, g, L, chunk):
    """The chunked core's hand-written backward (``_SSDChunked``: the decay matrix, the state passing loop's
    adjoint, the exponents a_cum / a_tail / segsum mapped back to dt and A) against finite differences in float64,
    and every gradient against the float64 per-token loop: several heads per group, one head per group, one chunk,
    padding to a multiple of the chunk."""
    x, dt, A, B, C, D, h0 = make(b=2, nh=nh, P=2, N=3, g=g, L=L, seed=3)
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    assert torch.autograd.gradcheck(lambda *a: ssd_scan(*a, chunk=chunk), leaves)
    y, h = ssd_scan(*leaves, chunk=chunk)
    y_r, h_r = loop_reference(*leaves)
    w_y, w_h = torch.randn_like(y), torch.randn_like(h)
    grads = torch.autograd.grad((y * w_y).sum() + (h * w_h).sum(), leaves)
    grads_r = torch.autograd.grad((y_r * w_y).sum() + (h_r * w_h).sum(), leaves)
    for name, g1, g2 in zip("x dt A B C D h0".split(), grads, grads_r):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10, msg=name)
    # without h0, only y in the loss (the final state's gradient None)
    y = ssd_scan(*leaves[:6], chunk=chunk)[0]
    grads = torch.autograd.grad((y * w_y).sum(), leaves[:6])
    grads_r = torch.autograd.grad((loop_reference(*leaves[:6])[0] * w_y).sum(), leaves[:6])
    for name, g1, g2 in zip("x dt A B C D".split(), grads, grads_r):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10, msg=name)


def test_extreme_decays_finite_and_exact():
    """dt A down to -200 per step: chunk decays underflow to exactly 0, never NaN (exp(-inf) above the diagonal
    and its gradient are 0); and tiny decays (dt 1e-6) keep every digit of the long memory."""
    for dt_scale, a_scale in [(100.0, 2.0), (1e-6, 1e-3)]:
        x, dt, A, B, C, D, h0 = make(L=40, dt_scale=dt_scale, a_scale=a_scale)
        leaves = [t.float().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
        y, h = ssd_scan(*leaves, chunk=16)
        (y.sum() + h.sum()).backward()
        assert torch.isfinite(y).all() and all(torch.isfinite(t.grad).all() for t in leaves)
        y_ref, h_ref = loop_reference(x, dt, A, B, C, D, h0)
        torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)


def test_float32_and_bf16_autocast():
    x, dt, A, B, C, D, h0 = make(L=300)
    y_ref, _ = loop_reference(x, dt, A, B, C, D, h0)
    y, _ = ssd_scan(*(t.float() for t in (x, dt, A, B, C, D, h0)), chunk=64)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, _ = ssd_scan(*(t.bfloat16() for t in (x, dt, A, B, C)), chunk=64)
    assert y16.dtype == torch.float32 and torch.isfinite(y16).all()


def test_memory_bounded():
    """No (L x L) matrix and no state per position: the largest tensor (forward and backward) is O(b heads L Q)
    or the chunk states O(b heads P N L / Q)."""
    b, nh, P, N, L, Q = 1, 2, 8, 32, 2048, 16
    x, dt, A, B, C, D, h0 = (t.float().requires_grad_() for t in make(b=b, nh=nh, P=P, N=N, g=1, L=L))
    with MaxTensor() as m:
        y, h = ssd_scan(x, dt, A, B, C, D, h0, chunk=Q)
        (y.sum() + h.sum()).backward()
    bound = max(b * nh * L * Q, b * nh * P * N * L // Q, b * nh * P * L)
    assert m.max_numel <= bound, (m.max_numel, bound)
    assert bound < b * nh * L * L // 16 and bound < b * nh * P * N * L // 4


def test_bad_inputs():
    x, dt, A, B, C, D, h0 = make()
    with pytest.raises(ValueError, match="multiple of groups"):
        ssd_scan(x, dt, A, B[:, :1].expand(-1, 3, -1, -1), C[:, :1].expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="h0 must be"):
        ssd_scan(x, dt, A, B, C, h0=h0[..., :2])
    with pytest.raises(ValueError, match="chunk"):
        ssd_scan(x, dt, A, B, C, chunk=0)
    with pytest.raises(ValueError, match="unknown SSD backend"):
        choose_backend(x, "triton")


def test_auto_is_torch_on_cpu():
    x = torch.zeros(1, 1, 1, 1)
    assert choose_backend(x, "auto") == "torch"
    with pytest.raises(BackendUnavailable, match="backend 'mamba_ssm' cannot run this call on cpu .*CUDA only") as e:
        choose_backend(x, "mamba_ssm")
    assert "\n" not in str(e.value)
