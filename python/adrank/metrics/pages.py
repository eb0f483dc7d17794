"""The operators' pages on the HTTP port: `/metrics` and the live dashboard.

- `/metrics`: the Prometheus exposition of a fresh sample (exporter.py), in the text format or in
  OpenMetrics when the scraper asks for it, gzipped when it accepts gzip (Prometheus does);
- `/dashboard`: the page (python/adrank/dashboard/index.html), its scripts and styles under
  `/dashboard/<file>`: static files shipped in the package, nothing fetched from elsewhere;
- `/dashboard/data?minutes=M`: the JSON the page polls (history.py), M from 1 to the minutes kept (10).

Thread-safety: `handle` is called on the HTTP server's threads, concurrently.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from adrank.metrics.history import MetricsHistory

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_FILE_NAME = re.compile(r"^[A-Za-z0-9_-]+\.[a-z]+$")  # no path separators, no dot-dot


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def text(status: int, body: str) -> Reply:
    return Reply(status, "text/plain; charset=utf-8", body.encode())


class ObservabilityPages:
    def __init__(self, registry: CollectorRegistry, history: MetricsHistory) -> None:
        self._registry = registry
        self._history = history

    def handle(self, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str]) -> Reply | None:
        """The reply to a GET of `path`; None when the path is not one of these pages."""
        if path == "/metrics":
            return self._metrics(headers)
        if path in ("/dashboard", "/dashboard/"):
            return self._static("index.html")
        if path == "/dashboard/data":
            return self._data(query)
        if path.startswith("/dashboard/"):
            return self._static(path.removeprefix("/dashboard/"))
        return None

    def _metrics(self, headers: Mapping[str, str]) -> Reply:
        encoder, content_type = choose_encoder(headers.get("Accept", ""))
        body = encoder(self._registry)
        if "gzip" in headers.get("Accept-Encoding", ""):
            return Reply(200, content_type, gzip.compress(body, compresslevel=1), {"Content-Encoding": "gzip"})
        return Reply(200, content_type, body)

    def _data(self, query: Mapping[str, list[str]]) -> Reply:
        kept = max(1, int(self._history.options.history_s // 60))
        raw = query.get("minutes", [str(kept)])[0]
        try:
            minutes = int(raw)
        except ValueError:
            return text(400, f"minutes: '{raw}' is not a whole number of minutes (1-{kept})\n")
        if not 1 <= minutes <= kept:
            return text(400, f"minutes: {minutes} is out of range: the server keeps the last 1-{kept}\n")
        return Reply(200, "application/json", self._history.dashboard(minutes), {"Cache-Control": "no-store"})

    @staticmethod
    def _static(name: str) -> Reply:
        suffix = Path(name).suffix
        file = DASHBOARD_DIR / name
        if not _FILE_NAME.match(name) or suffix not in CONTENT_TYPES or not file.is_file():
            return text(404, f"no such dashboard file: {name}\n")
        return Reply(200, CONTENT_TYPES[suffix], file.read_bytes(), {"Cache-Control": "no-cache"})
