"""linear_scan against a float64 sequential loop: forward, final state, and gradients of a, b, h0."""
import pytest
import torch

from ssmkit.ops.scan import linear_scan


def loop(a, b, h0=None):
    """The recurrence one step at a time (the definition)."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    h = torch.zeros(shape[:-1], dtype=torch.promote_types(a.dtype, b.dtype)) if h0 is None else h0.expand(shape[:-1])
    out = []
    for t in range(b.shape[-1]):
        a_t = a[..., t] if a.shape[-1] > 1 else a[..., 0]
        h = a_t * h + b[..., t]
        out.append(h)
    return torch.stack(out, -1)


def decays(shape, complex_: bool, gen):
    r = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.5 + 0.45  # |a| in [0.45, 0.95]
    if not complex_:
        return r * torch.sign(torch.rand(shape, generator=gen, dtype=torch.float64) - 0.2)
    return torch.polar(r, torch.rand(shape, generator=gen, dtype=torch.float64) * 6.3)


CASES = {  # name: (a shape, b shape, h0 shape or None)
    "invariant-shared": ((5, 1), (3, 5, 37), (3, 5)),
    "invariant-no-h0": ((5, 1), (2, 5, 37), None),
    "varying-full": ((2, 3, 4, 37), (2, 3, 4, 37), (2, 3, 4)),
    "varying-broadcast-batch": ((3, 1, 37), (2, 3, 4, 37), (4,)),
    "varying-no-h0": ((2, 5, 37), (2, 5, 37), None),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("chunk", [None, 8, 5])
def test_matches_the_sequential_loop_forward_and_backward(case, complex_, chunk):
    a_shape, b_shape, h0_shape = CASES[case]
    gen = torch.Generator().manual_seed(0)
    a = decays(a_shape, complex_, gen).requires_grad_()
    dtype = torch.complex128 if complex_ else torch.float64
    b = torch.randn(b_shape, generator=gen, dtype=dtype).requires_grad_()
    h0 = None if h0_shape is None else torch.randn(h0_shape, generator=gen, dtype=dtype).requires_grad_()
    h, last = linear_scan(a, b, h0, chunk=chunk)
    ref = loop(a, b, h0)
    torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref[..., -1])
    w = torch.randn(ref.shape, generator=gen, dtype=dtype)
    w_last = torch.randn(ref.shape[:-1], generator=gen, dtype=dtype)
    inputs = [t for t in (a, b, h0) if t is not None]
    loss = lambda hh, ll: (hh * w).real.sum() + (ll * w_last).abs().square().sum()  # noqa: E731
    got = torch.autograd.grad(loss(h, last), inputs)
    want = torch.autograd.grad(loss(ref, ref[..., -1]), inputs)
    for g, r, name in zip(got, want, ("a", "b", "h0")):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9, msg=name)


def test_real_decay_with_complex_inputs_gets_a_real_gradient():
    gen = torch.Generator().manual_seed(1)
    a = decays((4, 1), False, gen).requires_grad_()
    b = torch.randn(2, 4, 20, generator=gen, dtype=torch.complex128)
    h, _ = linear_scan(a, b)
    (g,) = torch.autograd.grad(h.abs().sum(), a)
    (r,) = torch.autograd.grad(loop(a, b).abs().sum(), a)
    assert not g.is_complex()
    torch.testing.assert_close(g, r)


def test_long_sequence_is_stable_and_exact_in_float32():
    """|a| close to 1 over 5000 steps (many chunks), in float32: the chunked scan stays at float32 accuracy."""
    gen = torch.Generator().manual_seed(2)
    a = torch.polar(torch.full((3, 1), 0.999, dtype=torch.float64), torch.rand(3, 1, generator=gen, dtype=torch.float64))
    a, b = a.to(torch.complex64), torch.randn(2, 3, 5000, generator=gen, dtype=torch.complex64)
    ref = loop(a.to(torch.complex128), b.to(torch.complex128))  # exact recurrence of the float32 inputs
    h, _ = linear_scan(a, b)
    assert ((h - ref).abs().max() / ref.abs().max()).item() < 1e-5
    av = a.expand(2, 3, 5000).contiguous()
    hv, _ = linear_scan(av, b)
    assert ((hv - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_strong_decays_do_not_underflow_to_nan():
    """Products of a over a chunk underflow to 0 (0.01^256): the doubling scan never divides by them."""
    a = torch.full((2, 300), 0.01)
    b = torch.randn(2, 300)
    h, _ = linear_scan(a, b)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h.double(), loop(a.double(), b.double()), rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_the_scan_in_float32():
    a = torch.rand(4, 1) * 0.9
    b = torch.randn(2, 4, 30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, _ = linear_scan(a.bfloat16(), b.bfloat16())
    assert h.dtype == torch.float32
    torch.testing.assert_close(h.double(), loop(a.bfloat16().double(), b.bfloat16().double()), rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="time\\) dimension must be 1 or L=10"):
        linear_scan(torch.rand(3, 4), torch.randn(3, 10))
    with pytest.raises(ValueError, match="chunk must be a positive"):
        linear_scan(torch.rand(3, 1), torch.randn(3, 10), chunk=0)


#: |a| across the whole range: exactly 0, underflowing products (0.05^32 is below float32's smallest normal,
#: 0.9^1024 below its denormals), moderate, close to 1, exactly 1 (a pure rotation) and -1.
EXTREME_MODULI = (0.0, 1e-20, 0.05, 0.5, 0.9, 0.999, 0.99999, 1.0, 1.0)


def _extreme_decays(complex_: bool, gen) -> torch.Tensor:
    r = torch.tensor(EXTREME_MODULI, dtype=torch.float64)
    if not complex_:
        return r * torch.tensor([1, 1, -1, 1, 1, -1, 1, 1, -1], dtype=torch.float64)
    return torch.polar(r, torch.rand(r.shape, generator=gen, dtype=torch.float64) * 6.3)


def _reference_with_adjoint(a, b, dh):
    """float64 forward loop h_t = a_t h_{t-1} + b_t and the adjoint loop g_t = dh_t + conj(a_{t+1}) g_{t+1}
    (the definition of the gradient of sum Re(conj(dh) h)): returns h, dL/da, dL/db."""
    a = a.expand(b.shape) if a.shape[-1] == b.shape[-1] else a.expand(*b.shape[:-1], 1)
    L = b.shape[-1]
    a_t = (lambda t: a[..., t]) if a.shape[-1] == L else (lambda t: a[..., 0])  # noqa: E731
    h = torch.empty_like(b)
    state = torch.zeros(b.shape[:-1], dtype=b.dtype)
    for t in range(L):
        state = a_t(t) * state + b[..., t]
        h[..., t] = state
    g = torch.empty_like(b)
    state = torch.zeros_like(state)
    for t in range(L - 1, -1, -1):
        state = dh[..., t] + (a_t(t + 1).conj() * state if t + 1 < L else 0)
        g[..., t] = state
    da = g[..., 1:] * h[..., :-1].conj()
    da = da.sum(-1, keepdim=True) if a.shape[-1] == 1 else torch.nn.functional.pad(da, (1, 0))
    return h, da, g


@pytest.mark.parametrize("varying", [False, True], ids=["invariant", "varying"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("dtype", ["single", "double"])
def test_extreme_decays_at_long_lengths_match_the_float64_loop(varying, complex_, dtype):
    """Every |a| in [0, 1] (exactly 0 and exactly 1 included) over 65,536 steps (4,096 for a time-varying a):
    value and gradients finite and equal to the float64 loops, at float32 accuracy in single precision.
    Before the fix, the time-invariant scan returned NaN once a^(chunk^k) underflowed to 0 (complex 0 ** 0)."""
    gen = torch.Generator().manual_seed(3)
    L = 4096 if varying else 65536
    a64 = _extreme_decays(complex_, gen).unsqueeze(-1)  # (9, 1)
    if varying:  # each step draws one of the extreme decays (so exact zeros and ones occur mid-sequence)
        a64 = a64.expand(9, L).gather(-1, torch.randint(0, 9, (9, L), generator=gen))
    c64 = torch.complex128 if complex_ else torch.float64
    b64 = torch.randn(9, L, generator=gen, dtype=c64)
    dh64 = torch.randn(9, L, generator=gen, dtype=c64)
    low = {"single": torch.complex64 if complex_ else torch.float32, "double": c64}[dtype]
    a, b = a64.to(low).requires_grad_(), b64.to(low).requires_grad_()
    h, _ = linear_scan(a, b)
    da, db = torch.autograd.grad((h * dh64.to(low).conj()).real.sum(), (a, b))
    # the reference runs on the inputs as the scan saw them (rounded to float32 in single precision)
    ref_h, ref_da, ref_db = _reference_with_adjoint(a.detach().to(c64), b.detach().to(c64), dh64.to(low).to(c64))
    tol = 2e-5 if dtype == "single" else 1e-11
    for got, want, name in ((h, ref_h, "h"), (da, ref_da, "da"), (db, ref_db, "db")):
        assert torch.isfinite(torch.view_as_real(got) if got.is_complex() else got).all(), name
        want = want if complex_ else want.real
        err = (got.to(want.dtype) - want).abs().amax(-1) / want.abs().amax(-1).clamp(min=1e-30)  # per state
        assert err.max().item() < tol, f"{name}: relative error {err.tolist()}"
