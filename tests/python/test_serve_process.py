"""`adrank serve` as a process: it reaches SERVING, answers health probes, and SIGTERM drains it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from adrank.client import RankClient, RankError
from served import MODELS

SERVING_LINE = re.compile(r"SERVING (?P<models>.*) on grpc (?P<grpc>\S+), http (?P<http>\S+)")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture
def process():
    command = [sys.executable, "-c", "from adrank.cli import main; main()", "serve", "--repository", str(MODELS)]
    command += ["--grpc-port", "0", "--http-port", "0", "--workers", "2"]
    started = time.monotonic()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    match = None
    while match is None:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"adrank serve exited ({proc.wait()}) before SERVING:\n{''.join(lines)}")
        lines.append(line)
        match = SERVING_LINE.search(line)
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    yield proc, match, time.monotonic() - started
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_serve_reaches_serving_quickly_and_reports_health(process):
    _, match, seconds = process
    assert seconds < 60
    assert "ctr v" in match["models"] and "relevance v" in match["models"]
    with RankClient(match["grpc"]) as client:
        assert client.serving() and client.serving("adrank.v1.Ranking")
    assert http_status(f"http://{match['http']}/healthz") == 200
    assert http_status(f"http://{match['http']}/readyz") == 200
    assert http_status(f"http://{match['http']}/nope") == 404


def test_sigterm_finishes_in_flight_requests_then_exits_0(process):
    proc, match, _ = process
    dense = np.ones((1000, 13), np.float32)
    sparse = np.arange(26000, dtype=np.int64).reshape(1000, 26)
    sigterm_at: list[float] = []
    ok_after_sigterm = 0
    refused: list[str] = []
    lock = threading.Lock()

    def hammer() -> None:
        nonlocal ok_after_sigterm
        with RankClient(match["grpc"]) as client:
            while True:
                try:
                    result = client.rank(["ctr"], {"dense": dense, "sparse": sparse}, timeout=30)
                except RankError as error:
                    with lock:
                        refused.append(f"{error.code.name}: {error.details}")
                    return
                assert result["ctr"].scores.shape == (1000,)
                with lock:
                    if sigterm_at and time.monotonic() > sigterm_at[0]:
                        ok_after_sigterm += 1

    # Four callers of 1000 rows keep ~8 batches queued: inside the queue's bound in time (cpp/batcher.h
    # max_predicted_wait_us), so that every refusal seen comes from the drain.
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    with lock:
        sigterm_at.append(time.monotonic())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for t in threads:
        t.join(timeout=30)
    # Calls in flight at SIGTERM completed normally; later ones were refused, never failed half-way.
    assert ok_after_sigterm >= 1
    assert len(refused) == len(threads)
    assert [r for r in refused if not r.startswith(grpc.StatusCode.UNAVAILABLE.name)] == []
