"""`adrank serve` as a process: it reaches SERVING, answers health probes, and SIGTERM drains it; a bad
version does not stop the start, and a start with nothing to serve exits 1 saying why in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from rollout_models import corrupt, ctr_repository

import adrank._core as core
from adrank.cli import main
from adrank.client import RankClient, RankError
from served import MODELS

SERVING_LINE = re.compile(r"SERVING (?P<models>.*) on grpc (?P<grpc>\S+), http (?P<http>\S+)")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def serve_command(repository: Path, *args: str) -> list[str]:
    command = [sys.executable, "-c", "from adrank.cli import main; main()", "serve", "--repository", str(repository)]
    return [*command, "--grpc-port", "0", "--http-port", "0", "--workers", "2", *args]


def start(repository: Path, *args: str) -> tuple[subprocess.Popen, re.Match, list[str]]:
    """`adrank serve` started and SERVING; its stderr lines until then."""
    return start_command(serve_command(repository, *args))


def start_command(
    command: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, re.Match, list[str]]:
    """`command` (an `adrank serve`, or one that execs it) started and SERVING, in `env` (None: this process's);
    its stderr lines until then."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    match = None
    while match is None:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"adrank serve exited ({proc.wait()}) before SERVING:\n{''.join(lines)}")
        lines.append(line)
        match = SERVING_LINE.search(line)
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    return proc, match, lines


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture
def process():
    started = time.monotonic()
    proc, match, _ = start(MODELS)
    yield proc, match, time.monotonic() - started
    end(proc)


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


def second_version(repo: Path) -> Path:
    """ctr's version 1 copied as version 2 (what a publish of the same file writes); its model.onnx."""
    shutil.copytree(repo / "ctr" / "1", repo / "ctr" / "2")
    meta_file = repo / "ctr" / "2" / "meta.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "version": 2}))
    return repo / "ctr" / "2" / "model.onnx"


def test_a_start_with_a_corrupt_version_serves_the_previous_one_and_reports_the_bad_one_failed(tmp_path):
    repo = ctr_repository(tmp_path / "repo")
    corrupt(second_version(repo))
    token = tmp_path / "token"
    token.write_text("t\n")
    token.chmod(0o600)
    proc, match, lines = start(repo, "--admin-port", "0", "--admin-token-file", str(token))
    try:
        assert match["models"] == "ctr v1"
        assert any("ctr version 2 FAILED" in line and "sha256" in line for line in lines), "".join(lines)
        admin = re.search(r"admin (\S+)\)", match.string)
        listed = CliRunner().invoke(main, ["models", "--server", admin[1], "--token-file", str(token), "--json"])
        (ctr,) = json.loads(listed.output)
        states = {v["version"]: (v["state"], v["role"]) for v in ctr["versions"]}
        assert states == {1: ("AVAILABLE", "stable"), 2: ("FAILED", "")}
        assert "corrupt" in ctr["versions"][1]["reason"]
        # From the repository, the FAILED version is ON DISK: the command says what its states are.
        on_disk = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["models", "--repository", str(repo)])
        assert on_disk.exit_code == 0 and on_disk.output.count("ON DISK") == 2, on_disk.output
        note = on_disk.output.splitlines()[0]
        assert "states are what is on disk" in note and "--server HOST:PORT" in note, note
        # The gRPC (Rank) port answers UNIMPLEMENTED to the admin API: one line naming the port to give.
        rank_port = CliRunner().invoke(main, ["models", "--server", match["grpc"], "--token-file", str(token)])
        assert rank_port.exit_code == 1, rank_port.output
        (line,) = rank_port.output.splitlines()
        assert line.startswith(f"Error: {match['grpc']} does not serve the admin API") and "--admin-port" in line
        with RankClient(match["grpc"]) as client:
            assert client.serving() and client.serving("ctr")
    finally:
        end(proc)


def test_a_start_with_nothing_to_serve_exits_1_with_one_line(tmp_path):
    repo = ctr_repository(tmp_path / "repo")
    corrupt(repo / "ctr" / "1" / "model.onnx")
    done = subprocess.run(serve_command(repo), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("Error: nothing to serve: model 'ctr': version 1 FAILED: ") and "sha256" in last, last
    assert "Traceback" not in done.stderr


SCHED_OTHER, SCHED_BATCH = 0, 3
# The C++ front end's completion-queue threads (cpp/frontend/server_queues.h), then those gRPC names itself.
FRONTEND_THREADS = "adrank-grpc-"
TRANSPORT_THREADS = ("default-executo", "grpc_global_tim")
# gRPC's callback and sync-server threads: none while every service is on the completion queues.
CALLBACK_THREADS = ("nexting_thread", "grpcpp_sync_ser")


def thread_policies(pid: int) -> list[tuple[str, int]]:
    """(comm, scheduling policy) of each of the process's threads, from /proc/PID/task/*/stat (proc(5))."""
    threads = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        text = stat.read_text()
        comm = text[text.index("(") + 1 : text.rindex(")")]
        threads.append((comm, int(text[text.rindex(")") + 2 :].split()[38])))  # field 41, policy
    return threads


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread policies are read from Linux's /proc")
@pytest.mark.parametrize("yielding", [True, False])
def test_the_transport_threads_yield_to_the_model_workers_unless_told_not_to(tmp_path, yielding):
    """cpp/thread_priority.h: with the C++ front end, its completion-queue threads and gRPC's run SCHED_BATCH and
    the model workers (and the Python threads) SCHED_OTHER; --no-yield-to-workers leaves every thread SCHED_OTHER.
    After a call, gRPC runs no callback or sync-server thread (cpp/frontend/server_queues.h)."""
    if not core.HAS_RANK_SERVER:
        pytest.skip("this build has no C++ front end (no grpc++): the policy is the C++ front end's")
    flag = "--yield-to-workers" if yielding else "--no-yield-to-workers"
    proc, match, _ = start(MODELS, "--frontend", "cpp", flag)
    try:
        with RankClient(match["grpc"]) as client:
            client.rank(["ctr"], {"dense": np.ones((4, 13), np.float32), "sparse": np.zeros((4, 26), np.int64)})
        threads = thread_policies(proc.pid)
        own = Path(f"/proc/{proc.pid}/comm").read_text().strip()
    finally:
        end(proc)
    frontend = [policy for comm, policy in threads if comm.startswith(FRONTEND_THREADS)]
    transport = [policy for comm, policy in threads if comm in TRANSPORT_THREADS] + frontend
    # Threads the process starts itself (the model workers, Python's) carry its name; gRPC names its own.
    workers = [policy for comm, policy in threads if comm == own]
    assert frontend and transport and workers, threads
    assert set(workers) == {SCHED_OTHER}, threads
    assert set(transport) == ({SCHED_BATCH} if yielding else {SCHED_OTHER}), threads
    assert not [comm for comm, _ in threads if comm in CALLBACK_THREADS], threads


def test_the_admin_token_is_refused_on_the_command_line_and_in_a_file_others_can_read(tmp_path):
    repo = ctr_repository(tmp_path / "repo")
    done = subprocess.run(serve_command(repo, "--admin-token", "t"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "process list" in done.stderr.splitlines()[-1], done.stderr
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o644)
    done = subprocess.run(
        serve_command(repo, "--admin-token-file", str(token)), capture_output=True, text=True, timeout=60
    )
    last = done.stderr.splitlines()[-1]
    # Checked when parsed (cli_options.token_file, admin_token.py's check, the admin commands' too): exit 2.
    assert done.returncode == 2 and "readable by others (mode 0644)" in last, done.stderr
    assert last.startswith("Error: Invalid value for '--admin-token-file'"), last


def test_the_http_and_admin_ports_bind_their_own_hosts_and_the_token_may_come_from_the_environment(tmp_path):
    repo = ctr_repository(tmp_path / "repo")
    command = serve_command(repo, "--http-host", "127.0.0.2", "--admin-host", "127.0.0.3", "--admin-port", "0")
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "ADRANK_ADMIN_TOKEN": "e"})
    lines: list[str] = []
    match = None
    while match is None:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"adrank serve exited ({proc.wait()}) before SERVING:\n{''.join(lines)}")
        lines.append(line)
        match = re.search(r"http (127\.0\.0\.2):(\d+) .*admin (127\.0\.0\.3):(\d+)\)", line)
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    try:
        http_port, admin_port = int(match[2]), int(match[4])
        with urllib.request.urlopen(f"http://127.0.0.2:{http_port}/healthz", timeout=10) as reply:
            assert reply.status == 200
        with pytest.raises(OSError):  # not on the gRPC port's host
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10)
        admin = ["models", "--server", f"127.0.0.3:{admin_port}", "--json"]
        listed = CliRunner(env={"ADRANK_ADMIN_TOKEN": "e"}).invoke(main, admin)
        assert listed.exit_code == 0, listed.output
        assert [m["model"] for m in json.loads(listed.output)] == ["ctr"]
    finally:
        end(proc)


def test_the_http_and_admin_ports_stay_on_loopback_by_default_when_the_grpc_port_binds_another_address(tmp_path):
    """--http-host and --admin-host default to 127.0.0.1, not to --host: Rank on 127.0.0.4 (standing in for an
    address the network reaches) leaves the metrics and the admin API on loopback only."""
    repo = ctr_repository(tmp_path / "repo")
    command = serve_command(repo, "--host", "127.0.0.4", "--admin-port", "0")
    proc, match, _ = start_command(command, {**os.environ, "ADRANK_ADMIN_TOKEN": "e"})
    try:
        ports = re.search(
            r"grpc 127\.0\.0\.4:(\d+), http 127\.0\.0\.1:(\d+) .*admin 127\.0\.0\.1:(\d+)\)", match.string
        )
        assert ports is not None, match.string
        grpc_port, http_port, admin_port = (int(port) for port in ports.groups())
        with RankClient(f"127.0.0.4:{grpc_port}") as client:
            assert client.serving()
        assert http_status(f"http://127.0.0.1:{http_port}/healthz") == 200
        listed = CliRunner(env={"ADRANK_ADMIN_TOKEN": "e"}).invoke(
            main, ["models", "--server", f"127.0.0.1:{admin_port}", "--json"]
        )
        assert listed.exit_code == 0 and [m["model"] for m in json.loads(listed.output)] == ["ctr"], listed.output
        for port in (http_port, admin_port):  # nothing listens on the gRPC port's address for them
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.4", port), timeout=10).close()
    finally:
        end(proc)
