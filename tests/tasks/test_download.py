"""`ssmkit data download` against an HTTP server on 127.0.0.1 started by the test: files in the releases' real formats
(MNIST idx.gz, the CIFAR-10 python tar.gz, a Speech Commands tar.gz, the IMDB aclImdb tar.gz, the WikiText zips, the
LRA release's tar layout with every Pathfinder resolution, ETT CSVs) for every source in the table, checksums from
those files, a connection cut mid-file, a wrong checksum, a closed port, links in tars and zips; and
`ssmkit train --download`. Nothing reaches the internet."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import inspect
import io
import pickle
import re
import shlex
import socket
import stat
import struct
import tarfile
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from PIL import Image
from test_speech import write_sc
from test_train_tasks import make_data
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.errors import DataError, UserError
from ssmkit.recipe import load_recipe, prepare_data
from ssmkit.tasks import TASKS
from ssmkit.tasks import download as dl
from ssmkit.tasks import task_sources as ts
from ssmkit.tasks.datasets import GENERATORS
from ssmkit.tasks.forecast import write_synthetic_ett


# --- a local server --------------------------------------------------------------------------------------------
class Server:
    """Serves ``files`` (path -> bytes) with Range support; ``cut[path]`` lists byte counts after which successive
    requests for that path close the connection; ``ignore_range`` answers 200 with the whole file."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path, rng = self.path.lstrip("/"), self.headers.get("Range")
                server.requests.append((path, rng))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cuts = server.cut.get(path)
                if cuts:
                    self.wfile.write(body[: cuts.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        return Handler

    def hits(self, name: str) -> list[str | None]:
        """The Range headers of the requests for paths ending in ``name``."""
        return [r for p, r in self.requests if p.endswith(name)]


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_WAIT_S", 0.0)
    for var in [v for v in __import__("os").environ if v.startswith("SSMKIT_MIRROR_") or v == dl.ALL_MIRROR_ENV]:
        monkeypatch.delenv(var)


def serve(monkeypatch, server: Server, name: str, files: dict[str, bytes], digest: str = "sha256", prefix: str = ""):
    """Puts ``files`` (the source's file names -> bytes) on the server and the source's table entry on their sizes
    and checksums, as the published ones would be; the mirror variable points at the server."""
    source = dl.SOURCES[name]
    remotes = []
    for remote in source.files:
        data = files[remote.filename]
        server.files[prefix + remote.path] = data
        sums = {"sha256": None, "md5": None, **({digest: hashlib.new(digest, data).hexdigest()} if digest else {})}
        remotes.append(replace(remote, size=len(data), **sums))
    monkeypatch.setitem(dl.SOURCES, name, replace(source, files=tuple(remotes)))
    if not prefix:
        monkeypatch.setenv(source.mirror_env, server.url)


def cli(*args, data: Path | None = None):
    env = {"SSMKIT_DATA": str(data)} if data is not None else {}
    return CliRunner().invoke(app, list(args), env=env)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --- fixtures in the releases' formats -------------------------------------------------------------------------
def mnist_release(n: int = 20):
    """torchvision's four idx files, gzipped; and the images/labels they hold."""
    rng = np.random.default_rng(0)
    files, arrays = {}, {}
    for prefix in ("train", "t10k"):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        arrays[prefix] = (imgs, labels)
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(struct.pack(">4i", 2051, n, 28, 28) + imgs.tobytes())
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(struct.pack(">2i", 2049, n) + labels.tobytes())
    return files, arrays


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def folder_members(folder: Path, prefix: str) -> dict[str, bytes]:
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pathfinder_image(res: int, i: int) -> np.ndarray:
    """A cheap-to-compress res x res image that differs per sample: row i and column (3 i) set."""
    img = np.zeros((res, res), dtype=np.uint8)
    img[i % res], img[:, (3 * i) % res] = 255, 128
    return img


def lra_release(tmp_path: Path, resolutions=(32,), random_32: bool = True) -> bytes:
    """The LRA release's nesting: lra_release/listops-1000, lra_release/lra_release/tsv_data, lra_release/pathfinder<r>
    (ten images per difficulty; 32x32 random ones, the larger ones from ``pathfinder_image``)."""
    staging = tmp_path / "staging"
    make_data("listops", staging)
    make_data("aan", staging)
    members = {f"lra_release/listops-1000/{p.name}": p.read_bytes() for p in sorted((staging / "listops").glob("*.tsv"))}
    members.update({f"lra_release/lra_release/tsv_data/{p.name}": p.read_bytes() for p in sorted((staging / "aan").iterdir())})
    rng = np.random.default_rng(2)
    for res in resolutions:
        for d in dl._PF_DIRS:  # the three difficulties, ten images each
            lines = []
            for i in range(10):
                png = io.BytesIO()
                img = rng.integers(0, 256, (32, 32), dtype=np.uint8) if res == 32 and random_32 else pathfinder_image(res, i)
                Image.fromarray(img, mode="L").save(png, format="PNG")
                members[f"lra_release/pathfinder{res}/{d}/imgs/0/sample_{i}.png"] = png.getvalue()
                lines.append(f"imgs/0 sample_{i}.png {i} {i % 2}")
            members[f"lra_release/pathfinder{res}/{d}/metadata/0.npy"] = ("\n".join(lines) + "\n").encode()
    members["lra_release/README"] = b"not wanted"
    return tar_gz(members)


def zip_bytes(members: dict[str, bytes], folders=(), links: dict[str, str] | None = None) -> bytes:
    """A deflated zip as the WikiText releases are: folder entries first, then the files; ``links`` as unix symlinks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for folder in folders:
            z.writestr(zipfile.ZipInfo(folder.rstrip("/") + "/"), b"")
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def cifar_release(tmp_path: Path) -> bytes:
    """cifar-10-python.tar.gz: the folder entry, the six pickled batches, batches.meta and readme.html."""
    from test_images import write_cifar

    staging = tmp_path / "cifar-staging"
    write_cifar(staging)
    d = staging / "cifar-10-batches-py"
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                     "truck"], "num_cases_per_batch": 4, "num_vis": 3072}, f, protocol=2)
    (d / "readme.html").write_text("<html></html>")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(d, arcname="cifar-10-batches-py")  # recursive: a folder member, then the files
    return buf.getvalue()


def imdb_release() -> tuple[bytes, dict[str, bytes]]:
    """aclImdb_v1.tar.gz's layout: train/test pos/neg reviews <id>_<rating>.txt, and what the task does not read
    (train/unsup, the bag-of-words features, the vocabulary, the URL lists, the README)."""
    members = {"aclImdb/README": b"readme", "aclImdb/imdb.vocab": b"the\nmovie\n", "aclImdb/imdbEr.txt": b"0.1\n"}
    for split in ("train", "test"):
        for cls, rating in (("pos", 9), ("neg", 2)):
            for i in range(2):
                members[f"aclImdb/{split}/{cls}/{i}_{rating}.txt"] = f"A {cls} {split} review {i}, caf\u00e9.<br />".encode()
        members[f"aclImdb/{split}/labeledBow.feat"] = b"9 0:1\n"
        members[f"aclImdb/{split}/urls_pos.txt"] = b"http://example.invalid/\n"
    members["aclImdb/train/unsup/0_0.txt"] = b"an unlabelled review"
    return tar_gz(members), members


WIKITEXT = {  # (split, text): WikiText's shape, a heading, blank lines, @-@ tokens and <unk>
    "train": " \n = Valkyria Chronicles III = \n \n Senj\u014d no Valkyria 3 : <unk> Chronicles is a tactical role @-@ "
             "playing game . \n The game began development in 2010 . \n",
    "valid": " \n = Homarus gammarus = \n \n Homarus gammarus is a lobster . \n",
    "test": " \n = Robert Boulter = \n \n Robert Boulter is an English actor . \n",
}


# --- downloads ---------------------------------------------------------------------------------------------------
def test_mnist_downloads_unpacks_and_the_task_reads_it(server, monkeypatch, tmp_path):
    files, arrays = mnist_release()
    serve(monkeypatch, server, "mnist", files, digest="md5")  # torchvision publishes md5s
    data = tmp_path / "data"
    result = cli("data", "download", "mnist", data=data)
    assert result.exit_code == 0, result.output
    assert "4 file(s) written" in result.output and "smnist" in result.output
    from ssmkit.tasks.images import SMnist

    task = SMnist(data_dir=str(data), val_fraction=0.0)
    task.check_data()
    imgs, labels = arrays["t10k"]
    for i in (0, 7):
        x, y = task.dataset("test")[i]
        expected = (imgs[i].reshape(-1).astype(np.float64) / 255.0 - 0.1307) / 0.3081  # independent float64 value
        assert np.allclose(x[:, 0].numpy(), expected, atol=1e-5) and int(y) == labels[i]
    assert sorted(p.name for p in (data / "downloads").iterdir()) == sorted(files)  # archives kept, no .part left
    before = len(server.requests)
    again = cli("data", "download", "mnist", data=data)
    assert again.exit_code == 0 and "already in" in again.output and len(server.requests) == before


def test_speech_commands_tar_unpacks_to_the_release_layout_without_links(server, monkeypatch, tmp_path):
    staging = tmp_path / "staging"
    write_sc(staging, per_word=3)
    members = folder_members(staging / "SpeechCommands" / "speech_commands_v0.02", "./")  # the release starts with ./
    archive = tar_gz(members, links={"./yes/link.wav": "/etc/passwd"})
    serve(monkeypatch, server, "speechcommands", {"speech_commands_v0.02.tar.gz": archive})
    data = tmp_path / "data"
    result = cli("data", "download", "speechcommands", "--root", str(data))
    assert result.exit_code == 0, result.output
    from ssmkit.tasks.speech import SC10

    task = SC10(data_dir=str(data))
    task.check_data()
    x, _ = task.dataset("train")[0]
    assert x.shape == (16000, 1)
    base = data / "SpeechCommands" / "speech_commands_v0.02"
    assert not (base / "yes" / "link.wav").exists()  # links are never unpacked
    assert (base / "no" / "spk0_nohash_0.wav").read_bytes() == members["./no/spk0_nohash_0.wav"]


def test_an_archive_member_outside_the_root_is_refused(server, monkeypatch, tmp_path):
    archive = tar_gz({"./yes/a_nohash_0.wav": b"x", "../../escaped.txt": b"evil"})
    serve(monkeypatch, server, "speechcommands", {"speech_commands_v0.02.tar.gz": archive})
    line = one_line_error(cli("data", "download", "speechcommands", data=tmp_path / "deep" / "data"))
    assert "'../../escaped.txt' would be written outside" in line
    assert not list(tmp_path.rglob("escaped.txt"))


def test_ett_csvs_through_one_mirror_base_for_every_source(server, monkeypatch, tmp_path):
    staging = tmp_path / "staging"
    etth1 = write_synthetic_ett(staging / "ETTh1.csv", 20 * 720).read_bytes()  # the ETT splits need 20 months
    small = b"date,HUFL,OT\n2016-07-01 00:00:00,1.0,2.0\n"
    serve(monkeypatch, server, "ett", {"ETTh1.csv": etth1, "ETTh2.csv": small, "ETTm1.csv": small}, digest="md5",
          prefix="ett/")
    monkeypatch.setenv(dl.ALL_MIRROR_ENV, server.url.rstrip("/"))
    data = tmp_path / "data"
    result = cli("data", "download", "ett", data=data)
    assert result.exit_code == 0, result.output
    assert server.hits("ETT-small/ETTh1.csv") == [None]  # fetched from <mirror>/ett/ETT-small/ETTh1.csv
    assert (data / "informer" / "etth" / "ETTh1.csv").read_bytes() == etth1
    assert (data / "informer" / "ettm" / "ETTm1.csv").read_bytes() == small
    monkeypatch.setenv("SSMKIT_DATA", str(data))
    task = TASKS.get("etth1")(seq_len=24, pred_len=24)
    task.check_data()
    assert len(task.dataset("test")) > 0


def test_one_lra_release_serves_listops_retrieval_and_pathfinder(server, monkeypatch, tmp_path):
    server.files["lra_release.gz"] = lra_release(tmp_path)  # no published checksum: the table's entry as it is
    monkeypatch.setenv("SSMKIT_MIRROR_LRA", server.url)
    data = tmp_path / "data"
    monkeypatch.setenv("SSMKIT_DATA", str(data))
    for name in ("lra-listops", "lra-retrieval", "lra-pathfinder32"):
        result = cli("data", "download", name, data=data)
        assert result.exit_code == 0, result.output
    assert server.hits("lra_release.gz") == [None]  # fetched once, then reused from downloads/
    TASKS.get("listops")(seq_len=64).check_data()
    TASKS.get("aan")(seq_len=32).check_data()
    pf = TASKS.get("pathfinder")(resolution=32)
    pf.check_data()
    x, y = pf.dataset("train")[0]
    assert x.shape == (1024, 1) and int(y) in (0, 1)
    assert not (data / "README").exists() and not (data / "lra_release").exists()


@pytest.mark.parametrize("name", ["cifar10", "lra-image"])
def test_the_cifar_tar_serves_scifar_and_lra_image(server, monkeypatch, tmp_path, name):
    archive = cifar_release(tmp_path)
    serve(monkeypatch, server, name, {"cifar-10-python.tar.gz": archive}, digest="md5")  # torchvision's md5
    data = tmp_path / "data"
    result = cli("data", "download", name, data=data)
    assert result.exit_code == 0, result.output
    assert "8 file(s) written" in result.output  # six batches, batches.meta, readme.html
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        test_batch = tar.extractfile("cifar-10-batches-py/test_batch").read()
    assert (data / "cifar-10-batches-py" / "test_batch").read_bytes() == test_batch
    raw = pickle.loads(test_batch)
    from ssmkit.tasks.images import (
        CIFAR_MEAN,
        CIFAR_STD,
        GRAY_WEIGHTS,
        LRA_GRAY_MEAN,
        LRA_GRAY_STD,
        LraImage,
        SCifar,
    )

    task = (SCifar if name == "cifar10" else LraImage)(data_dir=str(data), val_fraction=0.0)
    task.check_data()
    x, y = task.dataset("test")[2]
    img = raw["data"][2].reshape(3, 32, 32).transpose(1, 2, 0).astype(np.float64) / 255.0  # (32, 32, 3), float64
    if name == "cifar10":
        expected = ((img - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)).reshape(-1, 3)
    else:
        expected = ((img @ np.array(GRAY_WEIGHTS) - LRA_GRAY_MEAN) / LRA_GRAY_STD).reshape(-1, 1)
    assert x.shape == expected.shape and np.allclose(x.numpy(), expected, atol=1e-5) and int(y) == raw["labels"][2]


def test_the_imdb_tar_serves_lra_text(server, monkeypatch, tmp_path):
    archive, members = imdb_release()
    serve(monkeypatch, server, "lra-text", {"aclImdb_v1.tar.gz": archive})  # the release's sha256
    data = tmp_path / "data"
    result = cli("data", "download", "lra-text", data=data)
    assert result.exit_code == 0, result.output
    assert "8 file(s) written" in result.output and "imdb" in result.output
    base = data / "imdb" / "aclImdb"
    assert sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()) == sorted(
        f"{s}/{c}/{i}_{r}.txt" for s in ("train", "test") for c, r in (("pos", 9), ("neg", 2)) for i in range(2))
    assert not (base / "train" / "unsup").exists() and not (base / "README").exists()
    from ssmkit.tasks.lra_text import Imdb

    task = Imdb(seq_len=64, data_dir=str(data))
    task.check_data()
    x, y = task.dataset("test")[0]  # neg first, sorted by name: test/neg/0_2.txt
    review = members["aclImdb/test/neg/0_2.txt"]
    assert int(y) == 0 and x.tolist() == [b + 1 for b in review] + [0] * (64 - len(review))


@pytest.mark.parametrize("raw", [False, True], ids=["tokens", "raw"])
def test_the_wikitext_zips_unpack_and_the_lm_task_reads_them(server, monkeypatch, tmp_path, raw):
    name, folder, suffix = ("wikitext-103-raw", "wikitext-103-raw", "raw") if raw else ("wikitext-103", "wikitext-103", "tokens")
    files = {f"{folder}/wiki.{split}.{suffix}": text.encode() for split, text in WIKITEXT.items()}
    archive = zip_bytes(files, folders=[folder])
    serve(monkeypatch, server, name, {f"{name}-v1.zip": archive})
    data = tmp_path / "data"
    result = cli("data", "download", name, data=data)
    assert result.exit_code == 0, result.output
    assert "3 file(s) written" in result.output and "lm" in result.output
    for member, text in files.items():
        assert (data / member).read_bytes() == text
    from ssmkit.tasks.lm import LanguageModel

    task = LanguageModel(raw=raw, level="byte" if raw else "word", seq_len=8, adaptive=False, data_dir=str(data))
    task.check_data()
    x, y = task.dataset("train")[0]
    train = WIKITEXT["train"]
    if raw:  # bytes, as they are in the file
        expected = list(train.encode())
    else:  # words of each line, then <eos>
        expected = [t for line in train.splitlines() for t in (*line.split(), "<eos>")]
        x, y = [task.vocab[i] for i in x], [task.vocab[i] for i in y]
    assert list(x) == expected[:8] and list(y) == expected[1:9]


def test_a_zip_symlink_is_never_written(server, monkeypatch, tmp_path):
    files = {f"wikitext-103/wiki.{s}.tokens": WIKITEXT[s].encode() for s in ("train", "valid")}
    archive = zip_bytes(files, folders=["wikitext-103"], links={"wikitext-103/wiki.test.tokens": "/etc/passwd"})
    serve(monkeypatch, server, "wikitext-103", {"wikitext-103-v1.zip": archive})
    data = tmp_path / "data"
    line = one_line_error(cli("data", "download", "wikitext-103", data=data))
    assert "wikitext-103/wiki.test.tokens is still missing" in line
    assert not (data / "wikitext-103" / "wiki.test.tokens").exists()
    assert (data / "wikitext-103" / "wiki.train.tokens").read_bytes() == files["wikitext-103/wiki.train.tokens"]


@pytest.fixture(scope="module")
def full_lra_release(tmp_path_factory) -> bytes:
    """One release with every Pathfinder resolution (images from ``pathfinder_image``), built once for the module."""
    return lra_release(tmp_path_factory.mktemp("lra"), dl.LRA_PATHFINDER_RESOLUTIONS, random_32=False)


@pytest.mark.parametrize("name", ["lra", "lra-pathfinder", *(f"lra-pathfinder{r}" for r in dl.LRA_PATHFINDER_RESOLUTIONS[1:])])
def test_every_lra_name_unpacks_its_part_of_the_release(server, monkeypatch, tmp_path, full_lra_release, name):
    server.files["lra_release.gz"] = full_lra_release
    monkeypatch.setenv("SSMKIT_MIRROR_LRA", server.url)
    data = tmp_path / "data"
    monkeypatch.setenv("SSMKIT_DATA", str(data))
    result = cli("data", "download", name, data=data)
    assert result.exit_code == 0, result.output
    wanted = dl.LRA_PATHFINDER_RESOLUTIONS if name in ("lra", "lra-pathfinder") else (int(name.removeprefix("lra-pathfinder")),)
    for res in dl.LRA_PATHFINDER_RESOLUTIONS:
        assert (data / f"pathfinder{res}").exists() == (res in wanted), res
    assert (data / "listops").exists() == (data / "aan").exists() == (name == "lra")
    for res in wanted:
        for difficulty in ("easy", "intermediate", "hard"):
            pf = TASKS.get("pathfinder")(resolution=res, difficulty=difficulty)
            pf.check_data()
        path = pf._split("train")[0][0]  # the hard split's first training sample, and the image it names
        i = int(re.fullmatch(r"sample_(\d+)\.png", path.name).group(1))
        x, y = pf.dataset("train")[0]
        expected = (pathfinder_image(res, i).astype(np.float64) / 255.0 - 0.5) / 0.5
        assert x.shape == (res * res, 1) and np.allclose(x[:, 0].numpy(), expected.reshape(-1), atol=1e-6) and int(y) == i % 2
    if 128 in wanted:
        TASKS.get("pathx")().check_data()
    if name == "lra":
        TASKS.get("listops")(seq_len=64).check_data()
        aan = TASKS.get("aan")(seq_len=32)
        aan.check_data()
        x, y = aan.dataset("train")[0]  # make_data's first row: 0, "paper 0 on state spaces", "cited work 0"
        first = [[b + 1 for b in t.encode()] for t in ("paper 0 on state spaces", "cited work 0")]
        assert int(y) == 0 and x.tolist() == [f + [0] * (32 - len(f)) for f in first]
    assert not (data / "README").exists() and not (data / "lra_release").exists()


DOWNLOAD_TESTS = {  # each source with files -> the test above that fetches it from the local server and reads it
    "mnist": test_mnist_downloads_unpacks_and_the_task_reads_it,
    "cifar10": test_the_cifar_tar_serves_scifar_and_lra_image,
    "lra-image": test_the_cifar_tar_serves_scifar_and_lra_image,
    "speechcommands": test_speech_commands_tar_unpacks_to_the_release_layout_without_links,
    "wikitext-103": test_the_wikitext_zips_unpack_and_the_lm_task_reads_them,
    "wikitext-103-raw": test_the_wikitext_zips_unpack_and_the_lm_task_reads_them,
    "lra-text": test_the_imdb_tar_serves_lra_text,
    "ett": test_ett_csvs_through_one_mirror_base_for_every_source,
    "lra-listops": test_one_lra_release_serves_listops_retrieval_and_pathfinder,
    "lra-retrieval": test_one_lra_release_serves_listops_retrieval_and_pathfinder,
    "lra-pathfinder32": test_one_lra_release_serves_listops_retrieval_and_pathfinder,
    **{n: test_every_lra_name_unpacks_its_part_of_the_release
       for n in ("lra", "lra-pathfinder", *(f"lra-pathfinder{r}" for r in dl.LRA_PATHFINDER_RESOLUTIONS[1:]))},
}


def test_every_downloadable_source_is_fetched_by_a_test():
    downloadable = {n for n, s in dl.SOURCES.items() if not s.manual}
    assert set(DOWNLOAD_TESTS) == downloadable, "a new source in the table needs a download test above"
    for name, test in DOWNLOAD_TESTS.items():  # each test names its source, so a stale entry is caught
        assert f'"{name}"' in inspect.getsource(test) or name.startswith("lra-pathfinder"), name


@pytest.mark.parametrize("name", [n for n, s in dl.SOURCES.items() if s.manual])
def test_a_manual_source_says_where_to_get_it(tmp_path, name):
    line = one_line_error(cli("data", "download", name, data=tmp_path))
    assert dl.SOURCES[name].outputs[0] in line and "no direct download" in line


@pytest.mark.parametrize("ignore_range", [False, True], ids=["resumed", "server-ignores-range"])
def test_a_cut_connection_is_resumed(server, monkeypatch, tmp_path, ignore_range):
    files, _ = mnist_release()
    serve(monkeypatch, server, "mnist", files, digest="md5")
    server.ignore_range = ignore_range
    server.cut["train-images-idx3-ubyte.gz"] = [5000]  # the first request closes after 5000 bytes
    result = cli("data", "download", "mnist", data=tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert server.hits("train-images-idx3-ubyte.gz") == [None, "bytes=5000-"]
    raw = (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()
    assert raw == gzip.decompress(files["train-images-idx3-ubyte.gz"])  # the md5 was checked too


def test_a_failed_command_leaves_the_part_and_the_next_one_resumes_it(server, monkeypatch, tmp_path):
    files, _ = mnist_release()
    serve(monkeypatch, server, "mnist", files, digest="md5")
    monkeypatch.setattr(dl, "RETRIES", 1)
    server.cut["train-images-idx3-ubyte.gz"] = [3000, 4000]  # both tries of the first command are cut
    data = tmp_path / "data"
    line = one_line_error(cli("data", "download", "mnist", data=data))
    assert "stopped at 7000 of" in line and "run `ssmkit data download mnist` again to resume" in line
    part = data / "downloads" / "train-images-idx3-ubyte.gz.part"
    assert part.stat().st_size == 7000
    result = cli("data", "download", "mnist", data=data)
    assert result.exit_code == 0, result.output
    assert server.hits("train-images-idx3-ubyte.gz") == [None, "bytes=3000-", "bytes=7000-"]
    assert not part.exists()


def test_a_checksum_mismatch_removes_the_part_and_is_one_line(server, monkeypatch, tmp_path):
    files, _ = mnist_release()
    serve(monkeypatch, server, "mnist", files, digest="md5")
    good = files["train-labels-idx1-ubyte.gz"]
    server.files["train-labels-idx1-ubyte.gz"] = good[:-1] + bytes([good[-1] ^ 1])  # same size, one bit off
    data = tmp_path / "data"
    line = one_line_error(cli("data", "download", "mnist", data=data))
    expected, got = hashlib.md5(good).hexdigest(), hashlib.md5(server.files["train-labels-idx1-ubyte.gz"]).hexdigest()
    assert f"md5 mismatch (expected {expected}, got {got})" in line and "SSMKIT_MIRROR_MNIST" in line
    assert "run `ssmkit data download mnist` again" in line
    assert not list((data / "downloads").glob("train-labels*"))  # neither the part nor a renamed file
    assert not (data / "MNIST" / "raw" / "train-labels-idx1-ubyte").exists()


def test_offline_and_missing_files_are_one_line(server, monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SSMKIT_MIRROR_MNIST", f"http://127.0.0.1:{port}/mnist")
    data = tmp_path / "data"
    line = one_line_error(cli("data", "download", "mnist", data=data))
    assert f"cannot reach http://127.0.0.1:{port}/mnist/train-images-idx3-ubyte.gz" in line
    assert "SSMKIT_MIRROR_MNIST" in line and dl.ALL_MIRROR_ENV in line
    assert not data.exists()  # nothing written
    monkeypatch.setenv("SSMKIT_MIRROR_MNIST", server.url)  # a mirror without the file
    line = one_line_error(cli("data", "download", "mnist", data=data))
    assert "HTTP 404" in line and "SSMKIT_MIRROR_MNIST" in line


def test_list_and_bad_names(tmp_path):
    result = cli("data", "download", "--list")
    assert result.exit_code == 0
    for name in dl.SOURCES:
        assert name in result.output
    assert "did you mean 'mnist'" in one_line_error(cli("data", "download", "mnsit"))
    assert "missing NAME" in one_line_error(cli("data", "download"))
    assert "informer/weather/WTH.csv" in one_line_error(cli("data", "download", "weather", data=tmp_path))


def test_the_table_is_consistent():
    for s in dl.SOURCES.values():
        assert s.tasks and all(t in TASKS for t in s.tasks), s.name
        assert s.outputs
        if s.manual:
            assert not s.files
            continue
        assert re.fullmatch(r"https?://\S+/", s.base) and s.unpack in ("gz", "tar", "zip", "none"), s.name
        for r in s.files:
            assert r.size is None or r.size > 0
            assert r.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", r.sha256)
            assert r.md5 is None or re.fullmatch(r"[0-9a-f]{32}", r.md5)
            assert r.size is not None or r.approx, f"{s.name}: say roughly how big {r.filename} is"
    # no published checksum is known for the LRA release; everything else is verified
    unverified = {s.name for s in dl.SOURCES.values() for r in s.files if not (r.sha256 or r.md5)}
    assert unverified == {n for n in dl.SOURCES if n.startswith("lra") and n not in ("lra-text", "lra-image")}
    for task, resolve in ts.TASKS_SOURCE.items():
        assert task in TASKS
        source, _ = resolve({})
        assert source in dl.SOURCES and task in dl.SOURCES[source].tasks, task


# --- every missing-data message names commands and flags that exist ---------------------------------------------
ROOT_COMMAND = typer.main.get_command(app)


def check_command(text: str) -> None:
    tokens = shlex.split(text)
    cmd, i = ROOT_COMMAND, 1
    while hasattr(cmd, "commands") and i < len(tokens) and tokens[i] in cmd.commands:  # typer may vendor click:
        cmd, i = cmd.commands[tokens[i]], i + 1                                         # no isinstance checks
    assert not hasattr(cmd, "commands"), f"`{text}`: no such command"
    options = {o: p for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}
    positional = []
    while i < len(tokens):
        name = tokens[i].split("=")[0]
        if name.startswith("-"):
            assert name in options, f"`{text}`: `{cmd.name}` has no option {name}"
            i += 1 if options[name].is_flag or "=" in tokens[i] else 2
        else:
            positional.append(tokens[i])
            i += 1
    if cmd.name == "download":
        assert positional and positional[0] in dl.SOURCES, f"`{text}`: no such dataset"
    if cmd.name == "generate":
        assert positional and positional[0] in GENERATORS, f"`{text}`: no such generator"


def check_message(message: str, task_cls) -> None:
    commands = re.findall(r"`(ssmkit [^`]+)`", message) + re.findall(r"'(ssmkit [^']+)'", message)
    for command in commands:
        check_command(command)
    rest = re.sub(r"`[^`]*`|'ssmkit [^']*'", "", message)
    train = ROOT_COMMAND.commands["train"]
    train_flags = {o for p in train.params if p.param_type_name == "option" for o in p.opts}
    for flag in re.findall(r"(?<![\w/-])(--[a-z][\w-]*)", rest):
        assert flag in train_flags, f"{message!r}: `ssmkit train` has no {flag}"
    named = re.findall(r"task\.name=([\w-]+)", message)
    allowed = {"name", *inspect.signature(task_cls.__init__).parameters}
    for other in named:
        allowed |= set(inspect.signature(TASKS.get(other).__init__).parameters)
    for key in re.findall(r"task\.(\w+)=", message):
        assert key in allowed, f"{message!r}: task option {key} does not exist"


def test_check_command_catches_names_that_do_not_exist():
    check_command("ssmkit data download mnist --root x")
    for bad in ("ssmkit data fetch mnist", "ssmkit data download mnist --mirror x", "ssmkit data download nope",
                "ssmkit train x --downlaod", "ssmkit data generate nope"):
        with pytest.raises(AssertionError):
            check_command(bad)
    with pytest.raises(AssertionError):
        check_message("run `ssmkit train ... --download` or --fetch", TASKS.get("smnist"))
    with pytest.raises(AssertionError):
        check_message("or task.fetch=true", TASKS.get("smnist"))


def test_every_missing_data_message_names_real_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    checked = []
    for name in TASKS.names():
        cls = TASKS.get(name)
        try:
            task = cls()
            task.check_data()
            continue  # generated on the fly: nothing missing
        except DataError as e:
            message = str(e)
        except (TypeError, ValueError, UserError):
            continue  # needs options to say where its data is (timeseries: task.csv)
        check_message(message, cls)
        checked.append(name)
        if name in ts.TASKS_SOURCE and not dl.SOURCES[ts.source_for_task(name, {})[0]].manual:
            assert "`ssmkit data download " in message and "--download" in message, message
    assert {"smnist", "scifar", "sc10", "lm", "listops", "pathfinder", "imdb", "aan", "etth1"} <= set(checked)


# --- train --download ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["--download", "task.download=true"])
def test_train_downloads_before_checking_the_data(server, monkeypatch, tmp_path, how):
    files, _ = mnist_release()
    serve(monkeypatch, server, "mnist", files, digest="md5")
    recipe = {"name": "dl", "task": {"name": "smnist", "val_fraction": 0.2},
              "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"batch_size": 4, "runs_dir": str(tmp_path / "runs"), "log_every": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = cli("train", str(path), how, "--max-steps", "1", data=tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "mnist: 4 file(s) written" in result.output
    assert (tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()


def test_train_download_for_a_generated_task_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "task": {"name": "shift"}, "model": {"d_model": 4, "n_layers": 1}}))
    line = one_line_error(cli("train", str(path), "--download", "--max-steps", "1", data=tmp_path / "data"))
    assert "--download: task 'shift' has nothing to download" in line


def test_train_download_leaves_data_that_is_there(tmp_path, monkeypatch):
    from test_images import write_mnist

    write_mnist(tmp_path / "data")  # the task's files, put there by hand
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SSMKIT_MIRROR_MNIST", "http://127.0.0.1:9/")  # any fetch would fail
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "task": {"name": "smnist"}, "model": {"d_model": 4, "n_layers": 1}}))
    task = prepare_data(load_recipe(str(path), []), True)
    task.check_data()
    assert not (tmp_path / "data" / "downloads").exists()
