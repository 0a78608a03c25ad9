"""Name -> factory registries with helpful errors.

Models, datasets, losses, quantization schemes and error models are all looked up by
name. An unknown name lists the valid ones and the closest match, so a typo on the
command line costs one glance.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mcel.errors import MCELError

T = TypeVar("T")


def did_you_mean(name: object, valid, prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or nothing.

    >>> did_you_mean("mnst", ["mnist", "svhn"]), did_you_mean("VGG3", ["vgg3", "mlp"])
    (" (did you mean 'mnist'?)", " (did you mean 'vgg3'?)")
    """
    valid = [str(v) for v in valid]
    by_case = [v for v in valid if v.lower() == str(name).lower()]  # 'VGG3' -> 'vgg3'
    close = by_case or difflib.get_close_matches(str(name), valid, n=1)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def names_shown(names, most: int = 8) -> str:
    """The first ``most`` names, comma-separated, for an error message.

    >>> names_shown(["a", "b", "c"], most=2)
    'a, b, ...'
    """
    names = list(names)
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


class Registry(Generic[T]):
    """A named collection of factories (functions or classes).

    >>> r = Registry("color")
    >>> @r.register("red")
    ... def red():
    ...     return (255, 0, 0)
    >>> r.get("red")()
    (255, 0, 0)
    >>> r.get("rde")
    Traceback (most recent call last):
    ...
    mcel.errors.MCELError: unknown color 'rde' (did you mean 'red'?); valid: red
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if key is None:
                raise TypeError("registry entries need a name")
            if key in self._items:
                raise KeyError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise MCELError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        hint = did_you_mean(name, self._items)
        return f"unknown {self.kind} '{name}'{hint}; valid: {', '.join(self.names())}"

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
