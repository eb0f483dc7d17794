"""A fleet on one machine (loopback only): three `adrank serve` replicas behind one RankClient with a target
list (round_robin, health checking, retries: client_retry.py). Under a steady load, one replica is SIGKILLed
and another SIGTERMed and started again on its port (a rolling restart): no call fails, every replica scores a
request alike, the load spreads within ±20 % across the live replicas, and the retries are counted by the
replicas that took them. A replica whose health says NOT_SERVING gets no call from the client, and gets calls
again once it says SERVING. Bounded: every wait has a deadline, and the load stops by itself.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rollout_models import ctr_repository
from test_serve_process import end, start

from adrank.client import AsyncRankClient, RankClient, RankError
from adrank.client_retry import RetryPolicy
from served import FRONTENDS, ServerThread

REPLICAS = 3
DEADLINE_S = 120.0  # for each phase: the machine may be busy with other tests
SPREAD = 0.20


def request(rows: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "dense": rng.integers(0, 50, size=(rows, 13)).astype(np.float32),
        "sparse": rng.integers(0, 2**40, size=(rows, 26), dtype=np.int64),
    }


@dataclass
class Replica:
    process: subprocess.Popen
    grpc: str
    http: str

    def ok_calls(self) -> float:
        """Rank calls this replica answered OK, from its /metrics."""
        return self._metric("adrank_rank_calls_total", {"code": "OK"})

    def retried_calls(self) -> float:
        return self._metric("adrank_retried_calls_total", {})

    def _metric(self, name: str, labels: dict[str, str]) -> float:
        with urllib.request.urlopen(f"http://{self.http}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0


def launch(repository: Path, *args: str) -> Replica:
    process, match, _ = start(repository, "--drain-grace", "10", *args)
    return Replica(process, match["grpc"], match["http"])


@dataclass
class Load:
    """A steady load through one client: a call every 5 ms until stopped; answers and failures counted."""

    client: RankClient
    answered: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        features = request()
        next_send = time.monotonic()
        give_up = next_send + 10 * DEADLINE_S
        while not self.stop.is_set() and time.monotonic() < give_up:
            try:
                self.client.rank(["ctr"], features, timeout=5)
                self.answered += 1
            except RankError as error:
                self.errors.append(f"{error.code.name}: {error.details}")
            next_send += 0.005
            time.sleep(max(0.0, next_send - time.monotonic()))

    def wait_for(self, more: int) -> None:
        target = self.answered + more
        deadline = time.monotonic() + DEADLINE_S
        while self.answered < target:
            assert time.monotonic() < deadline, f"{self.answered} calls answered, waiting for {target}"
            assert not self.errors, self.errors[:3]
            time.sleep(0.05)


def spread(counts: list[float]) -> float:
    mean = sum(counts) / len(counts)
    return max(abs(c - mean) for c in counts) / mean


def test_a_fleet_loses_no_call_when_a_replica_is_killed_and_another_restarted(tmp_path: Path):
    repository = ctr_repository(tmp_path / "repo")
    replicas = [launch(repository) for _ in range(REPLICAS)]
    try:
        # The same request scores the same on every replica (each asked directly, nothing retried).
        scores = []
        for replica in replicas:
            with RankClient(replica.grpc, retry=None) as direct:
                scores.append(direct.rank(["ctr"], request(), timeout=10)["ctr"].scores)
        assert all(np.array_equal(scores[0], s) for s in scores[1:])

        client = RankClient([r.grpc for r in replicas])
        client.wait_until_serving(timeout=DEADLINE_S)
        load = Load(client)
        thread = threading.Thread(target=load.run, name="fleet-load")
        thread.start()
        try:
            before = [r.ok_calls() for r in replicas]
            load.wait_for(300)
            during = [r.ok_calls() - b for r, b in zip(replicas, before, strict=True)]
            assert spread(during) <= SPREAD, during

            replicas[0].process.kill()  # SIGKILL: its calls in flight fail, and are retried on the others
            replicas[0].process.wait(timeout=30)
            load.wait_for(200)

            restarted = replicas[1]  # a rolling restart: SIGTERM drains it, then it comes back on its port
            restarted.process.send_signal(signal.SIGTERM)
            assert restarted.process.wait(timeout=60) == 0
            port = restarted.grpc.rsplit(":", 1)[1]
            replicas[1] = launch(repository, "--grpc-port", port)
            back = replicas[1]
            deadline = time.monotonic() + DEADLINE_S
            while back.ok_calls() < 50:  # rejoined the rotation (the client reconnects within seconds)
                assert time.monotonic() < deadline, "the restarted replica never took calls again"
                assert not load.errors, load.errors[:3]
                time.sleep(0.1)
            live = replicas[1:]
            before = [r.ok_calls() for r in live]
            load.wait_for(300)
            during = [r.ok_calls() - b for r, b in zip(live, before, strict=True)]
            assert spread(during) <= SPREAD, during
        finally:
            load.stop.set()
            thread.join(timeout=30)
            client.close()
        assert load.errors == []
        assert not thread.is_alive()
        # Retries are counted where they landed: never more than the calls the live replicas answered.
        retried = sum(r.retried_calls() for r in replicas[1:])
        assert 0 <= retried <= sum(r.ok_calls() for r in replicas[1:])
    finally:
        for replica in replicas:
            end(replica.process)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_replica_whose_health_says_not_serving_leaves_the_rotation_and_rejoins_when_serving(
    frontend: str, tmp_path: Path
):
    """The client watches each replica's grpc.health.v1 (service ""): a replica that says NOT_SERVING (as a
    model with nothing to serve makes it say) takes no call, though its Rank still answers, and takes calls
    again once it says SERVING. Without the health check, the same replica takes its share."""
    servers = [ServerThread(ctr_repository(tmp_path / f"repo{i}"), frontend=frontend).start() for i in range(2)]
    out = servers[0]  # the replica that says NOT_SERVING; the other serves throughout
    targets = [s.target for s in servers]

    def answered(server: ServerThread) -> int:
        return server.server.frontend.admission.call_counts()[0]  # type: ignore[union-attr]

    def set_serving(serving: bool) -> None:
        out.run(out.server.frontend.set_health({"": serving}))  # type: ignore[union-attr]

    def rank(client: RankClient, calls: int) -> None:
        for _ in range(calls):
            client.rank(["ctr"], request(), timeout=10)  # a failure raises

    try:
        set_serving(False)
        with RankClient(targets) as client:
            before = [answered(s) for s in servers]
            rank(client, 40)
            assert [answered(s) - b for s, b in zip(servers, before, strict=True)] == [0, 40]
            assert all(s.server.frontend.admission.retried_calls == 0 for s in servers)  # kept out, not retried
            set_serving(True)
            deadline = time.monotonic() + DEADLINE_S
            while answered(out) == before[0]:  # its Watch says SERVING: it rejoins the rotation
                assert time.monotonic() < deadline, "the replica never rejoined the rotation"
                rank(client, 1)

        set_serving(False)
        with RankClient(targets, retry=RetryPolicy(health_check=False)) as client:
            before = [answered(s) for s in servers]
            rank(client, 40)
            assert answered(out) - before[0] >= 10, "without health checking round_robin sends it its share"
    finally:
        for server in servers:
            server.stop()


def test_the_retry_policy_is_grpcs_service_config_and_refuses_what_grpc_would():
    config = RetryPolicy().service_config()
    assert '"round_robin"' in config and '"retryPolicy"' in config and '"UNAVAILABLE"' in config
    assert '"RESOURCE_EXHAUSTED"' in config and '"healthCheckConfig": {"serviceName": ""}' in config
    # Hedging is the client's own (test_client_hedging.py): gRPC would take a hedgingPolicy and never hedge.
    hedged = RetryPolicy(hedging_delay_s=0.01).service_config()
    assert '"hedgingPolicy"' not in hedged and '"retryPolicy"' not in hedged and '"round_robin"' in hedged
    assert re.search(r'"maxAttempts": 3', config)
    with pytest.raises(ValueError, match="max_attempts 6"):
        RetryPolicy(max_attempts=6)
    with pytest.raises(ValueError, match="max_backoff_s"):
        RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.01)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_each_retry_reaches_a_replica_counted_and_a_call_refused_every_time_fails_after_max_attempts(
    frontend: str, tmp_path: Path
):
    server = ServerThread(ctr_repository(tmp_path / "repo"), frontend=frontend).start()
    try:
        too_large = request(rows=5000)  # past the largest request ctr takes: RESOURCE_EXHAUSTED by its size
        with RankClient(server.target, retry=RetryPolicy(max_attempts=3)) as client:
            with pytest.raises(RankError) as refused:
                client.rank(["ctr"], too_large, timeout=10)
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        admission = server.server.frontend.admission
        assert admission.retried_calls == 2  # the two retries, each with grpc-previous-rpc-attempts
        assert admission.call_counts()[grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]] == 3
        with RankClient(server.target, retry=None) as client, pytest.raises(RankError):
            client.rank(["ctr"], too_large, timeout=10)
        assert admission.retried_calls == 2 and admission.call_counts()[8] == 4  # one attempt, no retry
    finally:
        server.stop()


def test_retries_stop_at_the_calls_deadline(tmp_path: Path):
    """gRPC keeps a call's deadline across its attempts: with backoffs of up to 5 s and 5 attempts allowed, a
    call refused every time with a 0.5 s deadline ends DEADLINE_EXCEEDED, not after its 5 attempts (each
    backoff is drawn in (0, 5 s): all four under the deadline is a 1-in-10,000 draw)."""
    server = ServerThread(ctr_repository(tmp_path / "repo")).start()
    try:
        slow = RetryPolicy(max_attempts=5, initial_backoff_s=5.0, max_backoff_s=5.0)
        with RankClient(server.target, retry=slow) as client, pytest.raises(RankError) as ended:
            client.rank(["ctr"], request(rows=5000), timeout=0.5)  # RESOURCE_EXHAUSTED by its size, every time
        assert ended.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        admission = server.server.frontend.admission  # type: ignore[union-attr]
        attempts = admission.call_counts()[grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
        assert 1 <= attempts < 5
    finally:
        server.stop()


def test_a_target_uri_is_balanced_over_its_addresses_by_either_client(tmp_path: Path):
    """`ipv4:a,b` (what a list becomes) and `dns:///name:port` (a headless Service) given as they are: calls
    spread over every address the URI names, from RankClient and AsyncRankClient alike."""
    servers = [ServerThread(ctr_repository(tmp_path / f"repo{i}")).start() for i in range(2)]

    def answered() -> list[int]:
        return [s.server.frontend.admission.call_counts()[0] for s in servers]  # type: ignore[union-attr]

    async def rank_async(target: str, calls: int) -> None:
        async with AsyncRankClient(target) as client:
            for _ in range(calls):
                await client.rank(["ctr"], request(), timeout=10)

    try:
        uri = "ipv4:" + ",".join(s.target for s in servers)
        before = answered()
        with RankClient(uri) as client:
            for _ in range(20):
                client.rank(["ctr"], request(), timeout=10)
        after_sync = answered()
        asyncio.run(rank_async(uri, 20))
        after_async = answered()
        for first, last in ((before, after_sync), (after_sync, after_async)):
            took = [b - a for a, b in zip(first, last, strict=True)]
            assert sum(took) == 20 and min(took) >= 5, took
        port = servers[0].target.rsplit(":", 1)[1]
        with RankClient(f"dns:///localhost:{port}") as client:  # localhost's every address; one listens
            assert client.rank(["ctr"], request(), timeout=10)["ctr"].scores.shape == (8,)
    finally:
        for server in servers:
            server.stop()
