"""Server: the adrank process — core thread pool, loaded models, gRPC front end, HTTP port.

Start-up: the gRPC port listens at once with `grpc.health.v1` saying NOT_SERVING (and Rank answering
UNAVAILABLE) while every model's versions load, warm up and pass their parity checks in a worker
thread; then Rank serves. A version that does not load is FAILED (the model falls back to its previous
version that loads, manager.py) and the others serve; the start fails only when no model has anything
to serve, or the repository cannot be read. From then on the ModelManager watches the repository (new
versions, rollout.yaml) and the guardrails watch the rollouts; with an admin token, the admin gRPC
service (admin_service.py) listens on its own port. The HTTP port serves /healthz and /readyz, and with
metrics on (the default) /metrics and /dashboard (metrics/). Every port is bound before any model loads, and
one that cannot be — another process holds it: no port is shared (ports.py) — stops the start
(ports.PortUnavailable).

Health follows the manager's readiness (a model is ready while it has a version that serves): each
model's own health service (`service` = its name) is SERVING while it is ready; "" and adrank.v1.Ranking,
and /readyz (200 / 503), only while every model of the repository is: a model with nothing to serve
(every version FAILED, a config that does not validate, no version yet) makes the server not ready
though Rank keeps answering for the others, and its first version that loads makes it ready again.
`adrank.liveness` is SERVING from the end of the start until the drain, whatever the models' readiness: a
liveness check of the gRPC port itself (deploy/k8s's livenessProbe), which a model with nothing to serve
must not fail (that replica is only not ready), while a gRPC server that stopped answering does.

The front end (frontend.py) is the C++ RankServer when the core was built with grpc++ ("auto"), else
the Python grpc.aio one; both serve adrank.v1.Ranking, grpc.health.v1.Health and server reflection.

Shutdown (SIGTERM or SIGINT, or `stop`): health turns NOT_SERVING and /readyz 503; new Rank calls are
answered UNAVAILABLE (another replica may take them) while the calls in flight finish normally, until
none is left and callers have gone quiet (`drain_quiet_s`), for at most `drain_grace_s`; then the gRPC
port closes, giving replies not yet taken by their clients at most REPLY_FLUSH_S (a client that does not
read is not waited for: its calls are cancelled), the core drains and its workers exit. `serve` returns 0.

Transport bounds (frontend.TransportOptions; cpp/frontend/rank_server.h says why each default): streams per
connection, request bytes in flight, keepalive. Freed request memory goes back to the system
(memory_release.py), so that RSS falls back after a burst or a mass cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import adrank._core as core
from adrank.lifecycle.manager import ManagerOptions, ModelManager
from adrank.metrics.exporter import create_registry
from adrank.metrics.history import MetricsHistory, MetricsOptions
from adrank.metrics.pages import ObservabilityPages
from adrank.metrics.sample import MetricsSource
from adrank.repository.layout import ModelRepository
from adrank.server import call_errors
from adrank.server.admin_service import AdminServer
from adrank.server.frontend import RANKING_SERVICE, Frontend, FrontendKind, TransportOptions, create_frontend
from adrank.server.http_endpoint import HttpEndpoint
from adrank.server.kserve_repository import KServeRepository
from adrank.server.kserve_rest import KServeRest
from adrank.server.memory_release import MemoryRelease
from adrank.server.tls import TlsFiles
from adrank.server.tls_ports import TlsPorts

log = logging.getLogger("adrank.server")
# After the drain, how long replies may take to reach their clients: a reading client takes one in
# milliseconds; one that stopped reading would otherwise hold the process for the rest of the grace.
REPLY_FLUSH_S = 1.0
# The health service that says the gRPC port answers (the module's docstring). A model's readiness is the
# health service of its name; one named so would lose its own, as one named adrank.v1.Ranking would.
LIVENESS_SERVICE = "adrank.liveness"


@dataclass(frozen=True)
class ServerOptions:
    repository: Path
    # The gRPC port and its bounds (frontend.py TransportOptions; cpp/frontend/rank_server.h gives the
    # reasons).
    transport: TransportOptions = field(default_factory=TransportOptions)
    # The HTTP port (metrics, dashboard, KServe REST) and the admin API bind their own hosts, loopback by
    # default: Rank can face the network while they stay private.
    http_host: str = "127.0.0.1"
    http_port: int = 8000  # 0: any free port
    admin_host: str = "127.0.0.1"
    # Core worker threads shared by every model; 0 is one per core (cpp/thread_pool.h).
    workers: int = 0
    # How long in-flight calls may take to finish after SIGTERM: well above any caller's deadline.
    drain_grace_s: float = 30.0
    # Draining ends once no call has arrived for this long: a call that reaches grpc-core just as the
    # gRPC server stops is cancelled unseen, so the port closes only after callers have gone quiet.
    drain_quiet_s: float = 0.2
    frontend: FrontendKind = "auto"
    models: ManagerOptions = field(default_factory=ManagerOptions)
    # The admin gRPC service (admin_service.py) listens only when given a token; 0: any free port.
    admin_port: int = 8501
    admin_token: str | None = None
    # /metrics, /dashboard and the core's per-version counting (metrics/history.py MetricsOptions).
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    # TLS (server/tls.py): the gRPC port's files; the admin port's (None: the gRPC port's); the HTTP port's
    # (None: plaintext). None for the gRPC port: plaintext everywhere but an HTTP port given its own.
    tls: TlsFiles | None = None
    admin_tls: TlsFiles | None = None
    http_tls: TlsFiles | None = None


class Server:
    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.pool = core.ThreadPool(num_workers=options.workers)
        manager_options = replace(options.models, metrics=options.metrics.enabled)
        self.models = ModelManager(self.pool, ModelRepository(options.repository), manager_options)
        self.repository = KServeRepository(self.models, options.admin_token)
        self.tls = TlsPorts.create(options.tls, options.admin_tls, options.http_tls)
        self.frontend: Frontend = create_frontend(
            options.frontend, options.transport, self.models, self.repository, self.tls.grpc
        )
        self.grpc_port = self.frontend.port
        self.memory = MemoryRelease(lambda: self.frontend.admission.released_bytes)
        self.ready = False
        self.history: MetricsHistory | None = None
        pages = None
        if options.metrics.enabled:
            source = MetricsSource(
                self.models,
                self.pool,
                lambda: [int(c) for c in self.frontend.admission.call_counts()],
                lambda: self.frontend.admission.retried_calls,
            )
            self.history = MetricsHistory(source, options.metrics)
            pages = ObservabilityPages(create_registry(source, self.tls.figures), self.history).handle
        rest = KServeRest(
            self.models.registry,
            lambda: self.frontend.admission,
            self._http_ready,
            options.transport.reply_margin_s,
            self.repository,
        )
        self._http = HttpEndpoint(
            options.http_host,
            options.http_port,
            self._http_ready,
            pages,
            rest,
            max_body_bytes=options.transport.max_message_bytes,
            tls=self.tls.http,
        )
        self.admin: AdminServer | None = None
        if options.admin_token:
            admin_tls = self.tls.admin.grpc_credentials() if self.tls.admin is not None else None
            self.admin = AdminServer(
                options.admin_host, options.admin_port, options.admin_token, self.models, admin_tls
            )
        self._stopped = False
        self._health_models: set[str] = set()  # every model health was ever set for
        self._health_updates: set[asyncio.Task[None]] = set()
        self._health_lock = asyncio.Lock()

    def _http_ready(self) -> bool:
        return self.ready and self.models.ready()

    @property
    def http_port(self) -> int:
        return self._http.port

    async def start(self) -> None:
        """Listens, loads and warms every model, then serves (health: as ready as the models are).

        Raises (lifecycle/manager.py) NothingToServe when no model has a version that serves, and
        RepositoryError when the repository cannot be read."""
        loop = asyncio.get_running_loop()
        call_errors.install()
        self.models.on_readiness(lambda _: self._readiness_changed(loop))
        await self.frontend.start()
        self.tls.start()
        self.memory.start()
        self._http.start()
        if self.history is not None:
            self.history.start()
        try:
            servables = await asyncio.to_thread(self.models.load_all)
        except BaseException:
            await self.stop()
            raise
        self.models.start_watching()
        if self.admin is not None:
            await self.admin.start()
        await self._update_health()  # before serving: it shows the models' health from the first moment
        await self.frontend.set_serving()
        self.ready = True
        unready = sorted(name for name, ready in self.models.readiness().items() if not ready)
        if unready:
            log.warning("not ready: %s with no version that serves (health NOT_SERVING)", ", ".join(unready))
        served = ", ".join(f"{s.name} v{s.version}" for s in servables) or "no models"
        log.info(
            "SERVING %s: gRPC %s:%d (%s front end), HTTP %s:%d",
            served,
            self.options.transport.host,
            self.grpc_port,
            self.frontend.kind,
            self.options.http_host,
            self.http_port,
        )
        if self.admin is not None:
            log.info("admin service on %s:%d (token required)", self.options.admin_host, self.admin.port)
        else:
            log.info("no admin token given: the admin service is off (rollouts through the repository only)")

    def _readiness_changed(self, loop: asyncio.AbstractEventLoop) -> None:
        """The manager's listener (any thread, under its lock): hands the update to the event loop."""
        if not self._stopped:
            loop.call_soon_threadsafe(self._schedule_health_update)

    def _schedule_health_update(self) -> None:
        task = asyncio.get_running_loop().create_task(self._update_health())
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _update_health(self) -> None:
        """Sets every service's health from the manager's readiness now; one update at a time, each from
        the latest readiness, so that the last one applied is the newest."""
        async with self._health_lock:
            readiness = self.models.readiness()
            ready = all(readiness.values())
            services = {name: False for name in self._health_models - readiness.keys()}  # gone: NOT_SERVING
            services.update(readiness)
            services.update({"": ready, RANKING_SERVICE: ready, LIVENESS_SERVICE: True})
            self._health_models |= readiness.keys()
            await self.frontend.set_health(services)

    async def stop(self) -> None:
        """Drains: no new calls, in-flight calls finish (up to drain_grace_s), the core empties."""
        if self._stopped:
            return
        self._stopped = True
        self.ready = False
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.options.drain_grace_s
        if not await self.frontend.drain(self.options.drain_quiet_s, self.options.drain_grace_s):
            log.warning("calls still in flight after %.1f s of draining: stopping anyway", self.options.drain_grace_s)
        await self.frontend.stop(min(max(give_up - loop.time(), 0.0), REPLY_FLUSH_S))
        self.memory.stop()
        await asyncio.to_thread(self.models.stop_watching)
        if self.admin is not None:
            await self.admin.stop(0)
        if self.history is not None:
            await asyncio.to_thread(self.history.stop)
        await asyncio.to_thread(self.pool.shutdown)
        self._http.stop()
        self.tls.stop()
        log.info("stopped")


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
