"""HttpEndpoint: the operators' HTTP port: `/healthz` (the process is up) and `/readyz` (every model is
loaded and warmed up, and the server is not draining: 200, else 503).

It runs on its own thread (the standard library's ThreadingHTTPServer), so a busy event loop never
delays a health probe, and it binds the same host as the gRPC port.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HttpEndpoint:
    def __init__(self, host: str, port: int, ready: Callable[[], bool]) -> None:
        is_ready = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._reply(200, "ok\n")
                elif self.path == "/readyz":
                    ok = is_ready()
                    self._reply(200 if ok else 503, "ready\n" if ok else "not ready\n")
                else:
                    self._reply(404, f"no such page: {self.path}\n")

            def _reply(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would drown the server's log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="adrank-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
