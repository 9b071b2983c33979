"""The compiled ``ssmkit_cauchy`` extension: its CPU part against an explicit sum, its checks, its build."""
import math
import os
import shutil

import pytest
import torch

from ssmkit.ops import backends, cauchy

probe = backends.probe_extension()
pytestmark = pytest.mark.skipif(not probe.ok, reason=f"the compiled extension is not built here: {probe.reason}")


def explicit(v, z, w, conj):
    """(batch, L) in float64, one term at a time."""
    v, z, w = v.to(torch.complex128), z.to(torch.complex128), w.to(torch.complex128)
    d = z[None, None, :] - w[:, :, None]  # (batch, N, L)
    r = (v[:, :, None] / d).sum(1)
    if conj:
        r = r + (v.conj()[:, :, None] / (z[None, None, :] - w.conj()[:, :, None])).sum(1)
    return r


def data(batch, N, L, dtype):
    g = torch.Generator().manual_seed(batch * 1000 + N * 10 + L)
    v = torch.randn(batch, N, dtype=torch.complex128, generator=g)
    w = torch.complex(-torch.rand(batch, N, dtype=torch.float64, generator=g) - 0.05,
                      torch.randn(batch, N, dtype=torch.float64, generator=g) * 10)
    z = torch.exp(2j * math.pi * torch.arange(L, dtype=torch.float64) / (2 * L))
    return v.to(dtype), z.to(dtype), w.to(dtype)


@pytest.mark.parametrize("batch,N,L", [(1, 1, 1), (3, 17, 300), (2, 64, 513), (5, 33, 1000)])
@pytest.mark.parametrize("conj", [True, False])
def test_complex64_forward_and_gradient_close_to_float64(batch, N, L, conj):
    v, z, w = data(batch, N, L, torch.complex64)
    out = probe.module.cauchy_fwd(v, z, w, conj)
    ref = explicit(v, z, w, conj)
    assert ((out.to(torch.complex128) - ref).abs().max() / ref.abs().max()) < 1e-5
    g = torch.randn(batch, L, dtype=torch.complex64)
    dv, dw = probe.module.cauchy_bwd(v, z, w, g, conj)
    v128, w128 = v.to(torch.complex128).requires_grad_(), w.to(torch.complex128).requires_grad_()
    rv, rw = torch.autograd.grad(explicit(v128, z, w128, conj), (v128, w128), g.to(torch.complex128))
    assert ((dv.to(torch.complex128) - rv).abs().max() / rv.abs().max()) < 1e-4
    assert ((dw.to(torch.complex128) - rw).abs().max() / rw.abs().max()) < 1e-4


@pytest.mark.parametrize("conj", [True, False])
def test_rows_sharing_poles_equal_the_explicit_sum(conj):
    """w (P, N) for v (R * P, N): row b uses poles b % P; dw sums over the R rows that share them."""
    R, P, N, L = 3, 2, 17, 300
    v, z, w = data(R * P, N, L, torch.complex64)
    w = w[:P].contiguous()
    w_rows = w.repeat(R, 1)
    out = probe.module.cauchy_fwd(v, z, w, conj)
    ref = explicit(v, z, w_rows, conj)
    assert ((out.to(torch.complex128) - ref).abs().max() / ref.abs().max()) < 1e-5
    g = torch.randn(R * P, L, dtype=torch.complex64)
    dv, dw = probe.module.cauchy_bwd(v, z, w, g, conj)
    assert dw.shape == (P, N)
    v128, w128 = v.to(torch.complex128).requires_grad_(), w.to(torch.complex128).requires_grad_()
    rv, rw = torch.autograd.grad(explicit(v128, z, w128.repeat(R, 1), conj), (v128, w128), g.to(torch.complex128))
    assert ((dv.to(torch.complex128) - rv).abs().max() / rv.abs().max()) < 1e-4
    assert ((dw.to(torch.complex128) - rw).abs().max() / rw.abs().max()) < 1e-4


def test_bad_inputs_raise_a_clear_error():
    v, z, w = data(2, 3, 4, torch.complex64)
    with pytest.raises(RuntimeError, match="P dividing v's batch"):
        probe.module.cauchy_fwd(v, z, w[:, :2], True)
    with pytest.raises(RuntimeError, match="P dividing v's batch"):
        probe.module.cauchy_fwd(v, z, torch.cat([w, w[:1]]), True)  # 3 pole rows for 2 rows of v
    with pytest.raises(RuntimeError, match="complex64 or complex128"):
        probe.module.cauchy_fwd(v.real.contiguous(), z.real.contiguous(), w.real.contiguous(), True)


def test_broadcast_batch_dims_through_the_autograd_wrapper():
    v, z, w = data(6, 5, 9, torch.complex128)
    v = v.reshape(2, 3, 5).requires_grad_()
    w = w[:3].clone().requires_grad_()  # (3, N) broadcast over the leading 2
    out = cauchy.cauchy(v, z, w, backend="extension")
    ref = cauchy.cauchy_torch(v, z, w)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (v, w), g), torch.autograd.grad(ref, (v, w), g)):
        torch.testing.assert_close(a, b)


def test_cuda_part_compiled_where_a_toolkit_exists():
    toolkit = any(os.path.exists(os.path.join(p, "include", "cuda_runtime.h"))
                  for p in (os.environ.get("CUDA_HOME") or "", "/usr/local/cuda") if p) and shutil.which("nvcc")
    if not (toolkit and torch.version.cuda):
        pytest.skip("no CUDA toolkit or CPU-only torch: the extension is built without its CUDA part")
    assert probe.module.has_cuda()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu():
    v, z, w = data(4, 64, 4096, torch.complex64)
    for conj in (True, False):
        cpu = probe.module.cauchy_fwd(v, z, w, conj)
        gpu = probe.module.cauchy_fwd(v.cuda(), z.cuda(), w.cuda(), conj).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
