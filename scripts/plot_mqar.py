"""MQAR accuracy against recurrent state size (Zoology / Based Figure 2 at our scale), from `ssmkit sweep` run directories.

    python scripts/plot_mqar.py runs/sweeps/mqar --out mqar-state.png
    python scripts/plot_mqar.py runs/sweeps/mqar/attn runs/sweeps/mqar/mamba --metric val/accuracy --no-plot

Every run directory under the folders given (a folder with ``summary.json`` and ``recipe.yaml``, as
``recipes/mqar/sweep-state.sh`` leaves them; ``.stale``/``.replaced`` are skipped) is one point: its final validation
accuracy against the recurrent state of its model in floats, the same computation for every mixer:

- ``default_state(1)``: the sum over the model's mixers of the numel of ``mixer.default_state(1)`` (every tensor in
  it; a complex number counts as 2 floats);
- ``state after L``: the same count for the state the model returns after reading one sequence of the task's
  ``seq_len`` tokens (``model(x, return_state=True)``). For a fixed-size recurrence it equals ``default_state(1)``; for
  attention (the KV cache) and Hyena with an implicit filter (the input prefixes) the state grows with the sequence and
  ``default_state(1)`` is (nearly) empty, so the plot's x axis is this column: the state the model holds when it answers.

The model is built from the run's own resolved ``recipe.yaml`` (no weights are needed). Prints a Markdown table (one
row per run, by mixer and state size) and, with matplotlib installed, draws the plot (log x, one line per mixer);
without matplotlib it says so and prints the table only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ssmkit.recipe import build_model, build_task, load_recipe


def state_floats(state) -> int:
    """Floats in a state: every tensor inside tuples, lists, dicts and NamedTuples (complex counts 2); ints are
    positions, not state."""
    if isinstance(state, torch.Tensor):
        return state.numel() * (2 if state.is_complex() else 1)
    if isinstance(state, dict):
        return sum(state_floats(v) for v in state.values())
    if isinstance(state, tuple | list):
        return sum(state_floats(v) for v in state)
    return 0


def model_states(recipe_path: Path) -> dict:
    """The run's model: parameters, state floats of default_state(1) and after one seq_len-token sequence."""
    recipe = load_recipe(str(recipe_path))
    task = build_task(recipe)
    torch.manual_seed(0)
    model = build_model(recipe, task).eval()
    initial = sum(state_floats(m.default_state(1)) for m in model.mixers)
    x, _ = task.dataset("val")[0]
    with torch.no_grad():
        _, states = model(x.unsqueeze(0), return_state=True)
    return {"parameters": sum(p.numel() for p in model.parameters()), "state_default": initial,
            "state_after_L": state_floats(states), "recipe": recipe}


def find_runs(folders: list[Path]) -> list[Path]:
    runs = set()
    for folder in folders:
        if not folder.is_dir():
            sys.exit(f"error: {folder} is not a folder; give the sweep folder(s), e.g. runs/sweeps/mqar")
        for summary in folder.rglob("summary.json"):
            run = summary.parent
            if (run / "recipe.yaml").is_file() and not any(p.startswith(".") for p in run.relative_to(folder).parts):
                runs.add(run)
    return sorted(runs)


def collect(folders: list[Path], metric: str) -> list[dict]:
    rows = []
    for run in find_runs(folders):
        summary = json.loads((run / "summary.json").read_text())
        if summary.get("status") != "finished":
            print(f"skip {run}: status {summary.get('status')}", file=sys.stderr)
            continue
        info = model_states(run / "recipe.yaml")
        recipe = info.pop("recipe")
        mixer = dict(recipe.model.mixer)
        rows.append({"run": str(run), "mixer": mixer["name"], "d_model": recipe.model.d_model,
                     "d_state": mixer.get("d_state"), "accuracy": (summary.get("final") or {}).get(metric),
                     "steps": summary.get("step"), "time_s": summary.get("time_s"), **info})
    rows.sort(key=lambda r: (r["mixer"], r["state_after_L"]))
    return rows


def markdown(rows: list[dict], metric: str) -> str:
    lines = [f"| mixer | d_model | d_state | state floats after L (default_state(1)) | parameters | {metric} | steps | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"| {r['mixer']} | {r['d_model']} | {r['d_state'] if r['d_state'] is not None else '-'} | "
                     f"{r['state_after_L']:,} ({r['state_default']:,}) | {r['parameters']:,} | {acc} | {r['steps']} | "
                     f"{r['time_s']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, metric: str, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): table only, no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mixer in sorted({r["mixer"] for r in rows}):
        pts = sorted((r["state_after_L"], r["accuracy"]) for r in rows if r["mixer"] == mixer and r["accuracy"] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mixer)
    ax.set_xscale("log")
    ax.set_xlabel("recurrent state after the sequence (floats, all layers)")
    ax.set_ylabel(metric)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="sweep folder(s) holding the run directories")
    p.add_argument("--metric", default="val/accuracy", help="the summary.json final metric to plot")
    p.add_argument("--out", type=Path, default=Path("mqar-state.png"), help="the PNG to write")
    p.add_argument("--title", default="MQAR accuracy against recurrent state size")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a Markdown table")
    args = p.parse_args(argv)
    rows = collect(args.folders, args.metric)
    if not rows:
        print(f"error: no finished run directory under {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=1) if args.json else markdown(rows, args.metric))
    if not args.no_plot:
        plot(rows, args.out, args.metric, args.title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
