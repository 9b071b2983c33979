"""``ssmkit recipes [PATTERN]``, ``ssmkit recipes show NAME [--defaults]`` and ``ssmkit recipes cp NAME PATH``:
the shipped recipes (``ssmkit/recipes/``), listed, shown with every key's default, and copied to start one's own."""
from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import click
import typer
from rich.table import Table
from typer.core import TyperGroup

from ssmkit.cli.common import console
from ssmkit.errors import UserError
from ssmkit.recipe import (
    REQUIRED,
    load_recipe,
    load_yaml,
    recipe_description,
    resolve_recipe_path,
    settings,
    shipped_recipes,
)
from ssmkit.registry import did_you_mean


class RecipesGroup(TyperGroup):
    """``ssmkit recipes PATTERN``: a first argument that is not a subcommand (show, cp) is the pattern."""

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["--pattern", args[0], *args[1:]]
        return super().parse_args(ctx, args)


def _recipe_matches(pattern: str, key: str, description: str) -> bool:
    """A glob (``*`` ``?`` ``[``) matches the name (``s4/lra-*``); other text is a case-insensitive substring
    of the name or the description (``cifar``, ``s4d``)."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(key.rsplit("/", 1)[-1], pattern)
    return pattern.lower() in key.lower() or pattern.lower() in description.lower()


def recipes_list(
    ctx: typer.Context,
    pattern: str = typer.Option(None, "--pattern", hidden=True, help="only recipes matching this (glob or text)"),
):
    """List the shipped recipes (group, name, description); ssmkit recipes PATTERN lists those whose name
    matches the glob PATTERN (s4/lra-*) or whose name or description contains it (cifar)."""
    if ctx.invoked_subcommand is not None:
        if pattern is not None:
            raise UserError(f"give a PATTERN or a subcommand ({ctx.invoked_subcommand}), not both")
        return
    shipped = shipped_recipes()
    if not shipped:
        raise UserError("no shipped recipes found (the package was installed without its recipes folder)")
    if pattern is not None and not pattern.strip():
        raise UserError("the recipe PATTERN is empty; give a glob such as 's4/lra-*' or text such as cifar")
    descriptions = {key: recipe_description(path) for key, path in shipped.items()}
    keys = [k for k in shipped if pattern is None or _recipe_matches(pattern, k, descriptions[k])]
    if not keys:
        raise UserError(f"no shipped recipe matches {pattern!r}{did_you_mean(pattern, shipped)}; "
                        "list them all with: ssmkit recipes")
    out = console()
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(key.rsplit("/", 1)[0] if "/" in key else "", []).append(key)
    for group, names in sorted(groups.items()):  # a group before its subgroups (dlr, then dlr/atomic)
        table = Table(title=group or "recipes", title_justify="left", show_header=False, box=None)
        table.add_column("name", style="bold")
        table.add_column("description")
        for key in names:
            table.add_row(key, descriptions[key])
        out.print(table)
    shown = f"{len(keys)} of {len(shipped)} recipes" if pattern is not None else f"{len(keys)} recipes"
    out.print(f"{shown}; train one: ssmkit train NAME [key=value ...]; copy one: ssmkit recipes cp NAME my.yaml; "
              "every key with its default: ssmkit recipes show NAME --defaults")


def _shipped(name: str) -> Path:
    key = name.removesuffix(".yaml").removeprefix("recipes/")
    if key in shipped_recipes():
        return shipped_recipes()[key]
    return resolve_recipe_path(name)


def _yaml_text(value) -> str:
    """A value as a recipe spells it: null, true, 0.001, [0.9, 0.999]; a key without default: required."""
    if value is REQUIRED:
        return "required"
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def recipes_show(
    name: str = typer.Argument(..., help="shipped recipe name, e.g. quick/s4d-shift, or a YAML file"),
    defaults: bool = typer.Option(False, "--defaults", help="every key of the resolved recipe with its value, its "
                                  "default and what it does (* marks a value that differs from the default)"),
):
    """Print a recipe's YAML, or with --defaults every key it resolves to."""
    path = _shipped(name)
    load_yaml(path)  # a binary or malformed file: one line naming it
    if not defaults:
        click.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    table = Table(title=f"{name}: every key (* set by the recipe to a value other than the default)",
                  title_justify="left", box=None)
    for col in ("key", "value", "default", "help"):
        table.add_column(col)
    for row in settings(load_recipe(str(path))):
        mark = "*" if row.changed else ""
        table.add_row(f"{mark}{row.key}", _yaml_text(row.value), _yaml_text(row.default), row.help)
    console().print(table)


def recipes_cp(
    name: str = typer.Argument(..., help="shipped recipe name"),
    dest: str = typer.Argument(..., help="where to write the copy (a file or an existing folder)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
):
    """Copy a shipped recipe to start your own."""
    if not dest.strip():
        raise UserError("the destination is empty; give a file name (my.yaml) or an existing folder")
    src = _shipped(name)
    load_yaml(src)  # never copy a binary or malformed file as a recipe
    folder = Path(dest)
    if dest.endswith("/") and not folder.is_dir():  # meant as a folder: never a file named like it
        raise UserError(f"folder {folder} does not exist; create it first or give a file name")
    target = folder / src.name if folder.is_dir() else folder
    if target.is_dir():
        raise UserError(f"{target} is a folder; give a file name or another folder")
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise UserError(f"folder {target.parent} does not exist")
    try:
        shutil.copyfile(src, target)
    except OSError as e:
        raise UserError(f"cannot write {target} ({e.strerror})") from None
    click.echo(f"copied {name} to {target}; train it with: ssmkit train {target}")
