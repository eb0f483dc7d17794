"""No port is shared (server/ports.py): a second `adrank serve` on a gRPC port (either front end), the admin
port or the HTTP port that a first one holds exits 1 with one line naming the option and the address, and
the first keeps serving every client."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from rollout_models import ctr_repository
from test_serve_process import end, serve_command, start

import adrank._core as core
import adrank.server.frontend as frontends
import adrank.server.ports as ports
from adrank.client import RankClient
from adrank.server.frontend import TransportOptions
from adrank.server.ports import GRPC_NO_REUSEPORT, PortUnavailable, add_grpc_port, check_free
from served import FRONTENDS

TOKEN = {"ADRANK_ADMIN_TOKEN": "t"}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def token(tmp_path):
    path = tmp_path / "token"
    path.write_text("t\n")
    path.chmod(0o600)
    return path


def second_serve(repo, *args: str) -> subprocess.CompletedProcess:
    """Another `adrank serve` with the admin service on; every port free (0) unless `args` names one."""
    command = serve_command(repo, "--admin-port", "0", *args)  # click: the last of a repeated option wins
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **TOKEN})


def assert_serves(grpc_address: str, http_address: str) -> None:
    with RankClient(grpc_address) as client:
        assert client.serving()
        for _ in range(10):  # new connections: the port is still the first's
            with RankClient(grpc_address) as fresh:
                assert fresh.serving()
        result = client.rank(["ctr"], {"dense": np.ones((3, 13), np.float32), "sparse": np.zeros((3, 26), np.int64)})
        assert result["ctr"].scores.shape == (3,)
    with urllib.request.urlopen(f"http://{http_address}/healthz", timeout=10) as reply:
        assert reply.status == 200


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_second_server_on_a_taken_port_exits_1_naming_the_option_and_the_first_keeps_serving(tmp_path, frontend):
    repo = ctr_repository(tmp_path / "repo")
    first, match, _ = start(
        repo, "--frontend", frontend, "--admin-port", "0", "--admin-token-file", str(token(tmp_path))
    )
    try:
        admin = re.search(r"admin (\S+)\)", match.string)
        assert admin is not None, match.string
        for option, address in (
            ("--grpc-port", match["grpc"]),
            ("--http-port", match["http"]),
            ("--admin-port", admin[1]),
        ):
            done = second_serve(repo, "--frontend", frontend, option, str(port_of(address)))
            assert done.returncode == 1, (option, done.stderr)
            assert done.stderr.splitlines() == [f"Error: {option}: {address} is already in use"], done.stderr
            assert first.poll() is None
            assert_serves(match["grpc"], match["http"])
    finally:
        end(first)


def test_check_free_names_the_port_and_why():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortUnavailable) as refused:
            check_free("admin", "127.0.0.1", port)
    assert (refused.value.name, refused.value.address, refused.value.reason) == (
        "admin",
        f"127.0.0.1:{port}",
        "is already in use",
    )
    check_free("grpc", "127.0.0.1", 0)  # any free port: never taken
    with pytest.raises(PortUnavailable, match=r"192\.0\.2\.1:\d+ cannot be bound: Cannot assign requested address"):
        check_free("http", "192.0.2.1", 8000)  # TEST-NET-1: not this machine's


@pytest.fixture
def reuseport_holder() -> Iterator[int]:
    """A port held by a listener with SO_REUSEPORT, as gRPC's own are by default: a gRPC server that sets it
    too (gRPC's default) would bind beside it."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_grpc_server_with_its_default_shares_the_port_the_reason_for_all_this(reuseport_holder):
    async def bind() -> int:
        server = grpc.aio.server()
        try:
            return server.add_insecure_port(f"127.0.0.1:{reuseport_holder}")
        finally:
            await server.stop(0)

    assert asyncio.run(bind()) == reuseport_holder


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_each_front_end_refuses_a_shared_port_even_when_taken_after_the_check(monkeypatch, reuseport_holder, frontend):
    """gRPC's own bind refuses it (SO_REUSEPORT off), not only the check before it; the error says why."""
    for module in (frontends, ports):  # as if taken between the check and the bind
        monkeypatch.setattr(module, "check_free", lambda *_: None)
    models = SimpleNamespace(registry=core.ModelRegistry())

    async def create() -> None:
        frontends.create_frontend(frontend, TransportOptions(port=reuseport_holder), models)

    with pytest.raises(PortUnavailable) as refused:
        asyncio.run(create())
    assert (refused.value.name, refused.value.address, refused.value.reason) == (
        "grpc",
        f"127.0.0.1:{reuseport_holder}",
        "is already in use",
    )


def test_the_admin_port_refuses_a_shared_port(reuseport_holder):
    async def bind() -> None:
        server = grpc.aio.server(options=[GRPC_NO_REUSEPORT])
        try:
            with pytest.raises(RuntimeError):  # gRPC's own bind: what add_grpc_port turns into PortUnavailable
                server.add_insecure_port(f"127.0.0.1:{reuseport_holder}")
            with pytest.raises(PortUnavailable, match=f"admin port: 127.0.0.1:{reuseport_holder} is already in use"):
                add_grpc_port(server, "admin", "127.0.0.1", reuseport_holder)
        finally:
            await server.stop(0)

    asyncio.run(bind())
