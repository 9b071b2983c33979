"""Checkpoints that are crash-safe at every instant and load without running any code.

A checkpoint is a directory ``checkpoints/step-00001200/`` holding

- ``model.safetensors``: the weights,
- ``optimizer.pt``: the optimizer state (tensors and numbers only; loaded with ``weights_only=True``),
- ``rng.pt``: the torch RNG state of the main process, and the CPU and GPU generator states of every process
  (byte tensors; ``weights_only=True``),
- ``state.json``: step, epoch, batches done in the epoch, best metric, scheduler state, Python/NumPy RNG,
- ``recipe.yaml``: the resolved recipe.

``state.json`` and ``rng.pt`` together are one :class:`LoopState`, the training loop's position, saved and read as
one unit (``LoopState.to_json`` / :func:`load_checkpoint`); its keys are the ones every earlier ssmkit wrote, so
old runs resume (``tests/runs/test_checkpoint_format.py`` reads ``tests/fixtures/legacy_v0``).

The save sequence (:func:`save_checkpoint`), each file and directory fsynced before the next rename:

1. every file is written into a fresh, uniquely named ``.tmp-XXXXXXXX/`` (``tempfile.mkdtemp``: a planted
   symlink at a fixed name is never followed);
2. a new step: ``.tmp-*`` is renamed to ``step-N``. A same-step re-save (resuming a run whose last checkpoint is
   its final step, a signal right after a periodic save, an epoch-end evaluation on a save step): the old
   ``step-N`` is first renamed aside to ``.old-step-N``, the new one renamed into place, then the aside deleted;
3. the ``latest`` pointer (and ``best`` when it is the best so far) is replaced through a unique temp file;
4. old step checkpoints are pruned (never the ones a pointer names).

A run killed at any instant leaves the old or the new checkpoint loadable: the loader ignores ``.tmp-*``, takes
``.old-step-N`` when ``step-N`` is missing or incomplete (:func:`find_checkpoint`), and the next save finishes or
undoes an interrupted one (:func:`recover`). ``tests/runs/test_checkpoint_safety.py`` kills the sequence at
every rename and delete.

Every path read from a run directory stays in it: a pointer names a ``step-N`` folder of ``checkpoints/`` and
nothing else (no ``..``, no absolute path, no symlink out of it), pointer files are opened without following
symlinks, and a checkpoint's files must be regular files inside it. A disk that is full or read-only while
saving is one :class:`UserError` (the previous checkpoint intact). Checkpoints are named by global step and
found through our own pointers (Accelerate's automatic naming restarts its counter on resume).
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ssmkit.errors import UserError, first_line, read_utf8

CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "rng.pt", "state.json", "recipe.yaml")
_STEP_NAME = re.compile(r"step-(\d{8,})")
_ASIDE = ".old-"  # ``.old-step-N``: the previous same-step checkpoint while its replacement moves in
_TMP = ".tmp-"  # temp folders and pointer files of a save; never read


def _fsync_write(path: Path, data: bytes | str) -> None:
    """Writes a new file (it must not exist: O_EXCL, so no planted symlink is followed) and fsyncs it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path, flag: str) -> None:
    """fsync of the file or folder ``path``, opened read-only with ``os.<flag>`` where the platform has it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, flag, 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Makes the renames and creations inside ``path`` durable."""
    _fsync(path, "O_DIRECTORY")


def _fsync_file(path: Path) -> None:
    _fsync(path, "O_NOFOLLOW")


def _replace_pointer(directory: Path, name: str, content: dict) -> None:
    """``directory/name`` replaced atomically by ``content`` (JSON): a unique temp file, fsync, rename, fsync."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{_TMP}{name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(content).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except OSError:
        _remove(Path(tmp))
        raise
    _fsync_dir(directory)


def _remove(path: Path) -> None:
    """Deletes a file, a symlink (never its target) or a directory tree; a missing path is fine."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass


def rng_state() -> tuple[dict, torch.Tensor]:
    """(JSON-able Python and NumPy states, torch CPU state)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    json_state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return json_state, torch.get_rng_state()


def set_rng_state(json_state: dict, torch_state: torch.Tensor) -> None:
    version, internal, gauss = json_state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json_state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch_state)


def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The generator state of an accelerator device (dropout on a GPU draws from it), None on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return None


def set_device_rng_state(device: torch.device, state: torch.Tensor | None) -> None:
    if state is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state, device)


@dataclass
class LoopState:
    """Where a training run stands, checkpointed as one unit (``state.json`` plus the generator tensors in
    ``rng.pt``): the loop reads it on resume and writes it at every checkpoint.

    ``best``: the best main-metric value so far; ``metric``: the value of the evaluation that made this checkpoint
    (None for a periodic or signal save); ``scheduler``: the schedule's ``state_dict``; ``processes``: how many
    processes trained; ``rng``: the main process's Python and NumPy generators (JSON); ``rng_torch``: its torch CPU
    generator; ``rng_by_rank`` / ``device_rng_by_rank``: every process's CPU and GPU (None on CPU) generators.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: float | None = None
    metric: float | None = None
    main_metric: str | None = None
    scheduler: dict = field(default_factory=dict)
    processes: int = 1
    rng: dict = field(default_factory=dict)
    rng_torch: torch.Tensor | None = None
    rng_by_rank: list = field(default_factory=list)
    device_rng_by_rank: list = field(default_factory=list)

    #: the ``state.json`` keys, the same names every ssmkit version wrote (old runs stay readable)
    JSON_KEYS = ("step", "epoch", "batch_in_epoch", "best", "metric", "main_metric", "scheduler", "processes", "rng")

    def to_json(self) -> dict:
        return {key: getattr(self, key) for key in self.JSON_KEYS}

    @classmethod
    def from_files(cls, state: dict, rng: dict | None = None) -> LoopState:
        """From ``state.json`` (checked by :func:`read_state`) and ``rng.pt`` (None when not read: evaluation)."""
        known = {key: state[key] for key in cls.JSON_KEYS if key in state}
        if rng is None:
            return cls(**known)
        return cls(**known, rng_torch=rng["torch"], rng_by_rank=list(rng.get("by_rank") or []),
                   device_rng_by_rank=list(rng.get("device_by_rank") or []))

    def capture_rng(self, by_rank: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """Records this (main) process's generators and every process's (CPU, device) pair, in rank order."""
        self.rng, self.rng_torch = rng_state()
        self.rng_by_rank = [pair[0] for pair in by_rank]
        self.device_rng_by_rank = [pair[1] for pair in by_rank]

    def restore_rng(self, rank: int, processes: int, device: torch.device) -> None:
        """Each process continues its own streams; on another process count, all take the main one's (CPU)."""
        same_layout = len(self.rng_by_rank) == processes
        set_rng_state(self.rng, self.rng_by_rank[rank] if same_layout else self.rng_torch)
        if same_layout and len(self.device_rng_by_rank) == processes:
            set_device_rng_state(device, self.device_rng_by_rank[rank])


def _save_error(e: OSError, where: Path, run_dir: Path) -> UserError:
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied"}.get(e.errno, e.strerror or type(e).__name__)
    return UserError(f"cannot save a checkpoint in {where}: {why} ({Path(e.filename or where).name}); the previous "
                     f"checkpoint is intact: free space or fix the folder, then continue with: ssmkit train --resume {run_dir}")


def checkpoint_root(run_dir: str | Path, create: bool = False) -> Path:
    """``run_dir/checkpoints``, refused when it is a symlink (or anything else) leading out of the run directory."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    if create and not root.exists() and not root.is_symlink():
        root.mkdir(parents=True)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise UserError(f"{root} is not a folder of this run (a symbolic link or a file); ssmkit reads and writes "
                        "checkpoints only inside the run directory: move it away")
    return root


def save_checkpoint(run_dir: Path, model_state: dict, optimizer_state: dict, state: LoopState, recipe_yaml: str,
                    best: bool = False, keep: int = 1) -> Path:
    """Writes ``checkpoints/step-XXXXXXXX`` crash-safely, moves the pointers, prunes old step checkpoints.

    ``state``: the loop's position with every process's generators (:meth:`LoopState.capture_rng`), so dropout
    continues exactly on each of them. A full or read-only disk is one UserError.
    The caller holds the run's lock (``ssmkit/runs/lock.py``): leftovers of interrupted saves are cleaned up."""
    run_dir = Path(run_dir)
    try:
        ckpt_root = checkpoint_root(run_dir, create=True)
    except OSError as e:
        raise _save_error(e, run_dir, run_dir) from None
    name = f"step-{state.step:08d}"
    final, aside = ckpt_root / name, ckpt_root / f"{_ASIDE}{name}"
    try:
        recover(ckpt_root)
        tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=_TMP))
    except OSError as e:
        raise _save_error(e, ckpt_root, run_dir) from None
    try:
        _write_files(tmp, model_state, optimizer_state, state, recipe_yaml)
    except OSError as e:
        _remove(tmp)
        raise _save_error(e, ckpt_root, run_dir) from None
    try:
        if final.exists() or final.is_symlink():  # a same-step re-save: the old one stays loadable as the aside
            os.rename(final, aside)
            _fsync_dir(ckpt_root)
            try:
                os.rename(tmp, final)
            except OSError:
                os.rename(aside, final)
                raise
            _fsync_dir(ckpt_root)
            _remove(aside)
        else:
            os.rename(tmp, final)
            _fsync_dir(ckpt_root)
        pointer = {"checkpoint": name, "step": state.step, "metric": state.metric}
        _replace_pointer(ckpt_root, "latest", pointer)
        if best:
            _replace_pointer(ckpt_root, "best", pointer)
    except OSError as e:
        _remove(tmp)
        raise _save_error(e, ckpt_root, run_dir) from None
    try:
        _prune(ckpt_root, keep)
    except OSError:
        pass  # an old checkpoint left in place costs disk space, nothing else; the next save prunes again
    return final


def _write_files(tmp: Path, model_state: dict, optimizer_state: dict, state: LoopState, recipe_yaml: str) -> None:
    """Every checkpoint file into the fresh folder ``tmp``, each fsynced, then the folder."""
    weights = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata={"step": str(state.step)})
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save({"torch": state.rng_torch if state.rng_torch is not None else torch.get_rng_state(),
                "by_rank": list(state.rng_by_rank), "device_by_rank": list(state.device_rng_by_rank)}, tmp / "rng.pt")
    _fsync_write(tmp / "state.json", json.dumps(state.to_json()))
    _fsync_write(tmp / "recipe.yaml", recipe_yaml)
    for f in ("model.safetensors", "optimizer.pt", "rng.pt"):
        _fsync_file(tmp / f)
    _fsync_dir(tmp)


def recover(ckpt_root: Path) -> None:
    """Finishes or undoes a save that was interrupted (needs the run's lock: it renames and deletes).

    ``.old-step-N`` next to a complete ``step-N``: the new one had landed, the aside is deleted; without it (or
    next to a broken one) the aside is renamed back. Leftover ``.tmp-*`` folders and pointer files are deleted."""
    for aside in sorted(ckpt_root.glob(f"{_ASIDE}step-*")):
        main = ckpt_root / aside.name[len(_ASIDE):]
        if aside.is_symlink() or not _complete(aside) or _complete(main):
            _remove(aside)
            continue
        if main.exists() or main.is_symlink():
            _remove(main)  # incomplete: it can never be loaded
        os.rename(aside, main)
        _fsync_dir(ckpt_root)
    for tmp in ckpt_root.glob(f"{_TMP}*"):
        _remove(tmp)


def _check_confined(ckpt: Path) -> None:
    """Refuses a checkpoint whose files are symlinks leading out of its folder."""
    inside = ckpt.resolve()
    for f in CHECKPOINT_FILES:
        p = ckpt / f
        if p.is_symlink() and not p.resolve().is_relative_to(inside):
            raise UserError(f"{p} is a symbolic link to {os.readlink(p)}; ssmkit reads a checkpoint's files only from "
                            "inside its folder: replace the link by the file")


def _complete(path: Path) -> bool:
    """A real folder (not a symlink) holding every checkpoint file as a regular file."""
    if path.is_symlink() or not path.is_dir():
        return False
    return all((path / f).is_file() and not (path / f).is_symlink() for f in CHECKPOINT_FILES)


def _step_of(name: str) -> int | None:
    m = _STEP_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def _read_pointer(ckpt_root: Path, name: str) -> str | None:
    """The checkpoint folder named by the ``latest``/``best`` pointer; None when there is no pointer file.
    A malformed pointer, or one naming anything but a ``step-N`` folder of ``checkpoints/``, is a UserError."""
    path = ckpt_root / name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP or path.is_symlink():
            raise UserError(f"{path} is a symbolic link; ssmkit reads pointers only from files in the run directory: "
                            "delete it (the newest complete checkpoint is then used)") from None
        raise UserError(f"cannot read {path} ({e.strerror}); fix its permissions or delete it") from None
    try:
        with os.fdopen(fd, "rb") as f:
            text = f.read(1 << 16)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); delete it (the newest complete checkpoint is then used)") from None
    try:
        target = json.loads(text.decode("utf-8"))["checkpoint"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a checkpoint pointer (expected JSON like {{\"checkpoint\": \"step-00000100\"}}); "
                        "delete it (the newest complete checkpoint is then used)") from None
    if not isinstance(target, str) or _step_of(target) is None:
        raise UserError(f"{path} points at {str(target)[:80]!r}, not a step-XXXXXXXX folder of {ckpt_root}; ssmkit "
                        "never follows a pointer out of the run directory: delete it (the newest complete checkpoint is then used)")
    return target


def _named(ckpt_root: Path, name: str) -> Path | None:
    """``step-N`` if complete, else its aside ``.old-step-N`` of an interrupted same-step save, else ``step-N`` if
    it exists (its loader names the missing file), else None."""
    main = ckpt_root / name
    if main.is_symlink():
        raise UserError(f"{main} is a symbolic link; ssmkit loads checkpoints only from folders inside the "
                        "run directory: move it away")
    for candidate in (main, ckpt_root / f"{_ASIDE}{name}"):
        if _complete(candidate):
            return candidate
    return main if main.is_dir() else None


def _newest_complete(ckpt_root: Path) -> Path | None:
    """The complete checkpoint (or aside of one) with the highest step."""
    found: dict[int, Path] = {}
    for p in ckpt_root.iterdir():
        is_aside = p.name.startswith(_ASIDE)
        step = _step_of(p.name[len(_ASIDE):] if is_aside else p.name)
        if step is not None and _complete(p) and (step not in found or not is_aside):
            found[step] = p
    return found[max(found)] if found else None


def _prune(ckpt_root: Path, keep: int) -> None:
    """Keeps the ``keep`` newest step checkpoints plus the ones ``latest`` and ``best`` point at. Nothing is
    deleted while a pointer cannot be read (it might name any of them), and symlinks are never followed."""
    try:
        protected = {_read_pointer(ckpt_root, "latest"), _read_pointer(ckpt_root, "best")}
    except UserError:
        return
    steps = sorted((s, p) for p in ckpt_root.glob("step-*") if (s := _step_of(p.name)) is not None
                   and p.is_dir() and not p.is_symlink())
    for _, p in steps[:-keep]:
        if p.name not in protected:
            _remove(p)


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint to continue from: a ``step-N`` folder, or the aside of a same-step save
    interrupted between its two renames (``step-N`` is missing then, the run is not new)."""
    root = Path(run_dir) / "checkpoints"
    return any(root.glob("step-*/model.safetensors")) or any(root.glob(f"{_ASIDE}step-*/model.safetensors"))


def find_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint directory from a run directory (its ``latest`` or ``best``) or a checkpoint directory.

    Read-only (safe while the run trains): an interrupted same-step save is read from its aside."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        _check_confined(path)
        return path
    if not path.exists():
        raise UserError(f"no run directory or checkpoint at {path}")
    ckpt_root = checkpoint_root(path) if (path / "checkpoints").exists() or (path / "checkpoints").is_symlink() else path
    if not ckpt_root.is_dir():
        raise UserError(f"no {which} checkpoint in {path} (expected {path}/checkpoints/step-XXXXXXXX/model.safetensors)")
    name = _read_pointer(ckpt_root, which)
    if name is not None and (found := _named(ckpt_root, name)) is not None:
        return found
    # The pointer is missing or names a pruned or broken checkpoint: take the newest complete one.
    newest = _newest_complete(ckpt_root) if which == "latest" else None
    if newest is not None:
        return newest
    raise UserError(f"no {which} checkpoint in {path} (expected {ckpt_root}/step-XXXXXXXX/model.safetensors)")


def _weights_only_reason(e: Exception) -> str:
    """The one reason in torch's long ``weights_only`` refusal (e.g. "Unsupported global: GLOBAL os.system")."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].strip()
        return reason.split(" was not an allowed global")[0].strip() or "unsupported content"
    return first_line(e)


def _missing(path: Path) -> UserError:
    return UserError(f"{path}: missing; the checkpoint is incomplete (delete this step folder)")


def load_torch_file(path: Path):
    """A ``torch.save`` file read with ``weights_only=True`` (tensors, numbers, containers; never code).
    A missing, corrupt or refused file is a :class:`UserError` naming the file and the reason."""
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before it refuses them
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused by the weights_only loader (it holds more than tensors and numbers: "
                        f"{_weights_only_reason(e)}); ssmkit never unpickles code, so re-create the checkpoint "
                        "or delete this step folder") from None
    except FileNotFoundError:
        raise _missing(path) from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/ValueError/... for broken files
        raise UserError(f"{path}: not a readable torch file ({type(e).__name__}: {first_line(e, 200, empty='no details')}); "
                        "the checkpoint is corrupt or truncated (delete this step folder)") from None


def load_weights_file(path: Path) -> dict:
    """``model.safetensors`` as a dict of tensors; a missing, truncated or corrupt file is a UserError."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise _missing(path) from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, also OSError
        raise UserError(f"{path}: not a readable safetensors file ({first_line(e, 200, empty='no details')}); the checkpoint is corrupt "
                        "or truncated (delete this step folder)") from None


def _read_text(path: Path) -> str:
    return read_utf8(path, fix="the checkpoint is corrupt", missing=_missing(path))


STATE_KEYS = {"step": int, "epoch": int, "batch_in_epoch": int, "scheduler": dict, "rng": dict}


def read_state(ckpt: Path, keys: dict[str, type] = STATE_KEYS) -> dict:
    """``state.json``, checked for ``keys`` and their types (all that resuming needs by default)."""
    path = Path(ckpt) / "state.json"
    try:
        state = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); the checkpoint is corrupt") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a JSON object, got a {type(state).__name__}; the checkpoint is corrupt")
    for key, tp in keys.items():
        value = state.get(key)
        if not isinstance(value, tp) or isinstance(value, bool) or (tp is int and value < 0):
            raise UserError(f"{path}: {key} must be a {'non-negative integer' if tp is int else 'JSON object'}, "
                            f"got {value!r}; the checkpoint is corrupt")
    return state


@dataclass
class Checkpoint:
    """A checkpoint as read by :func:`load_checkpoint`: ``weights`` (the model's state dict), the loop's ``state``,
    the saved ``recipe_yaml``, and ``optimizer`` (None when only the evaluation part was read)."""

    path: Path
    weights: dict
    state: LoopState
    recipe_yaml: str
    optimizer: dict | None = None


def load_checkpoint(ckpt: Path, training_state: bool = True) -> Checkpoint:
    """Reads a checkpoint without unpickling code: safetensors, ``weights_only`` torch files, JSON.

    ``training_state=False`` (evaluation) reads only the weights, ``state.json`` (only ``step`` required) and the
    recipe."""
    ckpt = Path(ckpt)
    _check_confined(ckpt)
    state = read_state(ckpt) if training_state else read_state(ckpt, {"step": int})
    weights, recipe_yaml = load_weights_file(ckpt / "model.safetensors"), _read_text(ckpt / "recipe.yaml")
    if not training_state:
        return Checkpoint(ckpt, weights, LoopState.from_files(state), recipe_yaml)
    rng = load_torch_file(ckpt / "rng.pt")
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        raise UserError(f"{ckpt / 'rng.pt'}: expected a mapping with the torch generator state; the checkpoint is corrupt")
    optimizer = load_torch_file(ckpt / "optimizer.pt")
    if not isinstance(optimizer, dict) or not {"state", "param_groups"} <= set(optimizer):
        raise UserError(f"{ckpt / 'optimizer.pt'}: expected an optimizer state dict (state, param_groups); "
                        "the checkpoint is corrupt")
    return Checkpoint(ckpt, weights, LoopState.from_files(state, rng), recipe_yaml, optimizer)
