"""HttpEndpoint: the HTTP port: `/` (an index of what it serves: index_page.py), `/healthz` (the process is
up), `/readyz` (the start is done, every model of the repository has a version that serves, and the server is
not draining: 200, else 503; process.py decides), the pages it is given — `/metrics` and `/dashboard`
(metrics/pages.py) unless the server runs without metrics — and KServe v2's REST paths `/v2/...`
(kserve_rest.py), whose infer is a POST. Every answer under `/v2` is JSON, errors too: an unknown path is 404,
a known one called with the wrong method (PUT, DELETE and PATCH included) 405 with `Allow` (kserve_rest.py).
A POST body larger than `max_body_bytes` (the gRPC port's max_message_bytes) is refused (413) by its
Content-Length, before a byte of it is read.

It runs on its own threads (the standard library's ThreadingHTTPServer), so a busy event loop never
delays a health probe or a scrape, and binds its own host (loopback by default); an address it cannot bind (in
use, say) is ports.PortUnavailable.

With a CertificateWatcher (`--http-tls-cert/--http-tls-key`) it serves HTTPS only: each connection's TLS
handshake runs on that connection's own thread (a client slow to shake hands holds only its thread, for at most
HANDSHAKE_TIMEOUT_S), with the watcher's material current then, so a rotated certificate serves new
connections without a restart. A client that does not speak TLS gets its connection closed.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast
from urllib.parse import parse_qs, urlsplit

from adrank.metrics.pages import Reply, text
from adrank.server.index_page import index_reply
from adrank.server.kserve_rest import KServeRest, RestCall, is_v2, refusal
from adrank.server.ports import PortUnavailable, why
from adrank.server.tls import CertificateWatcher

# A GET of a path, its query and headers -> the reply, or None: not a page of theirs.
Pages = Callable[[str, Mapping[str, list[str]], Mapping[str, str]], Reply | None]
# Long enough for a client on a slow link, short enough that a connection that never shakes hands lets go.
HANDSHAKE_TIMEOUT_S = 10.0


class _HttpsServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose connections shake hands (TLS) on their own threads, with the current material."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], tls: CertificateWatcher):
        self._tls = tls
        self._context: tuple[int, ssl.SSLContext] | None = None
        self._context_lock = threading.Lock()
        super().__init__(address, handler)

    def _current(self) -> ssl.SSLContext:
        with self._context_lock:
            if self._context is None or self._context[0] != self._tls.generation:
                generation = self._tls.generation
                self._context = (generation, self._tls.ssl_context())
            return self._context[1]

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            secure = self._current().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # no TLS, a refused client certificate, or a client gone: nothing to answer
        try:
            secure.settimeout(None)
            super().finish_request(secure, client_address)
        finally:
            secure.close()


class HttpEndpoint:
    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], bool],
        pages: Pages | None = None,
        rest: KServeRest | None = None,
        max_body_bytes: int = 32 << 20,
        tls: CertificateWatcher | None = None,
    ) -> None:
        is_ready = ready

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a client's calls reuse one connection
            # Headers and body go out as two writes: with Nagle's algorithm the body would wait for the
            # client's delayed ACK of the headers (~40 ms a call, measured with perf_analyzer over HTTP).
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/":
                    self._reply(index_reply(pages is not None, self.headers.get("Accept", "")))
                elif url.path == "/healthz":
                    self._reply(text(200, "ok\n"))
                elif url.path == "/readyz":
                    ok = is_ready()
                    self._reply(text(200 if ok else 503, "ready\n" if ok else "not ready\n"))
                else:
                    reply = rest.get(url.path) if rest is not None else None
                    if reply is None and pages is not None:
                        reply = pages(url.path, parse_qs(url.query), self._headers())
                    self._reply(reply or text(404, f"no such page: {url.path}\n"))

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                try:
                    length = int(self.headers.get("Content-Length", "0"))  # none: no body
                except ValueError:
                    self.close_connection = True
                    self._reply(text(400, "Content-Length: not a length\n"))
                    return
                if length < 0 or length > max_body_bytes:
                    self.close_connection = True  # its body is not read
                    self._reply(text(413, f"Content-Length: {length} bytes; at most {max_body_bytes}\n"))
                    return
                body = self.rfile.read(length)
                reply = rest.post(RestCall(url.path, self._headers(), body)) if rest is not None else None
                self._reply(reply or text(404, f"no such path: {url.path}\n"))

            def _other_method(self) -> None:
                # PUT, DELETE, PATCH: no path takes them. Their body is not read: the connection closes.
                self.close_connection = True
                path = urlsplit(self.path).path
                if is_v2(path):
                    self._reply(refusal(self.command, path))
                else:
                    self._reply(Reply(405, "text/plain; charset=utf-8", b"GET only\n", {"Allow": "GET"}))

            do_PUT = do_DELETE = do_PATCH = _other_method

            def _headers(self) -> Mapping[str, str]:
                # The request's headers (an email Message) read as a case-insensitive mapping.
                return cast(Mapping[str, str], self.headers)

            def _reply(self, reply: Reply) -> None:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes and scrapes every few seconds would drown the server's log

        try:
            if tls is None:
                self._server = ThreadingHTTPServer((host, port), Handler)
            else:
                self._server = _HttpsServer((host, port), Handler, tls)
        except OSError as error:  # the address taken, or not this machine's
            raise PortUnavailable("http", f"{host}:{port}", why(error)) from error
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
