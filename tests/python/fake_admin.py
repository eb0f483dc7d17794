"""A stand-in for a server's admin port, for the command line's tests: it answers ListModels with one model
(ctr: version 1 AVAILABLE and stable, version 2 FAILED) to a caller with the right token, UNAUTHENTICATED to
others, and nothing else. No models are loaded, so a test of the client side starts in milliseconds.

`fake_admin_server(credentials)` serves it over TLS (grpc.ssl_server_credentials), for the admin commands' --tls-*
options. `bare_grpc_server()` is a gRPC server with no service at all: what a server's gRPC (Rank) port answers to an
admin call, UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

from adrank.admin_messages import rollout_message
from adrank.rollout.policy import RolloutPolicy
from adrank.v1 import admin_pb2 as pb
from adrank.v1 import admin_pb2_grpc

TOKEN = "fake-admin-token"


class FakeAdmin(admin_pb2_grpc.AdminServicer):
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> Any:
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin: a valid 'authorization: Bearer' token is needed")
        versions = [
            pb.VersionStatus(model="ctr", version=1, state="AVAILABLE", role="stable"),
            pb.VersionStatus(model="ctr", version=2, state="FAILED", reason="sha256 differs from meta.json"),
        ]
        rollout = rollout_message("ctr", RolloutPolicy(stable=1), routed_stable=1)
        return pb.ListModelsResponse(
            models=[pb.ModelStatus(name="ctr", versions=versions, on_disk=[1, 2], rollout=rollout)]
        )


@contextmanager
def _serving(add_services: Any, credentials: grpc.ServerCredentials | None = None) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_services(server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def fake_admin_server(credentials: grpc.ServerCredentials | None = None) -> Any:
    """A context manager: the fake admin service's HOST:PORT while it runs (plaintext, or TLS with `credentials`)."""
    return _serving(lambda server: admin_pb2_grpc.add_AdminServicer_to_server(FakeAdmin(), server), credentials)


def bare_grpc_server() -> Any:
    """A context manager: the HOST:PORT of a gRPC server that serves no service (UNIMPLEMENTED to every call)."""
    return _serving(lambda server: None)
