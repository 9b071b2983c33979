"""Classification or regression on your own sequences (task ``sequences``): NumPy files or a Hugging Face dataset.

NumPy: ``train``, ``val``, ``test`` each name an ``.npz`` file holding ``x`` and ``y`` (and optionally
``lengths``), or a folder of ``x.npy``, ``y.npy`` (and ``lengths.npy``), which are memory-mapped, so a data
set larger than memory works. ``val`` may instead be a fraction of the training file (default 0.1: a fixed
random tenth); ``test`` is optional (``ssmkit eval --split test`` then says it is missing). Paths are
absolute, or relative to the current directory, else to ``$SSMKIT_DATA``.

- ``x``: (N, L) integers = tokens (non-negative ids), or (N, L, D) numbers = D features per step ((N, L)
  floats are read as D = 1).
- ``y``: (N,) integers = class ids 0..C-1 (classification: cross-entropy, accuracy); (N,) floats or (N, D_out)
  numbers = regression targets (MSE; metrics mse, mae). ``labels: classes|values`` overrides the guess.
- ``lengths`` (N,): each sequence's true length; positions after it are padding, which no layer, norm or
  pooling reads (``SequenceModel(lengths=...)``).

Hugging Face ``datasets``: ``hf`` names a folder written by ``save_to_disk`` (read offline), a folder of data
files, or a hub dataset (``datasets.load_dataset``: needs the network once; offline, one line says to save it
with ``save_to_disk`` where there is a network). ``input`` is the column of sequences (default ``text``): text
(read as UTF-8 bytes, 256 tokens), a list of token ids, a list of numbers, or a list of feature vectors;
``label`` the target column (default ``label``; a ``ClassLabel`` gives the number of classes). ``split`` maps
our splits to the dataset's: ``{train: NAME, val: NAME, test: NAME}``, or one name for the training split;
by default ``train``, the first of ``validation``/``valid``/``val``/``dev`` (else the ``val`` fraction of
train; an explicit ``val`` beside such a split is refused) and ``test`` when present. Sequences of different lengths are padded at the end, with their lengths.

Inferred from the data (and printed by ``ssmkit train --dry-run`` and ``ssmkit data check``): tokens or
features and their width, the vocabulary (the largest id + 1, over every split; ``vocab_size`` to reserve
more), the number of classes (largest label + 1, or the ``ClassLabel``; ``num_classes`` to set it), the
padded length and the loss. Token ids are shifted by one inside the task (0 is the padding id), so the
model's vocabulary is one larger than the data's. ``seq_len`` cuts longer sequences.
"""
from __future__ import annotations

import os
import socket
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmkit.errors import DataError, first_line
from ssmkit.tasks._shared import PAD_ID, check_choice, check_split, split_indices, user_path
from ssmkit.tasks.base import TASKS, Task

LABELS = ("auto", "classes", "values")
POOLS = ("mean", "last")
VAL_NAMES = ("validation", "valid", "val", "dev")
_CHUNK = 4096  # samples per block when scanning memory-mapped arrays


# --- sources: one split's samples, whatever they are stored in ---
class ArraySource:
    """One split from NumPy arrays (in memory or memory-mapped); ``item(i)`` -> (x_i, y_i, length_i)."""

    def __init__(self, where: str, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None):
        self.where, self.x, self.y, self.lengths = where, x, y, lengths
        self.n = len(x)

    def item(self, i: int):
        length = int(self.lengths[i]) if self.lengths is not None else self.x.shape[1]
        return np.array(self.x[i]), np.array(self.y[i]), length  # copies: memory-mapped rows are read-only

    def scan(self, stats: dict) -> None:
        """Adds this split's ranges to ``stats`` (blocks of ``_CHUNK`` samples; errors name the sample)."""
        x, y, where = self.x, self.y, self.where
        stats["length"] = max(stats.get("length", 0), x.shape[1])
        if self.lengths is not None:
            stats["variable"] = True
        for s in range(0, self.n, _CHUNK):
            xb, yb = np.asarray(x[s:s + _CHUNK]), np.asarray(y[s:s + _CHUNK])
            if stats["tokens"]:
                if xb.size and xb.min() < 0:
                    i = s + int(np.argwhere(xb < 0)[0][0])
                    raise DataError(f"{where}: x[{i}] has a negative token id {int(np.asarray(x[i]).min())}; token ids "
                                    "are 0, 1, 2, ... (store features as floats)")
                if xb.size:
                    stats["max_token"] = max(stats.get("max_token", 0), int(xb.max()))
            elif xb.size and not np.isfinite(xb).all():
                i = s + int(np.argwhere(~np.isfinite(xb.reshape(len(xb), -1)))[0][0])
                raise DataError(f"{where}: x[{i}] has a NaN or infinite value; fill or drop that sample")
            _scan_labels(yb, s, where, stats)


def _scan_labels(yb: np.ndarray, start: int, where: str, stats: dict) -> None:
    if not yb.size:
        return
    if stats["classes"]:
        if (yb < 0).any() or (yb != np.round(yb)).any():
            i = start + int(np.argwhere((yb < 0) | (yb != np.round(yb)))[0][0])
            raise DataError(f"{where}: y[{i}] = {yb[i - start].item()!r} is not a class id 0, 1, 2, ...; "
                            "set task.labels=values for regression targets")
        stats["max_label"] = max(stats.get("max_label", -1), int(yb.max()))
    elif not np.isfinite(yb.astype(np.float64)).all():
        i = start + int(np.argwhere(~np.isfinite(yb.astype(np.float64).reshape(len(yb), -1)))[0][0])
        raise DataError(f"{where}: y[{i}] is NaN or infinite; fill or drop that sample")


class SubsetSource:
    """A fixed subset of another source's samples (the validation fraction of a training file)."""

    def __init__(self, source, indices: list[int], where: str):
        self.source, self.indices, self.where, self.n = source, sorted(indices), where, len(indices)

    def item(self, i: int):
        return self.source.item(self.indices[i])

    def scan(self, stats: dict) -> None:  # the whole source is scanned once, as its own split
        pass


class HFSource:
    """One split of a Hugging Face ``datasets.Dataset``; the rows are converted when read."""

    def __init__(self, where: str, ds, input: str, label: str):
        self.where, self.ds, self.input, self.label, self.n = where, ds, input, label, len(ds)
        self._kind: str | None = None  # text, tokens or values

    def _x(self, value, i: int) -> np.ndarray:
        if isinstance(value, str):
            return np.frombuffer(value.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        try:
            x = np.asarray(value)
        except ValueError:
            raise DataError(f"{self.where}: row {i}, column {self.input!r}: the rows of a sequence have different "
                            "widths") from None
        if x.ndim not in (1, 2) or x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise DataError(f"{self.where}: row {i}, column {self.input!r} holds {type(value).__name__} "
                            f"{str(value)[:40]!r}; a sequence column holds text, a list of token ids or numbers, "
                            "or a list of feature vectors")
        return x

    def item(self, i: int):
        row = self.ds[i]
        x = self._x(row[self.input], i)
        return x, np.asarray(row[self.label]), len(x)

    def scan(self, stats: dict) -> None:
        ds = self.ds.select_columns([self.input, self.label])
        i = 0
        for batch in ds.iter(batch_size=1024):
            xs, ys = batch[self.input], batch[self.label]
            for value in xs:
                x = self._x(value, i)
                kind = "text" if isinstance(value, str) else ("tokens" if np.issubdtype(x.dtype, np.integer) and x.ndim == 1
                                                               else "values")
                if stats.setdefault("hf_kind", kind) != kind:
                    raise DataError(f"{self.where}: row {i}, column {self.input!r} holds {kind}, earlier rows "
                                    f"{stats['hf_kind']}; one column holds one kind of sequence")
                if kind == "values":
                    d = 1 if x.ndim == 1 else x.shape[1]
                    if stats.setdefault("width", d) != d:
                        raise DataError(f"{self.where}: row {i} has {d} features per step, earlier rows {stats['width']}")
                    if not np.isfinite(x).all():
                        raise DataError(f"{self.where}: row {i}, column {self.input!r} has a NaN or infinite value")
                elif x.size:
                    if x.min() < 0:
                        raise DataError(f"{self.where}: row {i} has a negative token id {int(x.min())}")
                    stats["max_token"] = max(stats.get("max_token", 0), int(x.max()))
                if len(x) == 0:
                    raise DataError(f"{self.where}: row {i}, column {self.input!r} is empty; drop empty sequences")
                lengths = stats.setdefault("lengths", set())
                if len(lengths) < 2:
                    lengths.add(len(x))
                stats["length"] = max(stats.get("length", 0), len(x))
                i += 1
            y = np.asarray(ys)
            if y.dtype == object:
                raise DataError(f"{self.where}: column {self.label!r} is not numbers (e.g. {ys[0]!r}); labels are class "
                                "ids or numeric targets")
            stats.setdefault("y_shape", y.shape[1:])
            stats.setdefault("y_integer", True)
            stats["y_integer"] &= bool(np.issubdtype(y.dtype, np.integer) or y.dtype == bool)
            stats.setdefault("labels_seen", []).append(y)


# --- the dataset and the model head ---
class Items(torch.utils.data.Dataset):
    """(x, y) of one split: tokens (L,) long (ids + 1, 0 = padding), or values (L, D) float with a last
    validity channel (1 on the true length) when lengths vary; y a class id or a float vector."""

    def __init__(self, task, source):
        self.task, self.source = task, source

    def __len__(self) -> int:
        return self.source.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.source.n:
            raise IndexError(i)
        t = self.task
        x, y, length = self.source.item(i)
        L = t.length
        length = min(length, L)
        if t.tokens:
            out = torch.full((L,), PAD_ID, dtype=torch.long)
            out[:length] = torch.from_numpy(np.asarray(x[:length], dtype=np.int64)) + 1
        else:
            x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
            out = torch.zeros(L, t.width + int(t.variable))
            out[:length, : t.width] = torch.from_numpy(x[:length])
            if t.variable:
                out[:length, -1] = 1.0
        if t.classification:
            target = torch.tensor(int(y), dtype=torch.long)
        else:
            target = torch.from_numpy(np.asarray(y, dtype=np.float32).reshape(-1))
        return out, target


class DropValidity(nn.Module):
    """Feature inputs with a validity channel last: the backbone gets the features, the lengths come from
    the channel (``task.lengths``)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(x[..., :-1], lengths=lengths)


# --- reading ---
def load_arrays(path: Path, split: str) -> ArraySource:
    """An ``.npz`` (x, y[, lengths]) or a folder of ``x.npy``, ``y.npy`` [``lengths.npy``] (memory-mapped)."""
    where = str(path)
    try:
        if path.is_dir():
            missing = [n for n in ("x.npy", "y.npy") if not (path / n).is_file()]
            if missing:
                raise DataError(f"{path}: a folder of arrays needs x.npy and y.npy (missing {', '.join(missing)}); "
                                "lengths.npy is optional")
            arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r", allow_pickle=False)
                      for n in ("x", "y", "lengths") if (path / f"{n}.npy").is_file()}
        else:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise DataError(f"{path}: a .npy holds one array; give an .npz with x and y (np.savez(path, x=x, y=y)) "
                                    "or a folder of x.npy and y.npy")
                missing = [n for n in ("x", "y") if n not in z.files]
                if missing:
                    raise DataError(f"{path}: no array named {' or '.join(missing)} (it has {', '.join(z.files) or 'none'}); "
                                    "save it with np.savez(path, x=inputs, y=targets[, lengths=lengths])")
                arrays = {n: z[n] for n in ("x", "y", "lengths") if n in z.files}
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        reason = first_line(e)
        if "allow_pickle" in reason or "Object arrays" in reason:
            reason = "it holds Python objects (ragged lists?); store a padded numeric array with lengths"
        raise DataError(f"{path}: not a NumPy .npz/.npy the {split} split can use ({reason})") from None
    x, y, lengths = arrays["x"], arrays["y"], arrays.get("lengths")
    for name, a in (("x", x), ("y", y), ("lengths", lengths)):
        if a is not None and not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise DataError(f"{path}: {name} has dtype {a.dtype}; it must hold numbers")
    if x.ndim not in (2, 3):
        raise DataError(f"{path}: x has shape {x.shape}; give (N, L) token ids or (N, L, D) features")
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise DataError(f"{path}: y has shape {y.shape} for x of shape {x.shape}; give (N,) labels or (N, D_out) targets")
    if len(x) == 0:
        raise DataError(f"{path}: x holds no samples")
    if x.shape[1] == 0:
        raise DataError(f"{path}: x has length 0 (shape {x.shape})")
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.shape != (len(x),) or not np.issubdtype(lengths.dtype, np.integer):
            raise DataError(f"{path}: lengths has shape {lengths.shape} and dtype {lengths.dtype}; give (N,) integers")
        bad = np.flatnonzero((lengths < 1) | (lengths > x.shape[1]))
        if bad.size:
            raise DataError(f"{path}: lengths[{bad[0]}] = {lengths[bad[0]]} is outside 1..{x.shape[1]} (x's length)")
    return ArraySource(where, x, y, lengths)


def load_hf(name: str):
    """``datasets.load_from_disk`` for a saved folder, else ``datasets.load_dataset``; errors in one line."""
    try:
        import datasets
    except ImportError:
        raise DataError("task.hf reads Hugging Face datasets, which needs the datasets library: pip install datasets") from None
    path = user_path(name)
    offline = False
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            return datasets.load_from_disk(str(path))
        if path.exists():
            return datasets.load_dataset(str(path))
        offline = not _hub_reachable()
        with _hub_offline(offline):  # no network: the library's cache only, at once (not five retries per file)
            return datasets.load_dataset(name)
    except Exception as e:  # noqa: BLE001 - the datasets library raises many types (connection, not found, format)
        reason = first_line(e, 200)
        if path.exists():
            raise DataError(f"{path}: not a Hugging Face dataset the datasets library can read ({type(e).__name__}: "
                            f"{reason})") from None
        why = "the Hugging Face Hub cannot be reached from here and it is not in the local cache" if offline else \
            f"{type(e).__name__}: {reason}"
        raise DataError(f"Hugging Face dataset {name!r} could not be loaded ({why}); on a machine with the network run "
                        f"datasets.load_dataset({name!r}).save_to_disk(FOLDER), copy FOLDER here and set "
                        "task.hf=FOLDER") from None


def _hub_reachable() -> bool:
    """Whether the Hub's host name resolves (``$HF_ENDPOINT`` or huggingface.co); offline settings count as no."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


class _hub_offline:
    """Sets the datasets and huggingface_hub offline flags for the ``with`` block when ``on`` (they are read from
    the environment once, at import)."""

    def __init__(self, on: bool):
        self.on, self.saved = on, []

    def __enter__(self):
        if self.on:
            import datasets.config
            import huggingface_hub.constants

            for module in (datasets.config, huggingface_hub.constants):
                self.saved.append((module, module.HF_HUB_OFFLINE))
                module.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc):
        for module, value in self.saved:
            module.HF_HUB_OFFLINE = value


# --- the task ---
@TASKS.register("sequences", description="Classification or regression on your own sequences (.npz/.npy or a Hugging Face dataset)")
class Sequences(Task):
    name = "sequences"

    def __init__(self, train: str | None = None, val: float | str | None = None, test: str | None = None, hf: str | None = None,
                 input: str | None = None, label: str | None = None, split=None, labels: str = "auto",
                 num_classes: int | None = None, vocab_size: int | None = None, seq_len: int | None = None,
                 pool: str = "mean"):
        check_choice("labels", labels, LABELS)
        check_choice("pool", pool, POOLS)
        if (train is None) == (hf is None):
            raise ValueError("give your data as task.train=PATH (an .npz or a folder of .npy files; task.val and "
                             "task.test likewise) or as task.hf=NAME_OR_FOLDER (a Hugging Face dataset), one of the two")
        for key, value in (("train", train), ("test", test), ("hf", hf), ("input", input), ("label", label)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"task option {key}={value!r} must be a path or name")
        if hf is None:
            for key, value in (("input", input), ("label", label), ("split", split)):
                if value is not None:
                    raise ValueError(f"task option {key} is for a Hugging Face dataset (task.hf); NumPy files hold x, y "
                                     "and lengths")
        elif test is not None or isinstance(val, str):
            raise ValueError("with task.hf, task.split picks the dataset's splits; task.test and a task.val path are "
                             "for NumPy files")
        self.val_given = val is not None
        if val is None:
            val = 0.1  # a path or a fraction; the default is a number, so the recipe check leaves the type to us
        if isinstance(val, str):
            if not val:
                raise ValueError("task option val='' must be a path or a fraction of the training data")
        elif not isinstance(val, int | float) or isinstance(val, bool) or not 0 < val < 1:
            raise ValueError(f"task option val={val!r} must be a path, or a fraction in (0, 1) of the training data")
        if split is not None and not isinstance(split, str):
            if not isinstance(split, dict) or not split or set(split) - {"train", "val", "test"} \
                    or not all(isinstance(v, str) and v for v in split.values()):
                raise ValueError(f"task option split={split!r} must be a split name, or a mapping such as "
                                 "{train: train, val: validation, test: test}")
        for key, value, low in (("num_classes", num_classes, 2), ("vocab_size", vocab_size, 1), ("seq_len", seq_len, 1)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"task option {key}={value!r} must be an integer >= {low}")
        self.train_path, self.val_option, self.test_path = train, val, test
        self.hf, self.input_column, self.label_column, self.split_option = hf, input or "text", label or "label", split
        self.labels_option, self.num_classes_option, self.vocab_option = labels, num_classes, vocab_size
        self.seq_len, self.pool = seq_len, pool
        self._sources: dict | None = None
        self._stats: dict | None = None
        self._descriptions: dict[str, str] = {}

    # --- files ---
    def check_data(self) -> None:
        if self.hf is not None:
            return  # loading says what is wrong (a folder or the hub)
        for key, value in (("train", self.train_path), ("val", self.val_option), ("test", self.test_path)):
            if isinstance(value, str) and not user_path(value).exists():
                raise DataError(f"sequences data: task.{key} file {user_path(value)} does not exist; give an .npz with "
                                "x and y (or a folder of x.npy, y.npy), by an absolute path or one relative to the "
                                "current directory or $SSMKIT_DATA")

    def _hf_sources(self) -> dict:
        data = load_hf(self.hf)
        import datasets

        splits = {"train": data} if isinstance(data, datasets.Dataset) else dict(data)
        option = self.split_option
        if isinstance(option, str):
            option = {"train": option}
        if option is None:
            option = {"train": "train"}
            val = next((n for n in VAL_NAMES if n in splits), None)
            if val:
                option["val"] = val
            if "test" in splits:
                option["test"] = "test"
            if "train" not in splits and len(splits) == 1:
                option["train"] = next(iter(splits))
        if "train" not in option:
            raise DataError(f"{self.hf}: task.split names no train split; give {{train: NAME, ...}}")
        sources = {}
        for ours, theirs in option.items():
            if theirs not in splits:
                raise DataError(f"{self.hf}: no split {theirs!r} (it has {', '.join(splits)}); set task.split, e.g. "
                                f"{{train: {next(iter(splits))}}}")
            ds = splits[theirs]
            for column in (self.input_column, self.label_column):
                if column not in ds.column_names:
                    key = "input" if column == self.input_column else "label"
                    raise DataError(f"{self.hf}: split {theirs!r} has no column {column!r} (columns: "
                                    f"{', '.join(ds.column_names)}); set task.{key}")
            sources[ours] = HFSource(f"{self.hf} [{theirs}]", ds, self.input_column, self.label_column)
        self._class_names = None
        feature = splits[option["train"]].features.get(self.label_column)
        if getattr(feature, "num_classes", None):
            self._class_names = list(feature.names)
        return sources

    def sources(self) -> dict:
        """Split name -> source; the validation fraction carved from train when ``val`` is a number."""
        if self._sources is None:
            self.check_data()
            if self.hf is not None:
                sources = self._hf_sources()
                if "val" in sources and self.val_given:
                    raise DataError(f"{self.hf}: task.val={self.val_option} would hold out part of train, but the dataset's "
                                    f"validation split ({sources['val'].where}) is used; drop task.val, or set "
                                    "task.split to name only the splits to use")
            else:
                sources = {"train": load_arrays(user_path(self.train_path), "train")}
                for key, value in (("val", self.val_option), ("test", self.test_path)):
                    if isinstance(value, str):
                        sources[key] = load_arrays(user_path(value), key)
                self._class_names = None
            if "val" not in sources:
                fraction = self.val_option if not isinstance(self.val_option, str) else 0.1
                train = sources["train"]
                if train.n < 2:
                    raise DataError(f"{train.where}: {train.n} sample(s); a validation fraction needs at least 2")
                keep, held = split_indices(train.n, (1 - fraction, fraction), seed=42)
                if not held:
                    held, keep = keep[-1:], keep[:-1]
                sources["train"] = SubsetSource(train, keep, train.where)
                sources["val"] = SubsetSource(train, held, f"{train.where} (validation {fraction:g})")
                self._descriptions["val"] = f"{fraction:g} of train"
                self._full_train = train
            else:
                self._full_train = sources["train"]
            self._sources = sources
        return self._sources

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in ("train", "val", "test") if s in self.sources())

    def _scan(self) -> dict:
        """What the data is, from one pass over every split (errors name the file and sample)."""
        if self._stats is None:
            sources = self.sources()
            scanned = [self._full_train] + [s for k, s in sources.items() if k != "train" and not isinstance(s, SubsetSource)]
            stats: dict = {}
            if self.hf is None:
                first = scanned[0]
                stats["tokens"] = first.x.ndim == 2 and (np.issubdtype(first.x.dtype, np.integer) or first.x.dtype == bool)
                stats["width"] = 1 if first.x.ndim == 2 else first.x.shape[2]
                y_integer = np.issubdtype(first.y.dtype, np.integer) or first.y.dtype == bool
                stats["classes"] = self.labels_option == "classes" or (self.labels_option == "auto" and y_integer
                                                                        and first.y.ndim == 1)
                for s in scanned:
                    if s.x.ndim != first.x.ndim or s.x.shape[2:] != first.x.shape[2:] or s.y.shape[1:] != first.y.shape[1:]:
                        raise DataError(f"{s.where}: x {s.x.shape} / y {s.y.shape} do not match train's x {first.x.shape} / "
                                        f"y {first.y.shape} (same kind and width per split)")
                    if stats["classes"] and s.y.ndim != 1:
                        raise DataError(f"{s.where}: y has shape {s.y.shape}; class labels are one id per sample (N,)")
                    s.scan(stats)
                stats["y_dim"] = 1 if first.y.ndim == 1 else first.y.shape[1]
            else:
                stats["tokens"], stats["classes"] = True, self.labels_option == "classes"
                for s in scanned:
                    s.scan(stats)
                kind = stats["hf_kind"]
                stats["tokens"] = kind in ("text", "tokens")
                if kind == "text":
                    stats["max_token"] = 255
                stats["width"] = stats.get("width", 1)
                stats["variable"] = len(stats.get("lengths", ())) > 1
                y_shape = stats["y_shape"]
                stats["classes"] = self.labels_option == "classes" or (self.labels_option == "auto" and stats["y_integer"]
                                                                        and not y_shape)
                if stats["classes"] and y_shape:
                    raise DataError(f"{self.hf}: column {self.label_column!r} holds vectors; class labels are one id per row")
                for y in stats.pop("labels_seen"):
                    _scan_labels(y, 0, self.hf, stats)
                stats["y_dim"] = 1 if not y_shape else int(np.prod(y_shape))
            stats.setdefault("variable", False)
            self._stats = stats
        return self._stats

    # --- what the model sees (inferred) ---
    @property
    def tokens(self) -> bool:
        return self._scan()["tokens"]

    @property
    def classification(self) -> bool:
        return self._scan()["classes"]

    @property
    def variable(self) -> bool:
        """Whether sequences have their own lengths (padding to mask)."""
        return self._scan()["variable"]

    @property
    def width(self) -> int:
        return self._scan()["width"]

    @property
    def length(self) -> int:
        L = self._scan()["length"]
        return min(L, self.seq_len) if self.seq_len else L

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: the data's ids + 1 (id 0 is the padding)."""
        data = self._scan().get("max_token", 0) + 1
        if self.vocab_option is not None:
            if self.vocab_option < data:
                raise DataError(f"task.vocab_size={self.vocab_option} is below the data's largest token id + 1 = {data}")
            data = self.vocab_option
        return data + 1

    @property
    def num_classes(self) -> int:
        stats = self._scan()
        found = max(stats.get("max_label", 0) + 1, len(self._class_names or ()), 2)
        if self.num_classes_option is not None:
            if self.num_classes_option < stats.get("max_label", 0) + 1:
                raise DataError(f"task.num_classes={self.num_classes_option} but the labels go up to {stats['max_label']}")
            return self.num_classes_option
        return found

    @property
    def d_input(self) -> int:
        return self.vocab_size if self.tokens else self.width

    @property
    def d_output(self) -> int:
        return self.num_classes if self.classification else self._scan()["y_dim"]

    @property
    def encoder(self) -> str:
        return "embedding" if self.tokens else "linear"

    @property
    def main_metric(self) -> str:
        return "accuracy" if self.classification else "mse"

    @property
    def main_mode(self) -> str:
        return "max" if self.classification else "min"

    def describe(self) -> str:
        """One line: what was read and inferred (``ssmkit train --dry-run``, ``ssmkit data check``)."""
        sources = self.sources()
        counts = " / ".join(f"{k} {sources[k].n}" for k in self.splits)
        if self.tokens:
            what = f"tokens (vocabulary {self.vocab_size} with padding id 0"
            what += ", UTF-8 bytes)" if self._scan().get("hf_kind") == "text" else ")"
        else:
            what = f"{self.width} feature(s) per step"
        length = f"length up to {self.length} (padded, masked)" if self.variable else f"length {self.length}"
        if self.classification:
            names = f": {', '.join(map(str, self._class_names[:6]))}{', ...' if len(self._class_names) > 6 else ''}" \
                if self._class_names else ""
            target = f"{self.num_classes} classes{names}; loss cross-entropy, metric accuracy"
        else:
            target = f"{self.d_output} regression target(s); loss mse, metrics mse and mae"
        return f"sequences: {counts} samples; inputs {what}, {length}; {target}; pool {self.pool}"

    # --- datasets, model, loss ---
    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        check_split(split)
        sources = self.sources()
        if split not in sources:
            how = "task.split" if self.hf is not None else "task.test=PATH"
            raise DataError(f"sequences: no {split} split; give {how}, or evaluate --split val")
        self._scan()
        return Items(self, sources[split])

    def lengths(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self.variable:
            return None
        if self.tokens:
            return (x != PAD_ID).sum(-1)
        return x[..., -1].sum(-1).round().long()

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return DropValidity(model) if self.variable and not self.tokens else model

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.classification:
            return F.cross_entropy(output.float(), target)
        return F.mse_loss(output.float(), target.float())

    def metric_stats(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.classification:
            loss = F.cross_entropy(output.float(), target, reduction="none")
            correct = (output.argmax(-1) == target).float()
            return {"loss": loss.detach(), "correct": correct, "count": torch.ones_like(correct)}
        err = output.float() - target.float()  # (B, D_out)
        return {"se": err.square().sum(1).detach(), "ae": err.abs().sum(1).detach(),
                "count": torch.full_like(err[:, 0], err.shape[1])}

    def compute_metrics(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(totals["count"].sum())
        if self.classification:
            return {"loss": float(totals["loss"].sum()) / n, "accuracy": float(totals["correct"].sum()) / n}
        mse = float(totals["se"].sum()) / n
        return {"loss": mse, "mse": mse, "mae": float(totals["ae"].sum()) / n}
