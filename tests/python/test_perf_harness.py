"""Smoke tests of the benchmark harnesses (perf/bench.py and perf/overload_bench.py, --smoke): each runs end to
end and writes its three files.

Not benchmarks: the runs are tiny and their figures mean nothing. The serving bench: the engine-only run, the naive
baseline and adrank (ctr) are measured, the JSON holds finite figures and successful requests for each, the
simulated limit (perf/limit_model.py) and every system's ratio to it are there, and the Markdown table and the PNG
plot exist; PyTriton is never involved (--smoke skips it). The overload bench: every
phase ran against both servers (saturation, refusals, idle probes, both loads, adrank's tenants) and every target
is evaluated, whether the server at this commit passes it or not.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from perf import bench
from perf.loadgen import find_built, find_sender

REPO = Path(__file__).resolve().parents[2]
CRITEO = REPO.parent / "shared" / "data" / "criteo" / "train_1999.csv"


@pytest.mark.skipif(not CRITEO.is_file(), reason=f"the Criteo rows are not at {CRITEO}")
def test_bench_smoke_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    done = subprocess.run(
        [sys.executable, str(REPO / "perf" / "bench.py"), "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    (json_file,) = tmp_path.glob("*.json")
    report = json.loads(json_file.read_text())
    systems = report["systems"]
    assert {"engine-only", "naive", "adrank-ctr"} <= set(systems)
    assert (
        math.isfinite(systems["engine-only"]["max_candidates_per_s"])
        and systems["engine-only"]["max_candidates_per_s"] > 0
    )
    assert math.isfinite(report["engine_only"]["ctr"]["direct"]["p50_ms"])
    # The light-load reference: direct calls paced at the rate of adrank's 10 % point.
    paced = report["engine_only"]["ctr"]["direct_paced"]
    assert paced["rate"] == pytest.approx(systems["adrank-ctr"]["at_10pct"]["target_rate"], rel=1e-3)
    # The server's /metrics was read after the run: ctr declares no context tower, so there is no cache to report.
    assert systems["adrank-ctr"]["context_cache"] is None
    assert math.isfinite(paced["p50_ms"])
    # The server's own view of the 10 % point, read from its histograms before and after: every call the point
    # made was counted (warm-up calls too), and the server's part of a call is within the client's latency.
    at10 = systems["adrank-ctr"]["at_10pct"]
    server = at10["server_ms"]
    assert set(server) == {"request", "queue", "compute"}
    assert server["request"]["calls"] >= at10["ok"]
    assert all(0 < server[phase]["p50"] <= server[phase]["p99"] for phase in server)
    assert server["compute"]["p50"] <= server["request"]["p50"] <= at10["latency_ms"]["p50"] * 1.15
    if find_built("adrank_echo"):  # the grpc++ floor, measured at the same rate
        echo = systems["grpc-echo-cpp"]
        assert echo["status"] == "ok" and math.isfinite(echo["at_10pct"]["latency_ms"]["p50"])
    sender = find_sender()
    assert report["generator"] == (str(sender).replace(f"{REPO}/", "") if sender else "grpc.aio (perf/loadgen.py)")
    for name in ("naive", "adrank-ctr"):
        system = systems[name]
        assert system["status"] == "ok", system["status"]
        assert system["points"], name
        assert sum(point["ok"] for point in system["points"]) > 0, name
        for point in system["points"]:
            assert math.isfinite(point["candidates_per_s"])
            assert point["ok"] == 0 or math.isfinite(point["latency_ms"]["p99"])
        assert math.isfinite(system["max_candidates_per_s"])
        assert system["at_10pct"] is not None and math.isfinite(system["at_10pct"]["latency_ms"]["p50"])
    assert report["machine"]["nproc"] >= 1 and report["pinning"]["server_core"] == 0
    assert report["targets"], "the targets table is empty"
    # The limit: the ideal server simulated on the run's own traces, with the echo's transport cost and the
    # engine's batch-time curve; every system's vs limit divides by it, and the naive server is validated.
    limit = report["limit"]["ctr"]
    assert limit["limit_candidates_per_s"] > 0 and limit["sweep"]["points"]
    assert len(limit["batch_curve"]["rows"]) == len(report["settings"]["engine_sizes"])
    echo = "grpc-echo-cpp" if find_built("adrank_echo") else "grpc-echo"
    assert limit["transport"]["source"] == echo and limit["transport"]["per_call_us"] > 0
    assert limit["transport"]["latency_us"] >= 0
    assert systems[echo]["transport"]["runs"][0]["calls"] > 0
    for name in ("naive", "adrank-ctr", "engine-only"):
        expected = systems[name]["max_candidates_per_s"] / limit["limit_candidates_per_s"]
        assert systems[name]["vs_limit"] == pytest.approx(expected), name
    for point in systems["adrank-ctr"]["points"] + systems["naive"]["points"]:
        ideal = point["ideal"]
        assert math.isfinite(ideal["p99_ms"]) and 0 <= ideal["within_bound_fraction"] <= 1, point["label"]
    for basis in ("cpu", "wall"):
        validation = limit["naive_validation"][basis]
        assert 0 < len(validation["p99_ratios"]) <= len(systems["naive"]["points"]), basis
        assert validation["p99_ratio_median"] > 0 and validation["per_call_overhead_us"] >= 0, basis

    markdown = json_file.with_suffix(".md").read_text()
    assert "at 10 %, in the server p50/p99 ms: request " in markdown
    assert "| adrank-ctr | ctr |" in markdown and "| naive | ctr |" in markdown and "## Targets" in markdown
    assert "| vs limit |" in markdown and "## The limit: an ideal one-core server (ctr)" in markdown
    assert json_file.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not CRITEO.is_file(), reason=f"the Criteo rows are not at {CRITEO}")
def test_overload_bench_smoke_runs_end_to_end(tmp_path: Path) -> None:
    """perf/overload_bench.py --smoke: every phase runs against adrank and the naive server, whatever their figures."""
    pytest.importorskip("matplotlib")
    from perf.overload_report import refusal_bound

    done = subprocess.run(
        [sys.executable, str(REPO / "perf" / "overload_bench.py"), "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    (json_file,) = tmp_path.glob("overload-*-smoke.json")
    report = json.loads(json_file.read_text())
    systems = report["systems"]
    assert set(systems) == {"adrank", "naive"}
    saturation = systems["adrank"]["saturation"]["rate"]
    assert saturation > 0
    for name, system in systems.items():
        assert system["status"] == "ok", (name, system["status"], system["log_tail"])
        assert system["crashes"] == 0 and system["exit_code"] == 0
        refusal = system["refusal"]
        # Every call of the refusal run names a model the server does not have: all refused, none computed.
        assert refusal["fractions"] == {"NOT_FOUND": 1.0} and refusal["refusals"] > 0
        assert 0 < refusal["cpu_per_refusal_s"] < 0.01
        assert math.isfinite(system["idle_probe"]["p50_ms"])
        assert [load["multiple"] for load in system["loads"]] == [1.5, 2.0]
        for load in system["loads"]:
            # The naive server is offered the same rates as adrank: multiples of adrank's saturation.
            assert load["offered_rate"] == pytest.approx(load["multiple"] * saturation)
            assert load["run"]["sent"] > 0 and sum(load["fractions"].values()) == pytest.approx(1.0)
            assert math.isfinite(load["goodput"]) and load["goodput"] >= 0
            own = system["saturation"]["rate"]
            assert load["bound"] == pytest.approx(
                refusal_bound(own, load["refusals_per_s"], refusal["cpu_per_refusal_s"])
            )
            assert 0 < load["rss"]["before"] <= load["rss"]["peak"] and load["rss"]["after"] > 0
            assert 0 < load["server_cpu"] <= 1.2  # one core, give or take the sampling
            assert load["recovery"]["probe_rate"] > 0 and math.isfinite(load["recovery"]["idle_p50_ms"])
    tenants = systems["adrank"]["tenants"]
    assert tenants["light"]["sent"] > 0 and tenants["heavy"]["sent"] > 0
    assert tenants["heavy"]["covered_light_run"], tenants["timeline_s"]
    assert "tenants" not in systems["naive"]
    rows = {row["target"]: row for row in report["targets"]}
    # Every target is evaluated; only a p99 of no OK answer at all (the light tenant on a server without tenant
    # isolation) is n/a, and so is a load whose generator fell behind (a busy CI machine): no result, said so.
    assert len(rows) == 13, rows
    for name, row in rows.items():
        no_result = "fell behind in every run: no result" in name
        assert row["pass"] in (True, False) or no_result or ("p99" in name and row["value"] is None), row

    markdown = json_file.with_suffix(".md").read_text()
    assert "| adrank | 1.5x |" in markdown and "| naive | 2x |" in markdown
    assert "## Tenants" in markdown and "## Targets (adrank)" in markdown
    assert json_file.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_context_cache_bench_smoke_measures_both_and_reports_the_hit_ratio(tmp_path: Path) -> None:
    stem = tmp_path / "context-cache"
    tiny = ["--distinct", "200", "--rounds", "1", "--round-s", "0.5", "--concurrency", "2", "--out", str(stem)]
    done = subprocess.run(
        [sys.executable, str(REPO / "perf" / "context_cache_bench.py"), *tiny],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(stem.with_suffix(".json").read_text())
    assert [r["cache"] for r in report["rounds"]] == [True, False]
    assert all(r["requests_per_s"] > 0 for r in report["rounds"])
    assert 0.0 <= report["hit_ratio_whole_run"] <= 1.0 and report["cache_stats"]["entries"] > 0
    assert "| on |" in stem.with_suffix(".md").read_text()


def test_server_phase_quantiles_read_only_what_was_counted_between_the_two_reads() -> None:
    # Cumulative counts by le (seconds), as /metrics shows them: 100 calls before, 100 more after, all of the new
    # ones between 1 and 2 ms (request) and under 0.1 ms (queue); compute saw nothing new.
    before = {
        "request": {0.001: 100.0, 0.002: 100.0, math.inf: 100.0},
        "queue": {0.0001: 100.0, 0.001: 100.0, math.inf: 100.0},
        "compute": {0.001: 50.0, math.inf: 50.0},
    }
    after = {
        "request": {0.001: 100.0, 0.002: 200.0, math.inf: 200.0},
        "queue": {0.0001: 200.0, 0.001: 200.0, math.inf: 200.0},
        "compute": {0.001: 50.0, math.inf: 50.0},
    }
    quantiles = bench.server_phase_quantiles(before, after)
    assert set(quantiles) == {"request", "queue"}  # nothing counted: no figures
    assert quantiles["request"]["calls"] == 100
    assert quantiles["request"]["p50"] == pytest.approx(1.5)  # interpolated within the 1-2 ms bucket
    assert quantiles["request"]["p99"] == pytest.approx(1.99)
    assert quantiles["queue"]["p99"] == pytest.approx(0.099)


def test_poll_cost_times_each_poll_after_the_loading_one() -> None:
    from perf import poll_cost

    times = poll_cost.poll_cpu_ms(REPO / "models", 3)
    assert len(times) == 3 and all(math.isfinite(t) and t > 0 for t in times)
