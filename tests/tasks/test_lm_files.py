"""The ``lm`` task on a user's own text files (``task.files``): discovery, the cut by position, the byte / word /
tokenizer streams against an independent reading of the files, the memory-mapped cache, errors, and a CLI run."""
import numpy as np
import pytest
import yaml
from test_bad_inputs import assert_one_line_exit_2
from typer.testing import CliRunner

from ssmkit.cli import app
from ssmkit.errors import DataError
from ssmkit.tasks import TASKS

DOCS = {
    "a.txt": "The river crossed the old town.\nIt was cold in winter.\n",
    "b.txt": "A castle stood on the hill.\n\nNobody lived there, they said.\n",
    "sub/c.txt": "Café au lait — naïve façade.\nThe river again.",  # UTF-8, no final newline
    "sub/d.txt": "Numbers: 1 2 3 4 5 6 7 8 9 10.\n" * 6,
    ".hidden.txt": "never read\n",
}


def write_docs(folder, docs=DOCS):
    for name, text in docs.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def lm(**kw):
    return TASKS.get("lm")(**{"seq_len": 8, **kw})


def expected_bytes(folder, fractions=(0.9, 0.05, 0.05), sep=b"\n"):
    """The corpus as the docstring defines it, computed independently: the files in sorted path order, each
    followed by the separator, each line given to the split in which its first byte lies."""
    names = sorted(n for n in DOCS if not n.startswith("."))
    lines = []
    for n in names:
        data = (folder / n).read_bytes()
        lines += data.splitlines(keepends=True) + [sep]
    total = sum(len(line) for line in lines)
    b0, b1 = fractions[0] * total, (fractions[0] + fractions[1]) * total
    out, offset = [b"", b"", b""], 0
    for line in lines:
        k = 0 if offset < b0 else 1 if offset < b1 else 2
        out[k] += line
        offset += len(line)
    return out


def test_folder_cut_by_position_at_line_boundaries(tmp_path):
    folder = write_docs(tmp_path / "corpus")
    task = lm(files=str(folder), level="byte", split=[0.5, 0.25, 0.25])
    want = expected_bytes(folder, (0.5, 0.25, 0.25))
    got = [bytes(task.stream(s)) for s in ("train", "val", "test")]
    assert got == want and all(got) and b"never read" not in b"".join(got)
    assert isinstance(task.stream("train"), np.memmap)  # read from the cache, not held in memory
    x, y = task.dataset("val")[0]
    assert bytes(x.tolist()) == want[1][:8] and bytes(y.tolist()) == want[1][1:9]
    assert "4 file(s)" in task.describe() and "cut 0.5/0.25/0.25 by position" in task.describe()


def test_files_per_split_globs_and_the_word_vocabulary(tmp_path, monkeypatch):
    write_docs(tmp_path / "corpus")
    monkeypatch.setenv("SSMKIT_DATA", str(tmp_path))  # relative globs: under $SSMKIT_DATA when not in the cwd
    task = lm(files={"train": ["corpus/*.txt", "corpus/sub/d.txt"], "valid": "corpus/sub/c.txt", "test": "corpus/sub/c.txt"},
              level="word", adaptive=False)
    train_text = "".join((tmp_path / "corpus" / n).read_text() + "\n" for n in ("a.txt", "b.txt", "sub/d.txt"))
    words = []
    for line in train_text.splitlines():
        words += line.split() + ["<eos>"]
    counts = {}
    for w in words:
        if w != "<eos>":
            counts[w] = counts.get(w, 0) + 1
    vocab = ["<eos>"] + sorted(counts, key=lambda w: (-counts[w], words.index(w))) + ["<unk>"]
    assert task.vocab == vocab and task.vocab_size == len(vocab)
    assert task.stream("train").tolist() == [vocab.index(w) for w in words]
    val_words = DOCS["sub/c.txt"].replace("\n", " <eos> ").split() + ["<eos>"]  # the separator line ends with <eos>
    unk = vocab.index("<unk>")
    assert task.stream("val").tolist() == [vocab.index(w) if w in vocab else unk for w in val_words]
    assert task.decode(task.encode("The river\nnever")) == "The river\n<unk>"


def test_tokenizer_level(tmp_path):
    tokenizers = pytest.importorskip("tokenizers", reason="task.level=tokenizer uses the tokenizers library (pip install tokenizers)")
    folder = write_docs(tmp_path / "corpus")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {w: i for i, w in enumerate(["[UNK]", "The", "river", "A", "castle", ".", ",", "\n"])}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tok.save(str(tmp_path / "tok" / "tokenizer.json"))  # a Hugging Face tokenizer folder
    task = lm(files=str(folder), level="tokenizer", tokenizer=str(tmp_path / "tok"), split=[0.5, 0.25, 0.25])
    assert task.vocab_size == 8
    want = [i for line in expected_bytes(folder, (0.5, 0.25, 0.25))[0].decode().splitlines(keepends=True)
            for i in tok.encode(line, add_special_tokens=False).ids]
    assert task.stream("train").tolist() == want
    assert task.encode("The river").tolist() == [1, 2]
    with pytest.raises(DataError, match="must hold tokenizer.json"):
        lm(files=str(folder), level="tokenizer", tokenizer=str(folder)).check_data()


def test_cache_is_reused_and_follows_the_files(tmp_path, cache):
    folder = write_docs(tmp_path / "corpus")
    first = lm(files=str(folder), level="byte")
    first.stream("train")
    bins = sorted(cache.rglob("train.bin"))
    assert len(bins) == 1
    stamp = bins[0].stat().st_mtime_ns
    again = lm(files=str(folder), level="byte")
    assert bytes(again.stream("train")) == bytes(first.stream("train")) and bins[0].stat().st_mtime_ns == stamp
    (folder / "a.txt").write_text("Changed text.\n" * 3)
    changed = lm(files=str(folder), level="byte")
    assert b"Changed text." in bytes(changed.stream("train")) and len(list(cache.rglob("train.bin"))) == 2


def test_errors(tmp_path):
    folder = write_docs(tmp_path / "corpus")
    with pytest.raises(DataError, match=r"task.files='.*nothing/\*.txt' finds no file"):
        lm(files=str(tmp_path / "nothing/*.txt")).check_data()
    with pytest.raises(DataError, match=r"task.files.valid=.* finds no file"):
        lm(files={"train": str(folder), "valid": str(tmp_path / "none"), "test": str(folder)}).check_data()
    (folder / "bad.txt").write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad.txt: line 2 is not UTF-8 .* task.level=byte"):
        lm(files=str(folder), level="word").stream("train")
    assert len(lm(files=str(folder), level="byte").stream("train")) > 0  # bytes need no encoding
    with pytest.raises(ValueError, match="task option corpus is for the WikiText layout"):
        lm(files=str(folder), corpus="mine")
    with pytest.raises(ValueError, match="are for your own files: give task.files"):
        lm(level="tokenizer", tokenizer="t.json")
    with pytest.raises(ValueError, match="must map train, valid and test"):
        lm(files={"train": "a", "test": "b"})
    with pytest.raises(ValueError, match="level=tokenizer needs task.tokenizer"):
        lm(files=str(folder), level="tokenizer")


def _recipe(tmp_path, task: dict) -> str:
    recipe = {"name": "own-lm", "task": task,
              "model": {"d_model": 8, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"batch_size": 2, "runs_dir": str(tmp_path / "runs"), "log_every": 1, "eval_every": 2}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_trains_and_evaluates_from_a_folder_of_txt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")  # the --dry-run lines unwrapped
    write_docs(tmp_path / "my notes")
    recipe = _recipe(tmp_path, {"name": "lm", "files": "my notes", "level": "byte", "seq_len": 16, "split": [0.6, 0.2, 0.2]})
    result = CliRunner().invoke(app, ["train", recipe, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "data: lm: 4 file(s) from 'my notes', cut 0.6/0.2/0.2 by position; level byte" in result.output
    result = CliRunner().invoke(app, ["train", recipe, "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "runs" / "own-lm"), "--split", "test"])
    assert result.exit_code == 0, result.output
    metrics = yaml.safe_load(result.output.strip().splitlines()[-1])
    n_test = len(expected_bytes(tmp_path / "my notes", (0.6, 0.2, 0.2))[2])
    assert metrics["samples"] == -(-(n_test - 1) // 16)  # every test byte but the first is scored once
    assert 0 < metrics["bits_per_byte"] < 9


def test_missing_files_are_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe(tmp_path, {"name": "lm", "files": "nowhere/*.txt", "level": "byte", "seq_len": 16})
    assert_one_line_exit_2(CliRunner().invoke(app, ["train", recipe, "--max-steps", "1"]), "finds no file")
