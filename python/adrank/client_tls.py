"""ClientTls: the TLS settings of a client of an adrank server (RankClient, AsyncRankClient, the admin
commands' ServerTarget): which CA to trust, and the certificate a server that asks for one (mTLS) gets.

    tls = ClientTls(root_ca=Path("ca.pem"))                                              # TLS
    tls = ClientTls(root_ca=Path("ca.pem"), cert=Path("me.pem"), key=Path("me.key"))     # mTLS
    RankClient("ranker.internal:8500", tls=tls)

Contract:
- `root_ca` None trusts the system's roots (grpc's bundled roots, or $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH): right
  for a server whose certificate a public CA signed; a fleet's own CA is given as a PEM file.
- `cert` and `key` go together (a client certificate and its private key, PEM) or not at all: one without the
  other is a ClientTlsError naming both fields when the settings are made, not a handshake that fails later.
- The key file is a secret: one whose mode lets its group or others read it is refused, by the very check the
  admin token file gets (admin_token.readable_by_others), with the file, its mode and the fix.
- `server_name` None checks the server's certificate against the host of the target; a name given overrides
  it (grpc.ssl_target_name_override), for a target that is an IP address the certificate does not carry, or
  a fleet whose replicas all carry one service name.
- The files are read by `credentials()`, which the clients call when they are made: a file that cannot be read
  or is not PEM is a one-line ClientTlsError naming it, then and there. A rotated file takes effect for the
  clients made after it; a client made keeps the credentials it read.

A ClientTls is immutable and holds only paths and a name: share it across threads and clients. Only the
standard library at import time (grpc is imported by `credentials()`): the admin commands check their --tls-*
options with it while click parses them, and must start fast (tests/python/test_cli_startup.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adrank.admin_token import readable_by_others

if TYPE_CHECKING:
    import grpc

# What PEM data starts its blocks with; the key's label varies (PRIVATE KEY, EC PRIVATE KEY, RSA PRIVATE KEY).
_CERTIFICATE_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKER = b"PRIVATE KEY-----"


class ClientTlsError(ValueError):
    """TLS settings refused; the one-line message names the field or file and what is wrong."""


@dataclass(frozen=True)
class ClientTlsFiles:
    """The PEM bytes of a ClientTls's files, read and checked (None where a file is not given)."""

    root_ca: bytes | None
    cert: bytes | None
    key: bytes | None


@dataclass(frozen=True)
class ClientTls:
    root_ca: Path | None = None  # None: the system's roots
    cert: Path | None = None  # with key: the client certificate an mTLS server asks for
    key: Path | None = None  # mode 0600 or 0400
    server_name: str | None = None  # None: the target's host

    def __post_init__(self) -> None:
        # A str is taken for a path: the dataclass is frozen, so the conversion is made through object.
        for field in ("root_ca", "cert", "key"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, field, Path(value))
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise ClientTlsError(
                f"ClientTls: cert and key go together (the client certificate and its private key): {given} is"
                f" given without {missing}"
            )
        if self.server_name is not None and not self.server_name.strip():
            raise ClientTlsError("ClientTls: server_name is empty (None checks the target's own host)")

    def read(self) -> ClientTlsFiles:
        """The files' PEM bytes; ClientTlsError naming the file when one cannot be read, is not PEM, or (the key)
        is readable by others."""
        key = None
        if self.key is not None:
            try:
                refusal = readable_by_others(self.key)
            except OSError as error:
                raise ClientTlsError(f"{self.key}: cannot read the TLS key: {error.strerror}") from error
            if refusal is not None:
                raise ClientTlsError(refusal)
            key = _read_pem(self.key, "TLS key", _KEY_MARKER)
        return ClientTlsFiles(
            root_ca=None if self.root_ca is None else _read_pem(self.root_ca, "TLS root CA", _CERTIFICATE_MARKER),
            cert=None if self.cert is None else _read_pem(self.cert, "TLS certificate", _CERTIFICATE_MARKER),
            key=key,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials, the files read now (`read`)."""
        import grpc

        files = self.read()
        return grpc.ssl_channel_credentials(
            root_certificates=files.root_ca, private_key=files.key, certificate_chain=files.cert
        )

    def channel_options(self, default_name: str | None = None) -> list[tuple[str, str]]:
        """The channel options the credentials need: the name the server's certificate is checked against, when
        it is not the target's host — `server_name`, else `default_name` (a target list's common host, which its
        resolved ipv4:/ipv6: URI no longer carries)."""
        name = self.server_name or default_name
        if name is None:
            return []
        # The authority (HTTP/2 :authority) names the service too, as it would had the target been that name.
        return [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]


def _read_pem(path: Path, what: str, marker: bytes) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ClientTlsError(f"{path}: cannot read the {what}: {error.strerror}") from error
    if marker not in data:
        raise ClientTlsError(f"{path}: the {what} is not PEM (no '{marker.decode()}' block)")
    return data
