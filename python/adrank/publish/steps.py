"""PublishSteps: how a publish reports its progress, without knowing who (if anyone) shows it.

Contract: `publish()` calls `step(message)` once per completed step, in the order of staging.STEPS, with the
line a person reads ("golden: 64 rows from ... "), and wraps each slow part in `bar(description, total)`,
calling the `advance()` it yields once per unit of `total` (None: no count, a spinner). Model management knows
only this protocol; the CLI implements it with rich (cli_publish.PublishProgress). `QuietSteps`, the default,
shows nothing: library use and the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class PublishSteps(Protocol):
    def step(self, message: str) -> None:
        """One step done; `message` says what it found."""

    def bar(self, description: str, total: int | None) -> AbstractContextManager[Callable[[], None]]:
        """A slow part of a step; yields `advance()`, called once per unit of `total`."""
        ...


class QuietSteps:
    """Shows nothing."""

    def step(self, message: str) -> None:
        pass

    @contextmanager
    def bar(self, description: str, total: int | None) -> Iterator[Callable[[], None]]:
        yield lambda: None
