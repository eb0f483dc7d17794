"""RankingService: the `adrank.v1.Ranking/Rank` handler of the grpc.aio front end: a thin transport (and the
same for KServe v2's ModelInfer: server/inference_service.py).

The Rank contract lives once, in the core (cpp/rank_call.h, cpp/rank_admission.h), for this front end
and the C++ one alike: this handler only carries a call between grpc.aio and it.
1. Admission (core.RankAdmission), by the request's declared size and before any parsing: UNAVAILABLE
   while the server loads or drains, RESOURCE_EXHAUSTED beyond the largest request the served models
   take or beyond max_in_flight_bytes. The bytes are held until grpc is done with the call (its reply
   sent, or the call cancelled).
2. The call (core.start_rank, awaited through AsyncCompletions): parsed, checked, routed, submitted to
   every model's queue with the caller's deadline less the reply margin, mirrored to shadows, recorded
   in each version's stats, and answered with the serialized RankResponse — all in C++, without the GIL.
   The method is registered raw (bytes in, bytes out): grpc neither parses nor serializes.
3. The answer: the response's bytes, or the core's status mapped to gRPC's (grpc_status) with the
   core's message, which names the field. Every answer is counted by its code.

Cancellation (the client's, the deadline's, a closed connection's) cancels the awaiting task, which
cancels the call's parts not yet in a batch.
"""

from __future__ import annotations

import asyncio
from typing import Literal, NamedTuple

import grpc

import adrank._core as core
from adrank.client_hedging import HEDGED_ATTEMPTS_KEY
from adrank.completions import AsyncCompletions
from adrank.status import StatusCode
from adrank.tenants import TENANT_METADATA_KEY
from adrank.v1 import ranking_pb2 as pb

CallProtocol = Literal["rank", "infer"]
_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def grpc_status(code: int) -> grpc.StatusCode:
    """The gRPC status of a contract status (status.StatusCode) or a core error's number; INTERNAL if none."""
    return _STATUS_BY_NUMBER.get(int(code), grpc.StatusCode.INTERNAL)


RANKING_SERVICE = pb.DESCRIPTOR.services_by_name["Ranking"].full_name


# gRPC's retry policy adds it to every attempt after the first (gRFC A6), with the count of earlier ones; the
# client's own hedging (client_hedging.py) adds its own key to every copy after the first, as gRPC drops an
# application's grpc-* metadata.
PREVIOUS_ATTEMPTS_KEYS = ("grpc-previous-rpc-attempts", HEDGED_ATTEMPTS_KEY)


class CallMetadata(NamedTuple):
    """What the server reads from a call's metadata, in one pass over it."""

    tenant: str  # `x-adrank-tenant` (tenants.py), else "" (the core's default); the core checks the name
    retry: bool  # a client's retry of an attempt that failed, here or on another replica


def call_metadata(context: grpc.aio.ServicerContext) -> CallMetadata:
    tenant, retry = "", False
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA_KEY:
            tenant = value if isinstance(value, str) else value.decode("utf-8", "replace")
        elif key in PREVIOUS_ATTEMPTS_KEYS:
            retry = retry or value not in ("0", b"0")
    return CallMetadata(tenant, retry)


class RankingService:
    def __init__(
        self, registry: core.ModelRegistry, max_in_flight_bytes: int = 256 << 20, reply_margin_s: float = 0.001
    ) -> None:
        self._registry = registry
        self.admission = core.RankAdmission(registry, max_in_flight_bytes)
        # The models get the call's deadline less this (cpp/rank_call.h reply_margin).
        self.reply_margin_s = reply_margin_s
        self._completions: AsyncCompletions | None = None

    @property
    def serving(self) -> bool:
        return self.admission.state == "serving"

    def set_serving(self) -> None:
        self.admission.set_serving()

    async def drain(self, quiet_s: float, grace_s: float) -> bool:
        """Refuses new calls from now on; True once every call in flight has been answered and no call has
        arrived for `quiet_s` (callers have seen NOT_SERVING or UNAVAILABLE and gone elsewhere), False if
        `grace_s` passed first."""
        self.admission.start_draining()
        return await asyncio.to_thread(self.admission.wait_drained, quiet_s, grace_s)

    def _async_completions(self) -> AsyncCompletions:
        # Created on first use, inside the server's running event loop.
        if self._completions is None:
            self._completions = AsyncCompletions()
        return self._completions

    async def Rank(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self.serve(request, context, "rank")

    async def serve(self, request: bytes, context: grpc.aio.ServicerContext, protocol: CallProtocol) -> bytes:
        """One call of the contract in either protocol (`rank`: adrank.v1 Rank; `infer`: KServe v2
        ModelInfer, cpp/infer_call.h): admitted, run and answered alike, and counted together."""
        size = len(request)
        metadata = call_metadata(context)
        if metadata.retry:
            self.admission.retried()
        try:
            self.admission.admit(size)
        except core.CoreError as error:
            await self._abort(context, error)
        context.add_done_callback(lambda _: self.admission.release_bytes(size))
        completions = self._async_completions()
        call = completions.rank if protocol == "rank" else completions.infer
        refused: core.CoreError | None = None
        try:
            reply = await call(
                self._registry,
                request,
                timeout_s=context.time_remaining(),
                reply_margin_s=self.reply_margin_s,
                tenant=metadata.tenant,
            )
        except asyncio.CancelledError:  # the client went away or its deadline passed: grpc answers CANCELLED
            self.admission.answered(StatusCode.CANCELLED)
            raise
        except core.CoreError as error:
            refused = error
        finally:
            self.admission.call_done()  # answered (or abandoned): the drain stops waiting for it
        if refused is not None:
            await self._abort(context, refused)
        self.admission.answered(StatusCode.OK)
        return reply

    async def _abort(self, context: grpc.aio.ServicerContext, error: core.CoreError) -> None:
        self.admission.answered(error.grpc_code)
        await context.abort(grpc_status(error.grpc_code), str(error))


def add_to_server(service: RankingService, server: grpc.aio.Server) -> None:
    """Registers `service.Rank` raw: it receives the request's bytes and returns the response's (no
    deserializer, no serializer)."""
    rank = grpc.unary_unary_rpc_method_handler(service.Rank)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(RANKING_SERVICE, {"Rank": rank}),))
