"""AsyncCompletions: await the core's requests and Rank calls from an asyncio event loop.

The core completes requests on its worker threads, which never take the GIL for that. Each
completion pushes a token onto a CompletionQueue and, once per burst, writes its eventfd; the event
loop watches the fd (`loop.add_reader`), drains the tokens and resolves the matching futures. So a
burst of completions costs the loop one wake-up and the workers no GIL at all.

Thread-safety: one instance belongs to one event loop; call its methods from that loop only.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from adrank._core import (
    DEFAULT_PRIORITY,
    CompletionQueue,
    Model,
    ModelRegistry,
    PendingRank,
    PendingRequest,
    Result,
    start_infer,
    start_rank,
)


class AsyncCompletions:
    """Submits to core models and resolves an asyncio future per request when it completes."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._queue = CompletionQueue()
        self._tokens = itertools.count(1)
        self._waiting: dict[int, tuple[PendingRequest | PendingRank, asyncio.Future]] = {}
        self._loop.add_reader(self._queue.fd, self._drain)

    async def submit(
        self,
        model: Model,
        candidates: Mapping[str, np.ndarray],
        context: Mapping[str, np.ndarray] | None = None,
        *,
        timeout_s: float | None = None,
        priority: int = DEFAULT_PRIORITY,
        tenant: str = "",
    ) -> Result:
        """Scores one request; raises adrank.CoreError with the core's status on failure.

        Cancelling the awaiting task cancels the request in the core if it has not started.
        """
        pending = model.submit(
            dict(candidates),
            None if context is None else dict(context),
            timeout_s=timeout_s,
            priority=priority,
            tenant=tenant,
            completion_queue=self._queue,
            token=next(self._tokens),
        )
        return await self._await(pending)

    async def rank(
        self,
        registry: ModelRegistry,
        request: bytes,
        *,
        timeout_s: float | None = None,
        reply_margin_s: float = 0.0,
        tenant: str = "",
    ) -> bytes:
        """One Rank call through the core's contract (cpp/rank_call.h): the serialized RankResponse; raises
        adrank.CoreError with the call's status on failure.

        Cancelling the awaiting task cancels the call's parts not yet in a batch.
        """
        return await self._contract(start_rank, registry, request, timeout_s, reply_margin_s, tenant)

    async def infer(
        self,
        registry: ModelRegistry,
        request: bytes,
        *,
        timeout_s: float | None = None,
        reply_margin_s: float = 0.0,
        tenant: str = "",
    ) -> bytes:
        """One KServe v2 ModelInfer call over an inference.ModelInferRequest's bytes, through the same
        contract (cpp/infer_call.h): the serialized ModelInferResponse; raises adrank.CoreError as `rank`."""
        return await self._contract(start_infer, registry, request, timeout_s, reply_margin_s, tenant)

    async def _contract(
        self,
        start: Callable[..., PendingRank],
        registry: ModelRegistry,
        request: bytes,
        timeout_s: float | None,
        reply_margin_s: float,
        tenant: str,
    ) -> bytes:
        pending = start(
            registry,
            request,
            timeout_s=timeout_s,
            reply_margin_s=reply_margin_s,
            tenant=tenant,
            completion_queue=self._queue,
            token=next(self._tokens),
        )
        return await self._await(pending)

    async def _await(self, pending: PendingRequest | PendingRank) -> Any:
        # Registered before the loop runs again: a call refused at once has pushed its token already, and
        # the loop drains it only after this.
        future: asyncio.Future = self._loop.create_future()
        self._waiting[pending.token] = (pending, future)
        try:
            return await future
        except asyncio.CancelledError:
            pending.cancel()
            raise

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        """Stops watching the fd; requests still in flight keep running but are no longer awaited."""
        self._loop.remove_reader(self._queue.fd)

    def _drain(self) -> None:
        for token in self._queue.drain():
            pending, future = self._waiting.pop(token)
            if future.done():  # the awaiting task was cancelled
                continue
            try:
                future.set_result(pending.result())
            except Exception as error:  # the core's status, raised as CoreError
                future.set_exception(error)
