"""Package names resolved on first use (PEP 562): the one `__getattr__` of the packages that re-export names
from heavier modules (adrank, adrank.rollout), so that importing the package loads none of them.

    __getattr__ = lazy_names(__name__, {"Name": "adrank.module", ...})

The first lookup of a name imports its home module and stores the value in the package, so later lookups never
come back here; a name not in `homes` is AttributeError, as for any module. Only the standard library is
imported here: every adrank module imports the adrank package first.

Thread-safety: the import system's module lock makes the first import once; storing the value is idempotent.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value  # once: later lookups do not come here
        return value

    return __getattr__
