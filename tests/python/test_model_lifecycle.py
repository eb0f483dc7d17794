"""The repository lifecycle (python/adrank/lifecycle/manager.py): versions load in the background, are
warmed up and parity-checked before traffic reaches them, switch atomically and drain; a version or a
config that fails leaves what serves untouched."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from rollout_models import corrupt, ctr_repository, int8_weights, publish_version, quantized_ctr, second_model

import adrank._core as core
from adrank.cli import main
from adrank.cpu_features import cpu_features
from adrank.lifecycle.manager import ManagerOptions, ModelManager, NothingToServe, VersionState
from adrank.repository.layout import ModelRepository, RepositoryError
from adrank.rollout.changes import promote
from adrank.status import RequestError, StatusCode
from served import MODELS


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


def states(models: ModelManager, name: str = "ctr") -> dict[int, str]:
    (model,) = [m for m in models.describe() if m["model"] == name]
    return {v["version"]: v["state"] for v in model["versions"]}


def score(models: ModelManager, version: int = 0) -> int:
    """Scores one request through the routed (or pinned) version; the version that answered."""
    route = models.route("ctr", version, "k")
    dense = np.zeros((3, 13), np.float32)
    sparse = np.zeros((3, 26), np.int64)
    result = route.servable.model.submit({"dense": dense, "sparse": sparse}).wait()
    assert result.outputs["ctr"].shape == (3,)
    return route.servable.version


def audit_entries(models: ModelManager, action: str | None = None) -> list[dict]:
    path = models.audit.file("ctr")
    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e for e in entries if action is None or e["action"] == action]


def set_config(repo: Path, **fields: object) -> None:
    config = yaml.safe_load((repo / "ctr" / "config.yaml").read_text())
    (repo / "ctr" / "config.yaml").write_text(yaml.safe_dump({**config, **fields}))


def test_a_published_version_loads_and_warms_up_but_takes_no_traffic_until_promoted(pool, repo):
    models = manager(pool, repo)
    assert states(models) == {1: "AVAILABLE"} and score(models) == 1
    publish_version(repo)
    assert yaml.safe_load((repo / "ctr" / "rollout.yaml").read_text()) == {"stable": 1}  # publish pinned it
    (pin,) = audit_entries(models, "pin_stable")
    assert pin["cause"] == "explicit" and pin["after"]["stable"] == 1 and "version 2" in pin["reason"]
    for _ in range(2):
        models.reconcile()
        assert states(models) == {1: "AVAILABLE", 2: "AVAILABLE"} and score(models) == 1
    assert score(models, 2) == 2  # loaded and warm: a client may pin it
    assert audit_entries(models, "route") == []  # nothing changed what serves
    other_pool = core.ThreadPool(num_workers=1)  # a server started now reads the same pin
    try:
        restarted = manager(other_pool, repo)
        assert score(restarted) == 1
        restarted.unload_all()
    finally:
        other_pool.shutdown()

    policy, action = promote(models.policy("ctr"), 2)
    models.set_policy("ctr", policy, "me", action)
    assert states(models) == {2: "AVAILABLE"} and score(models) == 2
    with pytest.raises(RequestError, match="no version 1 loaded"):
        models.route("ctr", 1)
    (promoted,) = audit_entries(models, "promote")
    assert promoted["cause"] == "explicit"
    assert (promoted["route"]["before"]["stable"], promoted["route"]["after"]["stable"]) == (1, 2)
    models.unload_all()


def test_a_version_copied_in_by_hand_takes_no_traffic_on_a_running_server(pool, repo):
    models = manager(pool, repo)
    publish_version(repo)
    (repo / "ctr" / "rollout.yaml").unlink()  # as if copied into the repository without adrank publish
    models.reconcile()
    assert states(models) == {1: "AVAILABLE", 2: "AVAILABLE"} and score(models) == 1
    assert audit_entries(models, "route") == []
    models.unload_all()


def test_a_model_whose_config_says_latest_serves_routes_to_each_new_version_and_audits_it(pool, repo):
    set_config(repo, latest_serves=True)
    models = manager(pool, repo)
    publish_version(repo)
    assert not (repo / "ctr" / "rollout.yaml").exists()  # nothing pinned
    models.reconcile()
    assert states(models) == {2: "AVAILABLE"} and score(models) == 2
    with pytest.raises(RequestError, match="no version 1 loaded"):
        models.route("ctr", 1)
    (change,) = audit_entries(models, "route")
    assert change["cause"] == "latest_serves" and change["actor"] == "watcher"
    assert (change["route"]["before"]["stable"], change["route"]["after"]["stable"]) == (1, 2)
    models.unload_all()


def test_a_route_change_nobody_asked_the_server_for_is_audited_with_its_cause(pool, repo):
    models = manager(pool, repo)
    publish_version(repo)
    models.reconcile()
    (repo / "ctr" / "rollout.yaml").write_text("stable: 2\n")  # a promote written to the files
    models.reconcile()
    assert score(models) == 2
    shutil.rmtree(repo / "ctr" / "2")  # the stable version leaves the repository
    models.reconcile()
    assert states(models) == {1: "AVAILABLE"} and score(models) == 1
    changes = [
        (e["cause"], e["route"]["before"]["stable"], e["route"]["after"]["stable"])
        for e in audit_entries(models, "route")
    ]
    assert changes == [("rollout_file", 1, 2), ("version_removed", 2, 1)]
    assert "version 2 left the repository" in audit_entries(models, "route")[-1]["reason"]
    shown = CliRunner(env={"COLUMNS": "250"}).invoke(main, ["models", "--repository", str(repo), "--history"])
    assert shown.exit_code == 0, shown.output
    assert "watcher route: route stable 1 -> stable 2 (rollout_file) rollout.yaml changed: stable 2" in shown.stdout
    assert "watcher route: route stable 2 -> stable 1 (version_removed) version 2 left the repository" in shown.stdout
    shutil.rmtree(repo / "ctr")  # the model leaves the repository
    models.reconcile()
    last = audit_entries(models)[-1]
    assert (last["cause"], last["route"]["before"]["stable"], last["route"]["after"]) == ("model_removed", 1, None)
    models.unload_all()


def test_a_version_the_rollout_names_that_failed_then_loads_takes_its_route_back_audited_as_version_loaded(pool, repo):
    publish_version(repo)
    (repo / "ctr" / "rollout.yaml").write_text("stable: 2\n")
    good = corrupt(repo / "ctr" / "2" / "model.onnx")
    models = manager(pool, repo)
    assert states(models) == {1: "AVAILABLE", 2: "FAILED"} and score(models) == 1
    (repo / "ctr" / "2" / "model.onnx").write_bytes(good)  # fixed: its files changed, so it is retried
    models.reconcile()
    assert states(models) == {2: "AVAILABLE"} and score(models) == 2
    changes = [
        (e["cause"], e["route"]["before"] and e["route"]["before"]["stable"], e["route"]["after"]["stable"])
        for e in audit_entries(models, "route")
    ]
    assert changes == [("load_failure", None, 1), ("version_loaded", 1, 2)]
    assert audit_entries(models, "route")[-1]["reason"] == "the rollout's versions are AVAILABLE: stable 2"
    models.unload_all()


def test_version_policy_latest_two_keeps_both_and_a_client_may_pin_either(pool, repo):
    config = yaml.safe_load((repo / "ctr" / "config.yaml").read_text())
    config["version_policy"] = {"latest": 2}
    (repo / "ctr" / "config.yaml").write_text(yaml.safe_dump(config))
    publish_version(repo)
    models = manager(pool, repo)
    assert states(models) == {1: "AVAILABLE", 2: "AVAILABLE"}
    assert score(models) == 1 and score(models, 1) == 1 and score(models, 2) == 2  # stable: publish pinned 1
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
    history = models.audit.file("ctr").read_text().splitlines()
    assert json.loads(history[-1])["action"] == "version_failed"
    assert not (repo / "ctr" / "rollout_history.jsonl").exists()  # nothing written into the repository
    models.unload_all()


def test_a_failed_version_is_audited_once_per_distinct_failure(pool, repo):
    """Polls that find it still FAILED, and a retry on the same files, add no line; changed files that fail
    again are a new failure, one more line."""
    version = publish_version(repo)
    model_file = repo / "ctr" / str(version) / "model.onnx"
    good = corrupt(model_file)
    models = manager(pool, repo)
    for _ in range(5):
        models.reconcile()
    models.load_version("ctr", version)

    def failures() -> list[dict]:
        lines = models.audit.file("ctr").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["action"] == "version_failed"]

    assert len(failures()) == 1
    model_file.write_bytes(good[:-50] + b"\1" * 50)  # other damage: other files
    os.utime(model_file, (time.time() + 5, time.time() + 5))  # a new mtime however coarse the clock
    models.reconcile()
    models.reconcile()
    assert len(failures()) == 2 and failures()[-1]["figures"] == {"version": version}
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
    # The CPU is named: a model that scores differently on one kind of CPU is traced to it from the reason.
    assert reason.endswith(f") on this CPU: {cpu_features().summary()}"), reason
    assert score(models) == 1
    models.unload_all()


def test_a_parity_failure_of_a_version_published_with_saturating_int8_nodes_says_so(pool, repo, tmp_path):
    model_file = quantized_ctr(tmp_path / "int8.onnx", int8_weights(8))
    version = publish_version(repo, model_file, allow_int8_saturation=True)
    meta_file = repo / "ctr" / str(version) / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["golden"]["outputs"]["ctr"][0] += 0.0195  # what 16-bit saturation did to relevance version 1
    meta_file.write_text(json.dumps(meta))
    models = manager(pool, repo)
    (ctr,) = models.describe()
    failed = {v["version"]: v for v in ctr["versions"]}[version]
    note = "1 int8 node can saturate without VNNI (allowed by adrank publish --allow-int8-saturation)"
    assert failed["state"] == "FAILED" and failed["integer_kernels"] == note, failed
    assert failed["reason"].startswith("parity: golden row 0 scores 0.5, meta.json says 0.5195"), failed["reason"]
    summary = cpu_features().summary()
    assert "(|diff| 0.0195 > atol " in failed["reason"]  # the tolerance is version 1's (publish keeps it)
    assert failed["reason"].endswith(f") on this CPU: {summary}; meta.json: {note}"), failed["reason"]
    assert score(models) == 1  # the previous version serves
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


def test_a_start_with_nothing_to_serve_fails_naming_each_models_reason(pool, repo):
    (repo / "ctr" / "config.yaml").write_text("name: ctr\ninputs: []\n")
    models = ModelManager(pool, ModelRepository(repo), ManagerOptions(poll_interval_s=0))
    with pytest.raises(NothingToServe, match=r"model 'ctr': .*config\.yaml: inputs"):
        models.load_all()
    with pytest.raises(RepositoryError, match="cannot read it"):
        ModelManager(pool, ModelRepository(repo / "gone"), ManagerOptions(poll_interval_s=0)).load_all()


def test_a_start_whose_newest_version_is_corrupt_serves_the_previous_one_and_reports_it_failed(pool, repo):
    version = publish_version(repo)
    corrupt(repo / "ctr" / str(version) / "model.onnx")
    (repo / "ctr" / "rollout.yaml").unlink()  # no pinned stable: the newest is the one to serve
    models = manager(pool, repo)  # the default policy wants only the newest version
    assert states(models) == {1: "AVAILABLE", version: "FAILED"}
    assert score(models) == 1 and dict(models.readiness()) == {"ctr": True}
    (ctr,) = models.describe()
    assert "sha256" in {v["version"]: v for v in ctr["versions"]}[version]["reason"]
    (fallback,) = audit_entries(models, "route")  # not what should serve: audited, with the failure
    assert fallback["cause"] == "load_failure" and f"version {version} FAILED" in fallback["reason"]
    assert (fallback["route"]["before"], fallback["route"]["after"]["stable"]) == (None, 1)
    models.unload_all()


def test_a_model_with_no_version_that_loads_leaves_the_others_serving_and_is_not_ready_until_one_does(pool, repo):
    second_model(repo)
    good = corrupt(repo / "ctr" / "1" / "model.onnx")
    seen: list[dict[str, bool]] = []
    models = ModelManager(pool, ModelRepository(repo), ManagerOptions(poll_interval_s=0, drain_timeout_s=5))
    models.on_readiness(lambda readiness: seen.append(dict(readiness)))
    assert [s.name for s in models.load_all()] == ["ctr2"]
    assert dict(models.readiness()) == {"ctr": False, "ctr2": True} and not models.ready()
    assert states(models, "ctr") == {1: "FAILED"}
    with pytest.raises(RequestError, match="ctr"):
        models.route("ctr")
    (repo / "ctr" / "1" / "model.onnx").write_bytes(good)  # fixed: its files changed, so it is retried
    models.reconcile()
    assert states(models, "ctr") == {1: "AVAILABLE"} and models.ready()
    shutil.rmtree(repo / "ctr2")  # a model folder removed from a readable repository unloads
    models.reconcile()
    assert dict(models.readiness()) == {"ctr": True} and score(models) == 1
    assert seen == [{"ctr": False, "ctr2": True}, {"ctr": True, "ctr2": True}, {"ctr": True}]
    models.unload_all()


@pytest.mark.parametrize("outage", ["removed", "replaced by a file", "unreadable"])
def test_a_repository_that_cannot_be_read_keeps_every_loaded_version_and_counts_each_poll(pool, repo, outage):
    models = manager(pool, repo)
    moved = repo.parent / "moved"
    repo.rename(moved)
    if outage == "replaced by a file":
        repo.write_text("")
    elif outage == "unreadable":
        repo.mkdir()
        os.chmod(repo, 0)
        if os.access(repo, os.R_OK):  # root reads anything: make it a folder that cannot be listed
            repo.rmdir()
            repo.symlink_to(repo)
    try:
        for polls in (1, 2):
            models.reconcile()
            assert models.repository_errors == polls
            assert states(models) == {1: "AVAILABLE"} and score(models) == 1 and models.ready()
    finally:
        if repo.is_symlink() or repo.is_file():
            repo.unlink()
        elif repo.exists():
            os.chmod(repo, 0o755)
            repo.rmdir()
    moved.rename(repo)
    publish_version(repo)  # polling resumes where it stopped
    models.reconcile()
    assert states(models) == {1: "AVAILABLE", 2: "AVAILABLE"} and models.repository_errors == 2
    models.unload_all()


def test_a_bad_rollout_file_is_refused_naming_the_field(pool, repo):
    models = manager(pool, repo)
    (repo / "ctr" / "rollout.yaml").write_text("stable: 1\ncanary: {version: 2, percent: 250}\n")
    models.reconcile()
    (ctr,) = models.describe()
    assert "rollout.yaml" in ctr["error"] and "canary.percent" in ctr["error"]
    assert score(models) == 1
    models.unload_all()


def test_a_removed_version_drains_the_requests_routed_to_it_before_it_unloads(pool, repo):
    set_config(repo, latest_serves=True)  # the new version takes the traffic at the next reconcile
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


def test_a_model_unloaded_on_request_stays_unloaded_across_polls_until_loaded_again(pool, repo):
    models = manager(pool, repo)
    models.unload_model("ctr")
    for _ in range(2):  # the repository still holds it: the watcher's polls must not bring it back
        models.reconcile()
        assert models.held() == ["ctr"] and "ctr" not in models.readiness()
        with pytest.raises(RequestError) as refused:
            models.route("ctr")
        assert refused.value.code == StatusCode.NOT_FOUND
    models.unload_model("ctr")  # again: nothing more to do
    models.load_model("ctr")
    assert models.held() == [] and states(models) == {1: "AVAILABLE"} and score(models) == 1 and models.ready()
    unload, load = audit_entries(models)  # each an explicit route change, with the route before and after
    assert [(e["action"], e["cause"], e["reason"]) for e in (unload, load)] == [
        ("unload_model", "explicit", "unloaded on request"),
        ("load_model", "explicit", "loaded on request"),
    ]
    assert (unload["route"]["before"]["stable"], unload["route"]["after"]) == (1, None)
    assert (load["route"]["before"], load["route"]["after"]["stable"]) == (None, 1)
    with pytest.raises(RequestError) as unknown:
        models.unload_model("nope")
    assert unknown.value.code == StatusCode.NOT_FOUND and "'nope'" in unknown.value.message
    moved = repo.parent / "moved"
    repo.rename(moved)
    try:  # an unload the repository cannot confirm changes nothing
        with pytest.raises(RequestError) as unreadable:
            models.unload_model("ctr")
        assert unreadable.value.code == StatusCode.UNAVAILABLE and "nothing was unloaded" in unreadable.value.message
        assert score(models) == 1 and models.held() == []
    finally:
        moved.rename(repo)
    models.unload_all()


def test_golden_requests_the_queue_refuses_for_its_predicted_wait_go_again_and_the_version_loads(
    pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The parity check sends its golden requests as a burst; on a busy machine the queue's predicted-wait bound
    refuses part of it (RESOURCE_EXHAUSTED). Those go again once the others are done: slower, not FAILED."""
    real = core.start_rank
    refused: list[int] = []

    class Refused:
        def wait(self, timeout_s: float | None = None) -> bool:
            return True

        def result(self) -> bytes:
            error = core.CoreError("queue full: rows ahead are predicted to take 336717 us")
            error.code, error.grpc_code = "RESOURCE_EXHAUSTED", int(StatusCode.RESOURCE_EXHAUSTED)
            raise error

    def busy(registry, request: bytes, **options):  # every second request is refused (but a round's first)
        refused.append(len(refused))
        return Refused() if len(refused) % 2 == 0 and len(refused) < 12 else real(registry, request, **options)

    relevance = tmp_path / "relevance-repo"  # relevance: a golden request per query text, ctr has one in all
    shutil.copytree(MODELS / "relevance", relevance / "relevance", ignore=shutil.ignore_patterns("*.py", "*.md"))
    monkeypatch.setattr(core, "start_rank", busy)
    models = manager(pool, relevance)
    (described,) = models.describe()
    assert [(v["state"], v["reason"]) for v in described["versions"]] == [("AVAILABLE", "")]
    # 4 golden requests: #2 and #4 refused and sent again (#5, #6), #6 refused and sent again (#7).
    assert len(refused) == 7 and models.route("relevance").servable.version == 2
    models.unload_all()
