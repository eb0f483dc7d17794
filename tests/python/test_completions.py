"""AsyncCompletions: asyncio awaits core requests through the eventfd completion queue."""

from __future__ import annotations

import asyncio
import os
import select
import threading

import numpy as np
import pytest

import adrank
from conftest import make_request, scheduling_batching


def test_completion_queue_signals_its_fd_and_drains_in_order():
    queue = adrank.CompletionQueue()
    assert select.select([queue.fd], [], [], 0)[0] == []
    assert queue.drain() == []
    os.set_blocking(queue.fd, False)


def test_many_concurrent_requests_resolve_with_their_own_rows(pool, matmul):
    model = pool.add_model("matmul", matmul.signature(), matmul, scheduling_batching())

    async def main() -> None:
        completions = adrank.AsyncCompletions()
        rng = np.random.default_rng(20)
        requests = [make_request(rng, int(rng.integers(1, 200)), 10_000 * i) for i in range(200)]
        results = await asyncio.gather(*(completions.submit(model, c, x, timeout_s=30) for c, x in requests))
        for (candidates, context), result in zip(requests, results, strict=True):
            np.testing.assert_array_equal(result.outputs["row_id_out"], candidates["row_id"])
            np.testing.assert_allclose(result.outputs["score"], matmul.expected(candidates["dense"], context["user"]))
        assert completions.in_flight == 0
        completions.close()

    asyncio.run(main())
    assert model.stats()["batches"] < 200


def test_errors_surface_as_core_errors(pool, matmul):
    model = pool.add_model("boom", matmul.signature(), lambda batch: 1 / 0, scheduling_batching())

    async def main() -> None:
        completions = adrank.AsyncCompletions()
        with pytest.raises(adrank.CoreError) as error:
            await completions.submit(model, *make_request(np.random.default_rng(21), 3, 0))
        assert error.value.code == "INTERNAL" and "ZeroDivisionError" in str(error.value)
        completions.close()

    asyncio.run(main())


def test_cancelling_the_awaiting_task_cancels_the_queued_request(pool, matmul):
    release = threading.Event()
    seen: list[np.ndarray] = []

    def gated(batch: adrank.Batch) -> None:
        release.wait(30)
        seen.append(batch.inputs["row_id"].copy())
        matmul(batch)

    model = pool.add_model("gated", matmul.signature(), gated, scheduling_batching())

    async def main() -> None:
        completions = adrank.AsyncCompletions()
        rng = np.random.default_rng(22)
        first = asyncio.create_task(completions.submit(model, *make_request(rng, 2, 0)))
        await asyncio.sleep(0.05)  # let the first request reach the (blocked) backend
        second = asyncio.create_task(completions.submit(model, *make_request(rng, 2, 900)))
        await asyncio.sleep(0.05)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        release.set()
        await first
        await asyncio.sleep(0.05)  # the cancelled request's completion is drained, not awaited
        completions.close()

    asyncio.run(main())
    assert all(900 not in rows for rows in seen)
    assert model.stats()["cancelled"] == 1
