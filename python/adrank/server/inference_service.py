"""InferenceService: the Open Inference Protocol (KServe v2) `inference.GRPCInferenceService` of the grpc.aio
front end, beside Rank on its port.

As the C++ front end's (cpp/frontend/inference_service.h), and written once in the core: ModelInfer is a
call of the Rank contract (cpp/infer_call.h), admitted, run and counted by RankingService.serve; ModelReady,
ModelMetadata, ModelConfig (Triton's, for perf_analyzer) and ServerMetadata are the core's answers
(cpp/infer_metadata.h), and so is ModelStatistics (Triton's statistics extension, cpp/infer_statistics.h),
bytes in and bytes out.
ServerLive is true while the port answers; ServerReady is the server's readiness (its health service's ""
status: serving, and every configured model has a version). The repository extension is
kserve_repository.py's, run off the event loop (UNIMPLEMENTED without one).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import grpc

import adrank._core as core
from adrank import __version__
from adrank.kserve import grpc_service_pb2 as kserve
from adrank.server.kserve_repository import METHODS, KServeRepository
from adrank.server.ranking_service import RankingService, grpc_status
from adrank.status import RequestError

INFERENCE_SERVICE = kserve.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class InferenceService:
    def __init__(
        self,
        ranking: RankingService,
        registry: core.ModelRegistry,
        ready: Callable[[], bool],
        repository: KServeRepository | None = None,
    ) -> None:
        self._ranking = ranking
        self._registry = registry
        self._ready = ready
        self._repository = repository

    async def repository_call(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The repository extension (kserve_repository.py), off the event loop: a load takes seconds."""
        if self._repository is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method}: this server has no model management")
        authorization = dict(context.invocation_metadata() or ()).get("authorization", "")
        if isinstance(authorization, bytes):
            authorization = authorization.decode("utf-8", "replace")
        try:
            assert self._repository is not None
            return await asyncio.to_thread(self._repository.call, method, request, authorization)
        except RequestError as error:
            await context.abort(grpc_status(error.code), error.message)
            raise  # abort raises; this line is never reached

    async def ModelInfer(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._ranking.serve(request, context, "infer")

    async def ServerLive(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return kserve.ServerLiveResponse(live=True).SerializeToString()

    async def ServerReady(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return kserve.ServerReadyResponse(ready=self._ranking.serving and self._ready()).SerializeToString()

    async def ModelReady(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._answer(
            context, lambda: core.infer_model_ready(self._registry, self._ranking.serving, request)
        )

    async def ModelMetadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._answer(context, lambda: core.infer_model_metadata(self._registry, request))

    async def ModelConfig(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._answer(context, lambda: core.infer_model_config(self._registry, request))

    async def ModelStatistics(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._answer(context, lambda: core.infer_model_statistics(self._registry, request))

    async def ServerMetadata(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return core.infer_server_metadata(__version__)

    async def _answer(self, context: grpc.aio.ServicerContext, answer: Callable[[], bytes]) -> bytes:
        try:
            return answer()
        except core.CoreError as error:
            await context.abort(grpc_status(error.grpc_code), str(error))
            raise  # abort raises; this line is never reached


def add_to_server(service: InferenceService, server: grpc.aio.Server) -> None:
    """Registers every method raw (bytes in, bytes out), as Rank: the core parses and serializes."""
    methods: dict[str, Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]] = {
        "ModelInfer": service.ModelInfer,
        "ServerLive": service.ServerLive,
        "ServerReady": service.ServerReady,
        "ModelReady": service.ModelReady,
        "ModelMetadata": service.ModelMetadata,
        "ModelConfig": service.ModelConfig,
        "ModelStatistics": service.ModelStatistics,
        "ServerMetadata": service.ServerMetadata,
    }
    for name in METHODS:
        methods[name] = functools.partial(service.repository_call, name)
    handlers = {name: grpc.unary_unary_rpc_method_handler(method) for name, method in methods.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(INFERENCE_SERVICE, handlers),))
