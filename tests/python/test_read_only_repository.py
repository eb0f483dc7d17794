"""A server serves a read-only repository and never writes into any repository it serves: after start-up,
a version that fails to load, and polls that find it still FAILED, no file of the repository changed (names,
sizes, mtimes), and the failure is audited once, in the audit log outside the repository.

A rollout change is the one write, rollout.yaml's. Where it cannot be written, an admin change (and a rollout
command against the repository) is refused in one line, nothing changed, and a guardrail rollback still takes
the breaching candidate out of this server's route, audited as applied here only, until rollout.yaml changes.

Tests run as root here, which ignores file modes: the chmod alone proves nothing, hence the snapshot. Where
`unshare` and `mount` are permitted, `adrank serve` also runs on a read-only bind mount of the repository,
which refuses even root's writes."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rollout_models import corrupt, ctr_repository, publish_version, shifted_ctr
from test_serve_process import serve_command, start_command

import adrank._core as core
import adrank.lifecycle.manager as manager_module
from adrank.admin_token import TOKEN_ENV
from adrank.client import RankClient
from adrank.lifecycle.manager import ManagerOptions, ModelManager
from adrank.repository.layout import ModelRepository
from adrank.rollout.audit_location import AuditLocation
from adrank.rollout.changes import promote, set_shadow
from adrank.status import RequestError, StatusCode
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


def on_read_only_mount(repo: Path, command: list[str]) -> list[str]:
    """`command` run where `repo` is a read-only bind mount of itself (a mount namespace of its own)."""
    script = (
        f'mount --bind "{repo}" "{repo}" && mount -o remount,bind,ro "{repo}"'
        f' && ! touch "{repo}/written" 2>/dev/null && exec "$@"'
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *command]


def test_adrank_serve_serves_a_read_only_mount_of_the_repository(read_only_repo: Path, tmp_path: Path):
    if not _read_only_mounts_work(tmp_path / "probe"):
        pytest.skip("no read-only bind mount here (unshare -m / mount --bind not permitted)")
    before = snapshot(read_only_repo)
    audit = tmp_path / "audit"
    serve = serve_command(read_only_repo, "--poll-interval", "0.05", "--audit-log", str(audit))
    proc, match, _ = start_command(on_read_only_mount(read_only_repo, serve))
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


def read_only_save(model_dir: Path, policy: object) -> None:
    """save_policy on a read-only mount: its temporary file is refused (tests run as root, whom modes do not stop)."""
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(model_dir))


def routed(models: ModelManager) -> tuple[int, int, int]:
    route = models.registry.rollout("ctr")
    return route.stable, route.canary, route.canary_basis_points


def test_where_rollout_yaml_cannot_be_written_an_admin_change_is_refused_and_a_guardrail_rollback_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    repo = ctr_repository(tmp_path / "repo")
    for version in (2, 3):  # copies of version 1, as publish would write them
        shutil.copytree(repo / "ctr" / "1", repo / "ctr" / str(version))
        meta = json.loads((repo / "ctr" / str(version) / "meta.json").read_text())
        (repo / "ctr" / str(version) / "meta.json").write_text(json.dumps({**meta, "version": version}))
    config = yaml.safe_load((repo / "ctr" / "config.yaml").read_text())
    (repo / "ctr" / "config.yaml").write_text(yaml.safe_dump({**config, "version_policy": {"specific": [1]}}))
    canary = "stable: 1\ncanary: {version: 2, percent: 50}\n"
    (repo / "ctr" / "rollout.yaml").write_text(canary)
    monkeypatch.setattr(manager_module, "save_policy", read_only_save)
    pool = core.ThreadPool(num_workers=1)
    models = ModelManager(pool, ModelRepository(repo), ManagerOptions(poll_interval_s=0, drain_timeout_s=5))
    try:
        models.load_all()
        assert routed(models) == (1, 2, 5000)

        for change in (promote(models.policy("ctr"), 2), set_shadow(models.policy("ctr"), 3, 100, 1)):
            with pytest.raises(RequestError) as refused:
                models.set_policy("ctr", change[0], "alice", change[1])
            assert refused.value.code == StatusCode.FAILED_PRECONDITION
            assert refused.value.message == (
                f"rollout: {repo / 'ctr' / 'rollout.yaml'} cannot be written (Read-only file system): nothing"
                " changed; change rollout.yaml where the repository is written"
            )
            assert routed(models) == (1, 2, 5000) and models.policy("ctr").canary is not None
        # version 3, loaded for the shadow that was refused, is not kept loaded for nothing
        assert {v for _, v, _ in models.version_states()} == {1, 2}
        assert [e.action for e in models.audit_log("ctr").entries()] == []

        rolled_back = models.policy("ctr").model_copy(update={"canary": None})
        models.set_policy(
            "ctr", rolled_back, "guardrail", "guardrail_rollback", "canary 2: error rate", write_required=False
        )
        assert routed(models) == (1, 0, 0)  # the breaching canary takes no more traffic here
        (entry,) = models.audit_log("ctr").entries()
        assert (entry.action, entry.cause) == ("guardrail_rollback", "explicit")
        assert entry.route is not None
        assert [(r["stable"], r["canary"]) for r in (entry.route["before"], entry.route["after"])] == [(1, 2), (1, 0)]
        assert entry.reason.startswith("canary 2: error rate; applied on this server only: ")
        assert f"{repo / 'ctr' / 'rollout.yaml'} cannot be written (Read-only file system)" in entry.reason
        for _ in range(3):  # polls read the same file: the rollback holds
            models.reconcile()
            assert routed(models) == (1, 0, 0)
        assert (repo / "ctr" / "rollout.yaml").read_text() == canary
        assert len(models.audit_log("ctr").entries()) == 1

        (repo / "ctr" / "rollout.yaml").write_text("stable: 1\ncanary: {version: 2, percent: 10}\n")  # changed
        models.reconcile()
        assert routed(models) == (1, 2, 1000)
        change = models.audit_log("ctr").entries()[-1]
        assert (change.action, change.cause) == ("route", "rollout_file")
    finally:
        models.unload_all()
        pool.shutdown()


def audited(audit_file: Path) -> list[dict]:
    return [json.loads(line) for line in audit_file.read_text().splitlines()] if audit_file.exists() else []


def adrank(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("adrank")), *args]


def test_on_a_read_only_mount_a_guardrail_still_rolls_back_and_rollout_changes_are_refused_in_one_line(
    tmp_path: Path,
):
    if not _read_only_mounts_work(tmp_path / "probe"):
        pytest.skip("no read-only bind mount here (unshare -m / mount --bind not permitted)")
    repo = ctr_repository(tmp_path / "repo")
    publish_version(repo, shifted_ctr(tmp_path / "shifted.onnx"))  # scores moved up: PSI far above 0.25
    guardrails = {"window_s": 10, "interval_s": 0.2, "min_requests": 30, "max_latency_ratio": 50}
    (repo / "ctr" / "rollout.yaml").write_text(
        yaml.safe_dump({"stable": 1, "shadow": {"version": 2}, "guardrails": guardrails})
    )
    before = snapshot(repo)
    audit = tmp_path / "audit"
    token = tmp_path / "token"
    token.write_text("t\n")
    token.chmod(0o600)
    serve = serve_command(repo, "--poll-interval", "0.05", "--audit-log", str(audit), "--admin-port", "0")
    proc, match, _ = start_command(on_read_only_mount(repo, [*serve, "--admin-token-file", str(token)]))
    env = {**os.environ, TOKEN_ENV: "t"}
    rng = np.random.default_rng(3)
    try:
        admin = re.search(r"admin (\S+)\)", match.string)
        assert admin is not None, match.string
        with RankClient(match["grpc"]) as client:
            deadline = time.monotonic() + 60
            while not any(e["action"] == "guardrail_rollback" for e in audited(audit / "ctr.jsonl")):
                assert time.monotonic() < deadline, "the guardrail never rolled the shadow back"
                dense = rng.integers(0, 30, size=(20, 13)).astype(np.float32)
                sparse = rng.integers(0, 1 << 20, size=(20, 26)).astype(np.int64)
                assert client.rank(["ctr"], {"dense": dense, "sparse": sparse})["ctr"].version == 1
                time.sleep(0.005)
        time.sleep(0.5)  # some 10 polls, each reading the rollout.yaml that still names the shadow
        listed = subprocess.run(
            adrank("models", "--server", admin[1], "--json"), capture_output=True, text=True, env=env, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        (ctr,) = json.loads(listed.stdout)
        roles = {v["version"]: v["role"] for v in ctr["versions"]}
        assert roles[1].startswith("stable") and not any("shadow" in r for r in roles.values()), roles  # it held
        assert ctr["policy"]["shadow"] is None
        refused = subprocess.run(
            adrank("rollout", "ctr", "--server", admin[1], "--canary", "2", "--percent", "5"),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert (refused.returncode, refused.stdout) == (1, "")
    (line,) = refused.stderr.splitlines()
    assert line.startswith("Error: ") and "FAILED_PRECONDITION" in line, line
    assert "rollout.yaml cannot be written (Read-only file system): nothing changed" in line, line
    assert snapshot(repo) == before
    (rollback,) = [e for e in audited(audit / "ctr.jsonl") if e["action"] == "guardrail_rollback"]
    assert rollback["actor"] == "guardrail" and "PSI" in rollback["reason"]
    assert "applied on this server only" in rollback["reason"]
    assert [e["action"] for e in audited(audit / "ctr.jsonl")] == ["guardrail_rollback"]  # nothing of the refusal

    # The rollout command against the repository itself, where it is read-only: one line, nothing changed.
    command = adrank("rollout", "ctr", "--repository", str(repo), "--canary", "2", "--percent", "5")
    done = subprocess.run(
        on_read_only_mount(repo, [*command, "--audit-log", str(audit)]), capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr.splitlines() == [
        f"Error: {repo / 'ctr' / 'rollout.yaml'} cannot be written (Read-only file system): nothing changed; roll"
        " out where the repository is written"
    ]
    assert snapshot(repo) == before
    assert len(audited(audit / "ctr.jsonl")) == 1
