"""An adrank server running in this process on its own event loop thread, on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
import yaml

import adrank._core as core
from adrank.repository.config import ModelConfig, load_model_config
from adrank.server.frontend import FrontendKind, TransportOptions
from adrank.server.process import Server, ServerOptions

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
CRITEO = REPO.parent / "shared" / "data" / "criteo"
T = TypeVar("T")


def missing(reason: str) -> NoReturn:
    """Skips the test for want of an outside tool, stating `reason`; where CI=true it fails instead: CI
    installs every such tool (.ci/run), so there its absence is a broken setup."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true: CI installs it, so its absence is a broken CI setup", pytrace=False)
    pytest.skip(reason)


def copy_model(tmp_path: Path, name: str, **overrides: Any) -> tuple[ModelConfig, Path]:
    """A bundled model in a repository of its own under `tmp_path`, its config changed by `overrides`
    (`section__field=value` sets one field of a section); returns its config and its newest version's folder."""
    shutil.copytree(MODELS / name, tmp_path / name, ignore=shutil.ignore_patterns("*.py", "README.md"))
    path = tmp_path / name / "config.yaml"
    config = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            config.setdefault(section, {})[field] = value
        else:
            config[section] = value
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    newest = max(int(p.name) for p in (tmp_path / name).iterdir() if p.name.isdigit())
    return load_model_config(path), tmp_path / name / str(newest)


class ServerThread:
    def __init__(
        self,
        repository: Path = MODELS,
        workers: int = 2,
        frontend: FrontendKind = "python",
        transport: TransportOptions | None = None,
        **options: Any,
    ) -> None:
        self.options = ServerOptions(
            repository=repository,
            transport=replace(transport or TransportOptions(), port=0),
            http_port=0,
            workers=workers,
            drain_grace_s=5,
            frontend=frontend,
            **options,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="adrank-test-server", daemon=True)
        self.server: Server | None = None

    @property
    def target(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.grpc_port}"

    def start(self) -> ServerThread:
        self._thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=180)
        return self

    async def _start(self) -> Server:
        server = Server(self.options)  # its gRPC server belongs to this loop
        await server.start()
        return server

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """`work` run on the server's event loop (its front end belongs to it), from any other thread."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=60)

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


# Every front end this build has; the C++ one needs grpc++ at build time (.ci/run installs it).
FRONTENDS = [
    "python",
    pytest.param(
        "cpp",
        marks=pytest.mark.skipif(not core.HAS_RANK_SERVER, reason="this build has no C++ front end (no grpc++)"),
    ),
]
