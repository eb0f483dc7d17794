"""Hedging: a Rank call sent again when its first copy has not answered within `RetryPolicy.hedging_delay_s`,
the first answer taken and the other copies cancelled — gRFC A6's hedging, done by the client itself.

Why here and not in the service config: gRPC's C core (grpcio, which RankClient and AsyncRankClient run on)
accepts a `hedgingPolicy` and never hedges — two replicas, one answering in 1 s and one at once, a hedging
delay of 50 ms: every call that went to the slow one took 1 s (grpcio 1.85, checked when this was written;
tests/python/test_client_hedging.py fails if hedging stops working). So the client sends the copies on its
channel, whose round_robin picks the next READY replica for each: a copy usually lands on another replica
than the one that is slow.

What a hedged call does (A6's semantics):
- the first copy goes at once; another every `hedging_delay_s` while none has answered, `max_attempts` in all;
- an OK answer from any copy is the call's; the others are cancelled;
- a copy that fails with a non-fatal code (RetryPolicy.codes(): UNAVAILABLE, RESOURCE_EXHAUSTED — answered
  before any model computed the call, so another copy is safe) sends the next copy at once; once every copy
  has been sent, the call waits for the ones still out and fails with the last failure;
- any other code (INVALID_ARGUMENT, DEADLINE_EXCEEDED, ...) ends the call with it and cancels the others: no
  other replica would answer it better;
- every copy gets what is left of the call's deadline, so the call never outlasts it;
- throttling (A6's token bucket, RetryPolicy's throttle_max_tokens and throttle_token_ratio): each copy
  that fails with a non-fatal code takes a token, each OK answer gives back `throttle_token_ratio`; at or
  below half the bucket no further copy is sent, so that a fleet short of capacity is not sent its load twice;
- every copy after the first carries `x-adrank-previous-attempts` (how many went before it), which the server
  counts as a retry (adrank_retried_calls_total), as it counts gRPC's own retries by their
  `grpc-previous-rpc-attempts` (gRPC drops an application's grpc-* metadata, hence a key of adrank's own);
  the client counts the copies it sent too (Hedging.hedges).

Thread-safety: one Hedging per client, shared by its threads (RankClient) or tasks (AsyncRankClient); the
bucket and the counter are under a lock.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from adrank.client_retry import RetryPolicy

# What a copy after the first carries: the number of copies sent before it (as gRPC's grpc-previous-rpc-attempts).
HEDGED_ATTEMPTS_KEY = "x-adrank-previous-attempts"

Metadata = tuple[tuple[str, str], ...]
# Sends one copy: its metadata and its timeout (None: no deadline) -> the call in flight.
SendFuture = Callable[[Metadata, float | None], grpc.Future]
SendAsync = Callable[[Metadata, float | None], Any]  # a grpc.aio.UnaryUnaryCall: awaitable, cancellable


class Hedging:
    def __init__(self, policy: RetryPolicy) -> None:
        if policy.hedging_delay_s is None:
            raise ValueError("Hedging needs a RetryPolicy with hedging_delay_s")
        self._delay_s = policy.hedging_delay_s
        self._max_attempts = policy.max_attempts
        self._non_fatal = frozenset(getattr(grpc.StatusCode, name) for name in policy.codes())
        self._max_tokens = float(policy.throttle_max_tokens)
        self._token_ratio = policy.throttle_token_ratio
        self._lock = threading.Lock()
        self._tokens = self._max_tokens
        self._hedges = 0

    @property
    def hedges(self) -> int:
        """Copies sent after a call's first, since the client was made."""
        with self._lock:
            return self._hedges

    def call(self, send: SendFuture, metadata: Metadata, timeout: float | None) -> Any:
        """The first OK reply of up to max_attempts copies; raises the grpc.RpcError that ends the call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done: queue.Queue[grpc.Future] = queue.Queue()
        out: list[grpc.Future] = []

        def launch() -> None:
            future = send(self._metadata(metadata, len(out)), _left(deadline))
            out.append(future)
            future.add_done_callback(done.put)

        launch()
        pending, next_copy = 1, time.monotonic() + self._delay_s
        error: grpc.RpcError | None = None
        try:
            while pending:
                try:
                    future = done.get(timeout=self._wait(len(out), next_copy))
                except queue.Empty:
                    if self._may_send(len(out)):  # the hedging delay passed with no answer
                        launch()
                        pending += 1
                    next_copy = time.monotonic() + self._delay_s
                    continue
                pending -= 1
                code = future.code()
                self._settle(code)
                if code == grpc.StatusCode.OK:
                    return future.result()
                error = future.exception()  # a failed call's future is its RpcError
                if code not in self._non_fatal:
                    break
                if self._may_send(len(out)):
                    launch()
                    pending += 1
                    next_copy = time.monotonic() + self._delay_s
        finally:
            for future in out:
                future.cancel()  # no-op on those done
        assert error is not None
        raise error

    async def call_async(self, send: SendAsync, metadata: Metadata, timeout: float | None) -> Any:
        """`call`, on a grpc.aio channel."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[Any] = []
        waiting: dict[asyncio.Future[Any], Any] = {}  # a copy's awaited reply -> its call

        def launch() -> None:
            call = send(self._metadata(metadata, len(out)), _left(deadline))
            out.append(call)
            waiting[asyncio.ensure_future(_reply(call))] = call

        launch()
        next_copy = loop.time() + self._delay_s
        error: grpc.RpcError | None = None
        try:
            while waiting:
                finished, _ = await asyncio.wait(
                    waiting, timeout=self._wait(len(out), next_copy, loop.time()), return_when=asyncio.FIRST_COMPLETED
                )
                if not finished:
                    if self._may_send(len(out)):
                        launch()
                    next_copy = loop.time() + self._delay_s
                    continue
                fatal = False
                for reply in finished:
                    del waiting[reply]
                    failure = reply.exception()
                    if failure is None:
                        self._settle(grpc.StatusCode.OK)
                        return reply.result()
                    if not isinstance(failure, grpc.aio.AioRpcError):
                        raise failure
                    self._settle(failure.code())
                    error = failure
                    fatal = fatal or failure.code() not in self._non_fatal
                if fatal:
                    break
                if self._may_send(len(out)):
                    launch()
                    next_copy = loop.time() + self._delay_s
        finally:
            for call in out:
                call.cancel()
            for reply in waiting:  # copies no longer wanted: cancelled, or their failure taken (never logged)
                if not reply.done():
                    reply.cancel()
                elif not reply.cancelled():
                    reply.exception()
        assert error is not None
        raise error

    def _metadata(self, metadata: Metadata, earlier: int) -> Metadata:
        if not earlier:
            return metadata
        with self._lock:
            self._hedges += 1
        return (*metadata, (HEDGED_ATTEMPTS_KEY, str(earlier)))

    def _wait(self, sent: int, next_copy: float, now: float | None = None) -> float | None:
        """How long to wait for an answer before the next copy is due; None: no further copy, wait for one."""
        if sent >= self._max_attempts:
            return None
        return max(0.0, next_copy - (time.monotonic() if now is None else now))

    def _may_send(self, sent: int) -> bool:
        with self._lock:
            return sent < self._max_attempts and self._tokens > self._max_tokens / 2

    def _settle(self, code: grpc.StatusCode) -> None:
        """The token bucket: a non-fatal failure takes a token, an OK answer gives back token_ratio."""
        with self._lock:
            if code == grpc.StatusCode.OK:
                self._tokens = min(self._max_tokens, self._tokens + self._token_ratio)
            elif code in self._non_fatal:
                self._tokens = max(0.0, self._tokens - 1)


def _left(deadline: float | None) -> float | None:
    """What is left of the call's deadline for a copy sent now (at least a microsecond: gRPC then answers
    DEADLINE_EXCEEDED itself)."""
    return None if deadline is None else max(1e-6, deadline - time.monotonic())


async def _reply(call: Awaitable[Any]) -> Any:
    return await call
