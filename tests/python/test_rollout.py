"""Rollout on a running server: canary split by routing key, shadow mirrored and judged by the
guardrails, version switches under load, the admin API and its token, and the rollout commands."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from rollout_models import ctr_repository, int8_weights, publish_version, quantized_ctr, shifted_ctr

import adrank._core as core
from adrank.admin_messages import GUARDRAIL_FIELDS, policy_fields, policy_of, rollout_message
from adrank.admin_token import TOKEN_ENV
from adrank.cli import main
from adrank.client import RankClient, RankError
from adrank.rollout.audit import AuditEntry
from adrank.rollout.audit_location import AuditLocation
from adrank.rollout.changes import ChangeError, promote, rollback, set_canary, set_shadow
from adrank.rollout.guardrails import Figures, evaluate, population_stability_index, quantile_us
from adrank.rollout.policy import CanaryPolicy, GuardrailPolicy, RolloutPolicy, ShadowPolicy
from adrank.rollout.routes import route_for
from adrank.rollout.summary import summary
from adrank.v1 import admin_pb2 as admin
from adrank.v1 import admin_pb2_grpc as admin_grpc
from served import FRONTENDS, ServerThread

TOKEN = "test-admin-token"
RNG = np.random.default_rng(7)


def candidates(n: int = 20) -> dict[str, np.ndarray]:
    dense = RNG.integers(0, 30, size=(n, 13)).astype(np.float32)
    sparse = RNG.integers(0, 1 << 20, size=(n, 26)).astype(np.int64)
    return {"dense": dense, "sparse": sparse}


def scrape(http_port: int) -> dict[tuple[str, str, str], float]:
    """ctr's samples of /metrics by (name, version, role or code)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        body = reply.read().decode()
    return {
        (s.name, s.labels["version"], s.labels.get("role") or s.labels.get("code", "")): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.labels.get("model") == "ctr"
    }


def write_rollout(repo: Path, policy: dict) -> None:
    (repo / "ctr" / "rollout.yaml").write_text(yaml.safe_dump(policy))


def history(repo: Path) -> list[dict]:
    path = AuditLocation.from_option(None, repo).file("ctr")  # the default: what servers and the CLI use
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return ctr_repository(tmp_path / "repo")


def serve(repo: Path, frontend: str, **options) -> ServerThread:
    return ServerThread(repo, frontend=frontend, admin_port=0, admin_token=TOKEN, **options).start()


# ---- the policy changes and the guardrail figures (pure) ------------------------------------------


def test_the_route_a_policy_asks_for_among_the_available_versions():
    def route(policy: RolloutPolicy, available: list[int], current: int | None) -> tuple:
        r = route_for(policy, available, current)
        return (r.stable, r.canary, r.canary_basis_points, r.shadow, r.shadow_basis_points)

    # No stable named: what serves now keeps serving (a new version waits for a promote), unless the model's
    # config says latest_serves; with nothing serving yet (a start), the newest.
    assert route(RolloutPolicy(), [1, 2, 3], 2) == (2, 0, 0, 0, 10000)
    assert route_for(RolloutPolicy(), [1, 2, 3], 2, latest_serves=True).stable == 3
    assert route(RolloutPolicy(), [1, 2, 3], None) == (3, 0, 0, 0, 10000)
    assert route(RolloutPolicy(stable=2), [1, 2, 3], 3) == (2, 0, 0, 0, 10000)
    assert route(RolloutPolicy(stable=4), [1, 2, 3], 2) == (2, 0, 0, 0, 10000)  # 4 not loaded: keep what serves
    assert route(RolloutPolicy(stable=4), [1, 3], None) == (3, 0, 0, 0, 10000)
    canary = CanaryPolicy(version=3, percent=12.5)
    shadow = ShadowPolicy(version=1, sample_percent=50)
    assert route(RolloutPolicy(stable=2, canary=canary, shadow=shadow), [1, 2, 3], 2) == (2, 3, 1250, 1, 5000)
    assert route(RolloutPolicy(stable=2, canary=canary), [1, 2], 2) == (2, 0, 0, 0, 10000)  # canary not loaded
    # The policy's stable is not loaded, the serving version is its canary: no version is its own canary.
    assert route(RolloutPolicy(stable=4, canary=canary), [2, 3], 3) == (3, 0, 0, 0, 10000)


def test_changes_follow_the_rollout_rules():
    policy, action = set_canary(RolloutPolicy(), 2, 5, stable_now=1)
    assert (policy.stable, policy.canary.version, policy.canary.percent, action) == (1, 2, 5, "canary")
    with pytest.raises(ChangeError, match="is the stable version"):
        set_canary(policy, 1, 5, stable_now=1)
    with pytest.raises(ChangeError, match="is the stable version"):
        set_shadow(RolloutPolicy(), 3, 100, stable_now=3)  # 3 serves: the shadow would mirror itself
    policy, _ = set_shadow(policy, 3, 50, stable_now=1)
    promoted, _ = promote(policy, 2)
    assert promoted.stable == 2 and promoted.canary is None and promoted.shadow.version == 3
    ended, action = rollback(promoted, [])
    assert ended.canary is None and ended.shadow is None and ended.stable == 2 and action == "rollback"
    with pytest.raises(ChangeError, match="nothing to roll back: no canary or shadow, and stable 2 was not promoted"):
        rollback(ended, [])
    with pytest.raises(
        ChangeError, match=r"nothing to roll back: no canary or shadow, and rollout\.yaml names no stable"
    ):
        rollback(RolloutPolicy(), [])
    promotion = AuditEntry("ctr", "me", "promote", before={"stable": 1}, after={"stable": 2})
    reverted, _ = rollback(ended, [promotion])
    assert reverted.stable == 1


def test_a_rollout_policy_survives_the_admin_message_both_ways():
    assert set(GUARDRAIL_FIELDS) == set(GuardrailPolicy.model_fields)
    policy = RolloutPolicy.model_validate(
        {
            "stable": 3,
            "canary": {"version": 4, "percent": 12.5},
            "shadow": {"version": 5, "sample_percent": 40},
            "guardrails": {"enabled": False, "window_s": 30, "interval_s": 0.5, "min_requests": 50,
                           "max_latency_ratio": 1.2, "max_error_rate": 0.02, "max_psi": 0.1},
        }
    )  # fmt: skip
    assert policy_of(rollout_message("ctr", policy)) == policy
    # What the admin client shows without validating (no pydantic): the policy's JSON form and its summary.
    assert policy_fields(rollout_message("ctr", policy)) == policy.model_dump(mode="json")
    assert (
        summary(policy.model_dump(mode="json"))
        == policy.summary()
        == ("stable 3, canary 4 at 12.5 %, shadow 5 (40 % mirrored)")
    )
    assert summary(RolloutPolicy().model_dump(mode="json")) == "stable not named"  # not "latest": see route_for


def test_latency_quantile_and_psi_read_the_histograms():
    bounds = np.asarray(core.VersionStats.latency_bounds_us)
    counts = np.zeros(len(bounds) + 1, np.int64)
    fast, slow = np.searchsorted(bounds, 500), np.searchsorted(bounds, 5000)
    counts[fast], counts[slow] = 99, 1
    assert bounds[fast - 1] < quantile_us(counts, 0.5) <= bounds[fast]
    assert bounds[fast - 1] < quantile_us(counts, 0.99) <= bounds[fast]
    assert bounds[slow - 1] < quantile_us(counts, 0.999) <= bounds[slow]
    stable = np.bincount(RNG.integers(1, 500, 20000), minlength=1002)
    same = np.bincount(RNG.integers(1, 500, 20000), minlength=1002)
    shifted = np.bincount(RNG.integers(200, 700, 20000), minlength=1002)
    assert population_stability_index(stable, same) < 0.01
    assert population_stability_index(stable, shifted) > 1.0


def test_evaluate_waits_for_enough_requests_then_judges_each_guardrail():
    bounds = np.asarray(core.VersionStats.latency_bounds_us)

    def figures(ok: int, failed: int, latency_us: float, scores: np.ndarray) -> Figures:
        latency = np.zeros(len(bounds) + 1, np.int64)
        latency[np.searchsorted(bounds, latency_us)] = ok
        return Figures(ok, failed, 0, latency, latency, scores)

    scores = np.bincount(RNG.integers(1, 500, 5000), minlength=1002)
    policy = GuardrailPolicy(min_requests=100)
    stable = figures(1000, 0, 500, scores)
    assert evaluate("canary", stable, figures(50, 0, 500, scores), policy) is None
    healthy = evaluate("canary", stable, figures(500, 0, 510, scores), policy)
    assert healthy is not None and not healthy.breached
    slow = evaluate("canary", stable, figures(500, 0, 2000, scores), policy)
    assert slow.breached and "p99" in slow.reasons[0] and slow.figures["p99_ratio"] > 1.5
    failing = evaluate("canary", stable, figures(450, 50, 500, scores), policy)
    assert failing.breached and "error rate" in failing.reasons[0]


# ---- on a running server ---------------------------------------------------------------------------


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_canary_split_is_within_two_points_over_10000_keys_sticky_and_named_in_the_response(repo, frontend):
    publish_version(repo)
    write_rollout(repo, {"stable": 1, "canary": {"version": 2, "percent": 10}})
    server = serve(repo, frontend)
    try:
        models = server.server.models
        routed = {f"user-{i}": models.route("ctr", 0, f"user-{i}").servable.version for i in range(10000)}
        share = sum(v == 2 for v in routed.values()) / len(routed)
        assert abs(share - 0.10) <= 0.02, share
        with RankClient(server.target) as client:
            for i in range(0, 400, 2):
                key = f"user-{i}"
                answers = {client.rank(["ctr"], candidates(3), routing_key=key)["ctr"].version for _ in range(2)}
                assert answers == {routed[key]}, key  # sticky, and the response says which version answered
        # The metrics show the split and count each version's answers.
        metrics = scrape(server.server.http_port)
        to_canary = 2 * sum(routed[f"user-{i}"] == 2 for i in range(0, 400, 2))
        assert metrics[("adrank_rollout_traffic_percent", "1", "stable")] == 90
        assert metrics[("adrank_rollout_traffic_percent", "2", "canary")] == 10
        assert metrics[("adrank_requests_total", "2", "OK")] == to_canary
        assert metrics[("adrank_requests_total", "1", "OK")] == 400 - to_canary
    finally:
        server.stop()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_shadow_with_shifted_scores_is_rolled_back_by_the_guardrail_and_never_answers(repo, tmp_path, frontend):
    publish_version(repo, shifted_ctr(tmp_path / "shifted.onnx"))
    write_rollout(
        repo,
        {
            "stable": 1,
            "shadow": {"version": 2},
            "guardrails": {"window_s": 10, "interval_s": 0.2, "min_requests": 30, "max_latency_ratio": 50},
        },
    )
    server = serve(repo, frontend, models=_fast_polling())
    try:
        with RankClient(server.target) as client:
            deadline = time.monotonic() + 30
            while not any(e["action"] == "guardrail_rollback" for e in history(repo)):
                assert time.monotonic() < deadline, "the guardrail never rolled the shadow back"
                result = client.rank(["ctr"], candidates(), request_id=f"r{time.monotonic_ns()}")
                assert result["ctr"].version == 1  # the shadow never answers
                time.sleep(0.005)
        entry = next(e for e in history(repo) if e["action"] == "guardrail_rollback")
        assert entry["actor"] == "guardrail" and "PSI" in entry["reason"]
        assert entry["figures"]["psi"] > 0.25 and entry["figures"]["role"] == "shadow"
        assert entry["cause"] == "explicit"  # a route change, with the route it changed
        assert (entry["route"]["before"]["shadow"], entry["route"]["after"]["shadow"]) == (2, 0)
        assert "shadow" not in yaml.safe_load((repo / "ctr" / "rollout.yaml").read_text())
        assert server.server.models.registry.rollout("ctr").shadow == 0
    finally:
        server.stop()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_switching_versions_under_steady_load_loses_no_request(repo, frontend):
    server = serve(repo, frontend, models=_fast_polling())
    errors: list[str] = []
    seen: list[int] = []
    stop = threading.Event()

    def steady_load() -> None:  # a fixed rate: one request every 5 ms
        with RankClient(server.target) as client:
            next_send = time.monotonic()
            while not stop.is_set():
                try:
                    seen.append(client.rank(["ctr"], candidates(50), timeout=5)["ctr"].version)
                except RankError as error:
                    errors.append(f"{error.code.name}: {error.details}")
                next_send += 0.005
                time.sleep(max(0.0, next_send - time.monotonic()))

    load = threading.Thread(target=steady_load)
    load.start()
    try:
        for version in (2, 3):
            time.sleep(0.5)
            publish_version(repo)  # takes no traffic until promoted
            write_rollout(repo, {"stable": version})  # promoted: servers apply it at their next poll
            deadline = time.monotonic() + 30
            while not seen or seen[-1] != version:
                assert time.monotonic() < deadline, f"version {version} never went live"
                time.sleep(0.05)
        # Load goes on after the last switch until 100 more requests were answered, however busy the machine.
        answered = len(seen)
        while len(seen) < answered + 100 and not errors:
            assert time.monotonic() < deadline, f"{len(seen) - answered} requests after the last switch"
            time.sleep(0.05)
    finally:
        stop.set()
        load.join()
        server.stop()
    assert errors == []
    assert set(seen) == {1, 2, 3} and seen == sorted(seen)  # each switch is once and for all
    assert seen.count(3) >= 100


def test_admin_calls_need_the_token(repo):
    server = serve(repo, "python")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.server.admin.port}")
        stub = admin_grpc.AdminStub(channel)
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListModels(admin.ListModelsRequest(), metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as refused:
                stub.Promote(admin.PromoteRequest(model="ctr", version=1), metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = [("authorization", f"Bearer {TOKEN}")]
        listed = stub.ListModels(admin.ListModelsRequest(), metadata=good, timeout=10)
        assert [(v.version, v.state, v.role) for v in listed.models[0].versions] == [(1, "AVAILABLE", "stable")]
        bad = admin.Rollout(model="ctr", stable=1, canary=admin.Canary(version=1, percent=250))
        with pytest.raises(grpc.RpcError) as refused:
            stub.SetRollout(admin.SetRolloutRequest(rollout=bad), metadata=good, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "percent" in refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Promote(admin.PromoteRequest(model="ctr", version=9), metadata=good, timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "version 9" in refused.value.details()
        # A model name that is a path is refused as one, before anything looks it up.
        for call, request, field in (
            (stub.LoadVersion, admin.VersionRequest(model="../ctr", version=1), "model"),
            (stub.History, admin.HistoryRequest(model="ctr/.."), "model"),
            (stub.SetRollout, admin.SetRolloutRequest(rollout=admin.Rollout(model="/ctr", stable=1)), "rollout.model"),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, metadata=good, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details().startswith(f"{field}: ") and "is not a model name" in refused.value.details()
        assert history(repo) == []  # nothing refused was applied or audited
        channel.close()
    finally:
        server.stop()


def test_the_rollout_commands_act_on_a_running_server(repo):
    publish_version(repo)
    write_rollout(repo, {"stable": 1})
    server = serve(repo, "python")
    address = ["--server", f"127.0.0.1:{server.server.admin.port}"]
    runner = CliRunner(env={TOKEN_ENV: TOKEN})
    try:
        canary = runner.invoke(main, ["rollout", "ctr", "--canary", "2", "--percent", "25", *address, "--json"])
        assert canary.exit_code == 0, canary.output
        assert json.loads(canary.output)["policy"]["canary"] == {"version": 2, "percent": 25.0}
        assert server.server.models.registry.rollout("ctr").canary_basis_points == 2500
        listed = runner.invoke(main, ["models", *address, "--json", "--history"])
        (ctr,) = json.loads(listed.output)
        assert {v["version"]: v["role"] for v in ctr["versions"]} == {1: "stable", 2: "canary 25 %"}
        assert [e["action"] for e in ctr["history"]] == ["pin_stable", "canary"]
        assert runner.invoke(main, ["promote", "ctr", "2", *address]).exit_code == 0
        assert server.server.models.registry.rollout("ctr").stable == 2
        back = runner.invoke(main, ["rollback", "ctr", *address, "--reason", "revert"])
        assert back.exit_code == 0, back.output
        assert server.server.models.registry.rollout("ctr").stable == 1
        assert [e["action"] for e in history(repo)] == ["pin_stable", "canary", "promote", "rollback"]
        refused = CliRunner(env={TOKEN_ENV: "nope"}).invoke(main, ["models", "--server", address[1]])
        assert refused.exit_code != 0 and "UNAUTHENTICATED" in refused.output
    finally:
        server.stop()


def test_models_shows_the_int8_saturation_a_version_was_published_with_from_the_server(repo, tmp_path):
    version = publish_version(repo, quantized_ctr(tmp_path / "int8.onnx", int8_weights(8)), allow_int8_saturation=True)
    note = "1 int8 node can saturate without VNNI (allowed by adrank publish --allow-int8-saturation)"
    write_rollout(repo, {"stable": 1, "canary": {"version": version, "percent": 10}})
    server = serve(repo, "python")
    address = ["--server", f"127.0.0.1:{server.server.admin.port}"]
    try:
        listed = CliRunner(env={TOKEN_ENV: TOKEN}).invoke(main, ["models", *address, "--json"])
        assert listed.exit_code == 0, listed.output
        (ctr,) = json.loads(listed.stdout)
        assert {v["version"]: (v["state"], v["integer_kernels"]) for v in ctr["versions"]} == {
            1: ("AVAILABLE", ""),
            version: ("AVAILABLE", note),
        }
        table = CliRunner(env={"COLUMNS": "250", TOKEN_ENV: TOKEN}).invoke(main, ["models", *address])
        assert "integer kernels" in table.stdout and note in table.stdout, table.output
    finally:
        server.stop()


def test_the_rollout_commands_edit_the_repository_without_a_server(repo):
    write_rollout(repo, {"stable": 1})
    publish_version(repo)
    runner = CliRunner()
    where = ["--repository", str(repo)]
    shadow = runner.invoke(
        main, ["rollout", "ctr", "--shadow", "2", "--sample-percent", "20", *where, "--actor", "ana"]
    )
    assert shadow.exit_code == 0, shadow.output
    assert yaml.safe_load((repo / "ctr" / "rollout.yaml").read_text())["shadow"] == {
        "version": 2,
        "sample_percent": 20.0,
    }
    missing = runner.invoke(main, ["rollout", "ctr", "--canary", "7", "--percent", "5", *where])
    assert missing.exit_code != 0 and "no version 7" in missing.output
    listed = json.loads(runner.invoke(main, ["models", *where, "--json", "--history"]).output)
    assert listed[0]["history"][0]["actor"] == "ana" and listed[0]["history"][0]["action"] == "shadow"
    text = runner.invoke(main, ["models", *where]).output
    assert "stable 1, shadow 2 (20 % mirrored)" in text


def _fast_polling():
    from adrank.lifecycle.manager import ManagerOptions

    return ManagerOptions(poll_interval_s=0.1, drain_timeout_s=10)
