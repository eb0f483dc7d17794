"""The client's hedging (python/adrank/client_hedging.py), against real replicas on loopback, both clients.

- A replica that stalls (SIGSTOP: its connections stay open, nothing answers) costs a hedged call one hedging
  delay: every call is answered by the other replica, whose count of retries grows by the copies it took, and
  the client counts the copies it sent. Without hedging, the calls that go to the stalled replica end with
  DEADLINE_EXCEEDED: what hedging is for. With every replica stalled, a hedged call ends at its deadline.
- gRPC itself does not hedge (why the client hedges): with a hedgingPolicy in the service config, calls to the
  stalled replica are not hedged either.
- A copy refused with a non-fatal code (RESOURCE_EXHAUSTED) sends the next one at once, up to max_attempts, each
  counted by the server (both front ends) and by the client; a fatal code (NOT_FOUND) ends the call at once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from rollout_models import ctr_repository
from test_fleet import Replica, launch, request
from test_serve_process import end

from adrank.client import AsyncRankClient, RankClient, RankError, RankResult
from adrank.client_retry import RetryPolicy
from served import FRONTENDS, ServerThread

HEDGED = RetryPolicy(max_attempts=2, hedging_delay_s=0.1)
CALLS = 20
T = TypeVar("T")


class AsyncDriven:
    """An AsyncRankClient driven from this thread: its channel and calls on an event loop of its own."""

    def __init__(self, targets: list[str], retry: RetryPolicy | None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hedging-test-client", daemon=True)
        self._thread.start()
        self._client = self._run(self._make(targets, retry))

    @staticmethod
    async def _make(targets: list[str], retry: RetryPolicy | None) -> AsyncRankClient:
        return AsyncRankClient(targets, retry=retry)  # its grpc.aio channel belongs to the running loop

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=120)

    def rank(self, models: list[str], candidates: dict[str, np.ndarray], timeout: float) -> RankResult:
        return self._run(self._client.rank(models, candidates, timeout=timeout))

    @property
    def hedges(self) -> int:
        return self._client.hedges

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


Client = RankClient | AsyncDriven
CLIENTS = ("sync", "async")


def client_of(kind: str, targets: list[str], retry: RetryPolicy | None) -> Client:
    return RankClient(targets, retry=retry) if kind == "sync" else AsyncDriven(targets, retry)


def rank_all(client: Client, calls: int, timeout: float, models: tuple[str, ...] = ("ctr",)) -> list[str]:
    """Each call's outcome in turn: "OK", or its failure's status code name."""
    outcomes = []
    for _ in range(calls):
        try:
            client.rank(list(models), request(), timeout=timeout)
            outcomes.append("OK")
        except RankError as error:
            outcomes.append(error.code.name)
    return outcomes


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    """Two `adrank serve` replicas of ctr, shared by this module's stall tests (each resumes what it stops)."""
    repository = ctr_repository(tmp_path_factory.mktemp("hedging") / "repo")
    replicas = [launch(repository) for _ in range(2)]
    try:
        yield replicas
    finally:
        for replica in replicas:
            replica.process.send_signal(signal.SIGCONT)
            end(replica.process)


class Stalled:
    """SIGSTOP on entry, SIGCONT on exit, for each replica given."""

    def __init__(self, *replicas: Replica) -> None:
        self.replicas = replicas

    def __enter__(self) -> None:
        for replica in self.replicas:
            replica.process.send_signal(signal.SIGSTOP)

    def __exit__(self, *_: object) -> None:
        for replica in self.replicas:
            replica.process.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("kind", CLIENTS)
def test_a_stalled_replica_is_hedged_around_and_every_hedge_is_counted(pair: list[Replica], kind: str) -> None:
    stalled, answering = pair
    client = client_of(kind, [r.grpc for r in pair], HEDGED)
    try:
        # Both replicas connected and in the rotation before one stalls (a stopped process never finishes a
        # new connection's handshake, so the client would never pick it).
        assert rank_all(client, CALLS, timeout=10) == ["OK"] * CALLS
        assert stalled.ok_calls() > 0 and answering.ok_calls() > 0
        hedges, retried, answered = client.hedges, answering.retried_calls(), answering.ok_calls()
        with Stalled(stalled):
            outcomes = rank_all(client, CALLS, timeout=10)
            hedged = client.hedges - hedges
            took = answering.ok_calls() - answered
            counted = answering.retried_calls() - retried
        assert outcomes == ["OK"] * CALLS
        assert took == CALLS  # the stalled replica answered none of them
        # Round-robin alternates: every call whose first copy went to the stalled replica sent a second,
        # which the other replica took and counted as a retry (a copy sent to the stalled one is never seen).
        assert hedged >= CALLS // 2, hedged
        assert 1 <= counted <= hedged, (counted, hedged)

        # Every replica stalled: a hedged call ends at its deadline, having sent max_attempts copies.
        with Stalled(*pair):
            assert rank_all(client, 1, timeout=0.5) == ["DEADLINE_EXCEEDED"]
    finally:
        client.close()


@pytest.mark.parametrize(
    "retry",
    [
        pytest.param(RetryPolicy(), id="retries-only"),
        # What RetryPolicy(hedging_delay_s=...) used to rely on: gRPC's own hedging, which grpcio never does.
        pytest.param(
            json.dumps(
                {
                    "loadBalancingConfig": [{"round_robin": {}}],
                    "methodConfig": [
                        {
                            "name": [{"service": "adrank.v1.Ranking"}],
                            "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.1s"},
                        }
                    ],
                }
            ),
            id="grpc-hedging-policy",
        ),
    ],
)
def test_without_the_clients_hedging_a_stalled_replica_fails_the_calls_sent_to_it(
    pair: list[Replica], retry: RetryPolicy | str
) -> None:
    stalled, _ = pair
    targets = [r.grpc for r in pair]
    if isinstance(retry, RetryPolicy):
        client = RankClient(targets, retry=retry)
    else:
        options = [("grpc.service_config", retry), ("grpc.enable_retries", 1)]
        target = "ipv4:" + ",".join(targets)
        client = RankClient(target, channel=grpc.insecure_channel(target, options=options), retry=None)
    try:
        assert rank_all(client, 4, timeout=10) == ["OK"] * 4
        with Stalled(stalled):
            outcomes = rank_all(client, 4, timeout=0.5)
        assert "DEADLINE_EXCEEDED" in outcomes, outcomes  # round_robin sent some of them to the stalled one
        assert client.hedges == 0
    finally:
        client.close()


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_refused_copy_sends_the_next_at_once_and_a_fatal_code_ends_the_call(
    frontend: str, kind: str, tmp_path: Path
) -> None:
    server = ServerThread(ctr_repository(tmp_path / "repo"), frontend=frontend).start()
    # A long hedging delay: any copy after the first is sent because of a refusal, not of the delay.
    client = client_of(kind, [server.target], RetryPolicy(max_attempts=3, hedging_delay_s=30.0))
    try:
        admission = server.server.frontend.admission  # type: ignore[union-attr]
        too_large = request(rows=5000)  # past the largest request ctr takes: RESOURCE_EXHAUSTED, by its size
        with pytest.raises(RankError) as refused:
            client.rank(["ctr"], too_large, timeout=10)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert admission.call_counts()[exhausted] == 3  # max_attempts copies, each refused
        assert admission.retried_calls == 2 and client.hedges == 2  # every copy after the first, counted twice

        assert rank_all(client, 1, timeout=10, models=("no-such-model",)) == ["NOT_FOUND"]
        assert admission.retried_calls == 2 and client.hedges == 2  # a fatal code: no other copy
        assert rank_all(client, 3, timeout=10) == ["OK"] * 3
        assert admission.retried_calls == 2 and client.hedges == 2  # answered within the delay: none
    finally:
        client.close()
        server.stop()
