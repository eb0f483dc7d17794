"""RankingService: the `adrank.v1.Ranking/Rank` handler, from wire request to wire response.

The method is registered raw (`add_to_server`: bytes in, so that this handler, not grpc, decides what
an unparseable request gets). Before any parsing, the request's size is checked against the largest
request the served models take (the registry's max_request_bytes: RESOURCE_EXHAUSTED naming the size)
and reserved against max_in_flight_bytes (RESOURCE_EXHAUSTED, retryable, beyond it); the reservation
holds until grpc is done with the call (its reply sent, or the call cancelled), as in the C++ front end.
Then it is parsed (wire.parse_request: INVALID_ARGUMENT naming the field and byte), and:

One pass over the request, no per-candidate Python work:
1. route every requested model (NOT_FOUND) — before decoding anything: the rollout picks the version
   (stable, or canary by the request's routing key) unless the request pins one, and may name a shadow;
2. decode each tensor once (`numpy.frombuffer`), check the request's shape: one N shared by all
   candidate tensors, 1 <= N, one row per context tensor, no tensor that no requested model takes;
3. per model, `Servable.prepare` picks and checks its inputs (tokenizes text);
4. submit to every model's core queue at once with the caller's remaining deadline, and await them
   together: the models run concurrently on the core's workers while the event loop serves others;
5. reply with each model's N float32 scores, the version that answered and its server timing; record
   each version's outcome in its stats (the guardrails' input), and mirror the request to each shadow
   at its lowest priority, as a task of its own that never delays the reply.

Errors: RequestError and the core's CoreError become the gRPC status they carry, with a message that
names the field. Nothing a request sends can fail another request or the server, nor yield UNKNOWN or
INTERNAL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
import numpy as np

import adrank._core as core
from adrank.completions import AsyncCompletions
from adrank.repository.manager import ModelManager, Route
from adrank.servable import Servable, invalid
from adrank.status import RequestError, StatusCode
from adrank.tenants import TENANT_METADATA_KEY
from adrank.v1 import ranking_pb2 as pb
from adrank.wire import WireError, decode, parse_request

_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def grpc_status(code: int) -> grpc.StatusCode:
    """The gRPC status of a contract status (status.StatusCode) or a core error's number; INTERNAL if none."""
    return _STATUS_BY_NUMBER.get(int(code), grpc.StatusCode.INTERNAL)


STATUS_CODES = len(StatusCode)  # 0..16, as cpp/version_stats.h kStatusCodeCount
# As the C++ front end (cpp/rank_server.cc): an older mirror is shed rather than piled up.
SHADOW_TIMEOUT_S = 0.1
INT32_MAX = 2**31 - 1
RANKING_SERVICE = pb.DESCRIPTOR.services_by_name["Ranking"].full_name


def decode_section(tensors: Sequence[pb.Tensor], section: str) -> dict[str, np.ndarray]:
    decoded: dict[str, np.ndarray] = {}
    for tensor in tensors:
        where = f"{section} tensor '{tensor.name}'"
        if tensor.name in decoded:
            raise invalid(f"{where} appears twice")
        try:
            decoded[tensor.name] = decode(tensor, where)
        except WireError as error:
            raise invalid(str(error)) from error
    return decoded


def candidate_rows(candidates: dict[str, np.ndarray]) -> int:
    """The N that every candidate tensor must share."""
    if not candidates:
        raise invalid("candidates: no tensor; a request carries at least one candidate tensor with N rows")
    rows = {name: array.shape[0] for name, array in candidates.items()}
    first, n = next(iter(rows.items()))
    for name, count in rows.items():
        if count != n:
            raise invalid(f"candidates tensors disagree on N: '{first}' has {n} rows, '{name}' has {count}")
    if n == 0:
        raise invalid(f"candidates tensor '{first}' has 0 rows; a request scores at least one candidate")
    return n


def check_context(context: dict[str, np.ndarray]) -> None:
    for name, array in context.items():
        if array.shape[0] != 1:
            raise invalid(
                f"context tensor '{name}' has {array.shape[0]} rows; context is one row, broadcast by the server"
            )


def check_unexpected(
    servables: list[Servable], candidates: dict[str, np.ndarray], context: dict[str, np.ndarray]
) -> None:
    taken = set().union(*(s.input_names for s in servables))
    for section, tensors in (("candidates", candidates), ("context", context)):
        for name in tensors:
            if name not in taken:
                models = ", ".join(f"'{s.name}'" for s in servables)
                raise invalid(f"{section} tensor '{name}' is not an input of the requested models ({models})")
    both = sorted(set(candidates) & set(context))
    if both:
        raise invalid(f"tensor '{both[0]}' is sent both in candidates and in context")


def call_tenant(context: grpc.aio.ServicerContext) -> str:
    """The caller's tenant (tenants.py): its `x-adrank-tenant` metadata, else "" (the core's default). The
    core checks the name."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA_KEY:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


class RankingService:
    def __init__(
        self, models: ModelManager, max_in_flight_bytes: int = 256 << 20, reply_margin_s: float = 0.001
    ) -> None:
        self._models = models
        # The models get the call's deadline less this (cpp/rank_server.h reply_margin).
        self.reply_margin_s = reply_margin_s
        # Request bytes held by calls grpc is not done with (cpp/rank_server.h max_in_flight_bytes).
        self.max_in_flight_bytes = max_in_flight_bytes
        self.in_flight_bytes = 0
        self.released_bytes = 0  # all calls together: the memory trimmer's cue (memory_release.py)
        self._completions: AsyncCompletions | None = None
        # None while the server loads its models; then True; False once it drains. Calls that find it
        # not accepting get UNAVAILABLE, which tells a client that another replica may take them.
        self.accepting: bool | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_call = 0.0  # event-loop time of the latest call's arrival
        self._mirrors: set[asyncio.Future] = set()  # shadow requests in flight (held: tasks are weakly kept)
        # Rank calls answered, by status code: touched only on the event loop's thread.
        self.call_counts = [0] * STATUS_CODES

    async def drain(self, quiet_s: float) -> None:
        """Refuses new calls from now on; returns once every call in flight has been answered and no
        call has arrived for `quiet_s` (callers have seen NOT_SERVING or UNAVAILABLE and gone elsewhere).
        """
        self.accepting = False
        loop = asyncio.get_running_loop()
        while True:
            await self._idle.wait()
            quiet_for = loop.time() - self._last_call
            if quiet_for >= quiet_s:
                return
            await asyncio.sleep(quiet_s - quiet_for)

    def _async_completions(self) -> AsyncCompletions:
        # Created on first use, inside the server's running event loop.
        if self._completions is None:
            self._completions = AsyncCompletions()
        return self._completions

    async def Rank(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.RankResponse:
        start = time.perf_counter_ns()
        self._last_call = asyncio.get_running_loop().time()
        if not self.accepting:
            state = "loading its models" if self.accepting is None else "draining (shutting down)"
            await self._abort(context, grpc.StatusCode.UNAVAILABLE, f"the server is {state}")
        await self._reserve(len(request), context)
        self._in_flight += 1
        self._idle.clear()
        try:
            message = parse_request(request)
            results = await self._rank(message, context, start)
        except WireError as error:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except RequestError as error:
            await self._abort(context, grpc_status(error.code), error.message)
        except core.CoreError as error:
            code = grpc_status(error.grpc_code)
            await self._abort(context, code, str(error))
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        self.call_counts[0] += 1
        return pb.RankResponse(
            request_id=message.request_id, results=results, server_us=(time.perf_counter_ns() - start) // 1000
        )

    async def _reserve(self, size: int, context: grpc.aio.ServicerContext) -> None:
        """The request's bytes, by their declared size and before any parsing: refused beyond the largest
        request the served models take, or beyond max_in_flight_bytes; else held until grpc is done with
        the call."""
        largest = self._models.registry.max_request_bytes
        if largest and size > largest:  # with no model served, routing says so (NOT_FOUND)
            await self._abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request: {size} bytes exceed the largest request the served models take ({largest} bytes: "
                "every model at its max_candidates)",
            )
        if self.in_flight_bytes + size > self.max_in_flight_bytes:
            await self._abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request: {size} bytes would pass the server's bound on request bytes in flight "
                f"({self.max_in_flight_bytes}, max_in_flight_bytes); retry shortly",
            )
        self.in_flight_bytes += size
        context.add_done_callback(lambda _: self._release(size))

    def _release(self, size: int) -> None:
        self.in_flight_bytes -= size
        self.released_bytes += size

    async def _abort(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        self.call_counts[code.value[0]] += 1
        await context.abort(code, message)

    async def _rank(
        self, request: pb.RankRequest, context: grpc.aio.ServicerContext, start_ns: int
    ) -> list[pb.ModelScores]:
        if request.priority > INT32_MAX:  # the core's priorities are ints (as the C++ front end checks)
            raise invalid(f"priority {request.priority} is outside [0, {INT32_MAX}]")
        routes = self._route(request)
        servables = [r.servable for r in routes]
        candidates = decode_section(request.candidates, "candidates")
        contexts = decode_section(request.context, "context")
        rows = candidate_rows(candidates)
        check_context(contexts)
        check_unexpected(servables, candidates, contexts)
        prepared = [prepare(s, candidates, contexts, rows) for s in servables]
        remaining = context.time_remaining()
        timeout = None if remaining is None else remaining - self.reply_margin_s
        if timeout is not None and timeout <= 0:
            raise RequestError(
                StatusCode.DEADLINE_EXCEEDED,
                "the call's deadline leaves no time to run a model and reply"
                f" (reply margin {self.reply_margin_s * 1e6:.0f} µs)",
            )
        completions = self._async_completions()
        priority = request.priority if request.HasField("priority") else core.DEFAULT_PRIORITY
        tenant = call_tenant(context)
        submitted = [
            completions.submit(s.model, c, x, timeout_s=timeout, priority=priority, tenant=tenant)
            for s, (c, x) in zip(servables, prepared, strict=True)
        ]
        for route in routes:
            if route.shadow is not None:
                self._mirror(route.shadow, candidates, contexts, rows)
        outcomes = await asyncio.gather(*submitted, return_exceptions=True)
        for route, outcome in zip(routes, outcomes, strict=True):
            record(route.servable, outcome, start_ns)
        results: list[core.Result] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return [self._scores(s, r) for s, r in zip(servables, results, strict=True)]

    def _route(self, request: pb.RankRequest) -> list[Route]:
        if not request.models:
            raise invalid("models: empty; name at least one model to score")
        names = [spec.name for spec in request.models]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise invalid(f"models: model '{repeated[0]}' is named twice")
        if any(spec.version < 0 for spec in request.models):
            raise invalid("models: version must be >= 0 (0 picks the serving version)")
        key = request.routing_key or request.request_id
        return [self._models.route(spec.name, spec.version, key) for spec in request.models]

    def _mirror(
        self, shadow: Servable, candidates: dict[str, np.ndarray], contexts: dict[str, np.ndarray], rows: int
    ) -> None:
        """Submits the request to a shadow version at its lowest priority; the outcome is recorded only."""
        try:
            c, x = shadow.prepare(candidates, contexts, rows)
        except RequestError:
            shadow.stats.record(grpc.StatusCode.INVALID_ARGUMENT.value[0])  # a shadow never fails the call
            return
        if shadow.model.stats()["queued_rows"] >= shadow.config.batching.max_batch_rows:
            shadow.stats.record_shadow_shed()  # behind already: shed this mirror
            return
        future = self._async_completions().submit(
            shadow.model, c, x, timeout_s=SHADOW_TIMEOUT_S, priority=shadow.lowest_priority
        )
        task = asyncio.ensure_future(future)
        self._mirrors.add(task)
        start_ns = time.perf_counter_ns()

        def mirrored(done: asyncio.Future[core.Result]) -> None:
            self._mirrors.discard(done)
            record(shadow, _outcome(done), start_ns)

        task.add_done_callback(mirrored)

    @staticmethod
    def _scores(servable: Servable, result: core.Result) -> pb.ModelScores:
        scores = np.ascontiguousarray(result.outputs[servable.config.score_output], dtype="<f4")
        timing = pb.ServerTiming(queue_us=result.queue_us, compute_us=result.compute_us, batch_rows=result.batch_rows)
        return pb.ModelScores(model=servable.name, version=servable.version, scores=scores.tobytes(), timing=timing)


def _outcome(task: asyncio.Future) -> core.Result | BaseException:
    if task.cancelled():
        return core.CoreError("cancelled")
    error = task.exception()
    return error if error is not None else task.result()


def prepare(
    servable: Servable, candidates: dict[str, np.ndarray], contexts: dict[str, np.ndarray], rows: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`Servable.prepare`; a refusal by the model's own checks is counted at the version, as the C++ front
    end counts it."""
    try:
        return servable.prepare(candidates, contexts, rows)
    except RequestError as error:
        servable.stats.record(int(error.code))
        raise


def record(servable: Servable, outcome: core.Result | BaseException, start_ns: int) -> None:
    """One request's outcome in the version's stats, as the C++ front end records it; `start_ns` is when
    the call (or the mirror) arrived, on time.perf_counter_ns's clock."""
    if isinstance(outcome, core.CoreError):
        servable.stats.record(getattr(outcome, "grpc_code", grpc.StatusCode.CANCELLED.value[0]))
    elif isinstance(outcome, BaseException):
        servable.stats.record(grpc.StatusCode.INTERNAL.value[0])
    else:
        scores = outcome.outputs[servable.config.score_output]
        request_us = (time.perf_counter_ns() - start_ns) // 1000
        servable.stats.record(0, outcome.queue_us, outcome.compute_us, scores, request_us=request_us)


def add_to_server(service: RankingService, server: grpc.aio.Server) -> None:
    """Registers `service.Rank` raw: it receives the request's bytes (no deserializer); it returns a
    RankResponse."""
    rank = grpc.unary_unary_rpc_method_handler(service.Rank, response_serializer=pb.RankResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(RANKING_SERVICE, {"Rank": rank}),))
