"""Checkpoints that are written atomically and load without running any code.

A checkpoint is a directory ``checkpoints/step-00001200/`` holding

- ``model.safetensors``: the weights,
- ``optimizer.pt``: the optimizer state (tensors and numbers only; loaded with ``weights_only=True``),
- ``rng.pt``: the torch RNG state of the main process, and the CPU and GPU generator states of every process
  (byte tensors; ``weights_only=True``),
- ``state.json``: step, epoch, batches done in the epoch, best metric, scheduler state, Python/NumPy RNG,
- ``recipe.yaml``: the resolved recipe.

It is written into ``.tmp-step-.../`` and renamed into place, then the ``latest`` pointer file (and
``best`` when it is the best so far) is replaced atomically. A run killed at any moment leaves either
the previous complete checkpoint or the new one, never half of one. Checkpoints are named by global
step and found through our own pointers (Accelerate's automatic naming restarts its counter on resume).
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ssmkit.errors import UserError


def _fsync_write(path: Path, data: bytes | str) -> None:
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace_pointer(directory: Path, name: str, content: dict) -> None:
    tmp = directory / f".{name}.tmp"
    _fsync_write(tmp, json.dumps(content))
    os.replace(tmp, directory / name)


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


def save_checkpoint(run_dir: Path, model_state: dict, optimizer_state: dict, state: dict, recipe_yaml: str,
                    best: bool = False, keep: int = 1, rng_by_rank: list[torch.Tensor] | None = None,
                    device_rng_by_rank: list[torch.Tensor | None] | None = None) -> Path:
    """Writes ``checkpoints/step-XXXXXXXX`` atomically, moves the pointers, prunes old step checkpoints.

    ``rng_by_rank``: every process's torch CPU RNG state, ``device_rng_by_rank`` its GPU generator state
    (None on CPU), so dropout continues exactly on each of them."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:08d}"
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata={"step": str(state["step"])})
    torch.save(optimizer_state, tmp / "optimizer.pt")
    rng_json, rng_torch = rng_state()
    torch.save({"torch": rng_torch, "by_rank": list(rng_by_rank or []),
                "device_by_rank": list(device_rng_by_rank or [])}, tmp / "rng.pt")
    _fsync_write(tmp / "state.json", json.dumps({**state, "rng": rng_json}))
    _fsync_write(tmp / "recipe.yaml", recipe_yaml)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = {"checkpoint": name, "step": state["step"], "metric": state.get("metric")}
    _replace_pointer(ckpt_root, "latest", pointer)
    if best:
        _replace_pointer(ckpt_root, "best", pointer)
    _prune(ckpt_root, keep)
    return final


def _read_pointer(ckpt_root: Path, name: str) -> str | None:
    try:
        return json.loads((ckpt_root / name).read_text())["checkpoint"]
    except (OSError, ValueError, KeyError):
        return None


def _prune(ckpt_root: Path, keep: int) -> None:
    """Keeps the ``keep`` newest step checkpoints plus the ones ``latest`` and ``best`` point at."""
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    protected = {_read_pointer(ckpt_root, "latest"), _read_pointer(ckpt_root, "best")}
    for p in steps[:-keep]:
        if p.name not in protected:
            shutil.rmtree(p, ignore_errors=True)


def find_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint directory from a run directory (its ``latest`` or ``best``) or a checkpoint directory."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    ckpt_root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not path.exists():
        raise UserError(f"no run directory or checkpoint at {path}")
    name = _read_pointer(ckpt_root, which)
    if name is not None and (ckpt_root / name / "model.safetensors").is_file():
        return ckpt_root / name
    # The pointer is missing or points at a pruned checkpoint: take the newest complete one.
    complete = sorted(p for p in ckpt_root.glob("step-*") if (p / "state.json").is_file())
    if which == "latest" and complete:
        return complete[-1]
    raise UserError(f"no {which} checkpoint in {path} (expected {ckpt_root}/step-XXXXXXXX/model.safetensors)")


def _weights_only_reason(e: Exception) -> str:
    """The one reason in torch's long ``weights_only`` refusal (e.g. "Unsupported global: GLOBAL os.system")."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].strip()
        return reason.split(" was not an allowed global")[0].strip() or "unsupported content"
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def _missing(path: Path) -> UserError:
    return UserError(f"{path}: missing; the checkpoint is incomplete (delete this step folder)")


def load_torch_file(path: Path):
    """A ``torch.save`` file read with ``weights_only=True`` (tensors, numbers, containers; never code).
    A missing, corrupt or refused file is a :class:`UserError` naming the file and the reason."""
    import pickle
    import warnings

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
        raise UserError(f"{path}: not a readable torch file ({type(e).__name__}: {_first_line(e)}); "
                        "the checkpoint is corrupt or truncated (delete this step folder)") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no details"


def load_weights_file(path: Path) -> dict:
    """``model.safetensors`` as a dict of tensors; a missing, truncated or corrupt file is a UserError."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise _missing(path) from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, also OSError
        raise UserError(f"{path}: not a readable safetensors file ({_first_line(e)}); the checkpoint is corrupt "
                        "or truncated (delete this step folder)") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _missing(path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read this file as UTF-8 text ({_first_line(e)}); the checkpoint is corrupt") from None


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


def load_checkpoint(ckpt: Path, training_state: bool = True) -> dict:
    """Reads a checkpoint without unpickling code: safetensors, ``weights_only`` torch files, JSON.

    ``training_state=False`` (evaluation) reads only the weights, ``state.json`` and the recipe."""
    ckpt = Path(ckpt)
    state = read_state(ckpt) if training_state else read_state(ckpt, {"step": int})
    out = {"model": load_weights_file(ckpt / "model.safetensors"), "state": state,
           "recipe_yaml": _read_text(ckpt / "recipe.yaml")}
    if not training_state:
        return out
    rng = load_torch_file(ckpt / "rng.pt")
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        raise UserError(f"{ckpt / 'rng.pt'}: expected a mapping with the torch generator state; the checkpoint is corrupt")
    optimizer = load_torch_file(ckpt / "optimizer.pt")
    if not isinstance(optimizer, dict) or not {"state", "param_groups"} <= set(optimizer):
        raise UserError(f"{ckpt / 'optimizer.pt'}: expected an optimizer state dict (state, param_groups); "
                        "the checkpoint is corrupt")
    return {**out, "optimizer": optimizer, "rng_torch": rng["torch"],
            "rng_by_rank": rng.get("by_rank") or [], "device_rng_by_rank": rng.get("device_by_rank") or []}
