"""The server's ports: one that cannot be bound — another process holds it, say — stops the start with
`PortUnavailable`, which says which port, its address and why (`adrank serve` turns it into one line naming
the option: `Error: --grpc-port: 127.0.0.1:8500 is already in use`, exit 1).

No port is shared. gRPC sets SO_REUSEPORT on its listeners unless told not to: a second server on a port
already served would then bind beside the first, and the kernel would hand each new connection to either
(clients reaching a server they did not mean, with other models or versions). Every gRPC server here turns
it off — `GRPC_NO_REUSEPORT` for grpc.aio (the Python front end, the admin port), GRPC_ARG_ALLOW_REUSEPORT in
the C++ front end (cpp/frontend/rank_server.cc) — so a taken port fails to bind, as the HTTP port's does.

gRPC says only that a bind failed (port 0 or a RuntimeError), not why, and writes its own error lines to
stderr; so a gRPC port is first tried with a plain socket (`check_free`), which learns the errno and keeps
gRPC from failing noisily; the rare port taken between that try and gRPC's bind is still refused.
"""

from __future__ import annotations

import errno
import socket
from typing import Literal

import grpc

# Which of the server's ports: `adrank serve` names its option from it (--grpc-port, --http-port, --admin-port).
PortName = Literal["grpc", "http", "admin"]
# The channel argument that keeps a grpc.aio server from sharing its port with another listener.
GRPC_NO_REUSEPORT = ("grpc.so_reuseport", 0)


class PortUnavailable(OSError):
    """`name`'s port could not be bound at `address` (host:port) for `reason` ("is already in use", ...)."""

    def __init__(self, name: PortName, address: str, reason: str) -> None:
        super().__init__(f"{name} port: {address} {reason}")
        self.name = name
        self.address = address
        self.reason = reason


def why(error: OSError) -> str:
    """A failed bind's reason, as the end of a sentence that starts with the address."""
    if isinstance(error, socket.gaierror):
        return f"cannot be resolved: {error.strerror}"
    if error.errno == errno.EADDRINUSE:
        return "is already in use"
    return f"cannot be bound: {error.strerror or error}"


def _bind_error(host: str, port: int) -> OSError | None:
    """What binding every address `host` resolves to at `port` fails with now; None if each binds."""
    try:
        resolved = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return error
    for family, kind, protocol, _, address in resolved:
        with socket.socket(family, kind, protocol) as probe:
            # As gRPC and http.server bind: a port whose old connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                return error
    return None


def check_free(name: PortName, host: str, port: int) -> None:
    """Raises PortUnavailable if `host:port` cannot be bound now (port 0, any free port, always can)."""
    if port == 0:
        return
    error = _bind_error(host, port)
    if error is not None:
        raise PortUnavailable(name, f"{host}:{port}", why(error))


def unavailable(name: PortName, host: str, port: int) -> PortUnavailable:
    """The error for a bind that failed without saying why (gRPC's): tries the address again to learn it."""
    error = _bind_error(host, port)
    # None: free again by now (the holder left between the two tries).
    return PortUnavailable(name, f"{host}:{port}", why(error) if error is not None else "could not be bound")


def add_grpc_port(
    server: grpc.aio.Server, name: PortName, host: str, port: int, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Binds a grpc.aio server (made with GRPC_NO_REUSEPORT) to `host:port`, plaintext or with `credentials`
    (TLS: server/tls.py); the port it bound (port 0: the free one picked), else PortUnavailable."""
    check_free(name, host, port)
    address = f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio raises where older versions returned 0
        bound = 0
    if bound == 0:
        raise unavailable(name, host, port)
    return bound
