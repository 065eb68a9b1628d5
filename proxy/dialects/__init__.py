"""One module per wire format. Each defines `DIALECT`, an instance of `base.Dialect` (or, for a
dialect with state of its own, the class: each app gets a fresh instance); `load()` finds them all, so adding a dialect is adding a module here (see README, "Adding a dialect")."""

from __future__ import annotations

import importlib
import pkgutil

from .base import Dialect


def load() -> list[Dialect]:
    """Every module's DIALECT, in module-name order."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        dialect = getattr(module, "DIALECT", None)
        if isinstance(dialect, type) and issubclass(dialect, Dialect):
            dialect = dialect()
        if isinstance(dialect, Dialect):
            found.append(dialect)
    return found
