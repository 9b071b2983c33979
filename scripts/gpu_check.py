"""The GPU check's measurements and smoke runs, one table (``scripts/gpu_check.sh`` runs this after the tests).

    python scripts/gpu_check.py [--out gpu_check.json]

Rows (each one ``ok``, ``FAIL: reason`` or ``skipped: reason``, with a number where there is one):
  cauchy <backend>   S4's Cauchy product forward+backward, H=256 rows, N=64 (32 conjugate pairs), L=16K points:
                     extension, keops, torch, chunked; and the extension's largest error against torch
  s4d sCIFAR step    one AdamW training step of the minimal S4D sCIFAR model (4 x 128, N=64, B=64, L=1024,
                     3 input channels), fp32, bf16 and fp16 autocast (GradScaler), milliseconds and peak memory
  mixer <name>       one mixer (``ssmkit profile``'s point) forward+backward at B=8, H=128, L=4096 (GPU; L=1024 on CPU),
                     ms, peak memory and the ratio to s4d's time, and its recurrent step's tokens/s at batch 1: s4d and
                     mamba as the references, then mamba2, hyena, gla, gated_deltanet, rglru (issue #25)
  ddp 2 GPUs         `ssmkit train recipes/quick/s4d-shift.yaml --processes 2` for 5 steps, when two GPUs exist
Without a GPU the same rows run on the CPU where that makes sense (smaller L, no fp16, no DDP) and the title
says plainly that no GPU was found.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ssmkit import profile  # noqa: E402
from ssmkit.errors import first_line  # noqa: E402


def cauchy_rows(device: torch.device) -> list[dict]:
    from ssmkit.ops import cauchy, dispatch

    L = 16384 if device.type == "cuda" else 2048
    H, n = 256, 32
    g = torch.Generator().manual_seed(0)
    v = torch.randn(H, n, 2, generator=g).to(device)
    w = torch.complex(-0.5 * torch.rand(H, n, generator=g), 10 * torch.randn(H, n, generator=g)).to(device)
    z = torch.exp(-2j * torch.pi * torch.arange(L // 2 + 1) / L).to(torch.complex64).to(device)
    rows, ref = [], None
    for backend in ("torch", "chunked", "keops", "extension"):
        name = f"cauchy {backend} (H={H}, N={2 * n}, L={L})"
        vv = torch.view_as_complex(v.clone().requires_grad_(True))
        try:
            cauchy.choose_backend(vv, z, w, backend)  # a named backend that cannot run here: BackendUnavailable
            ms = profile.median_ms(functools.partial(_cauchy_fwd_bwd, vv, z, w, backend), repeat=3, device=device)
            out = cauchy.cauchy(vv, z, w, backend=backend).detach()
            if backend == "torch":
                ref = out
            err = float((out - ref).abs().max() / ref.abs().max()) if ref is not None else float("nan")
            rows.append({"check": name, "status": "ok", "value": f"{ms:.2f} ms fwd+bwd, rel. err {err:.1e}"})
        except dispatch.BackendUnavailable as e:  # not installed or not built here: a skip, not a failure
            rows.append({"check": name, "status": f"skipped: {first_line(e, 120)} (see ssmkit doctor)", "value": ""})
        except (RuntimeError, ValueError) as e:
            rows.append({"check": name, "status": f"FAIL: {first_line(e, 120)}", "value": ""})
    return rows


def _cauchy_fwd_bwd(v, z, w, backend: str) -> None:
    from ssmkit.ops import cauchy

    cauchy.cauchy(v, z, w, backend=backend).real.sum().backward()


def _train_step(model, opt, scaler, dtype, x, y, losses: list) -> None:
    """One optimizer step under autocast to ``dtype`` (None: fp32), with the GradScaler for fp16."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    losses.append(loss.item())


def scifar_step_rows(device: torch.device) -> list[dict]:
    from ssmkit.models.sequence import SequenceModel

    rows = []
    L = 1024 if device.type == "cuda" else 256
    for precision in ("fp32", "bf16", "fp16"):
        name = f"s4d sCIFAR step {precision} (4x128, B=64, L={L})"
        if precision == "fp16" and device.type != "cuda":
            rows.append({"check": name, "status": "skipped: fp16 autocast needs a GPU", "value": ""})
            continue
        try:
            torch.manual_seed(0)
            model = SequenceModel(d_input=3, d_output=10, d_model=128, n_layers=4, pool="mean", prenorm=False,
                                  mixer={"name": "s4d", "d_state": 64}).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            x = torch.randn(64, L, 3, device=device)
            y = torch.randint(0, 10, (64,), device=device)
            losses = []
            step = functools.partial(_train_step, model, opt, scaler, dtype, x, y, losses)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ms = profile.median_ms(step, repeat=5, device=device)
            mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
            finite = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
            rows.append({"check": name, "status": "ok" if finite else "FAIL: non-finite loss",
                         "value": f"{ms:.1f} ms{mem}, loss {losses[0]:.3f} -> {losses[-1]:.3f}"})
        except RuntimeError as e:
            rows.append({"check": name, "status": f"FAIL: {first_line(e, 120)}", "value": ""})
    return rows


#: the mixers the GPU check times: the two references, then the issue-25 mixers
MIXER_ROWS = ("s4d", "mamba", "mamba2", "hyena", "gla", "gated_deltanet", "rglru")


def mixer_rows(device: torch.device) -> list[dict]:
    """Forward+backward of each mixer of MIXER_ROWS at B=8, H=128 (``ssmkit.profile.measure_point``, in this process)
    and its step at batch 1; the ratio is against s4d's forward+backward at the same shape."""
    L = 4096 if device.type == "cuda" else 1024
    rows, s4d_ms = [], None
    for name in MIXER_ROWS:
        label = f"mixer {name} fwd+bwd (B=8, H=128, L={L})"
        if name not in profile.KNOWN_KERNELS:
            rows.append({"check": label, "status": "skipped: not registered in this checkout", "value": ""})
            continue
        pt = profile.measure_point(name, L, "fwd+bwd", "auto", 8, 128, None, repeat=3, floor=False, device=device.type)
        if pt["status"] != "ok":
            rows.append({"check": label, "status": f"FAIL: {pt['status']}", "value": ""})
            continue
        s4d_ms = pt["time_ms"] if name == "s4d" else s4d_ms
        ratio = f", {pt['time_ms'] / s4d_ms:.2f}x s4d" if s4d_ms else ""
        # CUDA's allocator peak; on CPU the RSS high-water mark of a process that ran earlier rows says nothing
        mem = f", peak {pt['peak_mb']:.0f} MB" if device.type == "cuda" and pt["peak_mb"] is not None else ""
        rows.append({"check": label, "status": "ok", "value": f"{pt['time_ms']:.1f} ms{mem}{ratio}"})
        step = profile.measure_point(name, 256, "step", "auto", 1, 128, None, repeat=1, device=device.type)
        rows.append({"check": f"mixer {name} step (B=1, H=128, 256 tokens)",
                     "status": "ok" if step["status"] == "ok" else f"FAIL: {step['status']}",
                     "value": f"{step['tokens_per_s']:.0f} tokens/s" if step["tokens_per_s"] else ""})
    return rows


def ddp_row() -> dict:
    name = "ddp 2 GPUs (quick/s4d-shift, 5 steps)"
    if torch.cuda.device_count() < 2:
        return {"check": name, "status": f"skipped: {torch.cuda.device_count()} GPU(s) here", "value": ""}
    runs = ROOT / "runs-gpu-check"
    cmd = [sys.executable, "-m", "ssmkit", "train", "recipes/quick/s4d-shift.yaml", "--processes", "2",
           "--max-steps", "5", f"train.runs_dir={runs}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    secs = time.perf_counter() - t0
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"check": name, "status": f"FAIL: exit {out.returncode}: {tail[0][:120]}", "value": ""}
    return {"check": name, "status": "ok", "value": f"{secs:.1f} s including start-up"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    title = (f"ssmkit GPU check on {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
             if gpu else f"ssmkit GPU check: NO CUDA GPU FOUND (torch {torch.__version__}); CPU parts only, sizes reduced")
    rows = cauchy_rows(device) + scifar_step_rows(device) + mixer_rows(device) + [ddp_row()]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("check", "status", "value"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["check"], r["status"], r["value"])
    Console(width=int(os.environ.get("COLUMNS", "160"))).print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"title": title, "gpu": gpu, "rows": rows}, indent=1))
    sys.exit(1 if any(r["status"].startswith("FAIL") for r in rows) else 0)


if __name__ == "__main__":
    main()
