"""A server serves a read-only repository and never writes into any repository it serves: after start-up,
a version that fails to load, and polls that find it still FAILED, no file of the repository changed (names,
sizes, mtimes), and the failure is audited once, in the audit log outside the repository.

Tests run as root here, which ignores file modes: the chmod alone proves nothing, hence the snapshot. Where
`unshare` and `mount` are permitted, `adrank serve` also runs on a read-only bind mount of the repository,
which refuses even root's writes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from rollout_models import corrupt, ctr_repository
from test_serve_process import serve_command, start_command

from adrank.client import RankClient
from adrank.lifecycle.manager import ManagerOptions
from adrank.rollout.audit_location import AuditLocation
from served import ServerThread

Snapshot = dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns); a folder's size is -1


def snapshot(root: Path) -> Snapshot:
    entries = {".": (-1, root.stat().st_mtime_ns)}
    for path in sorted(root.rglob("*")):
        info = path.stat()
        entries[str(path.relative_to(root))] = (-1 if path.is_dir() else info.st_size, info.st_mtime_ns)
    return entries


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture
def read_only_repo(tmp_path: Path):
    """The bundled ctr and a version 2 whose model.onnx is damaged (it FAILS its sha256 check), read-only."""
    repo = ctr_repository(tmp_path / "repo")
    shutil.copytree(repo / "ctr" / "1", repo / "ctr" / "2")
    corrupt(repo / "ctr" / "2" / "model.onnx")
    make_read_only(repo)
    yield repo
    make_writable(repo)  # so that pytest can remove its tmp dir


def assert_failure_audited_once(audit_file: Path) -> None:
    """Version 2's failure once, however many polls found it, and the route it left: version 1 serves instead
    of the newest, a change audited with its cause."""
    entries = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert [e["action"] for e in entries] == ["version_failed", "route"]
    assert entries[0]["figures"] == {"version": 2}
    assert (entries[1]["cause"], entries[1]["route"]["after"]["stable"]) == ("load_failure", 1)


def test_serving_a_failure_and_polls_write_nothing_into_the_repository(read_only_repo: Path):
    before = snapshot(read_only_repo)
    server = ServerThread(read_only_repo, models=ManagerOptions(poll_interval_s=0.05, drain_timeout_s=5)).start()
    try:
        time.sleep(1.0)  # some 20 polls, each finding version 2 still FAILED
        assert server.server is not None
        models = server.server.models
        assert models.readiness() == {"ctr": True}
        (ctr,) = models.describe()
        assert {v["version"]: v["state"] for v in ctr["versions"]} == {1: "AVAILABLE", 2: "FAILED"}
        with RankClient(server.target) as client:
            client.rank(["ctr"], {"dense": np.ones((4, 13), np.float32), "sparse": np.zeros((4, 26), np.int64)})
        models.load_version("ctr", 2)  # an admin retry on the same files: the same failure
        audit_file = models.audit.file("ctr")
    finally:
        server.stop()
    assert snapshot(read_only_repo) == before
    assert AuditLocation.from_option(None, read_only_repo).file("ctr") == audit_file
    assert not audit_file.is_relative_to(read_only_repo)
    assert_failure_audited_once(audit_file)


def _read_only_mounts_work(probe: Path) -> bool:
    probe.mkdir()
    script = f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} && ! touch {probe}/x 2>/dev/null"
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True)
    return done.returncode == 0


def test_adrank_serve_serves_a_read_only_mount_of_the_repository(read_only_repo: Path, tmp_path: Path):
    if not _read_only_mounts_work(tmp_path / "probe"):
        pytest.skip("no read-only bind mount here (unshare -m / mount --bind not permitted)")
    before = snapshot(read_only_repo)
    audit = tmp_path / "audit"
    serve = serve_command(read_only_repo, "--poll-interval", "0.05", "--audit-log", str(audit))
    script = (
        f'mount --bind "{read_only_repo}" "{read_only_repo}" && mount -o remount,bind,ro "{read_only_repo}"'
        f' && ! touch "{read_only_repo}/written" 2>/dev/null && exec "$@"'
    )
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *serve]
    proc, match, _ = start_command(command)
    try:
        time.sleep(0.5)  # polls that find version 2 still FAILED
        with RankClient(match["grpc"]) as client:
            client.rank(["ctr"], {"dense": np.ones((4, 13), np.float32), "sparse": np.zeros((4, 26), np.int64)})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert snapshot(read_only_repo) == before
    assert_failure_audited_once(audit / "ctr.jsonl")
