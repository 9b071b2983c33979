"""Generates docs/results.md from run directories (summary.json, metrics.jsonl, the resolved recipe.yaml and
the command.txt that scripts/run_atomic.py writes), plus the catalogue of shipped recipes with the published
number each one targets (from its header comment).

    python scripts/make_results.py --runs /tmp/ssmkit-runs --out docs/results.md

Layout read under --runs: ``atomic/<kernel>-<task>/`` (the atomic-task grid) and ``long/<name>/`` (long Shift).
A cell without a finished run is printed as "not run", never guessed.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ("dlr", "s4d", "dss", "sgconv", "attn")
KERNEL_NAMES = {"dlr": "DLR", "s4d": "S4D", "dss": "DSS-EXP", "sgconv": "SGConv", "attn": "attention"}
TASKS = ("shift", "cumsum", "cummax", "reverse", "sort", "masked_select_fixed", "solve_fixed", "solve",
         "masked_select", "context_shift", "mips")
#: What the DLR paper says per task, as far as our reference files carry it (reference/dlr-dss-sgconv.md 6.1).
PUBLISHED = {
    "shift": "DLR near-perfect, also at 0.5M (abstract)",
    "context_shift": "DLR fails (abstract)",
    "masked_select": "SSMs struggle: many kernels needed (abstract)",
    "mips": "SSMs struggle (abstract); attention is the reference model",
}
NO_TABLE = "table not in our references"


def read_run(path: Path) -> dict | None:
    """The finished run in ``path``: summary, resolved recipe, command, and the eval history."""
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    recipe = yaml.safe_load((path / "recipe.yaml").read_text()) if (path / "recipe.yaml").is_file() else {}
    command = (path / "command.txt").read_text().strip() if (path / "command.txt").is_file() else "(command not recorded)"
    history = []
    if (path / "metrics.jsonl").is_file():
        for line in (path / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("metrics"):
                history.append((rec["step"], rec["metrics"]))
    return {"summary": summary, "recipe": recipe, "command": command, "history": history}


def r2(run: dict | None) -> float | None:
    return None if run is None else run["summary"]["final"].get("val/r2")


def fmt(value: float | None) -> str:
    if value is None:
        return "not run"
    return f"**{value:.3f}**" if value >= 0.9 else f"{value:.3f}"


def atomic_section(runs: Path) -> list[str]:
    grid = {(k, t): read_run(runs / "atomic" / f"{k}-{t}") for k in KERNELS for t in TASKS}
    done = [r for r in grid.values() if r]
    out = ["## Atomic tasks of the DLR paper, CPU scale (measured here)", ""]
    if not done:
        return out + ["No runs found.", ""]
    any_run = done[0]
    task = any_run["recipe"].get("task", {})
    steps = {r["summary"]["step"] for r in done}
    out += [
        f"One layer, d_model {any_run['recipe']['model']['d_model']}, L={task.get('L')}, batch "
        f"{any_run['recipe']['train']['batch_size']}, {', '.join(map(str, sorted(steps)))} optimizer steps per cell "
        f"(the paper: L=4096, d_model 128, about 10k steps). Validation R^2 = 1 - MSE/Var(y) over "
        f"{task.get('val_samples')} fixed samples; **bold** = R^2 >= 0.9. Recipes: `recipes/quick/atomic-<kernel>.yaml`; "
        "the full-size paper settings are `recipes/dlr/atomic/`.",
        "",
        "| task | " + " | ".join(KERNEL_NAMES[k] for k in KERNELS) + " | best here | published (DLR paper) |",
        "|---|" + "---|" * (len(KERNELS) + 2),
    ]
    for t in TASKS:
        values = {k: r2(grid[(k, t)]) for k in KERNELS}
        cells = [fmt(values[k]) for k in KERNELS]
        measured = {k: v for k, v in values.items() if v is not None}
        top = max(measured, key=measured.get) if measured else None
        best = "-" if top is None else (KERNEL_NAMES[top] if measured[top] >= 0.1 else "none (all < 0.1)")
        out.append(f"| `{t}` | " + " | ".join(cells) + f" | {best} | {PUBLISHED.get(t, NO_TABLE)} |")
    out += ["", "### Every cell: command, time, parameters", "",
            "| kernel | task | val R^2 | steps | wall s | params | command |", "|---|---|---|---|---|---|---|"]
    for t in TASKS:
        for k in KERNELS:
            run = grid[(k, t)]
            if run is None:
                cmd = f"ssmkit train recipes/quick/atomic-{k}.yaml task.name={t} --max-steps 400"
                out.append(f"| {k} | {t} | not run | | | | `{cmd}` |")
                continue
            s = run["summary"]
            out.append(f"| {k} | {t} | {fmt(r2(run))} | {s['step']} | {s['time_s']:.0f} | {s['parameters']:,} | `{run['command']}` |")
    return out + [""]


def long_section(runs: Path) -> list[str]:
    out = ["## Long Shift (measured here)", ""]
    dirs = sorted(p for p in (runs / "long").glob("*") if p.is_dir()) if (runs / "long").is_dir() else []
    found = [(p, read_run(p)) for p in dirs]
    found = [(p, r) for p, r in found if r]
    if not found:
        return out + ["No runs found.", ""]
    out += ["| run | kernel | L | d_state | steps | val R^2 | wall s | published | command |", "|---|---|---|---|---|---|---|---|---|"]
    for p, run in found:
        rec, s = run["recipe"], run["summary"]
        layer = rec["model"]["layer"]
        out.append(f"| {p.name} | {layer['kernel']} | {rec['task'].get('L')} | {layer.get('d_state', '-')} | {s['step']} | "
                   f"{fmt(r2(run))} | {s['time_s']:.0f} | DLR: perfect shift up to 0.5M (abstract; per-L numbers {NO_TABLE}) | "
                   f"`{run['command']}` |")
    out += ["", "Validation R^2 during training:", ""]
    for p, run in found:
        curve = ", ".join(f"{step}: {m.get('val/r2', float('nan')):.3f}" for step, m in run["history"])
        out.append(f"- {p.name}: {curve}")
    return out + [""]


def header_field(text: str, word: str) -> str:
    """The header comment from the line that starts with ``word`` (e.g. Published) to the next sentence end."""
    lines = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    for line in lines:
        low = line.lower()
        i = low.find(word.lower() + ":")
        if i >= 0:
            rest = line[i + len(word) + 1:].strip()
            return rest.split(". ")[0].rstrip(".")
    return ""


def catalogue_section() -> list[str]:
    out = ["## Every shipped recipe and the result it targets (not run here unless measured above)", "",
           "| recipe | what | published / expected | hardware |", "|---|---|---|---|"]
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        name = path.relative_to(ROOT / "recipes").with_suffix("").as_posix()
        published = header_field(text, "Published") or header_field(text, "Expected") or "-"
        hardware = header_field(text, "Hardware") or "-"
        what = (data.get("description") or "").split(";")[0]
        out.append(f"| `{name}` | {what} | {published} | {hardware} |")
    return out + [""]


NOTES = """## What these numbers do and do not show

- Scale: every atomic cell is 400 optimizer steps of batch 32 at L=128 (reverse/sort inputs are 2L, masked_select
  L + 2M with M=32) on a shared CPU, i.e. about 1/25 of the paper's training at 1/32 of its length. Absolute R^2 values
  are therefore lower bounds for what each kernel can do; the *ordering* between tasks is the finding we test.
- DLR paper finding, as far as our reference files state it (abstract only; the paper's tables are not in them):
  convolutional SSMs are near-perfect on tasks a few convolution kernels express (shift, cumsum) and fail when the
  manipulation depends on content (context_shift, masked_select, MIPS), where attention is the better model.
  Reverse and sort are not convolutions (the lag from input to output changes with the position), so a single
  convolutional layer cannot express them either.
- Published per-cell numbers: none could be put beside ours because the DLR paper's atomic-task table is not in our
  references (see /work/shared/reference/dlr-dss-sgconv.md 6.1, "TODO: copy from the arXiv PDF"). The qualitative
  column quotes the abstract.
- Long Shift: the paper's setting (N=4096, lr 1e-5, 8000 samples x 12 epochs at L=16K..1M) is far beyond this CPU.
  We ran DLR at the largest length that trained in about 15 minutes here; see the table above for L, N, steps and R^2.
  L=16K was not attempted: one DLR step at L=16K with N=1024 took about 2 s here, and with the omega init a kernel of N
  harmonic modes repeats every N taps, so N=1024 cannot tell a delay of 2048 from a delay of 0; N=4096 at L=16K
  (about 8 s per step) did not fit in the time.
- Not run here (no GPU was lent to this task): every recipe in recipes/s4, s4d, dss, sgconv, lra, dlr/atomic,
  dlr/long-shift, and the DLR ListOpsSubTrees / PathfinderSegmentation recipes. Their targets are in the catalogue below.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("/tmp/ssmkit-runs"))
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    p.add_argument("--notes", type=Path, default=None, help="a Markdown file appended verbatim (findings, what was not run)")
    args = p.parse_args()
    lines = [
        "# Reproduction report",
        "",
        f"Generated by `python scripts/make_results.py --runs {args.runs}` from the run directories; do not edit by hand "
        "(put prose in the notes file instead). Measured on a shared 2-core x86 CPU without GPU "
        f"({platform.machine()}, Python {platform.python_version()}), runs two at a time with OMP_NUM_THREADS=1, "
        "so wall times are pessimistic.",
        "",
    ]
    lines += atomic_section(args.runs)
    lines += long_section(args.runs)
    lines += [NOTES.rstrip(), ""]
    if args.notes and args.notes.is_file():
        lines += [args.notes.read_text().rstrip(), ""]
    lines += catalogue_section()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
