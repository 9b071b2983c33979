"""``ssmkit sweep``: a grid of ``ssmkit train`` runs over override values and seeds, resumable, tabulated.

    ssmkit sweep RECIPE model.mixer.d_state=16,32,64 optimizer.lr=1e-3,3e-3 [--seeds 3] [--processes N]

Grid. Every ``key=value`` argument is an ordinary ``ssmkit train`` override (any dotted key). A value is
split at its *top-level* commas into the values swept: commas inside ``[...]``, ``{...}`` or quotes do not
split, so ``model.pool_factors=[4,4]`` is one value (a YAML flow list) and ``model.pool_factors=[4,4],[2,8]``
two; quote a string that contains a comma (``task.text='a,b'``). A key with one value is a fixed override
(applied to every run, not part of the names); a key with several values is an axis. The grid is the product
of the axes, in the order given (the first axis varies slowest), times ``--seeds N`` seeds: seed k sets
``train.seed`` to the recipe's ``train.seed`` + k.

Layout. ``SWEEP_DIR`` (``--dir``, default ``<train.runs_dir>/sweeps/<recipe name>``) holds ``sweep.json``
(recipe, axes, fixed overrides, seeds, every run and its last status), one ordinary run directory per
(point, seed) named from the values (``d_state=16,lr=1e-3-seed0``), ``logs/<run>.out`` / ``.err`` (each
child's output, appended per attempt) and ``locks/`` (a run is started by one process at a time, also across
SLURM array tasks). Run directories that cannot be continued are moved, never deleted: a started run that
left no checkpoint goes to ``.stale/``, a run of another recipe replaced under ``--force`` to ``.replaced/``.

Resume. Re-running the same command skips runs whose ``summary.json`` says ``finished``, continues runs with
a checkpoint (``ssmkit train --resume``) and starts the rest; a different grid on the same directory is
refused unless ``--force``. ``--processes N`` runs N children at a time (on CPUs each gets
``OMP_NUM_THREADS = cores / N`` unless set; with GPUs each gets one GPU through ``CUDA_VISIBLE_DEVICES``).
``--list`` prints the runs and ``--index I`` runs only run I, for SLURM arrays (``scripts/slurm/sweep.sh``).

Results. ``collect`` aggregates every grid point over its seeds: how many runs finished, every final validation
metric and the best value of the main metric as mean ± sample std (n), and the mean run time; failed runs keep
the last line of their error. ``ssmkit sweep`` (``ssmkit/cli/sweep.py``) prints them as one table row per point.
``plot_sweep`` draws a metric against one swept value, one
line per combination of the other swept values, error bars over seeds (``ssmkit plot --sweep``).

Exit codes: 0 every run finished (or was already), 1 a run failed (the table says which and why), 2 bad input
(one line, nothing started), 130/143 the sweep was stopped by SIGINT/SIGTERM (the trainings saved checkpoints).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from ssmkit.errors import UserError
from ssmkit.recipe import load_recipe, parse_value, resolve_recipe_path
from ssmkit.registry import did_you_mean
from ssmkit.runs.checkpoint import find_checkpoint
from ssmkit.runs.rundir import write_json

SWEEP_FILE = "sweep.json"
FORMAT = 1
SEED_KEY = "train.seed"
MAX_NAME = 150  # characters of a point name before it is cut and given a hash
_CLOSE = {"[": "]", "{": "}", "(": ")"}
_ERROR_LINE = re.compile(r"^(error: |[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b)")


# --- the grid ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]  # the value texts as given (each parsed like a train override)


@dataclass
class Run:
    index: int
    name: str  # the run directory's name: <point>-seed<k>
    point: str
    values: dict[str, str]  # axis key -> value text
    seed: int
    overrides: list[str]  # what `ssmkit train` gets: fixed, then the point's, then train.seed


@dataclass
class Grid:
    recipe: str  # as given
    recipe_path: str  # resolved
    axes: list[Axis]
    fixed: list[str]
    seeds: list[int]
    runs: list[Run] = field(default_factory=list)

    def definition(self) -> dict:
        """What makes two sweeps the same grid (compared on a re-run)."""
        return {"recipe_path": self.recipe_path, "axes": [{"key": a.key, "values": list(a.values)} for a in self.axes],
                "fixed": list(self.fixed), "seeds": list(self.seeds)}


def split_values(text: str) -> list[str]:
    """``a,b,[1,2],'x,y'`` -> ``['a', 'b', '[1,2]', "'x,y'"]``: split at commas outside brackets and quotes."""
    parts, depth, quote, start = [], [], None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _CLOSE:
            depth.append(_CLOSE[ch])
        elif depth and ch == depth[-1]:
            depth.pop()
        elif ch == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
    if quote or depth:
        raise UserError(f"sweep value {text!r} has an unclosed {quote or 'bracket'}; close it "
                        "(a value that contains a comma is a [list] or a 'quoted string')")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_axes(overrides: list[str]) -> tuple[list[Axis], list[str]]:
    """(axes with several values, fixed overrides with one value) from ``key=v1,v2`` arguments."""
    axes, fixed, seen = [], [], set()
    for item in overrides:
        if "=" not in item:
            raise UserError(f"sweep argument {item!r} is not of the form key.sub=v1,v2,... (e.g. optimizer.lr=1e-3,3e-3)")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or not all(key.split(".")):
            raise UserError(f"sweep argument {item!r}: empty key part in {key!r}")
        if key in seen:
            raise UserError(f"{key} is given twice; give all its values once: {key}=v1,v2,...")
        seen.add(key)
        values = split_values(text)
        if any(v == "" for v in values) and len(values) > 1:
            raise UserError(f"{item!r} has an empty value (two commas in a row, or a trailing comma); drop it")
        if len(values) != len(set(values)):
            dup = next(v for v in values if values.count(v) > 1)
            raise UserError(f"{key} lists the value {dup!r} twice; list each value once")
        if key == SEED_KEY and len(values) > 1:
            raise UserError(f"do not sweep {SEED_KEY}: use --seeds N (seeds {SEED_KEY}, {SEED_KEY}+1, ...; they are "
                            "aggregated as mean ± std)")
        if len(values) == 1:
            fixed.append(f"{key}={values[0]}")
        else:
            axes.append(Axis(key, tuple(values)))
    return axes, fixed


def axis_labels(keys: list[str]) -> dict[str, str]:
    """Each key's shortest dotted suffix that no other key ends with (``d_state``, ``mixer.lr``/``optimizer.lr``)."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if not any(other != key and (other == label or other.endswith("." + label)) for other in keys):
                break
        labels[key] = label
    return labels


def value_label(text: str) -> str:
    """A value text as part of a folder name: ``[4,4]`` -> ``4-4``, ``1e-3`` -> ``1e-3``."""
    s = re.sub(r"[\s'\"\[\]{}()]", "", text).replace(",", "-").replace(":", "-")
    s = re.sub(r"[^A-Za-z0-9._+-]", "_", s)
    return s or "empty"


def _hash(text: str, n: int = 6) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def value_labels(axis: Axis) -> dict[str, str]:
    """Folder-safe labels of an axis's values; values whose labels would collide get a short hash."""
    raw = {v: value_label(v) for v in axis.values}
    counts: dict[str, int] = {}
    for label in raw.values():
        counts[label] = counts.get(label, 0) + 1
    return {v: (label if counts[label] == 1 else f"{label}~{_hash(v, 4)}") for v, label in raw.items()}


def point_name(axes: list[Axis], values: dict[str, str]) -> str:
    """``d_state=16,lr=1e-3`` (``base`` without axes): readable, and the same for the same values."""
    if not axes:
        return "base"
    labels = axis_labels([a.key for a in axes])
    name = ",".join(f"{labels[a.key]}={value_labels(a)[values[a.key]]}" for a in axes)
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME]}~{_hash(name)}"
    return name


def build_grid(recipe: str, overrides: list[str], seeds: int) -> Grid:
    """Expands the arguments and validates every run's recipe (a bad key or value fails before anything runs)."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    axes, fixed = parse_axes(list(overrides))
    path = resolve_recipe_path(recipe)
    base = load_recipe(path, fixed)
    first = base.train.seed
    grid = Grid(recipe=recipe, recipe_path=str(path.resolve()), axes=axes, fixed=fixed,
                seeds=[first + k for k in range(seeds)])
    combos = list(itertools.product(*[a.values for a in axes]))
    points = []
    for combo in combos:
        values = dict(zip([a.key for a in axes], combo))
        points.append((point_name(axes, values), values))
    for seed in grid.seeds:  # all points of one seed before the next seed: a partial sweep covers the grid early
        for name, values in points:
            run_overrides = [*fixed, *(f"{k}={v}" for k, v in values.items()), f"{SEED_KEY}={seed}"]
            grid.runs.append(Run(index=len(grid.runs), name=f"{name}-seed{seed}", point=name, values=values,
                                 seed=seed, overrides=run_overrides))
    for run in grid.runs[: len(points)]:  # the seed changes nothing else: one seed validates every point
        try:
            load_recipe(path, run.overrides)
        except UserError as e:
            raise type(e)(f"sweep point {run.point}: {e}") from None
    return grid


def resolved_recipe(grid: Grid, run: Run) -> dict:
    return load_recipe(grid.recipe_path, run.overrides).to_dict()


def default_dir(grid: Grid) -> Path:
    base = load_recipe(grid.recipe_path, grid.fixed)
    return Path(base.train.runs_dir) / "sweeps" / base.name


# --- the sweep folder -------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _try_run_lock(sweep_dir: Path, run: str):
    """An open file holding an exclusive lock on ``locks/<run>.lock``, or None if another process holds it."""
    path = sweep_dir / "locks" / f"{run}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def read_sweep(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        if not Path(sweep_dir).exists():
            raise UserError(f"no sweep folder {sweep_dir}; start one with: ssmkit sweep RECIPE key=v1,v2 [--dir {sweep_dir}]")
        raise UserError(f"{sweep_dir} is not a sweep folder (no {SWEEP_FILE}); start one with: ssmkit sweep RECIPE key=v1,v2 --dir DIR")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({type(e).__name__}); restore it or start the sweep in a new --dir") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not isinstance(data.get("axes"), list):
        raise UserError(f"{path}: not a sweep file written by ssmkit sweep (expected axes and runs)")
    return data


def _write_sweep(sweep_dir: Path, data: dict) -> None:
    write_json(Path(sweep_dir) / SWEEP_FILE, data)


def _difference(a, b, where: str = "") -> str | None:
    """The first dotted key where two recipe dicts differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    return None if a == b else f"{where or 'recipe'}: {b!r} there, {a!r} now"


def open_sweep(grid: Grid, sweep_dir: Path, force: bool) -> dict:
    """Creates ``sweep.json`` or checks that it holds this grid (``force``: replace it). Returns the data."""
    sweep_dir = Path(sweep_dir)
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UserError(f"--dir {sweep_dir} is a file; give a folder for the sweep")
    def foreign() -> bool:  # a folder with files of its own is not ours to fill
        return not (sweep_dir / SWEEP_FILE).exists() and any(p.name != "locks" for p in sweep_dir.iterdir())

    if sweep_dir.is_dir() and foreign():
        raise UserError(f"{sweep_dir} is not empty and holds no {SWEEP_FILE}; give a new or empty --dir for the sweep")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(sweep_dir / "locks" / "sweep.lock"):
        old = None
        if (sweep_dir / SWEEP_FILE).exists():
            old = read_sweep(sweep_dir)
        elif foreign():
            raise UserError(f"{sweep_dir} is not empty and holds no {SWEEP_FILE}; give a new or empty --dir for the sweep")
        definition = grid.definition()
        if old is not None and old.get("definition") != definition and not force:
            raise UserError(f"{sweep_dir} holds another sweep ({_grid_change(old.get('definition'), definition)}); "
                            "use a new --dir, or --force to replace its grid (runs of unchanged points are kept)")
        previous = {r.get("name"): r for r in (old or {}).get("runs", []) if isinstance(r, dict)}
        data = {"format": FORMAT, "recipe": grid.recipe, "definition": definition,
                "axes": definition["axes"], "fixed": grid.fixed, "seeds": grid.seeds,
                "labels": axis_labels([a.key for a in grid.axes]),
                "runs": [{**asdict(r), **_status_fields(previous.get(r.name))} for r in grid.runs]}
        if old is None or old != data:
            _write_sweep(sweep_dir, data)
    return data


def _grid_change(old, new) -> str:
    if not isinstance(old, dict):
        return "an unreadable grid"
    for key, what in (("recipe_path", "recipe"), ("axes", "axes"), ("fixed", "fixed overrides"), ("seeds", "seeds")):
        if old.get(key) != new.get(key):
            return f"{what}: {_short(old.get(key))} there, {_short(new.get(key))} now"
    return "another grid"


def _short(value) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "key" in value[0]:
        return " ".join(f"{a['key']}={','.join(a['values'])}" for a in value)
    return json.dumps(value)


def _status_fields(record: dict | None) -> dict:
    keys = ("status", "returncode", "error", "time_s", "attempts")
    return {k: record[k] for k in keys if record and k in record}


def update_run(sweep_dir: Path, name: str, **fields) -> None:
    """Sets a run's status fields in ``sweep.json`` (under the sweep lock: array tasks share the file)."""
    with _file_lock(Path(sweep_dir) / "locks" / "sweep.lock"):
        data = read_sweep(sweep_dir)
        for record in data["runs"]:
            if record.get("name") == name:
                record.update(fields)
        _write_sweep(sweep_dir, data)


# --- one run's state --------------------------------------------------------------------------------
def run_state(run_dir: Path) -> str:
    """``finished`` | ``interrupted`` (summary says so) | ``unfinished`` (a checkpoint, no summary) |
    ``started`` (a folder without a checkpoint) | ``pending`` (no folder)."""
    if not run_dir.exists():
        return "pending"
    summary = _summary(run_dir)
    if summary is not None and summary.get("status") == "finished":
        return "finished"
    try:
        find_checkpoint(run_dir)
    except UserError:
        return "started"
    return "interrupted" if summary is not None else "unfinished"


def _summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _recipe_of(run_dir: Path) -> dict | None:
    try:
        data = yaml.safe_load((run_dir / "recipe.yaml").read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _move_aside(sweep_dir: Path, run_dir: Path, folder: str) -> Path:
    """Moves a run directory to ``SWEEP_DIR/<folder>/<name>[-N]``; nothing is deleted."""
    target_root = sweep_dir / folder
    target_root.mkdir(exist_ok=True)
    for i in range(1, 10_000):
        target = target_root / (run_dir.name if i == 1 else f"{run_dir.name}-{i}")
        if not target.exists():
            run_dir.rename(target)
            return target
    raise UserError(f"too many old copies of {run_dir.name} in {target_root}; clean that folder")


def check_runs(grid: Grid, sweep_dir: Path, force: bool, runs: list[Run] | None = None) -> None:
    """Refuses (or with ``force`` moves to ``.replaced/``) run directories made from another recipe."""
    for run in runs if runs is not None else grid.runs:
        run_dir = sweep_dir / run.name
        if not run_dir.exists():
            continue
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is a file where the sweep puts run {run.name}; move it away")
        if not (run_dir / "recipe.yaml").exists():
            continue  # made but never written to: treated as started
        there = _recipe_of(run_dir)
        diff = "recipe.yaml is not readable" if there is None else _difference(resolved_recipe(grid, run), there)
        if diff is None:
            continue
        if not force:
            raise UserError(f"{run_dir} was trained with another recipe ({diff}); use a new --dir, or --force to "
                            f"move it to {sweep_dir / '.replaced'} and run the point again")
        _move_aside(sweep_dir, run_dir, ".replaced")


# --- running ----------------------------------------------------------------------------------------
@dataclass
class _Child:
    run: Run
    proc: subprocess.Popen
    lock: object
    started: float
    err_path: Path
    err_offset: int
    resumed: bool
    gpu: str | None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _gpus() -> list[str]:
    """The GPU ids children may use (from CUDA_VISIBLE_DEVICES, else all visible devices)."""
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA: run on CPUs
        count = 0
    if count == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(count)]
    return ids[:count]


def child_env(processes: int, gpu: str | None) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, _cpu_count() // processes)))
    env["PYTHONUNBUFFERED"] = "1"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def train_command(grid: Grid, run: Run, run_dir: Path, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "ssmkit", "train"]
    if resume:
        return [*base, "--resume", str(run_dir)]
    return [*base, grid.recipe_path, *run.overrides, "--run-dir", str(run_dir)]


def _last_line(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip() and not line.startswith("== ")]
    for i in range(len(lines) - 1, -1, -1):  # the exception line, with what a narrow console wrapped after it
        if _ERROR_LINE.match(lines[i]):
            return " ".join(lines[i:])[:500]
    return lines[-1][:500] if lines else ""


class _Stop:
    """SIGINT/SIGTERM: stop starting runs and ask the running children (own sessions) to save and stop."""

    def __init__(self):
        self.signal: int | None = None
        self.children: list[_Child] = []
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        second = self.signal is not None
        self.signal = signum
        for child in self.children:  # first time: SIGTERM (save and stop); again: SIGINT (stop at once)
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGINT if second else signal.SIGTERM)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_sweep(grid: Grid, sweep_dir: Path, processes: int = 1, force: bool = False, index: int | None = None,
              log=print) -> dict:
    """Runs the grid's unfinished runs (``index``: only that one), ``processes`` at a time. Returns counts
    ``{"ran", "skipped", "failed", "busy", "interrupted"}``; ``log`` gets one line per start and end."""
    if processes < 1:
        raise UserError(f"--processes must be at least 1, got {processes}")
    sweep_dir = Path(sweep_dir)
    if index is not None and not 0 <= index < len(grid.runs):
        raise UserError(f"--index {index} is outside the sweep's {len(grid.runs)} runs (0..{len(grid.runs) - 1}; "
                        "list them with --list)")
    selected = grid.runs if index is None else [grid.runs[index]]
    gpus = _gpus()
    if gpus and processes > len(gpus):
        raise UserError(f"--processes {processes} but {len(gpus)} GPU(s) visible; each run takes one GPU, so use "
                        f"--processes {len(gpus)} or fewer")
    open_sweep(grid, sweep_dir, force)
    check_runs(grid, sweep_dir, force, selected)
    counts = {"ran": 0, "skipped": 0, "failed": 0, "busy": 0, "interrupted": 0}
    todo = []
    for run in selected:
        if run_state(sweep_dir / run.name) == "finished":
            counts["skipped"] += 1
            update_run(sweep_dir, run.name, status="finished")
        else:
            todo.append(run)
    total = len(todo)
    if total:
        log(f"{counts['skipped']} of {len(selected)} run(s) already finished; running {total}, {processes} at a time")
    else:
        log(f"all {len(selected)} run(s) already finished; nothing to run")
    free_gpus = list(gpus[:processes]) if gpus else []
    running: list[_Child] = []
    (sweep_dir / "logs").mkdir(exist_ok=True)
    done = 0
    with _Stop() as stop:
        while (todo and stop.signal is None) or running:
            while todo and len(running) < processes and stop.signal is None:
                run = todo.pop(0)
                gpu = free_gpus.pop(0) if free_gpus else None
                child = _start(grid, sweep_dir, run, processes, gpu, log)
                if child is None:  # another process runs it, or has just finished it
                    if gpu is not None:
                        free_gpus.insert(0, gpu)
                    counts["busy"] += 1
                    done += 1
                    continue
                running.append(child)
                stop.children = running
                log(f"[{done + len(running)}/{total}] {'resume' if child.resumed else 'start '} {run.name}"
                    + (f" (GPU {child.gpu})" if child.gpu is not None else ""))
            time.sleep(0.2)
            for child in [c for c in running if c.proc.poll() is not None]:
                running.remove(child)
                if child.gpu is not None:
                    free_gpus.append(child.gpu)
                done += 1
                status = _finish(sweep_dir, child)
                counts["ran"] += 1
                if status["status"] == "failed":
                    counts["failed"] += 1
                elif status["status"] != "finished":
                    counts["interrupted"] += 1
                error = f": {status['error']}" if status.get("error") else ""
                log(f"[{done}/{total}] {status['status']} {child.run.name} ({status['time_s']:.1f}s){error}")
    if stop.signal is not None:
        counts["interrupted"] += len(todo)
        counts["signal"] = stop.signal
    return counts


def _start(grid: Grid, sweep_dir: Path, run: Run, processes: int, gpu: str | None, log) -> _Child | None:
    lock = _try_run_lock(sweep_dir, run.name)
    if lock is None:
        log(f"        {run.name} is being run by another process; skipped")
        return None
    run_dir = sweep_dir / run.name
    state = run_state(run_dir)
    if state == "finished":  # finished by another process since we looked
        lock.close()
        return None
    if state == "started":  # died before its first checkpoint: keep what it wrote, start again
        moved = _move_aside(sweep_dir, run_dir, ".stale")
        log(f"        {run.name} left no checkpoint; moved to {moved} and started again")
    resume = state in ("interrupted", "unfinished")
    cmd = train_command(grid, run, run_dir.resolve(), resume)
    out_path, err_path = sweep_dir / "logs" / f"{run.name}.out", sweep_dir / "logs" / f"{run.name}.err"
    header = f"== {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd[1:])}\n"
    with open(out_path, "a") as out, open(err_path, "a") as err:
        out.write(header)
        err.write(header)
        out.flush()
        err.flush()
        offset = err.tell()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=child_env(processes, gpu),
                                start_new_session=True, pass_fds=(lock.fileno(),))
    record = read_record(sweep_dir, run.name)
    update_run(sweep_dir, run.name, status="running", attempts=int(record.get("attempts") or 0) + 1)
    return _Child(run=run, proc=proc, lock=lock, started=time.time(), err_path=err_path, err_offset=offset,
                  resumed=resume, gpu=gpu)


def _is_running(sweep_dir: Path, name: str) -> bool:
    """Whether a process holds the run's lock (a sweep, or an array task, is running it now)."""
    if not (sweep_dir / "locks" / f"{name}.lock").exists():
        return False
    lock = _try_run_lock(sweep_dir, name)
    if lock is None:
        return True
    lock.close()
    return False


def read_record(sweep_dir: Path, name: str) -> dict:
    return next((r for r in read_sweep(sweep_dir)["runs"] if r.get("name") == name), {})


def _finish(sweep_dir: Path, child: _Child) -> dict:
    child.lock.close()
    code = child.proc.returncode
    state = run_state(sweep_dir / child.run.name)
    fields = {"returncode": code, "time_s": round(time.time() - child.started, 3), "error": None}
    if state == "finished":
        fields["status"] = "finished"
    elif state in ("interrupted", "unfinished") and code in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM):
        fields["status"] = "interrupted"  # stopped by a signal after saving (ssmkit train exits 130/143)
    else:
        fields["status"] = "failed"
        if code is not None and code < 0:
            fields["error"] = f"killed by {signal.Signals(-code).name}"
        elif code == 0:
            fields["error"] = "ssmkit train exited without a summary.json"
        else:
            fields["error"] = _last_line(child.err_path, child.err_offset) or f"exit code {code}"
    update_run(sweep_dir, child.run.name, **fields)
    return fields


# --- results ----------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict:
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def collect(sweep_dir: Path) -> dict:
    """Every grid point with its runs and their final metrics aggregated over seeds (what ``--json`` prints)."""
    sweep_dir = Path(sweep_dir)
    data = read_sweep(sweep_dir)
    axes = [a["key"] for a in data["axes"]]
    points: dict[str, dict] = {}
    for record in data["runs"]:
        name, point = record.get("name"), record.get("point")
        if not isinstance(name, str) or not isinstance(point, str):
            raise UserError(f"{sweep_dir / SWEEP_FILE}: a run without a name; restore the file or start a new --dir")
        entry = points.setdefault(point, {"point": point, "values": dict(record.get("values") or {}), "runs": []})
        run_dir = sweep_dir / name
        state = run_state(run_dir)
        summary = _summary(run_dir) if state in ("finished", "interrupted") else None
        status = state
        if state != "finished" and _is_running(sweep_dir, name):
            status = "running"
        elif state != "finished" and record.get("status") == "failed":
            status = "failed"
        run = {"run": name, "seed": record.get("seed"), "status": status,
               "error": record.get("error") if status == "failed" else None}
        if summary is not None and state == "finished":
            run.update(final=summary.get("final") or {}, best=summary.get("best"),
                       main_metric=summary.get("main_metric"), time_s=summary.get("time_s"), step=summary.get("step"))
        entry["runs"].append(run)
    for entry in points.values():
        done = [r for r in entry["runs"] if r["status"] == "finished"]
        names = sorted({k for r in done for k, v in (r.get("final") or {}).items()
                        if _number(v) and k != "val/samples"})
        entry["metrics"] = {k: _stats([float(r["final"][k]) for r in done if _number((r.get("final") or {}).get(k))])
                            for k in names}
        mains = {r.get("main_metric") for r in done if r.get("main_metric")}
        entry["main_metric"] = next(iter(mains)) if len(mains) == 1 else None
        entry["best"] = _stats([float(r["best"]) for r in done if _number(r.get("best"))])
        entry["time_s"] = _stats([float(r["time_s"]) for r in done if _number(r.get("time_s"))])
        entry["counts"] = {s: sum(r["status"] == s for r in entry["runs"]) for s in sorted({r["status"] for r in entry["runs"]})}
        entry["parsed"] = {k: parse_value(v) for k, v in entry["values"].items()}
    return {"sweep_dir": str(sweep_dir), "recipe": data.get("recipe"), "axes": axes,
            "labels": data.get("labels") or axis_labels(axes), "fixed": data.get("fixed") or [],
            "seeds": data.get("seeds") or [], "points": list(points.values())}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def failed(results: dict) -> int:
    return sum(r["status"] == "failed" for p in results["points"] for r in p["runs"])


# --- the plot ---------------------------------------------------------------------------------------
def _resolve_axis(results: dict, x: str) -> str:
    if x in results["axes"]:
        return x
    by_label = {label: key for key, label in results["labels"].items()}
    if x in by_label:
        return by_label[x]
    choices = list(results["axes"]) + list(by_label)
    if not results["axes"]:
        raise UserError(f"the sweep in {results['sweep_dir']} has no swept values (one point); there is no --x to plot")
    raise UserError(f"--x {x!r} is not a swept key{did_you_mean(x, choices)}; swept: {', '.join(results['axes'])}")


def plot_sweep(sweep_dir: Path, x: str, y: str, out: Path) -> dict:
    """Writes ``y`` (a final metric, mean ± std over seeds) against swept key ``x``, one line per combination of
    the other swept values; returns ``{"lines", "points"}`` counts."""
    results = collect(sweep_dir)
    xkey = _resolve_axis(results, x)
    known = sorted({k for p in results["points"] for k in p["metrics"]})
    if not known:
        raise UserError(f"no finished runs in {sweep_dir} yet; run the sweep first (ssmkit sweep ... --dir {sweep_dir})")
    if y not in known:
        raise UserError(f"no final metric {y!r} in the sweep{did_you_mean(y, known)}; metrics: {', '.join(known)}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UserError(f"ssmkit plot needs matplotlib ({e}); install it with: pip install 'ssmkit[plot]'") from None
    labels = results["labels"]
    others = [k for k in results["axes"] if k != xkey]
    xs_text = next(a for a in read_sweep(sweep_dir)["axes"] if a["key"] == xkey)["values"]
    parsed = {t: parse_value(t) for t in xs_text}
    numeric = all(_number(v) for v in parsed.values())
    position = {t: (float(parsed[t]) if numeric else i) for i, t in enumerate(xs_text)}
    lines: dict[tuple, list] = {}
    for p in results["points"]:
        s = p["metrics"].get(y)
        if not s or s["n"] == 0:
            continue
        lines.setdefault(tuple(p["values"][k] for k in others), []).append(
            (position[p["values"][xkey]], s["mean"], s["std"] or 0.0))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    n_points = 0
    for combo, pts in lines.items():
        pts.sort()
        label = ", ".join(f"{labels.get(k, k)}={v}" for k, v in zip(others, combo)) or y
        xs, ms, ss = zip(*pts)
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, linewidth=1.4, markersize=4, label=label)
        n_points += len(pts)
    if numeric:
        values = [float(v) for v in parsed.values()]
        if min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(values)
        ax.set_xticklabels(xs_text)
        ax.minorticks_off()
    else:
        ax.set_xticks(list(position.values()))
        ax.set_xticklabels(xs_text)
    seeds = len(results["seeds"]) or 1
    ax.set_xlabel(xkey)
    ax.set_ylabel(y)
    ax.set_title(f"{results['recipe']}: {y} (mean ± std over {seeds} seed(s))", fontsize=10)
    ax.grid(True, alpha=0.3)
    if others:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {"lines": len(lines), "points": n_points}


# --- listing --------------------------------------------------------------------------------------
def list_runs(grid: Grid, sweep_dir: Path | None) -> list[str]:
    """``index<TAB>run<TAB>state<TAB>overrides`` per run (``--list``; one line per SLURM array task)."""
    lines = []
    for run in grid.runs:
        state = run_state(sweep_dir / run.name) if sweep_dir is not None else "pending"
        lines.append(f"{run.index}\t{run.name}\t{state}\t{' '.join(run.overrides)}")
    return lines


