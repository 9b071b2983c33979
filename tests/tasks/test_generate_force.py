"""`ssmkit data generate` never overwrites existing files (official LRA data lives under $SSMKIT_DATA too) without --force."""
import hashlib

import pytest
from typer.testing import CliRunner

from ssmkit.cli import app

CASES = {
    "listops": (["--n", "12", "--val", "2", "--test", "2", "--min-length", "5", "--max-length", "60"], "listops/basic_train.tsv"),
    "listops-subtrees": (["--n", "12", "--val", "2", "--test", "2", "--min-length", "5", "--max-length", "60"],
                         "listops-subtrees/subtrees_train.tsv"),
    "pathfinder": (["--n", "3"], "pathfinder32/curv_contour_length_14/metadata"),
    "text": (["--n", "8"], "synthetic-text/wiki.train.tokens"),
    "ett": (["--n", "300"], "informer/synthetic/ETTh1.csv"),
}


def tree(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", CASES)
def test_generate_refuses_to_overwrite_without_force(tmp_path, kind):
    args, existing = CASES[kind]
    env = {"SSMKIT_DATA": str(tmp_path)}
    runner = CliRunner()
    first = runner.invoke(app, ["data", "generate", kind, *args], env=env)
    assert first.exit_code == 0, first.output
    before = tree(tmp_path)
    again = runner.invoke(app, ["data", "generate", kind, *args, "--seed", "1"], env=env)
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert again.exit_code == 2 and len(lines) == 1 and "Traceback" not in again.output, again.output
    assert str(tmp_path / existing) in lines[0] and "--force" in lines[0] and "--out" in lines[0]
    assert tree(tmp_path) == before  # nothing touched
    forced = runner.invoke(app, ["data", "generate", kind, *args, "--seed", "1", "--force"], env=env)
    assert forced.exit_code == 0, forced.output
    assert tree(tmp_path) != before  # replaced (another seed)


def test_force_leaves_exactly_the_new_pathfinder_batches(tmp_path):
    env = {"SSMKIT_DATA": str(tmp_path)}
    runner = CliRunner()
    assert runner.invoke(app, ["data", "generate", "pathfinder", "--n", "4"], env=env).exit_code == 0
    meta = tmp_path / "pathfinder32" / "curv_contour_length_14" / "metadata"
    (meta / "7.npy").write_text("imgs/7 sample_0.png 0 1 0 0 0 0\n")  # a batch the new data does not have
    assert runner.invoke(app, ["data", "generate", "pathfinder", "--n", "2", "--force"], env=env).exit_code == 0
    assert sorted(p.name for p in meta.iterdir()) == ["0.npy"]
    assert len((meta / "0.npy").read_text().splitlines()) == 2
