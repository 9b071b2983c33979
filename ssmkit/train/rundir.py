"""Run directories: ``runs/<name>/`` with recipe.yaml, metrics.jsonl, checkpoints/, summary.json."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ssmkit.errors import UserError


def new_run_dir(runs_dir: str | Path, name: str, run_dir: str | Path | None = None) -> Path:
    """Creates a fresh run directory and returns it; never reuses an existing one.

    An explicit ``run_dir`` that exists and is not empty is refused; a name-derived one gets a suffix
    (``name-2``, ``name-3``, ...).
    """
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(f"run directory {path} already exists; pick another --run-dir, or continue it with --resume {path}")
        path.mkdir(parents=True, exist_ok=True)
        return path
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = root / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()  # atomic: two runs started at once never share a directory
            return path
        except FileExistsError:
            continue
    raise UserError(f"too many runs named {name!r} in {root}; pass --name or --run-dir")


def _clean(value):
    """JSON without NaN/Infinity (they become null), so every line parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(_clean(record)) + "\n")


def _records(path: Path) -> list[dict]:
    """The JSON lines of ``path``. A last line cut short (the process was killed while writing it) is
    dropped; a broken line anywhere else is an error naming the file and line."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break  # a torn final write
            raise UserError(f"{path}:{i + 1}: not a JSON line ({e.msg}); fix or delete that line") from None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise UserError(f"{path}:{i + 1}: expected a JSON object with an integer step, got {line[:60]!r}; "
                            "fix or delete that line")
        records.append(record)
    return records


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return _records(path)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drops the lines logged after ``step`` (a killed run got further than its last checkpoint), and a
    torn last line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [r for r in _records(path) if r["step"] <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")
    os.replace(tmp, path)
