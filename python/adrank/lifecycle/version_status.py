"""A model version's lifecycle state as the ModelManager keeps it, and a request's route to a version.

VersionStatus is mutated only under the manager's lock; its `state` is one reference, read lock-free by the
metrics. Route is an immutable value handed to one request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

import adrank._core as core
from adrank.servable import Servable


class VersionState(str, Enum):
    LOADING = "LOADING"  # sessions, warm-up, parity check under way
    AVAILABLE = "AVAILABLE"  # passed every check; routable
    UNLOADING = "UNLOADING"  # out of the route, its requests finishing
    FAILED = "FAILED"  # a step failed: `reason` says which


@dataclass
class VersionStatus:
    model: str
    version: int
    state: VersionState
    reason: str = ""
    since: float = field(default_factory=time.time)
    integer_kernels: str = ""  # meta.json's note on int8 nodes that saturate without VNNI (meta.py), if any
    signature: tuple[float, ...] = ()  # the files' mtimes when loaded: a change retries a FAILED version
    servable: Servable | None = None


@dataclass(frozen=True)
class Route:
    """Where one request goes for one model: the version that answers, and a shadow that mirrors it."""

    servable: Servable
    served: core.ServedModel  # held for the request's lifetime: the version drains only when released
    shadow: Servable | None = None
    shadow_served: core.ServedModel | None = None
