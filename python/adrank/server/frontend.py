"""Front ends: what owns the gRPC port — `adrank.v1.Ranking`, KServe v2's `inference.GRPCInferenceService`,
`grpc.health.v1.Health`, server reflection v1 and v1alpha.

Two transports of one Rank contract (KServe v2's ModelInfer is a call of it too: cpp/infer_call.h),
which lives in the core (cpp/rank_admission.h admits a call, cpp/rank_call.h parses, checks, routes,
submits, mirrors, records and answers it), so both give the same
statuses and messages; the test suite runs against both:
- CppFrontend: the core's RankServer (cpp/frontend/rank_server.h), a grpc++ transport. Python runs only
  the backend, once per batch. Built when the core found grpc++.
- PythonFrontend: a grpc.aio server with RankingService (ranking_service.py): bytes in, the core's call,
  bytes out. Always available; answers about half as many calls per core
  (perf/results/frontends-2026-12-04-61a6c9fbe6f7.md: 1,595 vs 3,069 calls/s, closed loop on one core).

Both route through the ModelManager's registry (cpp/model_registry.h): the rollout picks each request's
version (stable, canary by its routing key, or the pinned one) and a shadow to mirror it to, so the
versions the manager loads and switches are served the same way by either. Both: NOT_SERVING and Rank
UNAVAILABLE until `set_serving`; `drain` answers new calls UNAVAILABLE while those in flight finish and
callers go quiet (a call answered whose client has not taken the reply is not waited for), then `stop`
closes the port, cancelling what is left after its grace.

Health is per service (`set_health`: "", adrank.v1.Ranking, and each model by its name; the server decides
the statuses, process.py): every service says NOT_SERVING until `set_serving`, then what it was last set to
("" and adrank.v1.Ranking SERVING unless set otherwise); `drain` turns every one NOT_SERVING for good.

Both take Rank's bytes raw and hold the same transport bounds (TransportOptions;
cpp/frontend/rank_server.h says why each default): streams per connection, request bytes in flight, the
declared size against the largest request the served models take, keepalive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer as AsyncReflectionServicer

import adrank._core as core
from adrank import __version__
from adrank.lifecycle.manager import ModelManager
from adrank.server.inference_service import INFERENCE_SERVICE, InferenceService
from adrank.server.inference_service import add_to_server as add_inference_to_server
from adrank.server.kserve_repository import KServeRepository
from adrank.server.ports import GRPC_NO_REUSEPORT, add_grpc_port, check_free, unavailable
from adrank.server.ranking_service import RANKING_SERVICE, RankingService, add_to_server
from adrank.server.tls import CertificateWatcher
from adrank.status import RequestError

FrontendKind = Literal["auto", "cpp", "python"]


@dataclass(frozen=True)
class TransportOptions:
    """The gRPC port's bounds; cpp/frontend/rank_server.h RankServerOptions gives each default's reason."""

    host: str = "127.0.0.1"
    port: int = 8500  # 0: any free port
    max_message_bytes: int = 32 << 20
    max_concurrent_streams: int = 100
    grpc_threads: int = 0  # the C++ front end's completion queues, a thread each; 0: one per core
    max_in_flight_bytes: int = 256 << 20
    keepalive_time_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    yield_to_workers: bool = True  # the C++ front end's threads run SCHED_BATCH (cpp/thread_priority.h)
    reply_margin_s: float = 0.001  # the core gets the call's deadline less this: the reply still has to travel

    def grpc_options(self) -> list[tuple[str, int]]:
        """The grpc channel arguments a Python grpc server takes for these (the C++ one sets the same)."""
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_time_ms", max(1, round(self.keepalive_time_s * 1000))),
            ("grpc.keepalive_timeout_ms", max(1, round(self.keepalive_timeout_s * 1000))),
            # Newer grpc-core waits on any unanswered ping (a BDP probe too) before the next keepalive,
            # for this long (default a minute): the same bound.
            ("grpc.http2.ping_timeout_ms", max(1, round(self.keepalive_timeout_s * 1000))),
            # Pings go on while a connection sends no data (its client's window may be 0: the case the
            # keepalive is for), and on connections with no call.
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # A port another server holds is refused, not shared with it (ports.py).
            GRPC_NO_REUSEPORT,
        ]


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


def describe_reflection_v1() -> None:
    """Puts grpc.reflection.v1's file in the default descriptor pool, so that reflection describes itself in
    both versions: grpcio-reflection ships v1alpha's only, and v1's is the same file under another package."""
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old_package, file.package, file.name = file.package, "grpc.reflection.v1", REFLECTION_V1_FILE
    file.options.Clear()
    for message in file.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = field.type_name.replace(f".{old_package}.", f".{file.package}.")
    for service in file.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{old_package}.", f".{file.package}.")
            method.output_type = method.output_type.replace(f".{old_package}.", f".{file.package}.")
    pool.Add(file)


def enable_reflection(services: list[str], server: grpc.aio.Server) -> None:
    """Server reflection v1alpha (grpcio-reflection) and v1, which is the same protocol byte for byte under
    another package name, answered by the same servicer; both list every service, themselves included."""
    names = [*services, REFLECTION_V1, reflection.SERVICE_NAME]
    describe_reflection_v1()
    reflection.enable_server_reflection(names, server)
    servicer = AsyncReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )


class Frontend(Protocol):
    kind: str
    port: int

    async def start(self) -> None: ...
    async def set_serving(self) -> None: ...
    async def set_health(self, services: Mapping[str, bool]) -> None:
        """Each named service SERVING (True) or NOT_SERVING; the others keep theirs."""
        ...

    async def drain(self, quiet_s: float, grace_s: float) -> bool: ...
    async def stop(self, grace_s: float) -> None: ...
    @property
    def admission(self) -> core.RankAdmission:
        """Which calls it takes, and its counters: Rank calls answered by status code (gRPC's numbering,
        0..16), request bytes held by calls grpc is not done with, and those released so far
        (cpp/rank_admission.h)."""
        ...


class CppFrontend:
    kind = "cpp"

    def __init__(
        self,
        options: TransportOptions,
        registry: core.ModelRegistry,
        repository: KServeRepository | None = None,
        tls: CertificateWatcher | None = None,
    ) -> None:
        server = core.RankServerOptions()
        server.host = options.host
        server.port = options.port
        server.max_message_bytes = options.max_message_bytes
        server.max_concurrent_streams = options.max_concurrent_streams
        server.grpc_threads = options.grpc_threads
        server.max_in_flight_bytes = options.max_in_flight_bytes
        server.keepalive_time_s = options.keepalive_time_s
        server.keepalive_timeout_s = options.keepalive_timeout_s
        server.yield_to_workers = options.yield_to_workers
        server.reply_margin_s = options.reply_margin_s
        server.version = __version__
        if tls is not None:  # the watcher's checked copy: gRPC's own file watcher rotates it
            server.tls = tls.published()
        self._server = core.RankServer(server, registry)
        self.port = self._server.port
        # KServe v2's repository calls block for a model's load: one at a time, off gRPC's threads.
        self._repository_work = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adrank-kserve-repository")
        if repository is not None:
            self._server.set_repository_handler(self._repository_handler(repository))

    def _repository_handler(self, repository: KServeRepository) -> Callable[..., None]:
        def handle(method: str, request: bytes, authorization: str, done: Callable[[int, str, bytes], None]) -> None:
            def work() -> None:
                try:
                    done(0, "", repository.call(method, request, authorization))
                except RequestError as error:
                    done(int(error.code), error.message, b"")

            self._repository_work.submit(work)

        return handle

    async def start(self) -> None:
        pass  # the RankServer listens from construction, in its loading state

    async def set_serving(self) -> None:
        self._server.set_serving(True)

    async def set_health(self, services: Mapping[str, bool]) -> None:
        for service, serving in services.items():
            self._server.set_service_serving(service, serving)

    async def drain(self, quiet_s: float, grace_s: float) -> bool:
        self._server.start_draining()
        return await asyncio.to_thread(self._server.admission.wait_drained, quiet_s, grace_s)

    async def stop(self, grace_s: float) -> None:
        await asyncio.to_thread(self._server.shutdown, grace_s)
        self._repository_work.shutdown(wait=False, cancel_futures=True)

    @property
    def admission(self) -> core.RankAdmission:
        return self._server.admission


class PythonFrontend:
    kind = "python"

    def __init__(
        self,
        options: TransportOptions,
        models: ModelManager,
        repository: KServeRepository | None = None,
        tls: CertificateWatcher | None = None,
    ) -> None:
        self.ranking = RankingService(models.registry, options.max_in_flight_bytes, options.reply_margin_s)
        self.health = health.aio.HealthServicer()
        self._health_set = {"": True, RANKING_SERVICE: True}  # shown once serving
        self._server = grpc.aio.server(options=options.grpc_options())
        add_to_server(self.ranking, self._server)
        inference = InferenceService(self.ranking, models.registry, lambda: self._health_set[""], repository)
        add_inference_to_server(inference, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        enable_reflection(
            [RANKING_SERVICE, INFERENCE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name],
            self._server,
        )
        credentials = tls.grpc_credentials() if tls is not None else None
        self.port = add_grpc_port(self._server, "grpc", options.host, options.port, credentials)

    async def start(self) -> None:
        await self._show_health()
        await self._server.start()

    async def set_serving(self) -> None:
        self.ranking.set_serving()
        await self._show_health()

    async def set_health(self, services: Mapping[str, bool]) -> None:
        self._health_set.update(services)
        await self._show_health()

    async def _show_health(self) -> None:
        for service in list(self._health_set):
            serving = self.ranking.serving and self._health_set[service]
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set(service, status)

    async def drain(self, quiet_s: float, grace_s: float) -> bool:
        await self.health.enter_graceful_shutdown()
        return await self.ranking.drain(quiet_s, grace_s)

    async def stop(self, grace_s: float) -> None:
        await self._server.stop(grace_s)

    @property
    def admission(self) -> core.RankAdmission:
        return self.ranking.admission


def create_frontend(
    kind: FrontendKind,
    options: TransportOptions,
    models: ModelManager,
    repository: KServeRepository | None = None,
    tls: CertificateWatcher | None = None,
) -> Frontend:
    """The front end asked for; "auto" is the C++ one when the core was built with it. `repository` answers
    KServe v2's repository extension (none: UNIMPLEMENTED); `tls` serves the port over TLS (server/tls.py)."""
    if kind == "cpp" and not core.HAS_RANK_SERVER:
        raise RuntimeError("this build has no C++ front end (grpc++ was not found at build time): use 'python'")
    if kind == "cpp" or (kind == "auto" and core.HAS_RANK_SERVER):
        check_free("grpc", options.host, options.port)
        try:
            return CppFrontend(options, models.registry, repository, tls)
        except core.CoreError as error:
            if error.code == "UNAVAILABLE":  # the port could not be bound (RankServer::Create)
                raise unavailable("grpc", options.host, options.port) from error
            raise OSError(str(error)) from error
    return PythonFrontend(options, models, repository, tls)
