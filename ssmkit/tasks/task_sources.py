"""Which download source feeds which task, from the task's recipe options (``ssmkit train --download`` and
``task.download: true``; ``ssmkit/recipe.py`` ``prepare_data`` calls it before the task checks its files).

Kept apart from ``ssmkit/tasks/download.py`` (the fetching) because it reads the tasks' own tables (Pathfinder's
difficulty folders) and the tasks import the downloader's hints.
"""
from __future__ import annotations

from pathlib import Path

from ssmkit.tasks.base import data_root
from ssmkit.tasks.download import LRA_PATHFINDER_RESOLUTIONS
from ssmkit.tasks.pathfinder import DIFFICULTIES


def _root(options: dict) -> Path:
    return Path(options["data_dir"]) if options.get("data_dir") else data_root()


def _lm(o: dict):
    if o.get("corpus", "wikitext-103") != "wikitext-103":
        return None, f"task.corpus={o['corpus']!r} is not a downloadable corpus (only wikitext-103 is)"
    return ("wikitext-103-raw" if o.get("raw") else "wikitext-103"), _root(o)


def _named_dir(o: dict, source: str, *tail: str):
    """Tasks whose ``data_dir`` is the dataset folder itself: the download root is the folder above ``tail``."""
    if not o.get("data_dir"):
        return source, data_root()
    d = Path(o["data_dir"])
    if d.parts[-len(tail):] != tail:
        return None, (f"task.data_dir={o['data_dir']} is not a .../{'/'.join(tail)} folder; download into the "
                      f"standard layout with `ssmkit data download {source} --root DIR` and drop task.data_dir")
    return source, d.parents[len(tail) - 1]


def _pathfinder(o: dict, default_res: int):
    res = o.get("resolution", default_res)
    if res not in LRA_PATHFINDER_RESOLUTIONS:
        return None, (f"the LRA release has no pathfinder{res}; make it with "
                      f"`ssmkit data generate pathfinder --resolution {res}`")
    diff = DIFFICULTIES.get(o.get("difficulty", "hard"), "curv_contour_length_14")
    return _named_dir(o, f"lra-pathfinder{res}", f"pathfinder{res}", diff)


def _informer(source: str):
    def resolve(o: dict):
        if o.get("file"):
            return None, f"task.file={o['file']} names your own CSV"
        return source, data_root()
    return resolve


TASKS_SOURCE = {
    **{t: (lambda o: ("mnist", _root(o))) for t in ("smnist", "psmnist", "mnist-density")},
    **{t: (lambda o: ("cifar10", _root(o))) for t in ("scifar", "lra-image", "cifar-density")},
    **{t: (lambda o: ("speechcommands", _root(o))) for t in ("sc10", "sc35", "sc09")},
    "lm": _lm,
    "imdb": lambda o: ("lra-text", _root(o)),
    "aan": lambda o: ("lra-retrieval", _root(o)),
    "listops": lambda o: _named_dir(o, "lra-listops", "listops"),
    "pathfinder": lambda o: _pathfinder(o, 32),
    "pathx": lambda o: _pathfinder(o, 128),
    **{t: _informer("ett") for t in ("etth1", "etth2", "ettm1")},
    "weather": _informer("weather"),
    "ecl": _informer("ecl"),
}


def source_for_task(name: str, options: dict) -> tuple[str | None, Path | str]:
    """(source name, root) for a task and its recipe options, or (None, why nothing can be downloaded)."""
    resolve = TASKS_SOURCE.get(name)
    if resolve is None:
        return None, "its data is generated (on the fly, or by `ssmkit data generate`), not downloaded"
    return resolve(options)
