"""The adrank client: score an auction's candidates from Python.

    from adrank.client import RankClient          # AsyncRankClient has the same API, awaitable
    with RankClient("127.0.0.1:8500") as client:
        result = client.rank(models=["ctr"], candidates={"dense": dense, "sparse": sparse}, timeout=0.05)
        result["ctr"].scores    # numpy float32 [N], candidate order
        result["ctr"].version   # the version that answered

`models` entries are a name (the serving version answers) or a (name, version) pair (pinned). Context
tensors have a leading dimension of 1 (a str for text): the server broadcasts them. Errors raise RankError carrying
the gRPC status code and the server's message. A client holds one channel: share it across threads
(RankClient) or tasks (AsyncRankClient) rather than opening one per call.

    tls = ClientTls(root_ca=Path("ca.pem"))        # client_tls.py; cert= and key= as well for mTLS
    RankClient(["10.0.0.1:8500", "10.0.0.2:8500"], tls=tls, ...)   # one channel, round_robin over both

A target list and TLS are made into the channel by client_channel.py (ChannelPlan), which says how a list is
resolved.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adrank.client_channel import ChannelPlan, Target
from adrank.client_hedging import Hedging, Metadata
from adrank.client_retry import DEFAULT_RETRY, RetryPolicy
from adrank.client_tls import ClientTls
from adrank.tenants import TENANT_METADATA_KEY
from adrank.v1 import ranking_pb2 as pb
from adrank.v1 import ranking_pb2_grpc as pb_grpc
from adrank.wire import encode_all

ModelRef = str | tuple[str, int]
Tensors = Mapping[str, np.ndarray | list[str] | str]


class RankError(Exception):
    """A failed Rank call: `code` is the gRPC status, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class ModelResult:
    model: str
    version: int
    scores: np.ndarray  # float32 [N], candidate order
    queue_us: int
    compute_us: int
    batch_rows: int


@dataclass(frozen=True)
class RankResult(Mapping[str, ModelResult]):
    request_id: str
    server_us: int
    results: dict[str, ModelResult]

    def __getitem__(self, model: str) -> ModelResult:
        return self.results[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)


def build_request(
    models: Sequence[ModelRef],
    candidates: Tensors,
    context: Tensors | None = None,
    *,
    request_id: str = "",
    priority: int | None = None,
    routing_key: str = "",
) -> pb.RankRequest:
    """`priority` None: the model's default class (0 is the highest; classes above the default need a
    tenant configured for them)."""
    specs = [pb.ModelSpec(name=m) if isinstance(m, str) else pb.ModelSpec(name=m[0], version=m[1]) for m in models]
    return pb.RankRequest(
        request_id=request_id,
        models=specs,
        candidates=encode_all(candidates),
        context=encode_all(context),
        priority=priority,
        routing_key=routing_key,
    )


def _metadata(tenant: str | None) -> Metadata:
    return () if tenant is None else ((TENANT_METADATA_KEY, tenant),)


def _hedging(retry: RetryPolicy | None) -> Hedging | None:
    """The client's own hedging where the policy asks for it (gRPC's C core does not hedge: client_hedging.py)."""
    return Hedging(retry) if retry is not None and retry.hedging_delay_s is not None else None


def parse_response(response: pb.RankResponse) -> RankResult:
    results = {
        r.model: ModelResult(
            model=r.model,
            version=r.version,
            scores=np.frombuffer(r.scores, dtype="<f4"),
            queue_us=r.timing.queue_us,
            compute_us=r.timing.compute_us,
            batch_rows=r.timing.batch_rows,
        )
        for r in response.results
    }
    return RankResult(request_id=response.request_id, server_us=response.server_us, results=results)


def _error(error: grpc.RpcError) -> RankError:
    return RankError(error.code(), error.details() or "")


class RankClient:
    """`target`: one "host:port", or a list (or tuple) of them: ONE channel balanced by gRPC's `round_robin`
    policy, each call on the next replica whose connection is READY; a replica that goes away is skipped (its
    connection's failure takes it out of the rotation: gRPC's subchannel state) and rejoins when it is back.
    A list is resolved once, when the client is made (client_channel.py); any gRPC target URI works too
    (`dns:///ranker.ns.svc:8500`: a headless Service's pods, re-resolved by gRPC).

    `retry`: RetryPolicy() by default (client_retry.py): round_robin over every address, replicas whose health
    says NOT_SERVING (loading, draining) left out, and a call that fails with UNAVAILABLE or RESOURCE_EXHAUSTED
    retried on the next replica with backoff within its deadline, or with `hedging_delay_s` hedged
    (client_hedging.py); None: none of it (a single target is then pick_first). A call that still fails
    raises its RankError.

    `tls`: ClientTls (root CA, client certificate and key, server name); None: plaintext. Its files are read
    when the client is made; a file unreadable, not PEM, or a key others can read is a ClientTlsError then.

    `tenant`: sent as `x-adrank-tenant` with every call (None: the server's "default" tenant).

    `channel`: a channel of the caller's own, used instead (target and tls are then not used)."""

    def __init__(
        self,
        target: Target,
        *,
        tls: ClientTls | None = None,
        channel: grpc.Channel | None = None,
        tenant: str | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
    ) -> None:
        self._metadata = _metadata(tenant)
        self._channel = channel or ChannelPlan.create(target, tls, retry).channel()
        self._stub = pb_grpc.RankingStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._hedging = _hedging(retry)

    def rank(
        self,
        models: Sequence[ModelRef],
        candidates: Tensors,
        context: Tensors | None = None,
        *,
        timeout: float | None = None,
        request_id: str = "",
        priority: int | None = None,
        routing_key: str = "",
    ) -> RankResult:
        request = build_request(
            models, candidates, context, request_id=request_id, priority=priority, routing_key=routing_key
        )
        try:
            if self._hedging is None:
                return parse_response(self._stub.Rank(request, timeout=timeout, metadata=self._metadata))

            def send(metadata: Metadata, left: float | None) -> grpc.Future:
                return self._stub.Rank.future(request, timeout=left, metadata=metadata)

            return parse_response(self._hedging.call(send, self._metadata, timeout))
        except grpc.RpcError as error:
            raise _error(error) from None

    @property
    def hedges(self) -> int:
        """Hedged copies this client sent after a call's first (0 without hedging); each is counted by the
        replica it reached as a retry (adrank_retried_calls_total)."""
        return 0 if self._hedging is None else self._hedging.hedges

    def serving(self, service: str = "") -> bool:
        """Whether the server's health service says SERVING (False while it loads or drains)."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Blocks until SERVING; TimeoutError after `timeout` seconds."""
        give_up = time.monotonic() + timeout
        while not self.serving():
            if time.monotonic() > give_up:
                raise TimeoutError(f"the server did not report SERVING within {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RankClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncRankClient:
    """RankClient.rank, awaitable, on a grpc.aio channel. `target`, `tls`, `tenant` and `retry` are
    RankClient's."""

    def __init__(
        self,
        target: Target,
        *,
        tls: ClientTls | None = None,
        tenant: str | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
    ) -> None:
        self._metadata = _metadata(tenant)
        self._channel = ChannelPlan.create(target, tls, retry).aio_channel()
        self._stub = pb_grpc.RankingStub(self._channel)
        self._hedging = _hedging(retry)

    async def rank(
        self,
        models: Sequence[ModelRef],
        candidates: Tensors,
        context: Tensors | None = None,
        *,
        timeout: float | None = None,
        request_id: str = "",
        priority: int | None = None,
        routing_key: str = "",
    ) -> RankResult:
        request = build_request(
            models, candidates, context, request_id=request_id, priority=priority, routing_key=routing_key
        )
        try:
            if self._hedging is None:
                return parse_response(await self._stub.Rank(request, timeout=timeout, metadata=self._metadata))

            def send(metadata: Metadata, left: float | None) -> Any:  # a grpc.aio.UnaryUnaryCall
                return self._stub.Rank(request, timeout=left, metadata=metadata)

            return parse_response(await self._hedging.call_async(send, self._metadata, timeout))
        except grpc.RpcError as error:
            raise _error(error) from None

    @property
    def hedges(self) -> int:
        """RankClient.hedges."""
        return 0 if self._hedging is None else self._hedging.hedges

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncRankClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
