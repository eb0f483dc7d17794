"""ChannelPlan: the one gRPC channel a client (RankClient, AsyncRankClient) opens for its target — one
"host:port", or a list of them balanced call by call — in plaintext or with ClientTls.

Contract:
- One "host:port" (a str) is handed to gRPC as it is: gRPC resolves the name (dns, its default scheme) and
  keeps re-resolving it, as a client always has (pick_first among the name's addresses).
- A list or tuple of "host:port" is one channel with gRPC's `round_robin` policy over every address: each call
  goes to the next replica whose connection is READY; a replica that goes away leaves the rotation when its
  connection fails (gRPC's subchannel state) and rejoins when it reconnects. The list is resolved ONCE, when
  the plan is made: an IP literal is taken as it is, a host name is looked up then (getaddrinfo) and each of
  its addresses joins the rotation. gRPC's resolvers take a list only as an `ipv4:` or `ipv6:` URI of IP
  addresses (grpc/doc/naming.md: "ipv4:address[:port][,address[:port],...]"), and a URI holds one family: the
  list uses IPv4 when every target has an IPv4 address, else IPv6 when every target has one, else it is
  refused. Addresses that change later are taken up by a new client.
- With TLS, a list's certificates are checked against one name, as the URI carries none: ClientTls.server_name,
  else the targets' common host (e.g. every target on "ranker.internal" or 127.0.0.1); targets on different
  hosts need server_name (the name every replica's certificate carries) and are refused without it.
- Any other gRPC target URI (`dns:///ranker.ns.svc:8500` for a headless Service, `ipv4:a:p,b:q`) is a str and
  is handed to gRPC as it is.
- With a RetryPolicy (client_retry.py; RankClient's default), the channel's service config balances every
  target, a single name's addresses too, with round_robin, checks the replicas' health (target lists and URIs:
  a fleet, client_retry.py) and retries (or hedges) Rank calls; a service config published in DNS is ignored
  (this one is the client's). Without one (None), a single target is gRPC's pick_first and nothing is retried.
- Errors in the target (no port, a name that does not resolve, an empty list) are ValueError naming it, raised
  when the client is made; TLS files are read then too (client_tls.py).

A ChannelPlan is immutable; each client opens its own channel from it (sync or grpc.aio).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from adrank.client_retry import RetryPolicy
from adrank.client_tls import ClientTls

Target = str | Sequence[str]
# A request carries every candidate's features: no client-side limit on what is sent (the server has its own);
# replies are N float32 scores per model, well under 32 MiB, past gRPC's 4 MiB default.
_MESSAGE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", -1),
)


# The largest request a call may need to send again: the server's own message bound (32 MiB).
RETRY_BUFFER_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ChannelPlan:
    target: str  # what gRPC is given: the "host:port" itself, or an ipv4:/ipv6: URI of the list
    options: tuple[tuple[str, Any], ...]
    credentials: grpc.ChannelCredentials | None  # None: plaintext

    @staticmethod
    def create(target: Target, tls: ClientTls | None = None, retry: RetryPolicy | None = None) -> ChannelPlan:
        if isinstance(target, str):
            tls_options = [] if tls is None else tls.channel_options()
            options = (*_MESSAGE_OPTIONS, *_retry_options(retry, fleet=_is_uri(target)), *tls_options)
            return ChannelPlan(target, options, _credentials(tls))
        targets = list(target)
        if not targets:
            raise ValueError("the target list is empty: give at least one 'host:port'")
        hosts = [_split(t) for t in targets]
        uri = _address_list([_resolve(t, host, port) for t, (host, port) in zip(targets, hosts, strict=True)])
        options = (*_MESSAGE_OPTIONS, *_retry_options(retry, fleet=True), ("grpc.lb_policy_name", "round_robin"))
        if tls is not None:
            names = {host for host, _ in hosts}
            if tls.server_name is None and len(names) > 1:
                raise ValueError(
                    f"targets {targets} are on different hosts: with TLS give ClientTls(server_name=...), the name"
                    " every replica's certificate carries"
                )
            options += tuple(tls.channel_options(default_name=names.pop()))
        return ChannelPlan(uri, options, _credentials(tls))

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.credentials, options=self.options)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)


def _is_uri(target: str) -> bool:
    """A gRPC target URI (dns:///name:port, ipv4:a:p,b:q, unix:path), not a plain "host:port"."""
    scheme, colon, rest = target.partition(":")
    return bool(colon) and scheme.isalpha() and (rest.startswith("/") or scheme in ("ipv4", "ipv6", "unix"))


def _retry_options(retry: RetryPolicy | None, fleet: bool) -> tuple[tuple[str, Any], ...]:
    if retry is None:
        return ()
    return (
        ("grpc.service_config", retry.service_config(fleet)),
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        ("grpc.max_reconnect_backoff_ms", round(retry.max_reconnect_backoff_s * 1000)),
        # gRPC keeps a call's request to send it again only up to this size, and never retries a larger one
        # (default 256 KiB: a ctr auction of 1,000 candidates, or 170 relevance ones): room for the largest.
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
    )


def _credentials(tls: ClientTls | None) -> grpc.ChannelCredentials | None:
    return None if tls is None else tls.credentials()


def _split(target: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host without brackets, port)."""
    host, _, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"target {target!r}: expected HOST:PORT ([::1]:8500 for an IPv6 address)")
    return host, int(port)


# One target's addresses by family: ipaddress's version (4, 6) to "address:port" as the URI spells it.
_Addresses = dict[int, list[str]]


def _resolve(target: str, host: str, port: int) -> _Addresses:
    try:
        literal = ipaddress.ip_address(host)
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [literal]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise ValueError(f"target {target!r}: {host!r} cannot be resolved: {reason}") from error
        # getaddrinfo's order (the system's preference), each address once.
        ips = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    addresses: _Addresses = {}
    for ip in ips:
        addresses.setdefault(ip.version, []).append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    return addresses


def _address_list(resolved: list[_Addresses]) -> str:
    for version, scheme in ((4, "ipv4"), (6, "ipv6")):
        if all(version in addresses for addresses in resolved):
            every = dict.fromkeys(a for addresses in resolved for a in addresses[version])
            return f"{scheme}:{','.join(every)}"
    raise ValueError(
        "the targets resolve to IPv4 for some and IPv6 for others: a gRPC address list holds one family; give"
        " targets of one"
    )
