"""The selective scan against the recurrence written out in float64, step by step, in this file: the plain-torch
scan and the fused C++ scan of the extension (both its AVX2+FMA and its baseline variant), each the same way."""
import json
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import EXT_OK, MaxTensor, needs_ext

import ssmkit.ops.selective_scan as ss
from ssmkit.ops import backends, dispatch
from ssmkit.ops.dispatch import BackendUnavailable
from ssmkit.ops.selective_scan import choose_backend, selective_scan, selective_step

_ext = backends.probe_extension()


@pytest.fixture
def backend(mamba_backend):
    """torch, the extension, the extension's baseline variant (tests/ops/conftest.py)."""
    return mamba_backend


def recurrence(u, delta, A, B, C, D=None, h0=None):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = <C_t, h_t> + D u_t, one position at a time."""
    b, d, L = u.shape
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64) if h0 is None else h0.double()
    ys = []
    for t in range(L):
        dt = delta[:, :, t].double().unsqueeze(-1)  # (b, d, 1)
        h = torch.exp(dt * A.double()) * h + dt * B[:, None, :, t].double() * u[:, :, t, None].double()
        y = (h * C[:, None, :, t].double()).sum(-1)
        if D is not None:
            y = y + D.double() * u[:, :, t].double()
        ys.append(y)
    return torch.stack(ys, -1), h


def problem(b=2, d=3, n=4, L=70, delta_scale=0.3, A_scale=4.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, L, generator=g, dtype=dtype)
    delta = torch.rand(b, d, L, generator=g, dtype=dtype) * delta_scale + 1e-3
    A = -torch.rand(d, n, generator=g, dtype=dtype) * A_scale - 0.05
    B = torch.randn(b, n, L, generator=g, dtype=dtype)
    C = torch.randn(b, n, L, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype)
    h0 = torch.randn(b, d, n, generator=g, dtype=dtype)
    return u, delta, A, B, C, D, h0


@pytest.mark.parametrize("chunk", [1, 16, 64, 200])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("b, n", [(2, 4), (1, 16), (3, 9)])  # n around the extension's vector widths (4, 8)
def test_forward_matches_the_recurrence(chunk, with_state, b, n, backend):
    u, delta, A, B, C, D, h0 = problem(b=b, n=n)
    h0 = h0 if with_state else None
    y, h = selective_scan(u, delta, A, B, C, D, h0=h0, chunk=chunk, backend=backend)
    y_ref, h_ref = recurrence(u, delta, A, B, C, D, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("delta_scale", [0.3, 20.0])  # 20: chunks are split to keep exp(-S) finite
@pytest.mark.parametrize("b, d, n", [(2, 3, 4), (1, 7, 16)])  # b=1: the extension splits the channels in groups
def test_gradients_match_the_recurrence(delta_scale, b, d, n, backend):
    inputs = [t.requires_grad_() for t in problem(b=b, d=d, n=n, L=45, delta_scale=delta_scale)]
    y, h = selective_scan(*inputs[:6], h0=inputs[6], chunk=16, backend=backend)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum() + h.square().sum(), inputs)
    y_ref, h_ref = recurrence(*inputs[:6], inputs[6])
    ref = torch.autograd.grad((y_ref * w).sum() + h_ref.square().sum(), inputs)
    for name, g, r in zip(("u", "delta", "A", "B", "C", "D", "h0"), grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


def test_large_decays_stay_finite_in_float32(backend):
    """delta*A of several hundred per chunk: exp(-S) would overflow float32 without the split (torch scan), and
    lie far below the extension's exp clamp (-87)."""
    u, delta, A, B, C, D, h0 = problem(L=130, delta_scale=30.0, A_scale=10.0, dtype=torch.float32)
    args = [t.requires_grad_() for t in (u, delta, A, B, C)]
    y, h = selective_scan(*args, D, h0=h0, backend=backend)
    y.sum().backward()
    y_ref, h_ref = recurrence(u, delta, A, B, C, D, h0)
    assert all(torch.isfinite(t.grad).all() for t in args)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.double(), h_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype, n", [(torch.float64, 4), (torch.float32, 16)])
def test_float_matches_the_float64_recurrence(dtype, n, backend):
    """float32: the extension's vectorised exp and the torch scan both within float32 rounding of the recurrence,
    values and gradients, over decays from ~1 to ~e^-30 a step."""
    inputs = [t.to(dtype).requires_grad_() for t in problem(b=2, d=5, n=n, L=150, delta_scale=3.0, A_scale=10.0)]
    y, h = selective_scan(*inputs[:6], h0=inputs[6], backend=backend)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((y.double() * w).sum() + h.double().square().sum(), inputs)
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    y_ref, h_ref = recurrence(*ref_in[:6], ref_in[6])
    ref = torch.autograd.grad((y_ref * w).sum() + h_ref.square().sum(), ref_in)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for name, a, r in zip(("y", "h", "du", "ddelta", "dA", "dB", "dC", "dD", "dh0"), (y, h, *grads), (y_ref, h_ref, *ref)):
        err = ((a.double() - r).abs().max() / r.abs().max()).item()
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("skip", [False, True])
def test_gate_and_skip_match_the_recurrence(skip, backend):
    """y = (C . h + D u) * silu(z): the Mamba block's gate, fused into the extension's scan; values and the
    gradients of every input, z and D included, against the float64 recurrence times silu(z) written out here."""
    inputs = [t.requires_grad_() for t in problem(b=2, d=5, n=9, L=77)]
    z = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).requires_grad_()
    D = inputs[5] if skip else None
    y, h = selective_scan(*inputs[:5], D, h0=inputs[6], chunk=16, backend=backend, z=z)
    y_ref, h_ref = recurrence(*inputs[:5], D, inputs[6])
    y_ref = y_ref * z * torch.sigmoid(z)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn_like(y)
    wrt = [t for t in (*inputs[:5], D, inputs[6], z) if t is not None]
    grads = torch.autograd.grad((y * w).sum() + h.square().sum(), wrt)
    ref = torch.autograd.grad((y_ref * w).sum() + h_ref.square().sum(), wrt)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9)
    with pytest.raises(ValueError, match="the gate z must be"):
        selective_scan(*inputs[:5], D, backend=backend, z=z[..., 1:])


def test_state_passing_equals_one_pass(backend):
    u, delta, A, B, C, D, h0 = problem(L=60)
    y, h = selective_scan(u, delta, A, B, C, D, h0=h0, backend=backend)
    cut = 23
    y1, h1 = selective_scan(u[..., :cut], delta[..., :cut], A, B[..., :cut], C[..., :cut], D, h0=h0, backend=backend)
    y2, h2 = selective_scan(u[..., cut:], delta[..., cut:], A, B[..., cut:], C[..., cut:], D, h0=h1, backend=backend)
    torch.testing.assert_close(torch.cat([y1, y2], -1), y)
    torch.testing.assert_close(h2, h)


def test_an_empty_sequence_leaves_the_state(backend):
    u, delta, A, B, C, D, h0 = (t[..., :0] if t.dim() == 3 and t.shape[-1] == 70 else t for t in problem())
    y, h = selective_scan(u, delta, A, B, C, D, h0=h0, backend=backend)
    assert y.shape == (2, 3, 0)
    torch.testing.assert_close(h, h0)


def test_step_equals_scan(backend):
    u, delta, A, B, C, D, h0 = problem(L=20)
    y, h = selective_scan(u, delta, A, B, C, D, h0=h0, backend=backend)
    state, ys = h0, []
    for t in range(u.shape[-1]):
        y_t, state = selective_step(u[..., t], delta[..., t], A, B[..., t], C[..., t], D, state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, -1), y)
    torch.testing.assert_close(state, h)


def test_memory_is_bounded_by_the_chunk_not_the_length(backend):
    """Nothing of size (batch, D, N, L) is made, in forward or backward: only chunk-sized state tensors (the
    extension's (batch, D, L / chunk, N) start states and per-thread (chunk, N) buffers are smaller still)."""
    b, d, n, L, chunk = 2, 32, 16, 2048, 64
    u, delta, A, B, C, D, _ = problem(b, d, n, L, dtype=torch.float32)
    args = [t.requires_grad_() for t in (u, delta, A, B, C)]
    with MaxTensor() as mt:
        y, _ = selective_scan(*args, D, chunk=chunk, backend=backend)
        y.sum().backward()
    assert mt.max_numel <= max(b * d * n * chunk, b * d * L, b * n * L), mt.max_numel  # chunk states, u, B
    assert mt.max_numel < b * d * n * L // 8


def test_bf16_autocast_keeps_the_scan_in_float32(backend, monkeypatch):
    u, delta, A, B, C, D, h0 = problem(dtype=torch.float32)
    seen = []
    real_prepare = ss._as_scan_dtype
    monkeypatch.setattr(ss, "_as_scan_dtype", lambda *a: seen.append({t.dtype for t in real_prepare(*a)}) or real_prepare(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h = selective_scan(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, h0=h0, backend=backend)
    assert seen and all(s == {torch.float32} for s in seen), seen
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    y_ref, _ = recurrence(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, h0)
    assert ((y.double() - y_ref).norm() / y_ref.norm()).item() < 1e-2


def test_backend_choice_on_cpu_and_bad_inputs():
    u, delta, A, B, C, D, h0 = problem(dtype=torch.float32)
    assert choose_backend(u, None, "auto") == ("extension" if EXT_OK else "torch")
    assert choose_backend(u, None, "torch") == "torch"
    backends.reset()
    with pytest.raises(BackendUnavailable, match=r"backend 'mamba_ssm' cannot run this call on cpu \(it runs on CUDA "
                                                 r"only\); choose auto or (extension or )?torch$"):
        choose_backend(u, None, "mamba_ssm")
    with pytest.raises(ValueError, match="unknown selective-scan backend 'fused'"):
        selective_scan(u, delta, A, B, C, backend="fused")
    with pytest.raises(ValueError, match=r"B must be \(batch, N, L\)"):
        selective_scan(u, delta, A, B[..., :-1], C)
    with pytest.raises(ValueError, match="start state must be"):
        selective_scan(u, delta, A, B, C, h0=h0[:1])
    assert isinstance(backends.probe_mamba_ssm().reason, str)


def test_extension_without_the_scan_is_refused_by_name_and_skipped_by_auto(monkeypatch):
    """An ssmkit_cauchy built before the scan existed: ``auto`` runs torch (the same numbers), a named ``extension``
    is a one-line error saying why and what can run."""
    u, delta, A, B, C, D, h0 = problem()
    backends.reset()
    monkeypatch.setitem(backends._probes, "extension", backends.Probe(True, "an old build", object()))
    assert choose_backend(u, None, "auto") == "torch"
    with pytest.raises(BackendUnavailable, match=r"\(the installed ssmkit_cauchy predates the selective scan; rebuild "
                                                 r"it .*\); choose auto or torch$") as e:
        selective_scan(u, delta, A, B, C, D, backend="extension")
    assert "\n" not in str(e.value)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C, D)[0], recurrence(u, delta, A, B, C, D)[0])
    backends.reset()


def test_mamba_ssm_takes_no_start_state_nor_float64(monkeypatch):
    """What the table says of mamba_ssm, with its import pretended: on CUDA it runs float32 calls without a start
    state; a start state or float64 inputs are refused with the reason (``auto`` then takes torch)."""
    backends.reset()
    monkeypatch.setitem(backends._probes, "mamba_ssm.ops.selective_scan_interface", backends.Probe(True, "pretend"))
    cuda = torch.device("cuda")
    call = dispatch.Call(cuda, frozenset((torch.float32,)))
    assert ss.OP.why_not("mamba_ssm", call, test=False) is None
    assert ss.OP.why_not("mamba_ssm", dispatch.Call(cuda, call.dtypes, frozenset(("start_state",))),
                         test=False) == "it takes no start state"
    assert ss.OP.why_not("mamba_ssm", dispatch.Call(cuda, frozenset((torch.float64,))),
                         test=False) == "it takes float32/float16/bfloat16 inputs, got float64"
    backends.reset()


def test_mamba_ssm_self_test_passes_a_kernel_that_behaves_like_it(monkeypatch):
    """A stand-in with mamba_ssm's contract (the scan's values, gradients from y only: its backward drops the final
    state's gradient) passes the self-test; a stand-in with a wrong gradient fails it. (The real kernel needs CUDA.)"""
    def fake(u, delta, A, B, C, return_last_state):
        y, h = ss._torch_scan(u, delta, A, B, C, None, ss.CHUNK)
        return y, h.detach()

    def wrong(u, delta, A, B, C, return_last_state):
        y, h = fake(u, delta, A, B, C, return_last_state)
        return y + (y - y.detach()) * 0.01, h  # the same values, gradients 1% off

    key = "mamba_ssm.ops.selective_scan_interface"
    cpu = torch.device("cpu")
    tol = ss.OP.impls["mamba_ssm"].tol
    monkeypatch.setitem(backends._probes, key, backends.Probe(True, "stand-in", type("M", (), {"selective_scan_fn": staticmethod(fake)})))
    assert ss._self_test_error("mamba_ssm", cpu) < 1e-5
    monkeypatch.setitem(backends._probes, key, backends.Probe(True, "stand-in", type("M", (), {"selective_scan_fn": staticmethod(wrong)})))
    assert ss._self_test_error("mamba_ssm", cpu) > tol


_FIRST_CALL = textwrap.dedent("""
    import json, sys, torch
    import ssmkit.ops.causal_conv as cc
    import ssmkit.ops.selective_scan as ss
    from ssmkit.mixers.mamba import Mamba

    picks = {"scan": [], "conv": []}

    def spy(mod, key):  # the backend each op settles on, seen at the boundary
        real = mod.choose_backend
        mod.choose_backend = lambda *a, **k: picks[key].append(real(*a, **k)) or picks[key][-1]

    spy(ss, "scan")
    spy(cc, "conv")
    m = Mamba(8, d_state=4).eval()
    with getattr(torch, sys.argv[1])():
        m(torch.randn(2, 8, 16))
    print(json.dumps(picks))
""")


@needs_ext
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_a_first_call_without_gradients_still_picks_the_extension(mode):
    """A fresh process (``ssmkit eval``, generation) whose first Mamba forward runs under no_grad or inference_mode
    self-tests the extension with gradients anyway and uses it (it once settled on the torch scan, ~10x slower)."""
    out = subprocess.run([sys.executable, "-c", _FIRST_CALL, mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {"scan": ["extension"], "conv": ["extension"]}


@needs_ext
def test_self_test_passes_inside_inference_mode():
    u = problem(dtype=torch.float32)[0]
    backends.reset()
    with torch.inference_mode():
        assert choose_backend(u, None, "auto") == "extension"
    assert dispatch._self_tests[("selective_scan", "extension", "cpu")].ok
    backends.reset()


def test_auto_fallbacks_are_logged(monkeypatch, caplog):
    """A failed self-test is a WARNING (a broken build), and ``auto`` logs the torch choice with the reason."""
    u = problem(dtype=torch.float32)[0]
    backends.reset()
    fake = type("Ext", (), {"selective_scan_fwd": None})()
    monkeypatch.setitem(backends._probes, "extension", backends.Probe(True, "a broken build", fake))
    monkeypatch.setattr(ss, "_self_test_error", lambda name, device: 1.0)
    with caplog.at_level(logging.INFO, logger="ssmkit.ops"):
        assert choose_backend(u, None, "auto") == "torch"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "extension backend failed its self-test (self-test error 1.00e+00" in warned[0].getMessage()
    assert any(r.levelno == logging.INFO and "using the torch backend (extension not used: self-test error" in r.getMessage()
               for r in caplog.records)
    backends.reset()


@needs_ext
def test_extension_checks_its_arguments():
    mod = _ext.module
    u, delta, A, B, C, D, h0 = problem(dtype=torch.float32)
    Bt, Ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
    with pytest.raises(RuntimeError, match=r"Bt and Ct must be \(batch, L, N\)"):
        mod.selective_scan_fwd(u, delta, A, B.contiguous(), Ct, h0, None, None, 64)
    with pytest.raises(RuntimeError, match="share one dtype"):
        mod.selective_scan_fwd(u, delta.double(), A, Bt, Ct, h0, None, None, 64)
    with pytest.raises(RuntimeError, match=r"D must be \(D,\)"):
        mod.selective_scan_fwd(u, delta, A, Bt, Ct, h0, D[:1], None, 64)
    with pytest.raises(RuntimeError, match="z must be"):
        mod.selective_scan_fwd(u, delta, A, Bt, Ct, h0, None, u[..., :-1], 64)
    with pytest.raises(RuntimeError, match="chunk must be >= 1"):
        mod.selective_scan_fwd(u, delta, A, Bt, Ct, h0, None, None, 0)
    with pytest.raises(RuntimeError, match="starts must be"):
        mod.selective_scan_bwd(u, delta, A, Bt, Ct, h0, None, None, u, h0, 64)
    assert mod.selective_scan_isa() in ("avx2+fma", "baseline")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    args = problem(dtype=torch.float32)
    y, h = selective_scan(*args[:6], h0=args[6], backend="torch")
    y_cuda, h_cuda = selective_scan(*[t.cuda() for t in args[:6]], h0=args[6].cuda(), backend="torch")
    torch.testing.assert_close(y_cuda.cpu(), y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h_cuda.cpu(), h, rtol=1e-4, atol=1e-4)
    if backends.probe_mamba_ssm().ok:  # the fused kernel, where installed: against the float64 recurrence
        y_fused, h_fused = selective_scan(*[t.cuda() for t in args[:6]], backend="mamba_ssm")
        y_ref, h_ref = recurrence(*args[:6])
        torch.testing.assert_close(y_fused.cpu().double(), y_ref, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(h_fused.cpu().double(), h_ref, rtol=1e-3, atol=1e-3)
