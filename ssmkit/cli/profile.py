"""``ssmkit profile``: the sweep of ``ssmkit/profile.py`` (mixers x lengths: time, peak memory, tokens/s) from the
command line, printed as a table and optionally written as JSON/CSV and a plot."""
from __future__ import annotations

from pathlib import Path

import torch
import typer

from ssmkit.console import console as make_console
from ssmkit.contention import BusyLoad, check_k
from ssmkit.errors import UserError
from ssmkit.profile import (
    KNOWN_KERNELS,
    MAX_REPEAT,
    MODES,
    OUTPUTS,
    PLOT_SUFFIXES,
    check_backend,
    check_kernels,
    check_options,
    parse_lengths,
    plot,
    sweep,
    table,
    write,
)


def _check_args(mode: str, output: str | None, device: str, sizes: dict, repeat: int) -> str:
    """Refuses bad options before anything runs; returns the device (``auto`` resolved)."""
    if mode not in MODES:
        raise UserError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    if output is not None and output not in OUTPUTS:
        raise UserError(f"unknown --output {output!r}; choose one of {', '.join(OUTPUTS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise UserError(f"--device {device!r} is not available here; use cpu" + (" or cuda" if torch.cuda.is_available() else ""))
    for name, val in sizes.items():
        if val is not None and val <= 0:
            raise UserError(f"{name} must be positive, got {val}")
    if repeat > MAX_REPEAT:
        raise UserError(f"--repeat {repeat} is more than {MAX_REPEAT} timed repetitions per point; the median settles "
                        "within a few: use 3-20")
    return device


def _check_files(out: Path | None, plot_path: Path | None) -> None:
    if out is not None and out.suffix not in (".json", ".csv"):
        raise UserError(f"--out must end in .json or .csv, got {out}")
    if plot_path is not None and plot_path.suffix not in PLOT_SUFFIXES:
        raise UserError(f"--plot must end in {', '.join(PLOT_SUFFIXES)}, got {plot_path}")


def profile_command(
    kernel: str = typer.Option("s4d", help="comma-separated mixers: " + ",".join(KNOWN_KERNELS)),
    length: str = typer.Option("1k,4k,16k", help="comma-separated lengths, k = 1024, M = 1024^2"),
    d_model: int = typer.Option(128, help="H"),
    d_state: int | None = typer.Option(None, help="N, for the mixers with a d_state (unset: each mixer's default)"),
    batch: int = typer.Option(8, help="B"),
    backend: str = typer.Option("auto", help="Cauchy/Vandermonde backend: auto|torch|chunked|keops|extension; for mamba "
                                "the scan and convolution backend: auto|torch|extension; mamba2: auto|torch|mamba_ssm"),
    mode: str = typer.Option("fwd+bwd", help="fwd | fwd+bwd | step"),
    output: str | None = typer.Option(None, help="the output map of the mixers that have one: glu | linear | none "
                                      "(unset: each mixer's default)"),
    repeat: int = typer.Option(3, help="timed repetitions per point (median), after one warm-up"),
    floor: bool = typer.Option(True, help="also time the bare FFT convolution of the same shape"),
    isolate: bool = typer.Option(True, help="one child process per point (honest peak memory)"),
    device: str = typer.Option("auto", help="cpu | cuda | auto"),
    out: Path | None = typer.Option(None, help="write the points to .json or .csv"),
    plot_path: Path | None = typer.Option(None, "--plot", help="write a log-log plot (PNG) of time and memory"),
    contention: int = typer.Option(0, metavar="K", help="also time each point under K busy background processes "
                                   "(adds loaded ms, loaded max and loaded/idle)"),
) -> None:
    """Time, peak memory and tokens/s of kernels over a sweep of lengths."""
    sizes = {"--d-model": d_model, "--d-state": d_state, "--batch": batch, "--repeat": repeat}
    device = _check_args(mode, output, device, sizes, repeat)
    check_k(contention)
    kernels = check_kernels(kernel)
    lengths = parse_lengths(length)
    check_backend(backend)
    check_options(kernels, d_state, backend, output, min(lengths), d_model)
    _check_files(out, plot_path)
    console = make_console(markup=False)  # off a terminal: rows never cut at 80 columns
    console.print(f"profiling {', '.join(kernels)} at L = {', '.join(map(str, lengths))} ({mode}, {device}, "
                  f"B={batch}, H={d_model}, N={'each mixer default' if d_state is None else d_state} where a mixer "
                  f"has one, {torch.get_num_threads()} threads)"
                  + (f"; idle and under {BusyLoad(contention).describe()}" if contention else ""))
    rows = sweep(kernels, lengths, isolate=isolate, mode=mode, backend=backend, batch=batch, d_model=d_model,
                 d_state=d_state, repeat=repeat, floor=floor and mode != "step", device=device,
                 threads=torch.get_num_threads(), output=output, contention=contention,
                 progress=lambda r: console.print(f"  {r['kernel']} L={r['length']}: {r['status']}"
                                                  + (f", {r['time_ms']:.2f} ms" if r["time_ms"] else "")))
    console.print(table(rows))
    if out:
        write(rows, out)
        console.print(f"wrote {out}")
    if plot_path:
        plot(rows, plot_path)
        console.print(f"wrote {plot_path}")
