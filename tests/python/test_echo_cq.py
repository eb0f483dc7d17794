"""The grpc++ echoes that perf/echo_cq_cost.py compares: adrank_echo_cq (perf/echo_server_cq.cc, the async
completion-queue API) in each of its modes, and adrank_echo's --reply worker, answer calls (many at once too) with
an empty reply and stop on SIGTERM with exit 0; and perf/echo_cq_cost.py --smoke runs end to end where perf can count
another process. Skipped where `make loadgen` has not built them."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from perf import call_cost, echo_cq_cost
from perf.bench import ServerProcess, running
from perf.call_cost import ECHO_READY
from perf.loadgen import find_built

REPO = Path(__file__).resolve().parents[2]
CRITEO = REPO.parent / "shared" / "data" / "criteo" / "train_1999.csv"
METHOD = "/adrank.v1.RankingService/Rank"

MODES = [
    ("adrank_echo_cq", []),
    ("adrank_echo_cq", ["--cq-threads", "2"]),
    ("adrank_echo_cq", ["--reply", "worker"]),
    ("adrank_echo_cq", ["--reply", "alarm"]),
    ("adrank_echo_cq", ["--cq-threads", "3", "--reply", "alarm"]),
    ("adrank_echo_cq", ["--health"]),
    ("adrank_echo", ["--reply", "worker"]),
]


@pytest.mark.parametrize(("binary", "arguments"), MODES, ids=[f"{b} {' '.join(a)}".strip() for b, a in MODES])
def test_echo_answers_and_stops(binary: str, arguments: list[str], tmp_path: Path) -> None:
    built = find_built(binary)
    if built is None:
        pytest.skip(f"build/bench/{binary} is not built (make loadgen)")
    process = ServerProcess("echo", [str(built), *arguments, "0"], ECHO_READY, 0, tmp_path / "echo.log", None)
    with running(process):
        target = process.wait_ready()
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary(METHOD)
            assert call(b"\x0a\x03ctr" * 1000, timeout=10) == b""
            with ThreadPoolExecutor(16) as pool:  # concurrent calls over the one connection
                replies = list(pool.map(lambda i: call(bytes([i % 256]) * (i * 37), timeout=10), range(200)))
            assert replies == [b""] * 200
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(10) == 0


def test_echo_cq_refuses_bad_arguments() -> None:
    built = find_built("adrank_echo_cq")
    if built is None:
        pytest.skip("build/bench/adrank_echo_cq is not built (make loadgen)")
    for arguments in (["--cq-threads", "0"], ["--reply", "later"], ["--bogus"]):
        done = subprocess.run([str(built), *arguments], capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode == 2 and "usage" in done.stderr, arguments


def _perf_stat_fails() -> str | None:
    """Why `perf stat` cannot run here (a container may forbid perf_event_open whatever the paranoid level), or None."""
    done = subprocess.run(
        ["perf", "stat", "-x", ",", "-e", "task-clock", "--", "true"], capture_output=True, text=True, check=False
    )
    return None if done.returncode == 0 else f"perf stat fails here: {done.stderr.strip()[-200:]}"


@pytest.mark.skipif(not CRITEO.is_file(), reason=f"the Criteo rows are not at {CRITEO}")
def test_echo_cq_cost_smoke_runs_end_to_end(tmp_path: Path) -> None:
    reason = call_cost.perf_unusable() or _perf_stat_fails()
    if reason:
        pytest.skip(f"perf cannot count a server here: {reason}")
    if find_built("adrank_echo") is None or find_built("adrank_echo_cq") is None:
        pytest.skip("the echoes are not built (make loadgen)")
    done = subprocess.run(
        [sys.executable, str(REPO / "perf" / "echo_cq_cost.py"), "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (json_file,) = tmp_path.glob("echo-cq-*-smoke.json")
    report = json.loads(json_file.read_text())
    assert set(report["loads"]) == {f"{name}/1" for name in echo_cq_cost.SMOKE_SYSTEMS}
    for key, figures in report["loads"].items():
        assert figures["calls"] > 0, key
        for name in ("cpu_us", "context_switches"):
            value = figures["per_call"][name]
            assert isinstance(value, float) and math.isfinite(value), (key, name, value)
    assert all(math.isfinite(report["p50_ms_1_caller"][name]) for name in echo_cq_cost.SMOKE_SYSTEMS)
    markdown = json_file.with_suffix(".md").read_text()
    assert "| echo-cq | 1 |" in markdown and "echo-cq-0" in markdown  # the CQ thread, in the by-thread table
