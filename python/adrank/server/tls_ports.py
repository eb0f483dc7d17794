"""TlsPorts: which of the server's ports serve TLS, each with its CertificateWatcher (tls.py).

The gRPC port's files give its watcher; the admin port takes the gRPC port's watcher unless given files of its
own; the HTTP port serves HTTPS only when given its own files (its clients are browsers, Prometheus and probes,
which often trust another CA than the callers of Rank). A watcher shared by two ports is started, polled and
reported once.

Thread-safety: made, started and stopped by the server's start-up and shutdown; `figures` is read by the metrics
from any thread (each watcher's figures are its own, lock-guarded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adrank.server.tls import CertificateWatcher, TlsFiles


@dataclass(frozen=True)
class TlsPorts:
    grpc: CertificateWatcher | None = None
    admin: CertificateWatcher | None = None
    http: CertificateWatcher | None = None

    @staticmethod
    def create(grpc: TlsFiles | None, admin: TlsFiles | None, http: TlsFiles | None) -> TlsPorts:
        """Loads each port's material now (TlsError naming the file when it cannot be served)."""
        grpc_watcher = CertificateWatcher("grpc", grpc) if grpc is not None else None
        admin_watcher = CertificateWatcher("admin", admin) if admin is not None else grpc_watcher
        http_watcher = CertificateWatcher("http", http) if http is not None else None
        return TlsPorts(grpc_watcher, admin_watcher, http_watcher)

    def watchers(self) -> list[CertificateWatcher]:
        distinct: dict[int, CertificateWatcher] = {}
        for watcher in (self.grpc, self.admin, self.http):
            if watcher is not None:
                distinct.setdefault(id(watcher), watcher)
        return list(distinct.values())

    def start(self) -> None:
        for watcher in self.watchers():
            watcher.start()

    def stop(self) -> None:
        for watcher in self.watchers():
            watcher.stop()

    def figures(self) -> list[tuple[str, float, Mapping[str, int]]]:
        """Per watched port: its name, its certificate's expiry (Unix seconds), its reloads by result."""
        return [(w.port, *w.figures()) for w in self.watchers()]
