"""``ssmkit profile``: time, peak memory and throughput of each mixer over a sweep of lengths.

One point = one (kernel, length): the registered mixer of that name (``ssmkit.mixers.build_mixer``; every name
of ``MIXERS``, each with its own output map) at (B, H, L), run in ``fwd``
(training forward, grad enabled, no backward), ``fwd+bwd`` (forward and backward, gradient for the
input and every parameter) or ``step`` (the recurrent step after ``setup_step``; time per token).
Each point runs in a fresh child process by default, so its peak memory is its own: the CUDA
allocator's peak on GPU, the RSS high-water mark above the pre-run RSS on CPU. Out-of-memory is
caught per point. ``floor`` is the bare FFT convolution (``ssmkit.ops.fftconv``) of the same shape and
mode, so each kernel's overhead over the convolution it feeds is ``ratio = time / floor``.

``--contention K`` times every point twice, idle and while K busy background processes compete for the cores
(``ssmkit/contention.py``), and adds ``loaded ms`` (median), ``loaded max`` (slowest repetition) and
``loaded/idle``: how much a layer slows down on a shared machine.

The profile's options reach the mixers that have them and are refused, before anything runs, where none of the
chosen mixers does: ``--d-state`` (N; unset: each mixer's own default, e.g. 64 for s4d, 16 for mamba, 128 for
mamba2) goes to mixers with a ``d_state`` option (a point records the N it ran with, null for a mixer without
one), ``--backend`` to those with a ``backend``, ``--output`` (the output
map; unset: each mixer's own default) to those with an ``output``. Length-bound filters span the input: SGConv's
``l_max`` and Hyena's implicit filter ``filter_options.l_max`` are set to L.
"""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import re
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.table import Table

from ssmkit.console import number_text
from ssmkit.contention import BusyLoad
from ssmkit.errors import UserError, first_line
from ssmkit.mixers import MIXERS, build_mixer, mixer_parameters
from ssmkit.ops import cauchy, selective_scan, ssd, vandermonde
from ssmkit.ops.fftconv import fftconv
from ssmkit.registry import did_you_mean

MODES = ("fwd", "fwd+bwd", "step")
#: every registered mixer can be profiled
KNOWN_KERNELS = tuple(MIXERS.names())


def default_d_state(kernel: str) -> int | None:
    """Mixer ``kernel``'s own d_state default (None: it has no d_state option)."""
    param = mixer_parameters(kernel).get("d_state")
    return None if param is None else param.default


@dataclass
class Point:
    kernel: str
    length: int
    mode: str
    backend: str
    batch: int
    d_model: int
    d_state: int | None  # None: the mixer has no d_state option
    status: str = "ok"
    time_ms: float | None = None
    peak_mb: float | None = None
    tokens_per_s: float | None = None
    floor_ms: float | None = None
    ratio: float | None = None
    max_ms: float | None = None  # the slowest of the timed calls (time_ms is their median)
    loaded_ms: float | None = None
    loaded_max_ms: float | None = None
    slowdown: float | None = None


def parse_lengths(text: str) -> list[int]:
    """'1k,4k,16k,1M,1000' -> [1024, 4096, 16384, 1048576, 1000] (k = 1024, M = 1024^2)."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", part)
        if not m:
            raise UserError(f"bad --length entry {part!r}; use integers with an optional k or M suffix, e.g. 1k,4k,1M")
        n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
        if n <= 0:
            raise UserError(f"--length entries must be positive, got {part!r}")
        out.append(n)
    return out


def check_kernels(text: str) -> list[str]:
    """'s4d,dlr' -> ['s4d', 'dlr']; an unknown or missing name is a UserError before anything runs."""
    kernels = [k.strip() for k in text.split(",") if k.strip()]
    names = _registry().names()
    if not kernels:
        raise UserError(f"--kernel names no kernel; choose from {', '.join(names)}")
    for k in kernels:
        if k not in names:
            raise UserError(f"unknown --kernel {k!r}{did_you_mean(k, names)}; choose from {', '.join(names)}")
    return kernels


#: every backend name of the ops the mixers dispatch (Cauchy, Vandermonde, selective scan, SSD); each mixer checks its own
BACKENDS = tuple(dict.fromkeys((*cauchy.BACKENDS, *vandermonde.BACKENDS, *selective_scan.BACKENDS, *ssd.BACKENDS)))


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def check_options(kernels: list[str], d_state: int | None, backend: str, output: str | None, length: int,
                  d_model: int) -> None:
    """Refuses, before anything runs, a profile option that none of ``kernels`` has (given explicitly), and any
    option value a chosen mixer rejects (each is built once, at the profile's width and shortest length, to ask it)."""
    given = {"--d-state": ("d_state", d_state is not None), "--backend": ("backend", backend != "auto"),
             "--output": ("output", output is not None)}
    for flag, (option, set_) in given.items():
        takers = [k for k in kernels if option in mixer_parameters(k)]
        if set_ and not takers:
            have = [k for k in KNOWN_KERNELS if option in mixer_parameters(k)]
            raise UserError(f"{flag} does not apply to {', '.join(kernels)} (no {option} option); it applies to "
                            f"{', '.join(have)}: drop it or profile one of those")
    for k in kernels:
        try:
            build_mixer(d_model, mixer_spec(k, d_state, backend, length, output))
        except (ValueError, TypeError) as e:
            raise UserError(f"mixer {k!r} refuses these profile options: {first_line(e)}") from e


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


# --- memory -----------------------------------------------------------------------------------
def _rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak(device: torch.device) -> float:
    """Resets the peak counter; returns the baseline (MB) the peak is measured above."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:  # Linux: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _rss_mb("VmRSS") or 0.0


def _peak(device: torch.device, baseline: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - baseline
    hwm = _rss_mb("VmHWM")
    if hwm is None:  # no /proc: the process-lifetime high-water mark
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return max(hwm - baseline, 0.0)


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg)


# --- one point ----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: the most timed repetitions per point ``ssmkit profile --repeat`` accepts (a larger one would run for days)
MAX_REPEAT = 1000


def median_ms(fn, repeat: int = 5, device: torch.device | str = "cpu") -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeat`` calls, after one warm-up call."""
    return _timed(fn, torch.device(device), repeat) * 1e3


def _timed(fn, device: torch.device, repeat: int, times: list | None = None) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls after a warm-up; every call's time goes to ``times``."""
    fn()  # warm-up (allocations, keops/cuFFT plans)
    times = [] if times is None else times
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


OUTPUTS = ("glu", "linear", "none")


def mixer_spec(kernel: str, N: int | None, backend: str, L: int | None = None, output: str | None = None) -> dict:
    """The ``model.mixer`` dict a point builds: the profile's options where mixer ``kernel`` has them (d_state
    ``N``, the mixer's default when None; ``backend``; ``output``, None = the mixer's own default, "none" = no output map), and
    length-bound filters as long as the input (SGConv's ``l_max``, Hyena's implicit ``filter_options.l_max``)."""
    params = mixer_parameters(kernel)
    spec: dict = {"name": kernel}
    if "d_state" in params and N is not None:
        spec["d_state"] = N
    if "backend" in params:
        spec["backend"] = backend
    if "output" in params and output is not None:
        spec["output"] = None if output == "none" else output
    if L is not None and "l_max" in params:
        spec["l_max"] = L  # SGConv: a kernel as long as the input, like the others
    if L is not None and kernel == "hyena":
        spec["filter_options"] = {"l_max": L}  # the implicit filter spans the input (no truncation warning)
    return spec


def _build_layer(kernel: str, H: int, N: int | None, backend: str, L: int | None = None, output: str | None = None):
    """The mixer of one point, at width ``H`` (see :func:`mixer_spec`)."""
    return build_mixer(H, mixer_spec(kernel, N, backend, L, output))


def _floor_fn(B: int, H: int, L: int, mode: str, device: torch.device):
    u = torch.randn(B, H, L, device=device, requires_grad=mode == "fwd+bwd")
    k = torch.randn(1, H, L, device=device, requires_grad=mode == "fwd+bwd")

    def run():
        y = fftconv(u, k)
        if mode == "fwd+bwd":
            y.sum().backward()

    return run


def measure_point(
    kernel: str, length: int, mode: str, backend: str, batch: int, d_model: int, d_state: int | None,
    repeat: int = 3, floor: bool = True, device: str = "cpu", threads: int | None = None, step_tokens: int = 1000,
    output: str | None = None,
) -> dict:
    """Measures one point in this process; returns a :class:`Point` as a dict."""
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    own = default_d_state(kernel) if kernel in MIXERS else None
    pt = Point(kernel, length, mode, backend, batch, d_model, None if own is None else (own if d_state is None else d_state))
    B, H, L = batch, d_model, length
    times: list[float] = []
    try:
        if kernel not in _registry():
            pt.status = f"not registered yet (available: {', '.join(_registry().names())})"
            return asdict(pt)
        layer = _build_layer(kernel, H, d_state, backend, L, output).to(dev)
        if mode == "step":
            if not layer.has_state:
                pt.status = f"{kernel} has no recurrent step"
                return asdict(pt)
            layer.eval()
            n = min(L, step_tokens)
            x = torch.randn(n, B, H, device=dev)
            with torch.no_grad():
                layer.setup_step()

                def run():
                    state = layer.default_state(B, device=dev)
                    for t in range(n):
                        _, state = layer.step(x[t], state)

                base = _reset_peak(dev)
                t = _timed(run, dev, repeat, times) / n
            pt.time_ms, pt.peak_mb, pt.tokens_per_s, pt.max_ms = t * 1e3, _peak(dev, base), B / t, max(times) * 1e3 / n
            return asdict(pt)
        x = torch.randn(B, H, L, device=dev, requires_grad=mode == "fwd+bwd")

        def run():
            y = layer(x)
            if mode == "fwd+bwd":
                y.sum().backward()

        base = _reset_peak(dev)
        t = _timed(run, dev, repeat, times)
        pt.peak_mb = _peak(dev, base)
        pt.time_ms, pt.tokens_per_s, pt.max_ms = t * 1e3, B * L / t, max(times) * 1e3
        layer = x = None  # free them before timing the floor
        if floor:
            pt.floor_ms = _timed(_floor_fn(B, H, L, mode, dev), dev, repeat) * 1e3
            pt.ratio = pt.time_ms / pt.floor_ms
    except Exception as e:  # noqa: BLE001  the point is reported, never the sweep aborted
        pt.status = "oom" if _is_oom(e) else f"error: {type(e).__name__}: {first_line(e, empty='')}"
    return asdict(pt)


def _registry():
    return MIXERS


def _child(spec: dict, conn) -> None:
    conn.send(measure_point(**spec))
    conn.close()


def run_point(spec: dict, isolate: bool = True) -> dict:
    """Measures one point, in a fresh (spawned) child process when ``isolate``."""
    if not isolate:
        return measure_point(**spec)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, child))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:  # the child died before it could answer (killed for memory, or crashed)
        result = None
    proc.join()
    if result is None:
        fields = {k: spec[k] for k in ("kernel", "length", "mode", "backend", "batch", "d_model", "d_state")}
        status = "oom (killed)" if proc.exitcode in (-9, 137) else f"crashed (exit code {proc.exitcode})"
        result = asdict(Point(**fields, status=status))
    return result


def sweep(kernels: list[str], lengths: list[int], *, isolate: bool = True, progress=None, contention: int = 0,
          **common) -> list[dict]:
    """One row per (kernel, length). With ``contention`` K > 0 each point is measured idle, then again under K
    busy background processes (``ssmkit.contention.BusyLoad``, stopped after each point and on any exit)."""
    load = BusyLoad(contention)
    rows = []
    for k in kernels:
        for L in lengths:
            spec = {"kernel": k, "length": L, **common}
            row = run_point(spec, isolate=isolate)
            if load.k and row["status"] == "ok":
                with load:
                    loaded = run_point(spec, isolate=isolate)
                if loaded["status"] == "ok":
                    row["loaded_ms"], row["loaded_max_ms"] = loaded["time_ms"], loaded["max_ms"]
                    row["slowdown"] = loaded["time_ms"] / row["time_ms"]
            rows.append(row)
            if progress:
                progress(row)
    return rows


# --- output --------------------------------------------------------------------------------------
def table(rows: list[dict], title: str = "ssmkit profile"):
    t = Table(title=title)
    loaded = any(r.get("slowdown") is not None for r in rows)
    cols = ["kernel", "L", "mode", "backend", "time ms", "peak MB", "tokens/s", "floor ms", "ratio"]
    cols += ["loaded ms", "loaded max", "loaded/idle"] if loaded else []
    for col in cols + ["status"]:
        t.add_column(col, justify="right" if col not in ("kernel", "mode", "backend", "status") else "left")
    for r in rows:
        cells = [r["kernel"], str(r["length"]), r["mode"], r["backend"], number_text(r["time_ms"], ".2f"),
                 number_text(r["peak_mb"], ".0f"), number_text(r["tokens_per_s"], ".3g"), number_text(r["floor_ms"], ".2f"),
                 number_text(r["ratio"], ".2f")]
        if loaded:
            cells += [number_text(r.get("loaded_ms"), ".2f"), number_text(r.get("loaded_max_ms"), ".2f"), number_text(r.get("slowdown"), ".2f")]
        t.add_row(*cells, r["status"])
    return t


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps({"machine": machine(), "points": rows}, indent=2))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(Point.__dataclass_fields__))
            w.writeheader()
            w.writerows(rows)
    else:
        raise UserError(f"--out must end in .json or .csv, got {path}")


def plot(rows: list[dict], path: Path) -> None:
    """Log-log time and peak memory against length, one line per kernel (and the FFT floor)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UserError(f"--plot needs matplotlib ({e}); install it with: pip install 'ssmkit[plot]'") from e
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for k in dict.fromkeys(r["kernel"] for r in rows):
        ok = [r for r in rows if r["kernel"] == k and r["status"] == "ok"]
        if not ok:
            continue
        ax_t.plot([r["length"] for r in ok], [r["time_ms"] for r in ok], "o-", label=k)
        ax_m.plot([r["length"] for r in ok], [max(r["peak_mb"], 1e-3) for r in ok], "o-", label=k)
        fl = [r for r in ok if r["floor_ms"] is not None]
        if fl:
            ax_t.plot([r["length"] for r in fl], [r["floor_ms"] for r in fl], ":", color="gray")
    for ax, label in ((ax_t, "time per call (ms); dotted: FFT floor"), (ax_m, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
