"""``ssmkit data download NAME``: the papers' datasets from their official releases, unpacked into the layout the
tasks read under the data root (``$SSMKIT_DATA``, default ``./data``).

``SOURCES`` is the table: a name, the files to fetch (a path relative to a base URL, the size in bytes and the
sha256 or md5 where one is published; ``None`` where none is known to us, said in a comment, never guessed) and how
each unpacks (``gz`` one file, ``tar`` a .tar.gz, ``zip``, ``none`` a plain file): rules map archive members (regular
expressions, matched whole) to paths under the root, so nothing lands outside it and links, devices and unsafe member
names are never written. Which source a task's files come from is ``ssmkit/tasks/task_sources.py``; fetching before a
run (``ssmkit train --download``, ``task.download: true``) is ``prepare_data`` in ``ssmkit/recipe.py``.

Fetching uses only the standard library: ``urllib.request`` into ``<root>/downloads/<file>.part``, resumed with an
HTTP Range request after a cut connection (``RETRIES`` times in one command; a later command resumes the same part
file), then the size and checksum are verified and the part is renamed. A mismatch deletes the part and is one line
naming the expected and the received digest. Archives stay in ``<root>/downloads/`` (the LRA release serves five
names), so a second name from the same release is not fetched again; delete the folder to reclaim the space.

Mirrors: ``SSMKIT_MIRROR_<MIRROR>`` (e.g. ``SSMKIT_MIRROR_LRA``) replaces one source's base URL, ``SSMKIT_DATA_MIRROR``
replaces every base with ``<mirror>/<mirror name>/`` (a folder per release, the files under their own names).
"""
from __future__ import annotations

import difflib
import gzip
import hashlib
import http.client
import os
import re
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ssmkit.errors import DataError, UserError
from ssmkit.tasks.base import data_root

CHUNK = 1 << 20
TIMEOUT_S = 60
RETRIES = 3  # resumed attempts after a cut connection within one command
RETRY_WAIT_S = 1.0
ALL_MIRROR_ENV = "SSMKIT_DATA_MIRROR"


@dataclass(frozen=True)
class Remote:
    """One file to fetch: ``path`` relative to the source's base URL."""

    path: str
    size: int | None  # bytes; None: no published size known to us
    sha256: str | None = None
    md5: str | None = None
    approx: str = ""  # shown by --list when the exact size is not known

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    mirror: str  # SSMKIT_MIRROR_<MIRROR>; the folder under SSMKIT_DATA_MIRROR
    base: str  # default base URL (ends with /)
    files: tuple[Remote, ...]
    unpack: str  # gz | tar | zip | none
    rules: tuple[tuple[str, str], ...]  # (member regex, destination template under the root)
    outputs: tuple[str, ...]  # paths under the root that exist once the source is unpacked
    tasks: tuple[str, ...]
    manual: str = ""  # no direct download: where to get the files (then ``files`` is empty)

    @property
    def mirror_env(self) -> str:
        return "SSMKIT_MIRROR_" + re.sub(r"[^A-Z0-9]", "_", self.mirror.upper())

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if not sizes or None in sizes else sum(sizes)

    def shown_size(self) -> str:
        if self.manual:
            return "manual"
        if self.size is not None:
            return human(self.size)
        return " + ".join(f.approx or "?" for f in self.files)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


# --- the table ---------------------------------------------------------------------------------------------
# MNIST: torchvision's mirror and md5s (torchvision/datasets/mnist.py); sizes as served by it.
_MNIST = tuple(Remote(f, s, md5=m) for f, s, m in (
    ("train-images-idx3-ubyte.gz", 9_912_422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", 28_881, "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", 1_648_877, "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", 4_542, "ec29112dd5afa0611ce80d1b7f02629c"),
))
# CIFAR-10: the python release and its md5 (torchvision/datasets/cifar.py).
_CIFAR = (Remote("cifar-10-python.tar.gz", 170_498_071, md5="c58f30108f718f92721af3b95e74349a"),)
_CIFAR_OUT = tuple(f"cifar-10-batches-py/{f}" for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])
# Speech Commands v0.02: sha256 as torchaudio's SpeechCommands (_CHECKSUMS); size as the release serves it.
_SC = (Remote("speech_commands_v0.02.tar.gz", 2_428_923_189,
              sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"),)
_SC_DIR = "SpeechCommands/speech_commands_v0.02"
# WikiText-103: the Salesforce S3 bucket is gone; Stephen Merity's own host serves the same zips. sha256 of the
# zips as recorded by downstream loaders (torchtext's md5 for the tokens zip agrees); the raw zip is 191,984,949
# bytes; the tokens zip's exact size is not published where we looked, so only its checksum is checked.
_WT = (Remote("wikitext-103-v1.zip", None, sha256="242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590",
              md5="9ddaacaf6af0710eda8c456decff7832", approx="~190 MB"),)
_WT_RAW = (Remote("wikitext-103-raw-v1.zip", 191_984_949,
                  sha256="91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794"),)
# The LRA release (google-research/long-range-arena): one .tar.gz named lra_release.gz, about 7.7 GB. No checksum or
# exact size is published, so the download is checked against the length the server announces, nothing more.
_LRA = (Remote("lra_release.gz", None, approx="~7.7 GB"),)
# LRA Text is IMDB (the LRA code reads it through tfds); the original release and its sha256 (tfds / HF datasets).
_IMDB = (Remote("aclImdb_v1.tar.gz", 84_125_825,
                sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"),)
# ETT (zhouhaoyi/ETDataset, the Informer data): md5s as darts' ETT loaders pin them; sizes of those files.
_ETT = tuple(Remote(f"ETT-small/{f}", s, md5=m) for f, s, m in (
    ("ETTh1.csv", 2_589_657, "8381763947c85f4be6ac456c508460d6"),
    ("ETTh2.csv", 2_417_960, "51a229a3fc13579dd939364fefe9c7ab"),
    ("ETTm1.csv", 10_360_719, "82d6bd89109c63d075d99c1077b33f38"),
))
_LRA_ANY = r"(?:.*/)?"  # the release nests its folders (lra_release/..., lra_release/lra_release/tsv_data/...)
LRA_PATHFINDER_RESOLUTIONS = (32, 64, 128, 256)
_PF_DIRS = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")


def _pathfinder_rules(resolutions) -> tuple[tuple[str, str], ...]:
    res = "|".join(map(str, resolutions))
    return ((_LRA_ANY + rf"(pathfinder(?:{res})/(?:{'|'.join(_PF_DIRS)})/(?:imgs|metadata)/[^/]+(?:/[^/]+)?)", r"\1"),)


def _pathfinder_outputs(resolutions) -> tuple[str, ...]:
    return tuple(f"pathfinder{r}/{d}/metadata" for r in resolutions for d in _PF_DIRS)


_LISTOPS_RULE = (_LRA_ANY + r"listops-1000/(basic_(?:train|val|test)\.tsv)", r"listops/\1")
_LISTOPS_OUT = tuple(f"listops/basic_{s}.tsv" for s in ("train", "val", "test"))
_AAN_RULE = (_LRA_ANY + r"tsv_data/(new_aan_pairs\.(?:train|eval|test)\.tsv)", r"aan/\1")
_AAN_OUT = tuple(f"aan/new_aan_pairs.{s}.tsv" for s in ("train", "eval", "test"))
_LRA_BASE = "https://storage.googleapis.com/long-range-arena/"

_SOURCES = [
    Source("mnist", "MNIST digits (torchvision's files)", "mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/",
           _MNIST, "gz", ((r"(.+-ubyte)\.gz", r"MNIST/raw/\1"),),
           tuple(f"MNIST/raw/{f.filename[:-3]}" for f in _MNIST), ("smnist", "psmnist", "mnist-density")),
    Source("cifar10", "CIFAR-10, python batches", "cifar10", "https://www.cs.toronto.edu/~kriz/", _CIFAR, "tar",
           ((r"(cifar-10-batches-py/[^/]+)", r"\1"),), _CIFAR_OUT, ("scifar", "lra-image", "cifar-density")),
    Source("speechcommands", "Speech Commands v0.02 (all 35 words, split lists)", "speechcommands",
           "http://download.tensorflow.org/data/", _SC, "tar", ((r"(.+)", _SC_DIR + r"/\1"),),
           (f"{_SC_DIR}/validation_list.txt", f"{_SC_DIR}/testing_list.txt", f"{_SC_DIR}/yes"), ("sc10", "sc35", "sc09")),
    Source("wikitext-103", "WikiText-103, tokenised (wiki.*.tokens)", "wikitext", "https://wikitext.smerity.com/", _WT,
           "zip", ((r"(wikitext-103/wiki\.(?:train|valid|test)\.tokens)", r"\1"),),
           tuple(f"wikitext-103/wiki.{s}.tokens" for s in ("train", "valid", "test")), ("lm",)),
    Source("wikitext-103-raw", "WikiText-103, raw text (wiki.*.raw; task.raw=true)", "wikitext",
           "https://wikitext.smerity.com/", _WT_RAW, "zip", ((r"(wikitext-103-raw/wiki\.(?:train|valid|test)\.raw)", r"\1"),),
           tuple(f"wikitext-103-raw/wiki.{s}.raw" for s in ("train", "valid", "test")), ("lm",)),
    Source("lra", "the LRA release: ListOps, AAN retrieval and Pathfinder 32-256 in one pass", "lra", _LRA_BASE, _LRA,
           "tar", (_LISTOPS_RULE, _AAN_RULE, *_pathfinder_rules(LRA_PATHFINDER_RESOLUTIONS)),
           _LISTOPS_OUT + _AAN_OUT + _pathfinder_outputs(LRA_PATHFINDER_RESOLUTIONS), ("listops", "aan", "pathfinder", "pathx")),
    Source("lra-listops", "LRA ListOps (basic_*.tsv, from the LRA release)", "lra", _LRA_BASE, _LRA, "tar",
           (_LISTOPS_RULE,), _LISTOPS_OUT, ("listops",)),
    Source("lra-retrieval", "LRA Retrieval, AAN pairs (from the LRA release)", "lra", _LRA_BASE, _LRA, "tar",
           (_AAN_RULE,), _AAN_OUT, ("aan",)),
    Source("lra-pathfinder", "LRA Pathfinder, all resolutions 32-256 (from the LRA release)", "lra", _LRA_BASE, _LRA,
           "tar", _pathfinder_rules(LRA_PATHFINDER_RESOLUTIONS), _pathfinder_outputs(LRA_PATHFINDER_RESOLUTIONS), ("pathfinder", "pathx")),
    *(Source(f"lra-pathfinder{r}", f"LRA Pathfinder {r}x{r} only" + (" (Path-X)" if r == 128 else ""), "lra",
             _LRA_BASE, _LRA, "tar", _pathfinder_rules((r,)), _pathfinder_outputs((r,)),
             ("pathfinder", "pathx") if r == 128 else ("pathfinder",)) for r in LRA_PATHFINDER_RESOLUTIONS),
    Source("lra-text", "LRA Text: the IMDB reviews (aclImdb train/test)", "imdb", "https://ai.stanford.edu/~amaas/data/sentiment/",
           _IMDB, "tar", ((r"(aclImdb/(?:train|test)/(?:pos|neg)/[^/]+\.txt)", r"imdb/\1"),),
           tuple(f"imdb/aclImdb/{s}/{c}" for s in ("train", "test") for c in ("pos", "neg")), ("imdb",)),
    Source("lra-image", "LRA Image: CIFAR-10 (the same files as cifar10)", "cifar10", "https://www.cs.toronto.edu/~kriz/",
           _CIFAR, "tar", ((r"(cifar-10-batches-py/[^/]+)", r"\1"),), _CIFAR_OUT, ("lra-image",)),
    Source("ett", "Informer ETT: ETTh1, ETTh2, ETTm1 (ETDataset)", "ett",
           "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/", _ETT, "none",
           ((r"(ETTh[12]\.csv)", r"informer/etth/\1"), (r"(ETTm1\.csv)", r"informer/ettm/\1")),
           ("informer/etth/ETTh1.csv", "informer/etth/ETTh2.csv", "informer/ettm/ETTm1.csv"), ("etth1", "etth2", "ettm1")),
    Source("weather", "Informer Weather (WTH.csv)", "weather", "", (), "none", (), ("informer/weather/WTH.csv",),
           ("weather",), manual="WTH.csv has no direct download (the Informer authors share it through a Google Drive "
           "folder linked from github.com/zhouhaoyi/Informer2020)"),
    Source("ecl", "Informer ECL electricity (ECL.csv)", "ecl", "", (), "none", (), ("informer/ecl/ECL.csv",), ("ecl",),
           manual="ECL.csv has no direct download (the Informer authors share it through a Google Drive folder linked "
           "from github.com/zhouhaoyi/Informer2020)"),
]
SOURCES: dict[str, Source] = {s.name: s for s in _SOURCES}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        close = difflib.get_close_matches(name, SOURCES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown dataset {name!r} to download; {hint}choose one of {', '.join(SOURCES)} "
                        "(ssmkit data download --list)")
    return SOURCES[name]


def base_url(source: Source) -> str:
    """The base URL the files are fetched from: the mirror variables first, then the official host."""
    one = os.environ.get(source.mirror_env, "").strip()
    if one:
        return one.rstrip("/") + "/"
    every = os.environ.get(ALL_MIRROR_ENV, "").strip()
    if every:
        return f"{every.rstrip('/')}/{source.mirror}/"
    return source.base


def fetch_hint(source: str, root: Path | None = None) -> str:
    """How a task's missing-data message says to get the files: the download command, and the train flag."""
    where = "" if root is None or Path(root) == data_root() else f" --root {root}"
    return f"run `ssmkit data download {source}{where}` (or train with --download)"


def missing_outputs(source: Source, root: Path) -> list[str]:
    return [p for p in source.outputs if not (root / p).exists()]


# --- progress ----------------------------------------------------------------------------------------------
class _Report:
    """A rich progress bar on a terminal, plain lines (start, every 10%, end) otherwise."""

    def __init__(self, console=None):
        self.console = console or Console(highlight=False, markup=False)
        self.bar = None

    def start(self, label: str, total: int | None, done: int) -> None:
        self.label, self.total, self.done, self.t0, self.start_done = label, total, done, time.monotonic(), done
        self.next_pct = 10
        if self.console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                TimeRemainingColumn(), console=self.console, transient=False)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, completed=done)
        else:
            size = f" ({human(total)})" if total else ""
            resumed = f", resuming at {human(done)}" if done else ""
            self.console.print(f"fetching {label}{size}{resumed}")

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif self.total:
            pct = 100 * self.done // self.total
            if pct >= self.next_pct and self.done < self.total:
                self.console.print(f"  {self.label}: {pct}% ({human(self.done)})")
                self.next_pct = pct - pct % 10 + 10

    def stop(self, ok: bool = True) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        elif ok:
            dt = max(time.monotonic() - self.t0, 1e-9)
            self.console.print(f"  {self.label}: {human(self.done)} in {dt:.1f} s "
                               f"({human((self.done - self.start_done) / dt)}/s)")


# --- fetching ----------------------------------------------------------------------------------------------
def _digests(path: Path, remote: Remote) -> dict[str, str]:
    hashes = {k: hashlib.new(k) for k, v in (("sha256", remote.sha256), ("md5", remote.md5)) if v}
    if hashes:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                for h in hashes.values():
                    h.update(block)
    return {k: h.hexdigest() for k, h in hashes.items()}


def _verify(path: Path, remote: Remote, url: str, source: Source) -> None:
    """Size and published checksums; a mismatch deletes ``path`` and is one line."""
    retry = (f"run `ssmkit data download {source.name}` again, or set {source.mirror_env} to a mirror "
             f"that serves the published {remote.filename}")
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        path.unlink()
        raise DataError(f"{url}: got {size} bytes, expected {remote.size}; removed {path}: {retry}")
    for kind, got in _digests(path, remote).items():
        expected = getattr(remote, kind)
        if got != expected:
            path.unlink()
            raise DataError(f"{url}: {kind} mismatch (expected {expected}, got {got}); removed {path}: {retry}")


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(?:\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def fetch(source: Source, remote: Remote, dest: Path, report: _Report) -> None:
    """``base/remote.path`` into ``dest`` through ``dest.part``, resuming it; verified, then renamed."""
    url = base_url(source) + remote.path
    part = dest.with_name(dest.name + ".part")
    mirror = f"set {source.mirror_env} (or {ALL_MIRROR_ENV}) to a mirror that serves {remote.path}"
    cuts = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if remote.size is not None and have >= remote.size:
            break  # complete (or too long: _verify says so)
        headers = {"User-Agent": "ssmkit-data-download", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing after what we have: the part is the whole file
                break
            raise DataError(f"{url}: HTTP {e.code} {e.reason}; the file may have moved: {mirror}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"cannot reach {url} ({reason}); check the network, or {mirror}") from None
        with resp:
            if resp.status == 206 and (not have or _content_range_start(resp.headers.get("Content-Range")) != have):
                part.unlink(missing_ok=True)  # a range we did not ask for: start again from the first byte
                cuts += 1
                if cuts > RETRIES:
                    raise DataError(f"{url}: the server answers with the wrong byte range; {mirror}")
                continue
            if have and resp.status == 206:
                mode = "ab"
            else:  # the server sent the whole file
                have, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else remote.size
            report.start(f"{source.name}: {remote.filename}", total, have)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(part, mode) as f:
                    while True:
                        try:
                            block = resp.read(CHUNK)
                        except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
                            raise _Cut(str(e) or type(e).__name__) from None
                        if not block:
                            break
                        f.write(block)
                        report.advance(len(block))
                got = part.stat().st_size
                if total is not None and got < total:
                    raise _Cut("the connection closed early")
            except _Cut as e:
                report.stop(ok=False)
                cuts += 1
                if cuts > RETRIES:
                    raise DataError(f"{url}: the download stopped at {part.stat().st_size} of {total or '?'} bytes "
                                    f"({e}) after {cuts} tries; run `ssmkit data download {source.name}` again to "
                                    f"resume {part}") from None
                time.sleep(RETRY_WAIT_S * cuts)
                continue
            except OSError as e:
                report.stop(ok=False)
                raise DataError(f"cannot write {part} ({e.strerror or e}); free some space or choose another --root") from None
            report.stop()
            break
    _verify(part, remote, url, source)
    os.replace(part, dest)


class _Cut(Exception):
    pass


# --- unpacking ---------------------------------------------------------------------------------------------
def _destination(source: Source, member: str, root: Path) -> Path | None:
    """Where an archive member goes under ``root`` (None: not wanted). Unsafe results are refused."""
    name = member[2:] if member.startswith("./") else member
    for pattern, template in source.rules:
        m = re.fullmatch(pattern, name)
        if m:
            rel = PurePosixPath(m.expand(template))
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise DataError(f"archive member {member!r} would be written outside {root}; refusing to unpack it "
                                "(the archive is not the published one: delete it from downloads/ and fetch it again)")
            return root.joinpath(*rel.parts)
    return None


def _write(stream, dest: Path, force: bool) -> bool:
    """Copies ``stream`` to ``dest`` atomically; an existing file is kept unless ``force``."""
    if dest.exists() and not force:
        return False
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            while block := stream.read(CHUNK):  # errors reading the archive reach unpack(); writing ones are ours
                try:
                    f.write(block)
                except OSError as e:
                    raise DataError(f"cannot write {dest} ({e.strerror}); free some space or choose another --root") from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def unpack(source: Source, archive: Path, root: Path, force: bool = False) -> tuple[int, int]:
    """Writes the wanted members of ``archive`` under ``root``; returns (written, kept as they were)."""
    written = kept = 0

    def put(member: str, opener) -> None:
        nonlocal written, kept
        dest = _destination(source, member, root)
        if dest is not None:
            with opener() as stream:
                if _write(stream, dest, force):
                    written += 1
                else:
                    kept += 1

    try:
        if source.unpack == "none":
            put(archive.name, lambda: open(archive, "rb"))
        elif source.unpack == "gz":
            put(archive.name, lambda: gzip.open(archive, "rb"))
        elif source.unpack == "tar":
            with tarfile.open(archive, "r|*") as tar:  # one forward pass
                for m in tar:
                    if m.isreg():  # never links, devices or folders: folders come from the files' paths
                        put(m.name, lambda m=m: tar.extractfile(m))
                    tar.members = []  # the LRA release has millions of members: keep none in memory
        elif source.unpack == "zip":
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():  # never folders, nor links (a unix symlink's mode is in external_attr)
                    if not info.is_dir() and not stat.S_ISLNK(info.external_attr >> 16):
                        put(info.filename, lambda info=info: z.open(info))
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot unpack it ({type(e).__name__}: {e}); delete it and run "
                        f"`ssmkit data download {source.name} --force`") from None
    return written, kept


# --- the command -------------------------------------------------------------------------------------------
def download(name: str, root: Path | str | None = None, force: bool = False, console=None) -> Path:
    """Fetches and unpacks source ``name`` under ``root`` (default the data root); returns the root.

    Already unpacked (every output present) and not ``force``: nothing is fetched. Archives are kept in
    ``<root>/downloads/`` and reused (verified again) by the sources that share them.
    """
    source = get_source(name)
    root = Path(root) if root is not None else data_root()
    console = console or Console(highlight=False, markup=False)
    if source.manual:
        raise DataError(f"{source.name}: {source.manual}; put it at {root / source.outputs[0]}")
    if not force and not missing_outputs(source, root):
        console.print(f"{source.name}: already in {root} (--force fetches and unpacks it again)")
        return root
    report = _Report(console)
    written = kept = 0
    for remote in source.files:
        archive = root / "downloads" / remote.filename
        if archive.exists() and not force:
            try:
                _verify(archive, remote, str(archive), source)
            except DataError:
                console.print(f"{archive}: not the published file; fetching it again")
        if force and archive.exists():
            archive.unlink()
        if not archive.exists():
            fetch(source, remote, archive, report)
        console.print(f"unpacking {archive.name} into {root}")
        w, k = unpack(source, archive, root, force)
        written, kept = written + w, kept + k
    missing = missing_outputs(source, root)
    if missing:
        raise DataError(f"{source.name}: after unpacking, {root / missing[0]} is still missing ({len(missing)} expected "
                        f"path(s) absent); the archive's layout is not the expected one: delete {root / 'downloads'} "
                        f"and run `ssmkit data download {source.name} --force`")
    console.print(f"{source.name}: {written} file(s) written" + (f", {kept} already there and kept" if kept else "")
                  + f" under {root}; ready for task(s) {', '.join(source.tasks)}")
    return root


def list_lines() -> list[tuple[str, str, str, str]]:
    """(name, size, where under the data root, tasks) per source, for ``--list``."""
    rows = []
    for s in SOURCES.values():
        where = sorted({p.split("/")[0] if not p.startswith("informer/") else "/".join(p.split("/")[:2])
                        for p in s.outputs})
        rows.append((s.name, s.shown_size(), ", ".join(where), ", ".join(s.tasks)))
    return rows
