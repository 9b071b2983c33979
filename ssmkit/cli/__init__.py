"""The ``ssmkit`` command line (floor 7): ``app.py`` registers every command; one file per command group
(``train``, ``eval``, ``recipes``, ``runs`` (and ``plot``), ``sweep``, ``generate``, ``data``, ``doctor``,
``profile``); ``common.py`` holds what several of them share. ``ssmkit.cli:main`` is the console script."""
from ssmkit.cli.app import app, main

__all__ = ["app", "main"]
