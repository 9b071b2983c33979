"""Run directories: ``runs/<name>/`` with recipe.yaml, metrics.jsonl, checkpoints/, summary.json (and ``.lock``,
``ssmkit/runs/lock.py``).

Resuming leaves the records as one uninterrupted run would have written them: ``truncate_metrics`` drops what a
killed run logged after its checkpoint, ``append_metrics`` never writes a second training or evaluation record
for a step already recorded (an evaluation repeated at the step a run resumed from), and ``write_summary`` keeps one
entry per segment in ``summary.json`` (``segments``: from/to step, seconds, status) with ``time_s`` their sum. A
segment killed without a chance to write ``summary.json`` (SIGKILL, power loss) is not in the sum. Files are
never written through a symlink planted in the run directory: new files get unique temp names and are renamed.
"""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path

from ssmkit.errors import UserError, first_line


def _make_folder(path: Path, what: str) -> None:
    """``mkdir -p``; a file in the way, a read-only or full disk: one UserError naming the path."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else e.strerror
        raise UserError(f"cannot create {what} {path} ({reason}); choose another") from None


def new_run_dir(runs_dir: str | Path, name: str, run_dir: str | Path | None = None) -> Path:
    """Creates a fresh run directory and returns it; never reuses an existing one.

    An explicit ``run_dir`` that exists and is not empty is refused; a name-derived one gets a suffix
    (``name-2``, ``name-3``, ...).
    """
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(f"run directory {path} already exists; pick another --run-dir, or continue it with --resume {path}")
        _make_folder(path, "the run directory --run-dir")
        return path
    root = Path(runs_dir)
    _make_folder(root, "the runs folder train.runs_dir")
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


def _write_error(e: OSError, path: Path) -> UserError:
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.ELOOP: "it is a symbolic link"}.get(e.errno, e.strerror)
    return UserError(f"cannot write {path}: {why}; free space or fix the run directory, then continue with: "
                     f"ssmkit train --resume {path.parent}")


def record_kind(record: dict) -> str:
    """``train`` (a loss line) or ``eval`` (validation metrics)."""
    return "train" if record.get("loss") is not None or not record.get("metrics") else "eval"


def _tail_records(path: Path, size: int = 1 << 16) -> list[dict]:
    """The complete JSON records in the last ``size`` bytes of ``path`` (the newest steps)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            start = max(0, f.tell() - size)
            f.seek(start)
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.splitlines()[1 if start else 0:]
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def append_metrics(run_dir: Path, record: dict) -> bool:
    """Appends ``record`` to ``metrics.jsonl`` unless a record of the same kind (:func:`record_kind`) is there
    for its step already; returns whether it was written."""
    path = Path(run_dir) / "metrics.jsonl"
    kind = record_kind(record)
    if any(r.get("step") == record["step"] and record_kind(r) == kind for r in _tail_records(path)):
        return False
    line = (json.dumps(_clean(record)) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        raise _write_error(e, path) from None
    return True


def _records(path: Path) -> list[dict]:
    """The JSON lines of ``path``. A last line cut short (the process was killed while writing it) is
    dropped; a broken line anywhere else is an error naming the file and line."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError as e:
        why = "it is a symbolic link (ssmkit reads a run's files only inside it): delete it" if e.errno == errno.ELOOP else e.strerror
        raise UserError(f"cannot read {path}: {why}") from None
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
    """Prepares a run directory to continue at ``step``: drops the lines logged after it (a killed run got further
    than its last checkpoint) and a torn last line, and checks ``summary.json``, whose segments the end of this run
    extends (a malformed one is a UserError now, not after the training)."""
    read_summary(run_dir)
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = [r for r in _records(path) if r["step"] <= step]
    _replace(path, "".join(json.dumps(r) + "\n" for r in kept))


def _replace(path: Path, text: str) -> None:
    """``path`` replaced atomically by ``text``: a unique temp file (never a planted symlink), fsync, rename."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    except OSError as e:
        raise _write_error(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _write_error(e, path) from None


def write_json(path: Path, data: dict) -> None:
    _replace(Path(path), json.dumps(_clean(data), indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    """A text file of the run directory (e.g. recipe.yaml), replaced atomically, never through a symlink."""
    _replace(Path(path), text)


def read_summary(run_dir: Path) -> dict | None:
    """``summary.json`` (None if absent); malformed, or with malformed segments: one UserError naming it."""
    path = Path(run_dir) / "summary.json"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            summary = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot read {path} ({'a symbolic link' if e.errno == errno.ELOOP else e.strerror}); "
                        "delete it") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not valid JSON ({first_line(e, 80)}); fix it or delete it") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path}: expected a JSON object, got a {type(summary).__name__}; fix it or delete it")
    _segments(summary, path)
    return summary


def _segments(summary: dict, path: Path) -> list[dict]:
    """The summary's per-segment records; an older summary without them is one segment of its ``time_s``."""
    segments = summary.get("segments")
    if segments is None:
        t = summary.get("time_s")
        if t is None:
            return []
        segments = [{"from_step": 0, "to_step": summary.get("step"), "time_s": t, "status": summary.get("status")}]
    ok = isinstance(segments, list) and all(
        isinstance(s, dict) and isinstance(s.get("time_s"), int | float) and not isinstance(s.get("time_s"), bool)
        and math.isfinite(s["time_s"]) and s["time_s"] >= 0 for s in segments)
    if not ok:
        raise UserError(f"{path}: segments/time_s must hold non-negative numbers of seconds; fix it or delete it")
    return segments


def write_summary(run_dir: Path, summary: dict, start_step: int) -> dict:
    """Writes ``summary.json`` for the segment that ran from ``start_step`` to ``summary["step"]`` in
    ``summary["time_s"]`` seconds, after the segments of the previous ``summary.json``: ``segments`` lists them all
    and ``time_s`` becomes the total. Returns what was written."""
    path = Path(run_dir) / "summary.json"
    previous = read_summary(run_dir)
    segments = _segments(previous, path) if previous else []
    segment = {"from_step": start_step, "to_step": summary["step"], "time_s": summary["time_s"],
               "status": summary.get("status")}
    out = {**summary, "time_s": sum(s["time_s"] for s in segments) + summary["time_s"],
           "segments": [*segments, segment]}
    write_json(path, out)
    return out
