"""Server: the adrank process — core thread pool, loaded models, gRPC front end, HTTP port.

Start-up: the gRPC port listens at once with `grpc.health.v1` saying NOT_SERVING (and Rank answering
UNAVAILABLE) while every model's serving version loads and warms up in a worker thread; then health
turns SERVING. A model that fails to load stops the start: a server never serves half its repository.

Shutdown (SIGTERM or SIGINT, or `stop`): health turns NOT_SERVING and /readyz 503; new Rank calls are
answered UNAVAILABLE (another replica may take them) while the calls in flight finish normally, until
none is left and callers have gone quiet (`drain_quiet_s`), for at most `drain_grace_s`; then the gRPC
server stops, the core drains and its workers exit. `serve` returns 0.

The gRPC services: adrank.v1.Ranking, grpc.health.v1.Health, and server reflection (grpcurl and
friends list and call the API without the .proto files).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import adrank._core as core
from adrank.http_endpoint import HttpEndpoint
from adrank.model_manager import ModelManager
from adrank.ranking_service import RankingService
from adrank.repository import ModelRepository
from adrank.v1 import ranking_pb2 as pb
from adrank.v1 import ranking_pb2_grpc as pb_grpc

log = logging.getLogger("adrank.server")
RANKING_SERVICE = pb.DESCRIPTOR.services_by_name["Ranking"].full_name


@dataclass(frozen=True)
class ServerOptions:
    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8500  # 0: any free port (tests)
    http_port: int = 8000  # 0: any free port
    # Core worker threads shared by every model; 0 is one per core (cpp/thread_pool.h).
    workers: int = 0
    # How long in-flight calls may take to finish after SIGTERM: well above any caller's deadline.
    drain_grace_s: float = 30.0
    # Draining ends once no call has arrived for this long: a call that reaches grpc-core just as the
    # gRPC server stops is cancelled unseen, so the port closes only after callers have gone quiet.
    drain_quiet_s: float = 0.2
    # 2048 candidates of a 384-float embedding are 3 MiB; 32 MiB leaves room for several models' inputs
    # and refuses absurd messages before they are parsed.
    max_message_bytes: int = 32 * 1024 * 1024


class Server:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.pool = core.ThreadPool(num_workers=options.workers)
        self.models = ModelManager(self.pool, ModelRepository(options.repository))
        self.ranking = RankingService(self.models)
        self.health = health.aio.HealthServicer()
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", options.max_message_bytes),
                ("grpc.max_send_message_length", options.max_message_bytes),
            ]
        )
        pb_grpc.add_RankingServicer_to_server(self.ranking, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            [RANKING_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self._grpc,
        )
        self.grpc_port = self._grpc.add_insecure_port(f"{options.host}:{options.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot listen on {options.host}:{options.grpc_port} for gRPC")
        self.ready = False
        self._http = HttpEndpoint(options.host, options.http_port, lambda: self.ready)
        self._stopped = False

    @property
    def http_port(self) -> int:
        return self._http.port

    async def start(self) -> None:
        """Listens, loads and warms every model, then reports SERVING."""
        for service in ("", RANKING_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._grpc.start()
        self._http.start()
        try:
            servables = await asyncio.to_thread(self.models.load_all)
        except BaseException:
            await self.stop()
            raise
        self.ranking.accepting = True
        self.ready = True
        for service in ("", RANKING_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        served = ", ".join(f"{s.name} v{s.version}" for s in servables) or "no models"
        log.info(
            "SERVING %s: gRPC %s:%d, HTTP %s:%d",
            served,
            self.options.host,
            self.grpc_port,
            self.options.host,
            self.http_port,
        )

    async def stop(self) -> None:
        """Drains: no new calls, in-flight calls finish (up to drain_grace_s), the core empties."""
        if self._stopped:
            return
        self._stopped = True
        self.ready = False
        await self.health.enter_graceful_shutdown()
        # Answer new calls UNAVAILABLE while the calls in flight finish and callers go elsewhere, and
        # only then stop the gRPC server (see drain_quiet_s).
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.options.drain_grace_s
        try:
            await asyncio.wait_for(self.ranking.drain(self.options.drain_quiet_s), self.options.drain_grace_s)
        except TimeoutError:
            log.warning("calls still in flight after %.1f s of draining: stopping anyway", self.options.drain_grace_s)
        await self._grpc.stop(max(give_up - loop.time(), 0.0))
        await asyncio.to_thread(self.pool.shutdown)
        self._http.stop()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        await self._grpc.wait_for_termination()


async def serve(options: ServerOptions, on_ready: Callable[[Server], None] | None = None) -> int:
    """Runs a server until SIGTERM or SIGINT, then drains it; returns the exit status (0)."""
    server = Server(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    if on_ready is not None:
        on_ready(server)
    await stop.wait()
    log.info("signal received: draining")
    await server.stop()
    return 0
