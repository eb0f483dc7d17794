"""TLS for the server's ports: certificate files checked, watched and rotated without a restart.

A port with TLS (`adrank serve --tls-cert F --tls-key F [--tls-client-ca F]`; the admin port takes the same
unless `--admin-tls-*` says otherwise; the HTTP port `--http-tls-cert/--http-tls-key`) has one
CertificateWatcher. It:
- loads the files at start-up, checked (TlsError naming the file and what is wrong, and the server does not
  start): a PEM certificate chain, a PEM private key that is not encrypted and that matches the chain's first
  certificate, a certificate not yet expired, and a PEM client CA bundle where mutual TLS is asked for;
- looks at the files every `refresh_s` (their size, mtime and inode), and when they change loads them with the
  same checks. Material that passes replaces the old for every connection made from then on (those already
  open keep theirs), with a log line naming the port, the subject and the expiry; material that does not is
  refused, the old kept, and an error line says why (a certificate and key replaced one after the other are
  first seen not to match: the next look, a second later, finds both and takes them);
- publishes what it serves into a private folder of its own (mode 0700, files 0600): what the C++ front end's
  gRPC FileWatcherCertificateProvider and the HTTP port's ssl contexts read, so that only checked material
  ever reaches a handshake, whatever is written to the operator's files meanwhile. The key and its chain are one
  file there, replaced by one rename: a reader at any moment finds a key and the certificate it matches (two
  files, renamed one after the other, would show a new key beside the old certificate in between);
- reports, for the metrics, each port's certificate expiry (`adrank_tls_certificate_expiry_timestamp_seconds`)
  and its reloads by result (`adrank_tls_reloads_total{result="ok"|"refused"}`).

The Python gRPC servers (the Python front end, the admin port) take `grpc_credentials()`: gRPC's dynamic SSL
server credentials, which ask the watcher at each new handshake whether the material changed. The HTTP port
takes `ssl_context()`, a fresh context per generation of the material.

Options (defaults and why):
  refresh_s = 1.0   A look at three files' metadata per second costs nothing, and a rotation (or a refusal)
                    shows within a second.

Thread-safety: `poll` runs on the watcher's own thread (Ticker) or a test's; `current`, `grpc_credentials`'s
fetcher, `ssl_context` and `figures` are called from gRPC's and the HTTP server's threads: the material is one
immutable value swapped under a lock.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import adrank._core as core
from adrank.ticker import Ticker

log = logging.getLogger("adrank.tls")
# The published key and certificate chain, in one file (see the module's docstring).
IDENTITY = "identity.pem"


class TlsError(ValueError):
    """Certificate material that cannot be served; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class TlsFiles:
    """The files one port's TLS comes from (adrank serve's --tls-cert, --tls-key, --tls-client-ca)."""

    cert: Path
    key: Path
    client_ca: Path | None = None  # given: mutual TLS, clients must present a certificate this CA signed
    refresh_s: float = 1.0

    def paths(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]


@dataclass(frozen=True)
class TlsMaterial:
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None
    subject: str
    not_after: datetime.datetime  # UTC

    def describe(self) -> str:
        return f"{self.subject}, expires {self.not_after.isoformat(timespec='seconds')}"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsError(f"{what} {path}: cannot read: {error.strerror or error}") from error


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise TlsError(f"{what} {path}: not a PEM certificate ({error})") from error
    return certificates


def load_material(files: TlsFiles, now: datetime.datetime | None = None) -> TlsMaterial:
    """Reads and checks one port's files; TlsError naming the file otherwise."""
    cert_pem = _read(files.cert, "certificate")
    key_pem = _read(files.key, "key")
    leaf = _certificates(cert_pem, files.cert, "certificate")[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:  # TypeError: an encrypted key, which a server cannot unlock
        raise TlsError(f"key {files.key}: not an unencrypted PEM private key ({error})") from error
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise TlsError(f"key {files.key} does not match certificate {files.cert}")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        raise TlsError(f"certificate {files.cert} expired at {leaf.not_valid_after_utc.isoformat()}")
    client_ca_pem = None
    if files.client_ca is not None:
        client_ca_pem = _read(files.client_ca, "client CA")
        _certificates(client_ca_pem, files.client_ca, "client CA")
    return TlsMaterial(cert_pem, key_pem, client_ca_pem, leaf.subject.rfc4514_string(), leaf.not_valid_after_utc)


def _signature(paths: list[Path]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        try:
            stat = path.stat()
            out.append((stat.st_size, stat.st_mtime_ns, stat.st_ino))
        except OSError:
            out.append((-1, -1, -1))
    return tuple(out)


class CertificateWatcher:
    def __init__(self, port: str, files: TlsFiles) -> None:
        self.port = port  # "grpc", "admin", "http": for logs and metrics
        self.files = files
        self._lock = threading.Lock()
        self._signature = _signature(files.paths())
        self._material = load_material(files)
        self.generation = 1
        self.reloads = {"ok": 0, "refused": 0}
        self._refusal = ""  # the current refusal's reason, logged once
        self._folder = Path(tempfile.mkdtemp(prefix=f"adrank-tls-{port}-"))  # mode 0700
        self._publish(self._material)
        self._ticker: Ticker | None = None
        log.info("tls: %s port: serving %s from %s", port, self._material.describe(), files.cert)

    # ---- the material ------------------------------------------------------------------------------

    @property
    def current(self) -> TlsMaterial:
        with self._lock:
            return self._material

    @property
    def mutual(self) -> bool:
        return self.files.client_ca is not None

    def published(self) -> core.TlsFiles:
        """The served material's files, for the C++ front end (cpp/frontend/tls_credentials.h)."""
        files = core.TlsFiles()
        files.cert_file = files.key_file = str(self._folder / IDENTITY)  # one PEM: the key, then its chain
        files.client_ca_file = str(self._folder / "client_ca.pem") if self.mutual else ""
        files.refresh_s = max(1, round(self.files.refresh_s))
        return files

    def poll(self) -> None:
        """Takes the files if they changed and pass the checks; keeps the old material otherwise."""
        signature = _signature(self.files.paths())
        if signature == self._signature:
            return
        try:
            material = load_material(self.files)
        except TlsError as error:
            if str(error) != self._refusal:
                self.reloads["refused"] += 1
                kept = self.current.describe()
                log.error("tls: %s port: keeping %s: the new files are refused: %s", self.port, kept, error)
            self._refusal = str(error)
            return  # the signature is not taken: the next look tries again (a key written after its cert)
        self._signature, self._refusal = signature, ""
        if material == self.current:
            return
        self._publish(material)
        with self._lock:
            self._material = material
            self.generation += 1
        self.reloads["ok"] += 1
        log.info("tls: %s port: certificate reloaded: %s", self.port, material.describe())

    def _publish(self, material: TlsMaterial) -> None:
        # PEM readers skip the blocks of other types, so the one file serves as the key and as the chain. gRPC's
        # file watcher reads it twice (as each) and rereads when it changed in between.
        parts = [(IDENTITY, material.key_pem.rstrip() + b"\n" + material.cert_pem)]
        if material.client_ca_pem is not None:
            parts.append(("client_ca.pem", material.client_ca_pem))
        for name, data in parts:
            fd, tmp = tempfile.mkstemp(dir=self._folder)
            with os.fdopen(fd, "wb") as f:  # mkstemp: mode 0600
                f.write(data)
            os.replace(tmp, self._folder / name)

    # ---- the ports' credentials --------------------------------------------------------------------

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For a grpc(.aio) server: each new handshake uses the material current then."""
        served = [self.generation]

        def configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(material.key_pem, material.cert_pem)], root_certificates=material.client_ca_pem
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            with self._lock:
                if self.generation == served[0]:
                    return None  # unchanged: gRPC keeps what it has
                served[0] = self.generation
                return configuration(self._material)

        return grpc.dynamic_ssl_server_credentials(
            configuration(self.current), fetch, require_client_authentication=self.mutual
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server context holding the current material (a new one per generation: contexts are not shared
        across a rotation)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with self._lock:  # the published files and the generation agree under the lock
            context.load_cert_chain(self._folder / IDENTITY)  # the key is in the same file
            if self.mutual:
                context.load_verify_locations(self._folder / "client_ca.pem")
                context.verify_mode = ssl.CERT_REQUIRED
        return context

    def figures(self) -> tuple[float, dict[str, int]]:
        """The served certificate's expiry (Unix seconds) and the reloads so far by result, for the metrics."""
        return self.current.not_after.timestamp(), dict(self.reloads)

    # ---- the watcher thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._ticker = Ticker(f"adrank-tls-{self.port}", self.files.refresh_s, self.poll, log)
        self._ticker.start()

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        shutil.rmtree(self._folder, ignore_errors=True)
