"""ops.linalg.solve: batches of large systems on the CPU, where torch 2.14.1's batched oneMKL LU fails with two or
more threads ("Parameter 6 was incorrect on entry to ZLASWP", then garbage or minutes of spinning). Checked against
numpy's solve, one matrix at a time in float64/complex128, and in a fresh process with two threads, because the
failure depends on the thread count of the process."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ssmkit.ops.linalg import BATCHED_CPU_MAX_N, solve


@pytest.mark.parametrize("n", [8, BATCHED_CPU_MAX_N + 1, 260])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_solve_matches_numpy(n, dtype):
    g = torch.Generator().manual_seed(n)
    A = torch.randn(3, 1, n, n, dtype=dtype, generator=g) + 4 * torch.eye(n, dtype=dtype)
    B = torch.randn(1, 2, n, 5, dtype=dtype, generator=g)   # batch dimensions broadcast to (3, 2)
    x = solve(A, B)
    assert x.shape == (3, 2, n, 5)
    An, Bn = A.numpy(), B.numpy()
    for i in range(3):
        for j in range(2):
            np.testing.assert_allclose(x[i, j].numpy(), np.linalg.solve(An[i, 0], Bn[0, j]), rtol=1e-9, atol=1e-11)


def test_solve_gradients_match_batched():
    """The per-matrix path is differentiable and its gradients equal the batched solve's (float64, 1 thread)."""
    n = BATCHED_CPU_MAX_N + 2
    A = (torch.randn(2, n, n, dtype=torch.float64) + 4 * torch.eye(n, dtype=torch.float64)).requires_grad_()
    B = torch.randn(2, n, 3, dtype=torch.float64, requires_grad=True)
    gA, gB = torch.autograd.grad(solve(A, B).sin().sum(), (A, B))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the batched call is correct with one thread
    try:
        rA, rB = torch.autograd.grad(torch.linalg.solve(A, B).sin().sum(), (A, B))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(gA, rA)
    torch.testing.assert_close(gB, rB)


def test_s4_d_state_256_two_threads_in_a_fresh_process():
    """The issue's case: S4Kernel(d_state=256, H > 1) sets its kernel length with two threads, finite and equal to
    the same kernel computed with one thread (where the batched LU is correct)."""
    code = textwrap.dedent("""
        import torch
        from ssmkit.mixers.kernels.s4 import S4Kernel
        torch.manual_seed(0)
        k = S4Kernel(4, d_state=256).double()
        torch.set_num_threads(2)
        K2, _ = k(512)
        torch.manual_seed(0)
        k1 = S4Kernel(4, d_state=256).double()
        torch.set_num_threads(1)
        K1, _ = k1(512)
        assert torch.isfinite(K2).all()
        torch.testing.assert_close(K2, K1, rtol=1e-8, atol=1e-10)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    assert "oneMKL ERROR" not in out.stdout + out.stderr
