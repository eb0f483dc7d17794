"""The gRPC port's transport bounds, on `adrank serve` processes of each front end.

A raw HTTP/2 client (the `h2` package) plays the client that opens streams and never reads their
replies: it tells the server its window is 0, so no reply can be sent, and then stops reading its
socket altogether. Against it: the server advertises and enforces its streams-per-connection bound
(streams beyond it are refused), its bound on request bytes in flight (RESOURCE_EXHAUSTED), and its
keepalive closes the connection, cancelling the calls; their memory goes back (RSS within 50 MB of its
start 10 s after the client goes), other callers are served meanwhile, and SIGTERM drains within its
grace even with such a client connected. A message larger than the largest request the served models
take is refused by its size, before it is parsed.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import numpy as np
import pytest
from test_serve_process import start

from adrank.client import RankClient, RankError, build_request
from served import FRONTENDS, MODELS

KEEPALIVE_S = 2.0  # the processes' keepalive interval and timeout: a dead client is found in ~4 s
GRACE_S = 5.0
RANK_PATH = "/adrank.v1.Ranking/Rank"
PING_FRAME = 0x6


class Served:
    def __init__(self, proc: subprocess.Popen, target: str) -> None:
        self.proc = proc
        self.target = target
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


def serve(frontend: str, *flags: str) -> Iterator[Served]:
    keepalive = ["--keepalive", str(KEEPALIVE_S), "--keepalive-timeout", str(KEEPALIVE_S)]
    proc, match, _ = start(
        MODELS, "--frontend", frontend, "--no-metrics", *keepalive, "--drain-grace", str(GRACE_S), *flags
    )
    try:
        yield Served(proc, match["grpc"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def relevance_request(rows: int) -> bytes:
    """A valid request of about rows * 1.5 KiB; its reply carries DATA, which a window of 0 holds back."""
    ads = np.random.default_rng(rows).standard_normal((rows, 384)).astype(np.float32)
    return build_request(["relevance"], {"ad_embedding": ads}, {"query": "running shoes"}).SerializeToString()


class NeverReadingClient:
    """Raw HTTP/2: acknowledges the server's settings, announces a window of 0 (no reply DATA may be sent
    to it), opens streams carrying Rank requests, and never takes a reply: it reads the socket only to
    learn its send windows and the streams refused, and answers no ping (so the server's keepalive finds
    it out).
    """

    def __init__(self, served: Served) -> None:
        self.sock = socket.create_connection((served.host, served.port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.sock.sendall(self.conn.data_to_send())
        self.authority = served.target
        self.refused: set[int] = set()
        self.closed = False
        self.unparsed = False
        self.server_max_streams: int | None = None
        deadline = time.monotonic() + 10
        while self.server_max_streams is None and time.monotonic() < deadline:
            self._read()  # the handshake: the server's settings, acknowledged
        # A hostile client ignores the server's bound on its streams: h2 is told there is none.
        self.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
        self.conn.remote_settings.acknowledge()

    def _read(self, timeout: float = 1.0) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        if self.unparsed:
            return  # the connection is ending; only its close is awaited
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # What a server may send on streams it is tearing down (trailers after a reset) is beyond
            # what h2 accepts: from here on, the bytes are read only to see the connection close.
            self.unparsed = True
            return
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                setting = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
                if setting is not None:
                    self.server_max_streams = setting.new_value
            elif isinstance(event, h2.events.StreamReset):
                self.refused.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closed = True
        self._send_without_ping_acks()

    def _send_without_ping_acks(self) -> None:
        """What h2 has to send (our frames, settings acks), less its acks of the server's pings: the
        server's later settings must be acknowledged (they change the windows we send within), its
        pings never are."""
        data = self.conn.data_to_send()
        kept = bytearray()
        while data:
            length = int.from_bytes(data[:3], "big")
            frame, data = data[: 9 + length], data[9 + length :]
            if frame[3] != PING_FRAME:
                kept += frame
        if kept:
            self.sock.sendall(kept)

    def open_stream(self, body: bytes) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", RANK_PATH),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        self.conn.send_headers(stream, headers)
        message = b"\0" + len(body).to_bytes(4, "big") + body
        sent = 0
        deadline = time.monotonic() + 30
        while sent < len(message):
            window = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size)
            if stream in self.refused or self.closed:
                break
            if window <= 0:
                assert time.monotonic() < deadline, "the server never opened its window"
                self._send_without_ping_acks()
                self._read(timeout=0.2)
                continue
            piece = message[sent : sent + window]
            sent += len(piece)
            self.conn.send_data(stream, piece, end_stream=sent == len(message))
        if not self.closed:
            self._send_without_ping_acks()
        return stream

    def settle(self, seconds: float) -> None:
        """Reads (refusals) for `seconds`, taking no reply."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.closed:
            self._read(timeout=0.2)

    def wait_closed(self, timeout: float) -> bool:
        """Reads until the server closes the connection (keepalive) or `timeout`."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.closed:
            self._read(timeout=0.5)
        return self.closed

    def close(self) -> None:
        self.sock.close()


def ok_call(served: Served) -> None:
    with RankClient(served.target) as client:
        result = client.rank(["ctr"], {"dense": np.ones((4, 13), np.float32), "sparse": np.ones((4, 26), np.int64)})
        assert result["ctr"].scores.shape == (4,)


@pytest.fixture(scope="module", params=FRONTENDS)
def bounded(request) -> Iterator[Served]:
    """Small bounds: 8 streams per connection, 1 MiB of requests in flight."""
    yield from serve(request.param, "--max-concurrent-streams", "8", "--max-in-flight-mib", "1")


def small_request() -> bytes:
    ctr = {"dense": np.ones((4, 13), np.float32), "sparse": np.ones((4, 26), np.int64)}
    return build_request(["ctr"], ctr).SerializeToString()


def test_streams_beyond_the_bound_are_refused_and_a_client_that_stops_reading_is_cut_off(bounded):
    client = NeverReadingClient(bounded)
    try:
        assert client.server_max_streams == 8
        streams = [client.open_stream(small_request()) for _ in range(9)]
        client.settle(1.0)
        # The 9th stream is past the bound: refused (reset, or the connection closed, as grpc-core 1.51
        # does). Below the bound, streams wait open for a window that never comes.
        assert streams[8] in client.refused or client.closed, client.refused
        if not client.closed:
            assert not set(streams[:8]) & client.refused
    finally:
        client.close()
    holder = NeverReadingClient(bounded)
    try:
        for _ in range(8):
            holder.open_stream(small_request())
        holder.settle(1.0)
        assert holder.refused == set() and not holder.closed
        ok_call(bounded)  # others are served meanwhile
        # The holder answers no ping: keepalive closes its connection, cancelling its calls.
        started = time.monotonic()
        assert holder.wait_closed(4 * KEEPALIVE_S + 5), "the server kept a connection that answers no ping"
        print(f"\nkeepalive closed the never-reading connection after {time.monotonic() - started:.1f} s")
    finally:
        holder.close()
    ok_call(bounded)


def test_request_bytes_past_the_in_flight_bound_get_resource_exhausted(bounded):
    ads = np.zeros((1000, 384), np.float32)  # 1.5 MB: alone past the bound of 1 MiB
    with RankClient(bounded.target) as client:
        with pytest.raises(RankError) as error:
            client.rank(["relevance"], {"ad_embedding": ads}, {"query": "q"}, timeout=30)
        assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value.details
        assert "max_in_flight_bytes" in error.value.details and "1048576" in error.value.details
        assert client.rank(["relevance"], {"ad_embedding": ads[:300]}, {"query": "q"})["relevance"].scores.shape == (
            300,
        )


def test_a_message_larger_than_any_served_model_takes_is_refused_by_its_size_unparsed(bounded):
    # Past the largest request (ctr and relevance together at 2048 candidates, ~3.9 MB) but under the
    # 32 MiB message bound: garbage that, parsed, would be INVALID_ARGUMENT; refused by size, it never is.
    garbage = b"\xff" * (5 << 20)
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(bounded.target, options=options) as channel, pytest.raises(grpc.RpcError) as error:
        channel.unary_unary(RANK_PATH)(garbage, timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value.details()
    assert f"{len(garbage)} bytes exceed the largest request the served models take" in error.value.details()
    ok_call(bounded)


@pytest.fixture(params=FRONTENDS)
def default_bounds(request) -> Iterator[Served]:
    yield from serve(request.param)


def test_a_client_that_never_reads_is_cut_off_its_memory_returns_and_sigterm_drains_in_grace(default_bounds):
    served = default_bounds
    body = relevance_request(680)  # ~1 MB
    # Warm: the models' own working memory for requests of this size is the server's, not the client's.
    with grpc.insecure_channel(served.target) as channel:
        rank = channel.unary_unary(RANK_PATH)
        for _ in range(3):
            futures = [rank.future(body, timeout=60) for _ in range(32)]
            assert all(f.exception() is None for f in futures)
    start_rss = served.rss_mb()
    clients = [NeverReadingClient(served) for _ in range(2)]
    for client in clients:
        assert client.server_max_streams == 100
        for _ in range(100):
            client.open_stream(body)
        client.settle(1.0)
        assert client.refused == set() and not client.closed  # 100 held on the connection
    held_rss = served.rss_mb()
    ok_call(served)  # others are served while 200 MB of calls wait on their clients
    for client in clients:
        client.close()
    disconnected = time.monotonic()
    while served.rss_mb() > start_rss + 50 and time.monotonic() - disconnected < 10:
        time.sleep(0.5)
    back_rss = served.rss_mb()
    print(
        f"\nRSS {start_rss:.0f} MB at start, {held_rss:.0f} MB held, {back_rss:.0f} MB "
        f"{time.monotonic() - disconnected:.1f} s after the clients went"
    )
    assert back_rss <= start_rss + 50
    # SIGTERM with a never-reading client connected: the drain does not wait for it.
    client = NeverReadingClient(served)
    for _ in range(20):
        client.open_stream(body)
    try:
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=60) == 0
        drained_s = time.monotonic() - started
    finally:
        client.close()
    print(f"SIGTERM to exit with a never-reading client: {drained_s:.1f} s (grace {GRACE_S} s)")
    assert drained_s <= GRACE_S
