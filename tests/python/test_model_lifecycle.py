"""The repository lifecycle (python/adrank/repository/manager.py): versions load in the background, are
warmed up and parity-checked before traffic reaches them, switch atomically and drain; a version or a
config that fails leaves what serves untouched."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rollout_models import ctr_repository, publish_version

import adrank._core as core
from adrank.repository.layout import ModelRepository
from adrank.repository.manager import ManagerOptions, ModelManager, VersionState
from adrank.servable import RequestError


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return ctr_repository(tmp_path / "repo")


@pytest.fixture
def pool():
    pool = core.ThreadPool(num_workers=1)
    yield pool
    pool.shutdown()


def manager(pool: core.ThreadPool, repo: Path) -> ModelManager:
    models = ModelManager(pool, ModelRepository(repo), ManagerOptions(poll_interval_s=0, drain_timeout_s=5))
    models.load_all()
    return models


def states(models: ModelManager) -> dict[int, str]:
    (ctr,) = models.describe()
    return {v["version"]: v["state"] for v in ctr["versions"]}


def score(models: ModelManager, version: int = 0) -> int:
    """Scores one request through the routed (or pinned) version; the version that answered."""
    route = models.route("ctr", version, "k")
    dense = np.zeros((3, 13), np.float32)
    sparse = np.zeros((3, 26), np.int64)
    result = route.servable.model.submit({"dense": dense, "sparse": sparse}).wait()
    assert result.outputs["ctr"].shape == (3,)
    return route.servable.version


def test_a_new_version_goes_live_after_its_checks_and_the_old_one_is_unloaded(pool, repo):
    models = manager(pool, repo)
    assert states(models) == {1: "AVAILABLE"} and score(models) == 1
    publish_version(repo)
    models.reconcile()
    assert states(models) == {2: "AVAILABLE"}
    assert score(models) == 2
    with pytest.raises(RequestError, match="no version 1 loaded"):
        models.route("ctr", 1)
    models.unload_all()


def test_version_policy_latest_two_keeps_both_and_a_client_may_pin_either(pool, repo):
    config = yaml.safe_load((repo / "ctr" / "config.yaml").read_text())
    config["version_policy"] = {"latest": 2}
    (repo / "ctr" / "config.yaml").write_text(yaml.safe_dump(config))
    publish_version(repo)
    models = manager(pool, repo)
    assert states(models) == {1: "AVAILABLE", 2: "AVAILABLE"}
    assert score(models) == 2 and score(models, 1) == 1 and score(models, 2) == 2
    models.unload_all()


def test_a_corrupt_version_is_failed_with_the_reason_and_serving_is_untouched(pool, repo):
    models = manager(pool, repo)
    version = publish_version(repo)
    model_file = repo / "ctr" / str(version) / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:-100] + b"\0" * 100)
    models.reconcile()
    (ctr,) = models.describe()
    failed = {v["version"]: v for v in ctr["versions"]}[version]
    assert failed["state"] == VersionState.FAILED.value
    assert "sha256" in failed["reason"] and "corrupt" in failed["reason"]
    assert score(models) == 1
    history = (repo / "ctr" / "rollout_history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["action"] == "version_failed"
    models.unload_all()


def test_a_version_whose_outputs_differ_from_its_golden_outputs_fails_parity(pool, repo):
    models = manager(pool, repo)
    version = publish_version(repo)
    meta_file = repo / "ctr" / str(version) / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["golden"]["outputs"]["ctr"][3] += 0.01
    meta_file.write_text(json.dumps(meta))
    models.reconcile()
    (ctr,) = models.describe()
    reason = {v["version"]: v for v in ctr["versions"]}[version]["reason"]
    assert "parity: golden row 3" in reason
    assert score(models) == 1
    models.unload_all()


def test_a_bad_config_is_refused_naming_file_and_field_and_nothing_changes(pool, repo):
    models = manager(pool, repo)
    publish_version(repo)  # a new version must not load under a config that does not validate
    config_file = repo / "ctr" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["batching"]["max_batch_rows"] = -4
    config_file.write_text(yaml.safe_dump(config))
    models.reconcile()
    (ctr,) = models.describe()
    assert str(config_file) in ctr["error"] and "batching.max_batch_rows" in ctr["error"]
    assert states(models) == {1: "AVAILABLE"} and score(models) == 1
    models.unload_all()


def test_a_bad_config_at_start_stops_the_start(pool, repo):
    (repo / "ctr" / "config.yaml").write_text("name: ctr\ninputs: []\n")
    models = ModelManager(pool, ModelRepository(repo), ManagerOptions(poll_interval_s=0))
    with pytest.raises(ValueError, match=r"config\.yaml: inputs"):
        models.load_all()


def test_a_bad_rollout_file_is_refused_naming_the_field(pool, repo):
    models = manager(pool, repo)
    (repo / "ctr" / "rollout.yaml").write_text("stable: 1\ncanary: {version: 2, percent: 250}\n")
    models.reconcile()
    (ctr,) = models.describe()
    assert "rollout.yaml" in ctr["error"] and "canary.percent" in ctr["error"]
    assert score(models) == 1
    models.unload_all()


def test_a_removed_version_drains_the_requests_routed_to_it_before_it_unloads(pool, repo):
    models = manager(pool, repo)
    models.options = ManagerOptions(poll_interval_s=0, drain_timeout_s=30)
    held = models.route("ctr", 0, "k")  # a request routed to version 1, not yet submitted
    publish_version(repo)
    switch = threading.Thread(target=models.reconcile)
    switch.start()
    deadline = time.monotonic() + 30
    while models.route("ctr", 0, "k").servable.version != 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert switch.is_alive()  # version 1 waits for the request routed to it
    result = held.servable.model.submit(
        {"dense": np.zeros((2, 13), np.float32), "sparse": np.zeros((2, 26), np.int64)}
    ).wait()
    assert result.outputs["ctr"].shape == (2,)  # answered by version 1, after the switch
    del held
    switch.join(timeout=10)
    assert not switch.is_alive()  # released by the request, long before the 30 s drain timeout
    assert states(models) == {2: "AVAILABLE"}
    models.unload_all()
