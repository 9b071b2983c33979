"""Kernel overhead over the FFT-convolution floor: each kernel in a bare layer (activation id, no output map)
and in the default layer (GELU, Linear + GLU), forward+backward, B=8, H=128, N=64, L=4096.

    OMP_NUM_THREADS=2 python scripts/bench_overhead.py
"""
import time

import torch

from ssmkit import SequenceLayer
from ssmkit.ops.fftconv import fftconv

torch.manual_seed(0)
B,H,L=8,128,4096
x = torch.randn(B,H,L, requires_grad=True)
def timeit(f, n=5):
    f(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return sorted(ts)[n//2]*1000
k = torch.randn(1,H,L, requires_grad=True)
def floor():
    fftconv(x, k).sum().backward()
res = {"floor": timeit(floor)}
for kern in ["s4d","s4","dss","dlr","sgconv"]:
    opts = dict(d_state=64) if kern != "sgconv" else dict(l_max=L)
    bare = SequenceLayer(H, kernel=kern, activation="id", output=None, **opts)
    full = SequenceLayer(H, kernel=kern, **opts)
    res[kern+" bare"] = timeit(lambda: bare(x).sum().backward())
    res[kern+" full"] = timeit(lambda: full(x).sum().backward())
for k_,v in res.items(): print(f"{k_:12s} {v:7.1f} ms  x{v/res['floor']:.2f}")
