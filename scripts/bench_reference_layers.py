"""ssmkit's DLR and SGConv layers against the reference layers they replace, timed in one process.

    OMP_NUM_THREADS=2 python scripts/bench_reference_layers.py                      # B 8, H 128, N 64, L 4096
    OMP_NUM_THREADS=2 python scripts/bench_reference_layers.py --output linear --json ref.json
    OMP_NUM_THREADS=1 python scripts/bench_reference_layers.py --rounds 1 --length 256 --batch 2   # smoke test

docs/performance.md compares our layers with fixed reference times (DESIGN.md: DLR 0.27 s, SGConv 0.24 s)
taken on another day, when the machine ran at another speed. Here the reference layers are re-implemented
as their repositories write them (../shared/reference/dlr-dss-sgconv.md, sections 1 and 3) and timed
forward+backward (gradient for the input and every parameter) interleaved with ours: round i runs
reference then ssmkit when i is even, ssmkit then reference when it is odd, so a machine that slows down
slows both alike. Each is warmed up twice first; wall time (time.perf_counter), threads as torch's
default (OMP_NUM_THREADS). ``ratio`` is reference median / ssmkit median; min/max are the per-round ratios.

The reference layers, in plain torch with autograd through every op (opt_einsum's ``contract`` replaced
by ``torch.einsum``, which runs the same pairwise contractions):

  DLR     (ag1988/dlr, ``DSS`` with ``kernel_type=dlr``, ``version=''``, no pykeops: the materialised
          fallback). lambda_n = -p_n^2 + i b_n (N,), W complex stored as (1, H, N, 2);
          K = Re einsum('chn,nl->chl', W, exp(lambda x arange(L))); n = L + Lk, y = irfft(rfft(u, n) *
          rfft(K, n))[..., :L]; + einsum('bhl,ch->bchl', u, D); flatten (C H); GELU.
  SGConv  (ctlllll/SGConv ``GConv``, mode cat_randn, kernel_dim 64, decay 2, l_max = L): kernel =
          cat_i F.interpolate(w_i * m^(n-1-i), 2^max(0, i-1), linear); divided by its L2 norm measured
          on the first forward (a detached buffer); FFT size 2L; D skip; GELU.
  output  both repositories' ``TransposedLinear`` on the (B, C*H, L) activations: einsum('bul,vu->bvl',
          y, weight) + bias[:, None]; ``glu`` (postact glu) maps to 2H, then GLU over the channel dim.

Contention (``--contention K``): every round is timed twice, once idle and once while K busy background
processes (``ssmkit/contention.py``: pure-Python spin loops, stopped at the end and on Ctrl-C) compete for the
cores, the idle and loaded halves in alternating order, each with both layers interleaved as above. Per layer
it prints the idle and loaded medians, ``loaded/idle`` (how much the layer slows down under the load; the
lower the better) and the loaded rounds' min/median/max (how steady a step is).

    OMP_NUM_THREADS=2 python scripts/bench_reference_layers.py --contention 2 --rounds 6 --output linear

Ours is ``ssmkit.profile._build_layer`` (the layer ``ssmkit profile`` and scripts/bench_kernels.py time).
Before timing, each pair is checked to compute the same function: our parameters are copied into the
reference layer (before its first forward, so its kernel norm is measured on the same weights) and both
run in float64 at a small shape; outputs and input gradients must agree to 1e-9 relative.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

# isort: off
import ssmkit  # noqa: F401  first: sets OpenMP's wait policy before torch loads its runtime (ssmkit/openmp.py)
import torch
import torch.nn as nn
import torch.nn.functional as F
# isort: on

from ssmkit import openmp, profile
from ssmkit.contention import BusyLoad, check_k
from ssmkit.errors import UserError


class RefLinear(nn.Module):
    """TransposedLinear (+ GLU postact) of both repositories: weight (out, in), bias (out, 1), on (B, in, L)."""

    def __init__(self, d_in: int, d_out: int, glu: bool):
        super().__init__()
        self.glu = glu
        d_out *= 2 if glu else 1
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.empty(d_out, 1).uniform_(-(d_in**-0.5), d_in**-0.5))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bul,vu->bvl", y, self.weight) + self.bias
        return F.glu(y, dim=1) if self.glu else y


class RefLayer(nn.Module):
    """The part both reference layers share: FFT convolution with a (C, H, Lk) kernel, D skip, GELU, output."""

    def __init__(self, H: int, output: str):
        super().__init__()
        self.D = nn.Parameter(torch.randn(1, H))
        self.output_linear = RefLinear(H, H, output == "glu")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        L = u.shape[-1]
        k = self.kernel(L)  # (C, H, Lk)
        n = self.fft_size(L, k.shape[-1])
        y_f = torch.einsum("bhl,chl->bchl", torch.fft.rfft(u, n=n), torch.fft.rfft(k, n=n))
        y = torch.fft.irfft(y_f, n=n)[..., :L]  # (B, C, H, L)
        y = y + torch.einsum("bhl,ch->bchl", u, self.D)
        return self.output_linear(F.gelu(y.flatten(1, 2)))


class RefDLR(RefLayer):
    """DSS(kernel_type='dlr') of ag1988/dlr with DLRKernel(version='', Lambda_init='omega'), no pykeops."""

    def __init__(self, H: int, N: int, output: str, dt_min: float = 1e-4, dt_max: float = 1e-1):
        super().__init__(H, output)
        dt = torch.exp(math.log(dt_min) + torch.rand(N) * (math.log(dt_max) - math.log(dt_min)))
        self.Lambda_im = nn.Parameter(2 * math.pi * torch.arange(N) / N)
        self.Lambda_log_neg_re = nn.Parameter((0.5 * dt).sqrt())  # p, Re lambda = -p^2
        self.W = nn.Parameter(torch.randn(1, H, N, 2) / N)

    def fft_size(self, L: int, Lk: int) -> int:
        return L + Lk

    def kernel(self, L: int) -> torch.Tensor:
        Lambda = -self.Lambda_log_neg_re**2 + 1j * self.Lambda_im  # (N,) complex
        S = torch.exp(Lambda.unsqueeze(-1) * torch.arange(L, device=Lambda.device))  # (N, L)
        K = torch.einsum("chn,nl->chl", torch.view_as_complex(self.W), S)
        return torch.view_as_real(K)[..., 0]  # kernel_to_real = real


class RefSGConv(RefLayer):
    """GConv of ctlllll/SGConv (main), mode cat_randn, one channel, not bidirectional, no LN."""

    def __init__(self, H: int, l_max: int, output: str, kernel_dim: int = 64, decay: float = 2.0):
        super().__init__(H, output)
        n_scales = 1 + math.ceil(math.log2(l_max / kernel_dim))
        self.kernel_list = nn.ParameterList(nn.Parameter(torch.randn(1, H, kernel_dim)) for _ in range(n_scales))
        self.register_buffer("multiplier", torch.linspace(decay, decay, H).view(1, -1, 1))
        self.register_buffer("kernel_norm", torch.ones(H, 1))
        self.norm_initialized = False

    def fft_size(self, L: int, Lk: int) -> int:
        return 2 * L

    def kernel(self, L: int) -> torch.Tensor:
        n = len(self.kernel_list)
        k = torch.cat([F.interpolate(w * self.multiplier ** (n - 1 - i), scale_factor=2 ** max(0, i - 1), mode="linear")
                       for i, w in enumerate(self.kernel_list)], dim=-1)
        if not self.norm_initialized:  # measured once, on the full kernel, then fixed
            self.kernel_norm = k.norm(dim=-1, keepdim=True).detach()
            self.norm_initialized = True
        k = k[..., :L] if k.shape[-1] >= L else F.pad(k, (0, L - k.shape[-1]))
        return k / self.kernel_norm


def build_pair(kernel: str, H: int, N: int, L: int, output: str) -> tuple[nn.Module, nn.Module]:
    """(reference, ours) with ours's parameters copied into the reference."""
    ours = profile._build_layer(kernel, H, N, "auto", L, output)
    ref = RefDLR(H, N, output) if kernel == "dlr" else RefSGConv(H, L, output)
    k = ours.kernel
    if kernel == "dlr":
        pairs = [(ref.Lambda_im, k.Lambda_im), (ref.Lambda_log_neg_re, k.Lambda_sqrt_neg_re), (ref.W, k.W)]
    else:
        pairs = [(w, getattr(k, f"kernel_{i}")) for i, w in enumerate(ref.kernel_list)]
        pairs.append((ref.multiplier, k.multiplier.view(1, -1, 1)))
    linear = ours.out[0] if isinstance(ours.out, nn.Sequential) else ours.out
    pairs += [(ref.D, ours.D), (ref.output_linear.weight, linear.weight), (ref.output_linear.bias, linear.bias[:, None])]
    with torch.no_grad():
        for dst, src in pairs:
            assert dst.shape == src.shape, (dst.shape, src.shape)
            dst.copy_(src)
    return ref, ours


def check_same(kernel: str, output: str, B: int = 2, H: int = 8, N: int = 16, L: int = 512) -> float:
    """Max |difference| / max |value| of outputs and input gradients, float64, small shape; asserts <= 1e-9."""
    torch.manual_seed(0)
    ref, ours = (m.double() for m in build_pair(kernel, H, N, L, output))
    x = torch.randn(B, H, L, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, H, L, dtype=torch.float64)
    outs = []
    for layer in (ref, ours):
        y = layer(x)
        (dx,) = torch.autograd.grad(y, x, g)
        outs.append((y.detach(), dx))
    err = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(*outs))
    assert err <= 1e-9, f"{kernel}/{output}: the reference and ssmkit layers differ (relative {err:.2e})"
    return err


def time_pair(ref: nn.Module, ours: nn.Module, x: torch.Tensor, rounds: int, load: BusyLoad | None = None) -> dict:
    """Interleaved forward+backward times (ms). With a ``load`` (K > 0), every round has an idle and a loaded
    half (order alternating), and the row gets each layer's loaded/idle slowdown and its loaded spread."""
    def run(layer: nn.Module) -> float:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        t0 = time.perf_counter()
        layer(x).sum().backward()
        return time.perf_counter() - t0

    for layer in (ref, ours):
        for _ in range(2):
            run(layer)
    phases = ("idle", "loaded") if load is not None and load.k > 0 else ("idle",)
    times = {phase: {"reference": [], "ssmkit": []} for phase in phases}
    try:
        for i in range(rounds):
            for phase in phases if i % 2 == 0 else phases[::-1]:
                if phase == "loaded":
                    load.start()
                order = ("reference", "ssmkit") if i % 2 == 0 else ("ssmkit", "reference")
                for name in order:
                    times[phase][name].append(run(ref if name == "reference" else ours) * 1e3)
                if load is not None:
                    load.stop()
    finally:
        if load is not None:
            load.stop()
    idle = times["idle"]
    ratios = [r / o for r, o in zip(idle["reference"], idle["ssmkit"])]
    ref_ms, ours_ms = statistics.median(idle["reference"]), statistics.median(idle["ssmkit"])
    row = {"reference_ms": ref_ms, "ssmkit_ms": ours_ms, "ratio": ref_ms / ours_ms, "ratio_min": min(ratios),
           "ratio_max": max(ratios), "times_ms": idle}
    if "loaded" in times:
        loaded = times["loaded"]
        row["loaded_times_ms"] = loaded
        for name in ("reference", "ssmkit"):
            med = statistics.median(loaded[name])
            row[f"{name}_loaded"] = {"min_ms": min(loaded[name]), "median_ms": med, "max_ms": max(loaded[name]),
                                     "slowdown": med / statistics.median(idle[name])}
        row["loaded_ratio"] = row["reference_loaded"]["median_ms"] / row["ssmkit_loaded"]["median_ms"]
    return row


def print_row(r: dict, first: bool) -> None:
    if "loaded_ratio" not in r:
        if first:
            print(f"{'kernel':7} {'output':7} {'reference ms':>12} {'ssmkit ms':>10} {'ref/ours':>8} "
                  f"{'min':>5} {'max':>5}  same function (f64 rel. err)")
        print(f"{r['kernel']:7} {r['output']:7} {r['reference_ms']:12.1f} {r['ssmkit_ms']:10.1f} {r['ratio']:7.2f}x "
              f"{r['ratio_min']:5.2f} {r['ratio_max']:5.2f}  {r['check_rel_err_f64']:.1e}", flush=True)
        return
    if first:
        print(f"{'kernel':7} {'output':7} {'layer':9} {'idle ms':>8} {'loaded ms':>9} {'loaded/idle':>11} "
              f"{'loaded min':>10} {'max':>7}")
    for name in ("reference", "ssmkit"):
        d = r[f"{name}_loaded"]
        print(f"{r['kernel']:7} {r['output']:7} {name:9} {r[f'{name}_ms']:8.1f} {d['median_ms']:9.1f} "
              f"{d['slowdown']:10.2f}x {d['min_ms']:10.1f} {d['max_ms']:7.1f}")
    print(f"{'':7} {'':7} ref/ours idle {r['ratio']:.2f}x, loaded {r['loaded_ratio']:.2f}x; "
          f"same function (f64 rel. err) {r['check_rel_err_f64']:.1e}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--d-state", type=int, default=64, help="DLR's N (SGConv has kernel_dim 64)")
    ap.add_argument("--output", default="linear,glu", help="output maps: linear (the DLR repo's), glu")
    ap.add_argument("--kernels", default="dlr,sgconv")
    ap.add_argument("--contention", type=int, default=0, metavar="K",
                    help="also time every round under K busy background processes (loaded/idle per layer)")
    ap.add_argument("--json", default=None, help="write the rows (with every round's times) to this file")
    args = ap.parse_args()
    try:
        check_k(args.contention)
    except UserError as e:
        ap.error(str(e))
    B, H, N, L = args.batch, args.d_model, args.d_state, args.length
    outputs, kernels = args.output.split(","), args.kernels.split(",")
    assert set(outputs) <= {"linear", "glu"} and set(kernels) <= {"dlr", "sgconv"}, "unknown --output or --kernels"
    machine = {**profile.machine(), "openmp": openmp.summary()}
    load = BusyLoad(args.contention)
    print(f"machine: {machine}; B={B} H={H} N={N} L={L}, forward+backward, {args.rounds} interleaved rounds"
          + (f", idle and under {load.describe()}" if load.k else ""))
    rows = []
    for kernel in kernels:
        for output in outputs:
            err = check_same(kernel, output)
            torch.manual_seed(0)
            ref, ours = build_pair(kernel, H, N, L, output)
            x = torch.randn(B, H, L, requires_grad=True)
            with torch.no_grad():
                assert ref(x).shape == ours(x).shape == x.shape
            rows.append({"kernel": kernel, "output": output, "check_rel_err_f64": err,
                         **time_pair(ref, ours, x, args.rounds, load)})
            print_row(rows[-1], first=len(rows) == 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "shape": {"B": B, "H": H, "N": N, "L": L}, "rounds": args.rounds,
                       "contention": load.describe(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
