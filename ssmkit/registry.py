"""Name -> builder registries, so that a recipe names things and never imports code."""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable


def did_you_mean(name: str, allowed) -> str:
    close = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(name: str, value, allowed) -> None:
    """A ValueError ``unknown NAME VALUE; choose one of A, B, C`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, allowed))}")


class Registry:
    """A dict of named builders with friendly errors."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, Callable] = {}
        self._meta: dict[str, dict] = {}

    def register(self, name: str, **meta):
        def deco(obj):
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name] = obj
            self._meta[name] = meta
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str):
        if name not in self._items:
            raise ValueError(
                f"unknown {self.what} {name!r}{did_you_mean(name, self._items)}; "
                f"choose one of {', '.join(self.names())}"
            )
        return self._items[name]

    def meta(self, name: str) -> dict:
        self.get(name)
        return self._meta[name]


def check_options(fn: Callable, options: dict, what: str, skip: tuple[str, ...] = ()) -> None:
    """Raises ValueError naming any keyword in ``options`` that ``fn`` does not accept."""
    params = inspect.signature(fn).parameters
    allowed = [p for p in params if p not in ("self", *skip) and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        k = unknown[0]
        raise ValueError(f"unknown option {k!r} for {what}{did_you_mean(k, allowed)}; allowed: {', '.join(sorted(allowed))}")
