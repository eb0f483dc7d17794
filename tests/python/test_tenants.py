"""Tenants end to end: the `x-adrank-tenant` metadata on both front ends, priority classes above the default
only for the tenants configured for them, per-tenant limits and metrics, and the tenants file."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from test_metrics import scrape, value

from adrank.cli import main
from adrank.client import RankClient, RankError
from adrank.lifecycle.manager import ManagerOptions
from adrank.tenants import TenantsConfig, TenantsConfigError, load_tenants
from served import FRONTENDS, ServerThread, copy_model

TENANTS = """
defaults: {max_in_flight: 512}
tenants:
  gold: {weight: 4, highest_priority: 0}
  tiny: {max_in_flight: 1, max_queued_rows: 2048}
"""


def ctr_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense": rng.integers(0, 30, size=(n, 13)).astype(np.float32),
        "sparse": rng.integers(0, 1 << 20, size=(n, 26)).astype(np.int64),
    }


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory) -> Iterator[ServerThread]:
    repo = tmp_path_factory.mktemp("repo")
    copy_model(repo, "ctr")
    tenants_file = repo / "tenants.yaml"
    tenants_file.write_text(TENANTS)
    srv = ServerThread(repo, frontend=request.param, models=ManagerOptions(tenants=load_tenants(tenants_file)))
    yield srv.start()
    srv.stop()


def rank(server: ServerThread, tenant: str | None, **kwargs) -> np.ndarray:
    with RankClient(server.target, tenant=tenant) as client:
        return client.rank(["ctr"], ctr_rows(kwargs.pop("rows", 8)), timeout=30, **kwargs)["ctr"].scores


def test_a_class_above_the_default_is_denied_to_a_tenant_not_configured_for_it(server):
    for tenant in (None, "someone"):
        with pytest.raises(RankError) as error:
            rank(server, tenant, priority=0)
        assert error.value.code == grpc.StatusCode.PERMISSION_DENIED, error.value.details
        assert f"tenant '{tenant or 'default'}'" in error.value.details
        assert "priority class 0" in error.value.details
    assert rank(server, "gold", priority=0).shape == (8,)
    assert rank(server, None, priority=2).shape == (8,), "a class below the default is open to every tenant"
    assert rank(server, None).shape == (8,), "no class asked: the model's default"


def test_every_tenant_gets_the_same_scores(server):
    expected = rank(server, None)
    for tenant in ("gold", "someone", "a.b-c_9"):
        np.testing.assert_array_equal(rank(server, tenant), expected)


@pytest.mark.parametrize("tenant", ["has space", "-leading", "x" * 65, "slash/in"])
def test_a_tenant_name_that_is_not_one_is_refused_naming_the_header(server, tenant):
    with pytest.raises(RankError) as error:
        rank(server, tenant)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT, error.value.details
    assert "x-adrank-tenant" in error.value.details
    assert rank(server, None).shape == (8,)


def test_a_tenant_beyond_its_limit_is_refused_naming_it_while_the_others_are_served(server):
    """'tiny' may hold one 2048-row request: sixteen sent at once cannot all be admitted, and the default
    tenant's calls alongside them all succeed."""
    outcomes: Counter[str] = Counter()
    messages: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def call(tenant: str, rows: int) -> None:
        start.wait()
        try:
            rank(server, tenant, rows=rows)
            outcome = f"{tenant}:OK"
        except RankError as error:
            outcome = f"{tenant}:{error.code.name}"
            with lock:
                messages.append(error.details)
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=call, args=("tiny", 2048)) for _ in range(16)]
    threads += [threading.Thread(target=call, args=("default", 16)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes["default:OK"] == 4, outcomes
    assert outcomes["tiny:RESOURCE_EXHAUSTED"] >= 1, outcomes
    assert outcomes["tiny:OK"] + outcomes["tiny:RESOURCE_EXHAUSTED"] == 16, outcomes
    assert all("tenant 'tiny'" in m for m in messages), messages


def test_metrics_count_each_tenant_apart(server):
    port = server.server.http_port
    before = scrape(port)
    for _ in range(3):
        rank(server, "gold")
    with pytest.raises(RankError):
        rank(server, "someone", priority=0)
    after = scrape(port)
    labels = {"model": "ctr", "version": "1"}

    def moved(tenant: str, outcome: str) -> float:
        name = "adrank_tenant_requests_total"
        args = {**labels, "tenant": tenant, "outcome": outcome}
        return value(after, name, **args) - value(before, name, **args)

    assert moved("gold", "completed_ok") == 3
    assert moved("someone", "refused_denied") == 1
    assert value(after, "adrank_tenant_rows_total", **labels, tenant="gold") >= 24
    assert value(after, "adrank_tenant_in_flight", **labels, tenant="gold") == 0


def test_the_tenants_file_is_validated_naming_the_file_and_field(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text(TENANTS)
    config = load_tenants(good)
    assert config.tenants["gold"].weight == 4
    assert config.to_core().tenants["tiny"].max_in_flight == 1
    assert TenantsConfig().to_core().defaults.max_queued_rows == config.defaults.max_queued_rows

    cases = {
        "tenants: {gold: {weight: 0}}": "tenants.gold.weight",
        "tenants: {gold: {wieght: 2}}": "wieght",
        "defaults: {max_in_flight: 0}": "defaults.max_in_flight",
        "tenants: {'no spaces': {}}": "no spaces",
        "- a list": "expected a mapping",
    }
    for text, field in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(TenantsConfigError) as error:
            load_tenants(bad)
        assert str(bad) in str(error.value)
        assert field in str(error.value), str(error.value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("tenants: {gold: {weight: -1}}\n", "tenants.gold.weight: Input should be greater than 0"),
        ("tenants: {gold: [\n", "not YAML: did not find expected node content at line 2, column 1"),
    ],
)
def test_serve_refuses_a_bad_tenants_file_when_parsed_with_one_line(tmp_path: Path, text: str, why: str):
    copy_model(tmp_path, "ctr")
    bad = tmp_path / "tenants.yaml"
    bad.write_text(text)
    result = CliRunner().invoke(main, ["serve", "--repository", str(tmp_path), "--tenants", str(bad)])
    assert result.exit_code == 2, result.output  # a usage error, found before anything starts
    assert result.output.splitlines()[-1] == f"Error: Invalid value for '--tenants': {bad}: {why}", result.output
