"""Docs and code that travel: no file under docs/, README.md, recipes/, ssmkit/, scripts/ or extensions/ names a path
of the machine it was written on, and none carries a TODO."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# An absolute path into a machine's own folders: /work/..., /tmp/..., /home/<user>/..., C:\Users\...; not a URL's
# path (https://host/data/...) and not a repo-relative one (docs/x.md, ../shared/...).
MACHINE_PATH = re.compile(
    r"(?<![\w.:/~-])/(?:work|tmp|home|Users|root|mnt|opt|var|scratch|private|srv|media|nfs|gpfs|lustre)/[\w.~-]"
    r"|\b[A-Za-z]:\\(?:Users|Documents and Settings)\\"
)
TODO = re.compile(r"\b(?:TODO|FIXME|XXX)\b")


SUFFIXES = (".md", ".yaml", ".yml", ".txt", ".py", ".sh", ".cpp", ".cu", ".h", ".cuh")


def _files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in ("docs", "recipes", "ssmkit", "scripts", "extensions"):
        files += sorted(p for p in (ROOT / folder).rglob("*")
                        if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts and "build" not in p.parts)
    return files


def _hits(pattern: re.Pattern, path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}"
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if pattern.search(line)]


def test_the_checked_files_exist():
    files = _files()
    assert (ROOT / "docs" / "results.md") in files and (ROOT / "README.md").is_file()
    assert sum(p.suffix == ".yaml" for p in files) >= 10  # the recipes are walked, not skipped
    assert (ROOT / "ssmkit" / "train" / "loop.py") in files and (ROOT / "scripts" / "make_dlr_recipes.py") in files


@pytest.mark.parametrize("text,bad", [
    ("see /work/shared/reference/dlr.md", True),
    ("--run-dir /tmp/ssmkit-runs/atomic/dlr-shift", True),
    ("cd /home/alice/ssmkit", True),
    (r"C:\Users\bob\runs", True),
    ("`/root/.cache/x`", True),
    ("see ../shared/reference/dlr-dss-sgconv.md", False),
    ("http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz", False),
    ("`runs/atomic/dlr-shift`, docs/performance.md, $SSMKIT_DATA/tmp/x", False),
])
def test_the_pattern_tells_machine_paths_from_portable_ones(text, bad):
    assert bool(MACHINE_PATH.search(text)) is bad


def test_no_absolute_machine_path_in_docs_readme_recipes_or_code():
    hits = [h for p in _files() for h in _hits(MACHINE_PATH, p)]
    assert not hits, "absolute machine paths (name files repo-relative instead):\n" + "\n".join(hits)


def test_no_todo_in_docs_readme_recipes_or_code():
    hits = [h for p in _files() for h in _hits(TODO, p)]
    assert not hits, "TODO notes in shipped docs:\n" + "\n".join(hits)


def test_the_results_generator_writes_portable_paths(tmp_path):
    """scripts/make_results.py renders an absolute --runs folder (and the commands recorded under it) as `runs`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_results", ROOT / "scripts" / "make_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = tmp_path / "runs-here"
    line = f"`ssmkit train x.yaml --run-dir {runs}/atomic/dlr-shift` (`--runs {runs}`)"
    assert module.portable(line, runs) == "`ssmkit train x.yaml --run-dir runs/atomic/dlr-shift` (`--runs runs`)"
    assert not MACHINE_PATH.search(module.NOTES) and not TODO.search(module.NOTES)
