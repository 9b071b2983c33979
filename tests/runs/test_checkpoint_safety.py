"""Checkpoints survive a kill at every instant of a save, stay inside their run directory, and a full or
read-only disk is one line with the previous checkpoint intact (ssmkit/runs/checkpoint.py)."""
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import ssmkit.runs.checkpoint as ck
from ssmkit.errors import UserError
from ssmkit.runs.checkpoint import LoopState, find_checkpoint, load_checkpoint, save_checkpoint


class Killed(BaseException):
    """A simulated kill: not an Exception, so no cleanup handler of the save runs (as with SIGKILL)."""


# Every call that changes the file system (or makes a change durable) during a save is a kill point.
KILL_POINTS = [(os, "rename"), (os, "replace"), (os, "unlink"), (os, "rmdir"), (os, "mkdir"), (os, "fsync"),
               (shutil, "rmtree")]


class KillAt:
    """Raises Killed at the k-th call of any kill point. (fsync is counted but not run: durability across a power
    cut cannot be observed here, and it is what makes a save slow on a busy disk.)"""

    def __init__(self, monkeypatch, k: int | None):
        self.k, self.calls = k, 0
        for module, name in KILL_POINTS:
            fn = getattr(module, name)
            monkeypatch.setattr(module, name, self._wrap(fn if name != "fsync" else lambda fd: None, name))

    def _wrap(self, fn, name):
        def call(*args, **kwargs):
            self.calls += 1
            if self.calls == self.k:
                raise Killed(f"killed at call {self.calls} ({name})")
            return fn(*args, **kwargs)
        return call


def weights(tag: float) -> dict:
    return {"w": torch.full((4,), tag), "b": torch.arange(3.0) + tag}


def save(run: Path, step: int, tag: float, best: bool, keep: int = 1) -> Path:
    state = LoopState(step=step, batch_in_epoch=step, metric=tag)  # the metric tags which save wrote the files
    optimizer = {"state": {}, "param_groups": [{"lr": tag, "params": []}]}
    return save_checkpoint(run, weights(tag), optimizer, state, f"name: r{tag}\n", best=best, keep=keep)


def loaded(run: Path, which: str) -> tuple[int, float]:
    """(step, tag) of the run's ``which`` checkpoint, after checking every file of it loads and agrees."""
    ckpt = find_checkpoint(run, which)
    saved = load_checkpoint(ckpt)
    tag = saved.state.metric
    assert all(torch.equal(saved.weights[k], v) for k, v in weights(tag).items())
    assert saved.optimizer["param_groups"][0]["lr"] == tag and saved.recipe_yaml == f"name: r{tag}\n"
    return saved.state.step, tag


# (name, checkpoints before: (step, tag, best), the save under test: (step, tag, best))
SCENARIOS = [
    ("same-step re-save", [(5, 1.0, True)], (5, 2.0, False)),
    ("same-step re-save, best", [(3, 0.5, True), (5, 1.0, False)], (5, 2.0, True)),
    ("next step, best", [(5, 1.0, True)], (6, 2.0, True)),
    ("next step, older best kept", [(3, 0.5, True), (5, 1.0, False)], (6, 2.0, False)),
]


@pytest.mark.parametrize("name,before,new", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_a_kill_at_every_point_of_a_save_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, name, before, new):
    def fresh(i: int) -> Path:
        run = tmp_path / f"run{i}"
        for step, tag, best in before:
            save(run, step, tag, best)
        return run

    monkeypatch.setattr(os, "fsync", lambda fd: None)  # the set-up saves (see KillAt)
    old_latest = before[-1][:2]
    old_best = [b[:2] for b in before if b[2]][-1]
    step, tag, best = new
    k = 0
    while True:
        k += 1
        run = fresh(k)
        with monkeypatch.context() as m:
            killer = KillAt(m, k)
            try:
                save(run, step, tag, best)
                finished = True
            except Killed:
                finished = False
        # After the kill (or the complete save) both pointers lead to a whole checkpoint, old or new.
        assert loaded(run, "latest") in (old_latest, (step, tag)), (k, sorted(p.name for p in (run / "checkpoints").iterdir()))
        assert loaded(run, "best") in (old_best, (step, tag) if best or step == old_best[0] else old_best)
        if finished:
            assert loaded(run, "latest") == (step, tag)
            assert killer.calls == k - 1  # every kill point before this one was tried
            break
        # The next save recovers: it finishes or undoes the interrupted one and leaves no leftovers.
        save(run, step + 1, tag + 10, best=False)
        names = {p.name for p in (run / "checkpoints").iterdir()}
        assert not any(n.startswith((".tmp-", ".old-")) for n in names), names
        assert loaded(run, "latest") == (step + 1, tag + 10)
        best_step, _ = loaded(run, "best")
        assert best_step in (old_best[0], step)
    assert k > 10  # the sequence really was cut at many points


def test_a_same_step_save_moves_the_old_one_aside_first(tmp_path, monkeypatch):
    """The old checkpoint is renamed, never deleted, before the new one is in place."""
    save(tmp_path, 5, 1.0, True)
    order = []
    real_rename, real_rmtree = os.rename, shutil.rmtree
    monkeypatch.setattr(os, "rename", lambda a, b: (order.append(("rename", Path(a).name, Path(b).name)), real_rename(a, b))[1])
    monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: (order.append(("rmtree", Path(p).name)), real_rmtree(p, *a, **k))[1])
    save(tmp_path, 5, 2.0, False)
    assert order[0] == ("rename", "step-00000005", ".old-step-00000005")
    assert order[1][0] == "rename" and order[1][1].startswith(".tmp-") and order[1][2] == "step-00000005"
    assert order[2] == ("rmtree", ".old-step-00000005")


def test_the_aside_is_read_while_the_new_checkpoint_is_not_in_place(tmp_path):
    save(tmp_path, 5, 1.0, True)
    root = tmp_path / "checkpoints"
    os.rename(root / "step-00000005", root / ".old-step-00000005")  # the instant between the two renames
    (root / ".tmp-abcd").mkdir()  # the new one, not yet renamed (the loader never reads it)
    assert find_checkpoint(tmp_path).name == ".old-step-00000005" and loaded(tmp_path, "best") == (5, 1.0)
    assert ck.has_checkpoint(tmp_path)  # the run is not new: `--resume` must not restart it from step 0
    ck.recover(root)
    assert sorted(p.name for p in root.iterdir()) == ["best", "latest", "step-00000005"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("where", ["weights", "state", "mkdtemp", "pointer"])
def test_full_or_read_only_disk_is_one_line_and_the_previous_checkpoint_survives(tmp_path, monkeypatch, code, where):
    save(tmp_path, 5, 1.0, True)

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "checkpoints" / "x"))

    target = {"weights": (ck, "save_file"), "state": (ck, "_fsync_write"), "mkdtemp": (ck.tempfile, "mkdtemp"),
              "pointer": (ck.tempfile, "mkstemp")}[where]
    monkeypatch.setattr(*target, fail)
    with pytest.raises(UserError) as e:
        save(tmp_path, 6, 2.0, True)
    message = str(e.value)
    assert "\n" not in message and "previous checkpoint is intact" in message and "--resume" in message
    assert ("full" if code == errno.ENOSPC else "read-only") in message
    monkeypatch.undo()
    assert loaded(tmp_path, "latest") in ((5, 1.0), (6, 2.0)) and loaded(tmp_path, "best") in ((5, 1.0), (6, 2.0))
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


# --- confinement: nothing read from a run directory leads out of it -------------------------------
def test_a_planted_pointer_never_leads_out_of_the_run(tmp_path):
    victim, run = tmp_path / "victim", tmp_path / "run"
    save(victim, 7, 3.0, True)
    save(run, 1, 1.0, True)
    for target in ("../../victim/checkpoints/step-00000007", str(victim / "checkpoints" / "step-00000007"),
                   "step-00000001/../../../victim/checkpoints/step-00000007", "latest", ""):
        (run / "checkpoints" / "latest").write_text(json.dumps({"checkpoint": target}))
        with pytest.raises(UserError, match="never follows a pointer out of the run directory") as e:
            find_checkpoint(run)
        assert "\n" not in str(e.value)
    for garbage in ("{not json", "[1, 2]", '{"checkpoint": 5}', "\xff\xfe"):
        (run / "checkpoints" / "latest").write_text(garbage)
        with pytest.raises(UserError, match="latest"):
            find_checkpoint(run)


def test_planted_symlinks_are_refused(tmp_path):
    victim, run = tmp_path / "victim", tmp_path / "run"
    save(victim, 7, 3.0, True)
    save(run, 1, 1.0, True)
    root = run / "checkpoints"
    # a step folder that is a link to another run's checkpoint
    (root / "step-00000009").symlink_to(victim / "checkpoints" / "step-00000007")
    (root / "latest").write_text(json.dumps({"checkpoint": "step-00000009"}))
    with pytest.raises(UserError, match="symbolic link"):
        find_checkpoint(run)
    # the pointer file itself a link
    (root / "latest").unlink()
    (root / "latest").symlink_to(victim / "checkpoints" / "latest")
    with pytest.raises(UserError, match="symbolic link"):
        find_checkpoint(run)
    # checkpoints/ a link to another run
    shutil.rmtree(root)
    root.symlink_to(victim / "checkpoints")
    with pytest.raises(UserError, match="not a folder of this run"):
        find_checkpoint(run)
    with pytest.raises(UserError, match="not a folder of this run"):
        save(run, 2, 2.0, True)
    # a checkpoint file that is a link out of its folder
    root.unlink()
    save(run, 3, 4.0, True)
    ckpt = find_checkpoint(run)
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").symlink_to(victim / "checkpoints" / "step-00000007" / "model.safetensors")
    with pytest.raises(UserError, match="symbolic link"):
        load_checkpoint(ckpt)
    assert loaded(victim, "latest") == (7, 3.0)  # the other run was never touched


def test_saving_never_writes_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    save(run, 1, 1.0, True)
    root = run / "checkpoints"
    for name in (".latest.tmp", ".best.tmp", ".tmp-step-00000002", ".tmp-latest"):  # fixed temp names of old
        (root / name).symlink_to(victim)
    outside = tmp_path / "outside-step"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (root / "step-00000000").symlink_to(outside)  # an old-looking step folder that prune would delete
    for step in (2, 3, 4):
        save(run, step, float(step), True)
    assert victim.read_text() == "precious" and (outside / "keep.txt").read_text() == "mine"
    assert loaded(run, "latest") == (4, 4.0)


def test_a_full_disk_during_training_is_one_line_and_the_run_continues_later(tmp_path, monkeypatch):
    """ssmkit train: the second checkpoint hits ENOSPC -> one line, exit 2; the first checkpoint loads and the lock
    is free, so --resume continues."""
    import yaml
    from typer.testing import CliRunner

    from ssmkit.cli import app
    from ssmkit.runs.lock import is_locked

    recipe = {"name": "tiny", "task": {"name": "cumsum", "seq_len": 8, "samples_per_epoch": 16, "val_samples": 8},
              "model": {"d_model": 4, "n_layers": 1, "mixer": {"name": "s4d", "d_state": 4}},
              "train": {"epochs": 2, "batch_size": 8, "log_every": 1, "runs_dir": str(tmp_path / "runs")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    real, calls = ck.save_file, []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(ck, "save_file", second_fails)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tmp_path / "r.yaml"), "--run-dir", str(run)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "disk is full" in lines[0] and "previous checkpoint is intact" in lines[0]
    assert load_checkpoint(find_checkpoint(run)).state.step == 2 and is_locked(run) is None
    monkeypatch.undo()
    resumed = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(find_checkpoint(run)).state.step == 4

    # a malformed pointer or summary.json: one line, exit 2, no traceback
    def one_line(args, fragment):
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
        assert fragment in lines[0], lines[0]

    (run / "summary.json").write_text("{\"time_s\": ")
    one_line(["train", "--resume", str(run)], "summary.json: not valid JSON")
    (run / "checkpoints" / "latest").write_text('{"checkpoint": "../../elsewhere"}')
    one_line(["eval", str(run)], "never follows a pointer out of the run directory")
    one_line(["train", "--resume", str(run)], "never follows a pointer out of the run directory")
