"""Any text files as a language-modelling corpus (``lm`` with ``task.files``): found, split, tokenised once, streamed.

``files`` is either one entry (split by ``split`` fractions, default 0.9/0.05/0.05) or a mapping
``{train: ..., valid: ..., test: ...}`` (``val`` is accepted for ``valid``). An entry is a glob
(``corpus/**/*.txt``), a file, a folder (every file under it but hidden ones), or a list of them; relative
ones are looked up from the current directory, else under ``$SSMKIT_DATA``. Files are read in sorted path
order, and each document (file) is followed by ``separator`` (default a newline).

One entry with fractions: the corpus is cut by position, at line boundaries: the first 90 % of its bytes
train, the next 5 % validation, the last 5 % test (as enwik8 is cut), so no line is in two splits.

Levels: ``byte`` (every byte a token, V = 256; the files need not be UTF-8), ``word`` (each line split on
whitespace and ended by ``<eos>``, as the WikiText reference; the vocabulary is ``<eos>``, the training
words by decreasing count, then ``<unk>``, which stands for validation/test words never seen in training),
``tokenizer`` (a ``tokenizers`` JSON file or a local Hugging Face tokenizer folder holding
``tokenizer.json``; ``pip install tokenizers``).

Streaming: files are read in blocks of lines (a line longer than 1 MiB is cut), never whole; the word
vocabulary takes one pass over the training files, the encoding one pass over everything, and the token
ids of each split are written to ``$SSMKIT_CACHE/text/<key>/<split>.bin`` (default ``~/.cache/ssmkit``; the
key hashes the level, tokenizer, separator, split and every file's path, size and modification time) and
read back memory-mapped, so a corpus larger than memory trains; a second run reuses them.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from ssmkit.errors import DataError, first_line
from ssmkit.ops.ext_build import cache_root
from ssmkit.tasks._shared import user_path
from ssmkit.tasks.base import data_root

SPLITS = ("train", "val", "test")
EOS, UNK = "<eos>", "<unk>"
MAX_PIECE = 1 << 20  # bytes: a longer line is cut (at its last space when there is one)
BATCH = 2048  # lines per encoding batch




def _entries(spec) -> list[str]:
    if isinstance(spec, str) and spec:
        return [spec]
    if isinstance(spec, list) and spec and all(isinstance(s, str) and s for s in spec):
        return list(spec)
    raise ValueError(f"task option files entry {spec!r} must be a glob, file or folder, or a list of them")


def find_files(spec) -> list[Path]:
    """Every file an entry names (sorted, without duplicates); [] when nothing matches."""
    found: list[Path] = []
    for pattern in _entries(spec):
        pattern = os.path.expanduser(pattern)
        bases = [""] if os.path.isabs(pattern) else ["", str(data_root())]
        for base in bases:
            full = os.path.join(base, pattern) if base else pattern
            hits = sorted(glob.glob(full, recursive=True))
            if hits:
                break
        for hit in hits:
            p = Path(hit)
            if p.is_dir():
                found += sorted(f for f in p.rglob("*") if f.is_file()
                                and not any(part.startswith(".") for part in f.relative_to(p).parts))
            elif p.is_file():
                found.append(p)
    return list(dict.fromkeys(found))


def _pieces(path: Path):
    """(line number, bytes) of the file's lines, newline kept; a line over MAX_PIECE bytes comes in parts."""
    try:
        with open(path, "rb") as f:
            yield from enumerate(iter(lambda: f.readline(MAX_PIECE), b""), start=1)
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None


def load_tokenizer(spec: str):
    """A ``tokenizers.Tokenizer`` from a JSON file or a folder holding ``tokenizer.json``."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError("task.level=tokenizer needs the tokenizers library: pip install tokenizers") from None

    path = user_path(spec)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise DataError(f"{path}: a tokenizer folder must hold tokenizer.json (a fast tokenizer: "
                            "tokenizer.save_pretrained(folder) writes it); this one has none")
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"task.tokenizer: {path} does not exist; give a tokenizers JSON file or a Hugging Face "
                        "tokenizer folder holding tokenizer.json")
    try:
        return Tokenizer.from_file(str(path)), path
    except Exception as e:  # noqa: BLE001 - the Rust library's errors are all plain Exceptions
        raise DataError(f"{path}: not a tokenizers JSON file ({first_line(e, 160)})") from None


class TextCorpus:
    """The three token streams of ``files`` at one level (see the module docstring)."""

    def __init__(self, files, split=None, level: str = "byte", tokenizer: str | None = None, separator: str = "\n"):
        if isinstance(files, dict):
            keys = set(files)
            if "val" in keys and "valid" in keys:
                raise ValueError("task option files names both val and valid; give one")
            unknown = keys - {"train", "valid", "val", "test"}
            if unknown or not {"train", "test"} <= keys or not keys & {"val", "valid"}:
                raise ValueError(f"task option files={files!r} must map train, valid and test to globs, files or "
                                 "folders (or be one entry, split by task.split)")
            if split is not None:
                raise ValueError("task option split cuts one files entry by fraction; with files per split drop it")
            self.spec = {k: files.get(k if k != "val" else "valid", files.get("val")) for k in SPLITS}
            for entry in self.spec.values():
                _entries(entry)
            self.fractions = None
        else:
            _entries(files)
            split = [0.9, 0.05, 0.05] if split is None else split
            if (not isinstance(split, list | tuple) or len(split) != 3 or abs(sum(split) - 1) > 1e-6
                    or not all(isinstance(f, int | float) and not isinstance(f, bool) and 0 < f < 1 for f in split)):
                raise ValueError(f"task option split={split!r} must be three fractions in (0, 1) for train, valid and "
                                 "test that add up to 1, e.g. [0.9, 0.05, 0.05]")
            self.spec, self.fractions = files, tuple(float(f) for f in split)
        if level == "tokenizer" and not tokenizer:
            raise ValueError("task.level=tokenizer needs task.tokenizer: a tokenizers JSON file or a Hugging Face "
                             "tokenizer folder")
        if tokenizer is not None and level != "tokenizer":
            raise ValueError(f"task option tokenizer is for task.level=tokenizer (level is {level!r})")
        if not isinstance(separator, str):
            raise ValueError(f"task option separator={separator!r} must be text (\"\" for none)")
        self.level, self.tokenizer_spec, self.separator = level, tokenizer, separator
        self._files: dict[str, list[Path]] | None = None
        self._tokenizer = None
        self._vocab: list[str] | None = None
        self._streams: dict[str, np.ndarray] = {}

    # --- files ---
    def files(self) -> dict[str, list[Path]]:
        """Split -> its files (one list for all three when cut by fraction); DataError when an entry finds none."""
        if self._files is None:
            specs = self.spec if self.fractions is None else {"train": self.spec}
            out = {}
            for split, spec in specs.items():
                found = find_files(spec)
                if not found:
                    key = "task.files" if self.fractions is not None else f"task.files.{'valid' if split == 'val' else split}"
                    raise DataError(f"lm data: {key}={spec!r} finds no file (a relative glob is looked up from the "
                                    f"current directory, then under $SSMKIT_DATA={data_root()}); give a glob, file or "
                                    "folder of text files")
                out[split] = found
            self._files = out
        return self._files

    def check(self) -> None:
        self.files()
        if self.level == "tokenizer":
            self.tokenizer()

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_spec)
        return self._tokenizer[0]

    def describe_files(self) -> str:
        files = self.files()
        if self.fractions is not None:
            f = files["train"]
            return (f"{len(f)} file(s) from {self.spec!r}, cut {'/'.join(f'{x:g}' for x in self.fractions)} "
                    "by position")
        return ", ".join(f"{'valid' if s == 'val' else s} {len(files[s])} file(s)" for s in SPLITS)

    # --- the cache ---
    def key(self) -> str:
        files = self.files()
        stat = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for s in files for p in files[s]]
        tok = None
        if self.level == "tokenizer":
            self.tokenizer()
            t = self._tokenizer[1]
            tok = [str(t.resolve()), t.stat().st_size, t.stat().st_mtime_ns]
        what = [1, self.level, tok, self.separator, self.fractions, sorted(files), stat]
        return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:16]

    def folder(self) -> Path:
        return cache_root() / "text" / self.key()

    @property
    def dtype(self):
        return np.uint8 if self.level == "byte" else np.int32

    def _routed(self, train_only: bool = False):
        """(split index, path, line number, bytes) over every line and separator, in corpus order (with
        ``train_only``, files given per split stop after the training files)."""
        files, sep = self.files(), self.separator.encode("utf-8")
        if self.fractions is None:
            for k, split in enumerate(SPLITS[:1] if train_only else SPLITS):
                for path in files[split]:
                    for number, piece in _pieces(path):
                        yield k, path, number, piece
                    if sep:
                        yield k, path, 0, sep
            return
        paths = files["train"]
        total = sum(p.stat().st_size for p in paths) + len(sep) * len(paths)
        bounds = (self.fractions[0] * total, (self.fractions[0] + self.fractions[1]) * total)
        offset = 0
        for path in paths:
            for number, piece in _pieces(path):
                yield (0 if offset < bounds[0] else 1 if offset < bounds[1] else 2), path, number, piece
                offset += len(piece)
            if sep:
                yield (0 if offset < bounds[0] else 1 if offset < bounds[1] else 2), path, 0, sep
                offset += len(sep)

    def _text(self, path: Path, number: int, piece: bytes) -> str:
        try:
            return piece.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: line {number} is not UTF-8 (byte {e.start} is 0x{piece[e.start]:02x}); "
                            f"task.level={self.level} reads text: convert the file, or use task.level=byte") from None

    @property
    def vocab(self) -> list[str]:
        """Word level: ``<eos>``, the training words by decreasing count (ties by first use), then ``<unk>``."""
        if self._vocab is None:
            folder = self.folder()
            path = folder / "vocab.json"
            if path.is_file():
                self._vocab = json.loads(path.read_text(encoding="utf-8"))
            else:
                counts: Counter = Counter()
                for k, p, number, piece in self._routed(train_only=True):
                    if k == 0:
                        counts.update(self._text(p, number, piece).split())
                counts.pop(EOS, None)
                counts.pop(UNK, None)
                vocab = [EOS] + [w for w, _ in counts.most_common()] + [UNK]
                self._write(path, json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
                self._vocab = vocab
        return self._vocab

    @property
    def vocab_size(self) -> int:
        if self.level == "byte":
            return 256
        if self.level == "word":
            return len(self.vocab)
        return self.tokenizer().get_vocab_size(with_added_tokens=True)

    def _write(self, path: Path, data: bytes | None = None, chunks=None) -> None:
        """Writes a cache file atomically (a temp name, then a rename)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                if data is not None:
                    f.write(data)
                for chunk in chunks or ():
                    f.write(chunk)
            os.replace(tmp, path)
        except OSError as e:
            raise DataError(f"cannot write the token cache {path} ({e.strerror}); set $SSMKIT_CACHE to a writable "
                            "folder with room for the corpus's token ids") from None

    def _encode_all(self) -> None:
        """One pass over the corpus writing every split's ids to ``<split>.bin``."""
        folder = self.folder()
        if self.level == "word":
            self.vocab  # noqa: B018  (the vocabulary first: one pass over the training files)
        folder.mkdir(parents=True, exist_ok=True)
        tmps = {s: folder / f".{s}.bin.{os.getpid()}.tmp" for s in SPLITS}
        handles = {s: open(tmps[s], "wb") for s in SPLITS}  # noqa: SIM115  (closed below)
        try:
            pending: dict[int, list] = {0: [], 1: [], 2: []}
            for k, path, number, piece in self._routed():
                if self.level == "byte":
                    handles[SPLITS[k]].write(piece)
                    continue
                pending[k].append((path, number, piece))
                if len(pending[k]) >= BATCH:
                    handles[SPLITS[k]].write(self._ids(pending[k]).tobytes())
                    pending[k] = []
            for k, rest in pending.items():
                if rest:
                    handles[SPLITS[k]].write(self._ids(rest).tobytes())
        except OSError as e:
            raise DataError(f"cannot write the token cache in {folder} ({e.strerror}); set $SSMKIT_CACHE to a "
                            "writable folder with room for the corpus's token ids") from None
        finally:
            for h in handles.values():
                h.close()
        for s in SPLITS:
            os.replace(tmps[s], folder / f"{s}.bin")

    def _ids(self, lines: list) -> np.ndarray:
        """Token ids of a batch of (path, line number, bytes)."""
        texts = [self._text(p, n, b) for p, n, b in lines]
        if self.level == "word":
            index = self._index()
            unk = index[UNK]
            ids = []
            for text in texts:
                ids += [index.get(w, unk) for w in text.split()]
                if text.endswith("\n"):
                    ids.append(0)  # <eos>
            return np.asarray(ids, dtype=np.int32)
        encoded = self.tokenizer().encode_batch(texts, add_special_tokens=False)
        return np.asarray([i for e in encoded for i in e.ids], dtype=np.int32)

    def _index(self) -> dict[str, int]:
        if not hasattr(self, "_word_index"):
            self._word_index = {w: i for i, w in enumerate(self.vocab)}
        return self._word_index

    def stream(self, split: str) -> np.ndarray:
        """The split's token ids, memory-mapped from the cache (built on first use)."""
        if split not in self._streams:
            folder = self.folder()
            if not all((folder / f"{s}.bin").is_file() for s in SPLITS):
                self._encode_all()
            path = folder / f"{split}.bin"
            if path.stat().st_size == 0:
                self._streams[split] = np.zeros(0, dtype=self.dtype)
            else:
                self._streams[split] = np.memmap(path, dtype=self.dtype, mode="r")
        return self._streams[split]

    # --- text <-> ids (generation) ---
    def encode(self, text: str) -> np.ndarray:
        if self.level == "byte":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        if self.level == "word":
            index = self._index()
            lines = text.split("\n")
            ids = []
            for i, line in enumerate(lines):
                ids += [index.get(w, index[UNK]) for w in line.split()]
                if i < len(lines) - 1:
                    ids.append(0)
            return np.asarray(ids, dtype=np.int64)
        return np.asarray(self.tokenizer().encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids: list[int]) -> str:
        if self.level == "byte":
            return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
        if self.level == "word":
            vocab = self.vocab
            words = [vocab[i] if 0 <= i < len(vocab) else UNK for i in ids]
            return " ".join(words).replace(f" {EOS} ", "\n").replace(EOS, "\n")
        return self.tokenizer().decode([int(i) for i in ids], skip_special_tokens=False)
