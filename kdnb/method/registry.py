"""A registry of named components (loss terms, CAM methods, mask sources, networks, datasets).

Adding a component is one file that defines it and decorates it with ``@REGISTRY.register``; the
package that owns the registry imports that file (one line). Everything else — configuration
checks, tables, plots, the training step, the benchmark — asks the registry for the names, so no
list of components is kept anywhere by hand. Inspired by mdistiller's ``distillers/`` and
torchdistill's loss registry (names map to classes; a misspelt name lists what is registered).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(ValueError):
    """A name that is not registered; the message lists what is."""


class Registry(Generic[T]):
    """Names → components, in the order they were registered (that order is the display order)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Register ``entry`` under its ``name`` attribute (usable as a class decorator)."""
        name = getattr(entry, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} needs a non-empty string `name` to be registered")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def add(self, name: str) -> Callable[[T], T]:
        """Register a function or object under ``name`` (a decorator)."""
        def deco(entry: T) -> T:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry
        return deco

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}; registered: {', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())
