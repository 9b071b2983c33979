"""Run directories: the room below both training (``ssmkit/train/``) and generation (``ssmkit/generation/``).

- ``checkpoint.py``: the checkpoint format (files, crash-safe save, confined reading) and :class:`LoopState`, the
  training loop's position saved as one unit;
- ``rundir.py``: a run directory's records (``recipe.yaml``, ``metrics.jsonl``, ``summary.json``; new run
  directories never overwrite another); ``lock.py``: one trainer per run directory;
- ``model.py``: ``build_loop_model`` (recipe -> the run's model, task head and rate) and ``forward``;
- ``load.py``: ``ssmkit.load`` -> :class:`LoadedRun`, ``load_run_recipe``, and the upgrade of runs saved in the
  layout before the mixer redesign (``legacy.py``);
- ``evaluate.py``: ``evaluate`` (a split's exact metrics) and ``evaluate_run`` (``ssmkit eval``);
- ``accelerator.py``: the Accelerator a recipe runs on.
- ``listing.py``: what ``ssmkit runs`` / ``ssmkit plot`` read of run directories (status, step, best, time, recipe
  columns, filters, curves), without loading a model.

The functions ``load`` and ``evaluate`` are not re-exported here: they would hide their own modules
(``ssmkit.runs.load`` and ``ssmkit.runs.evaluate`` must stay the modules); ``ssmkit.load`` is the public name.
"""
from ssmkit.runs.evaluate import evaluate_run
from ssmkit.runs.load import LoadedRun, load_run_recipe

__all__ = ["LoadedRun", "evaluate_run", "load_run_recipe"]
