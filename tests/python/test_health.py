"""Health on a running server (both front ends): per-model gRPC health, and the server's ("" and
adrank.v1.Ranking, /readyz) only while every model of the repository has a version that serves, while
adrank.liveness (Kubernetes' liveness probe) says SERVING whatever the models; a repository that cannot be
read changes nothing that serves, and is counted."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rollout_models import corrupt, ctr_repository, second_model

from adrank.client import RankClient
from adrank.lifecycle.manager import ManagerOptions
from served import FRONTENDS, ServerThread

CANDIDATES = {"dense": np.zeros((3, 13), np.float32), "sparse": np.zeros((3, 26), np.int64)}


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def eventually(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > give_up:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


def health(client: RankClient, http_port: int, models: tuple[str, ...]) -> dict[str, bool]:
    """Every health answer: "", adrank.v1.Ranking and adrank.liveness, each model's, and /readyz."""
    answers = {service: client.serving(service) for service in ("", "adrank.v1.Ranking", "adrank.liveness", *models)}
    answers["/readyz"] = http_get(http_port, "/readyz")[0] == 200
    return answers


def repository_errors(http_port: int) -> float:
    _, body = http_get(http_port, "/metrics")
    (family,) = [f for f in text_string_to_metric_families(body) if f.name == "adrank_repository_errors"]
    return family.samples[0].value


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return ctr_repository(tmp_path / "repo")


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_health_is_not_serving_while_a_model_has_no_version_and_serving_once_it_has(repo, frontend):
    second_model(repo)
    good = corrupt(repo / "ctr2" / "1" / "model.onnx")
    running = ServerThread(repo, frontend=frontend, models=ManagerOptions(poll_interval_s=0.1)).start()
    port = running.server.http_port
    models = ("ctr", "ctr2")
    try:
        with RankClient(running.target) as client:
            # ctr2's only version is FAILED: the start serves ctr, and the server says it is not ready.
            assert health(client, port, models) == {
                "": False,
                "adrank.v1.Ranking": False,
                "adrank.liveness": True,  # not ready, yet alive: not to be restarted
                "ctr": True,
                "ctr2": False,
                "/readyz": False,
            }
            assert client.rank(["ctr"], CANDIDATES)["ctr"].version == 1
            (repo / "ctr2" / "1" / "model.onnx").write_bytes(good)  # fixed: the watcher retries it
            eventually("ready once ctr2 loads", lambda: all(health(client, port, models).values()))
            assert client.rank(["ctr2"], CANDIDATES)["ctr2"].version == 1
            # Removed from a readable repository: ctr2 unloads, and the server is ready with what is left.
            (repo / "ctr2").rename(repo / ".ctr2-removed")
            eventually("ctr2 unloaded", lambda: not client.serving("ctr2"))
            assert health(client, port, models) == {
                "": True,
                "adrank.v1.Ranking": True,
                "adrank.liveness": True,
                "ctr": True,
                "ctr2": False,
                "/readyz": True,
            }
    finally:
        running.stop()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_vanished_repository_keeps_serving_what_is_loaded_and_counts_the_error(repo, frontend):
    running = ServerThread(repo, frontend=frontend, models=ManagerOptions(poll_interval_s=0.1)).start()
    port = running.server.http_port
    try:
        with RankClient(running.target) as client:
            assert repository_errors(port) == 0
            repo.rename(repo.parent / "moved")  # a mount that went away
            eventually("a failed poll counted", lambda: repository_errors(port) >= 2)
            assert client.rank(["ctr"], CANDIDATES)["ctr"].version == 1
            assert health(client, port, ("ctr",)) == dict.fromkeys(
                ("", "adrank.v1.Ranking", "adrank.liveness", "ctr", "/readyz"), True
            )
            (repo.parent / "moved").rename(repo)
            (repo / "ctr").rename(repo / ".ctr-removed")  # readable again, and now without ctr: it unloads
            eventually("ctr unloaded", lambda: not client.serving("ctr"))
            assert client.serving("") and http_get(port, "/readyz")[0] == 200  # no model left wants anything
    finally:
        running.stop()
