"""ModelManager: the model versions this server has loaded, and which one answers a request.

At start it loads, for every model of the repository, its latest version (the serving version) as a
Servable on the shared core thread pool, and warms it up. A request names a model and optionally pins a
version; `resolve` answers NOT_FOUND for a model or version that is not loaded.

Thread-safety: `resolve` is called from the event loop while loading runs in a worker thread; the
table of servables is replaced whole (copy on write), so a reader never sees it half-updated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType

import grpc

import adrank._core as core
from adrank.repository import ModelRepository
from adrank.servable import RequestError, Servable

log = logging.getLogger("adrank.models")


class ModelManager:
    def __init__(self, pool: core.ThreadPool, repository: ModelRepository) -> None:
        self._pool = pool
        self._repository = repository
        # name -> (serving version, {version -> Servable})
        self._table: Mapping[str, tuple[int, Mapping[int, Servable]]] = MappingProxyType({})

    def load_all(self) -> list[Servable]:
        """Loads and warms the latest version of every model; raises on the first that fails."""
        loaded: list[Servable] = []
        for entry in self._repository.entries():
            if not entry.versions:
                log.warning("model %s has no version in %s: not served", entry.name, entry.path)
                continue
            version = entry.versions[-1]
            servable = Servable.load(self._pool, entry.config, entry.version_dir(version), version)
            servable.warm_up()
            self._publish(servable)
            loaded.append(servable)
            log.info("serving %s version %d from %s", entry.name, version, entry.version_dir(version))
        return loaded

    def _publish(self, servable: Servable) -> None:
        table = dict(self._table)
        _, versions = table.get(servable.name, (servable.version, {}))
        table[servable.name] = (servable.version, MappingProxyType({**versions, servable.version: servable}))
        self._table = MappingProxyType(table)

    def resolve(self, name: str, version: int = 0) -> Servable:
        """The servable for a request: the serving version, or the pinned one."""
        entry = self._table.get(name)
        if entry is None:
            known = ", ".join(sorted(self._table)) or "none"
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"models: model '{name}' is not served (served: {known})")
        serving, versions = entry
        servable = versions.get(version or serving)
        if servable is None:
            loaded = ", ".join(str(v) for v in sorted(versions))
            raise RequestError(
                grpc.StatusCode.NOT_FOUND, f"models: model '{name}' has no version {version} loaded (loaded: {loaded})"
            )
        return servable

    def servables(self) -> list[Servable]:
        return [s for _, versions in self._table.values() for s in versions.values()]

    def unload_all(self) -> None:
        for servable in self.servables():
            servable.unload(self._pool)
        self._table = MappingProxyType({})
