"""The serving bench's targets (perf/report.py `targets`) on made-up records, no server.

Which threshold applies depends on the run's mixes (issue 35): the ads mix is held to 3x the naive server, 10x
PyTriton and 0.8x the simulated ideal server; relevance on a Zipf query mix to 3x the naive server and 0.5x its own
engine-only; the light-load row subtracts both the transport's floor and the model's own paced time.
"""

from __future__ import annotations

from perf.report import targets


def _system(name: str, model: str, max_candidates: float, p50_at_10pct: float | None = None) -> dict:
    at10 = {"latency_ms": {"p50": p50_at_10pct}} if p50_at_10pct is not None else None
    return {"name": name, "model": model, "status": "ok", "max_candidates_per_s": max_candidates, "at_10pct": at10}


def _rows(settings: dict, **systems: dict) -> dict[str, dict]:
    engine = {
        "ctr": {"ceiling_candidates_per_s": 100_000.0, "direct": {"p50_ms": 0.4}},
        "relevance": {"ceiling_candidates_per_s": 10_000.0, "direct": {"p50_ms": 2.0}},
    }
    limits = {"ctr": {"limit_candidates_per_s": 50_000.0}, "relevance": {"limit_candidates_per_s": 8_000.0}}
    named = {s["name"]: s for s in systems.values()}
    return {row["target"]: row for row in targets(named, engine, limits, settings)}


def test_the_ads_mix_is_held_to_its_own_thresholds() -> None:
    rows = _rows(
        {"mix": "uniform:100-700", "queries": "texts"},
        a=_system("adrank-ctr", "ctr", 42_000.0),
        n=_system("naive", "ctr", 13_000.0),
        p=_system("pytriton", "ctr", 4_000.0),
    )
    naive = rows["adrank-ctr / naive, max candidates/s at p99 <= 10 ms (uniform:100-700)"]
    assert naive["threshold"] == 3.0 and naive["pass"] is True  # 3.23x
    pytriton = rows["adrank-ctr / PyTriton, max candidates/s at p99 <= 10 ms (uniform:100-700)"]
    assert pytriton["threshold"] == 10.0 and pytriton["pass"] is True  # 10.5x
    limit = rows["adrank-ctr / simulated ideal server, at p99 <= 10 ms (uniform:100-700)"]
    assert limit["value"] == 42_000.0 / 50_000.0 and limit["pass"] is True


def test_the_default_mix_keeps_the_old_thresholds_and_the_limit_is_informational() -> None:
    rows = _rows(
        {"mix": "lognormal", "queries": "texts"},
        a=_system("adrank-ctr", "ctr", 30_000.0),
        n=_system("naive", "ctr", 13_000.0),
    )
    assert rows["adrank-ctr / naive, max candidates/s at p99 <= 10 ms (lognormal)"]["threshold"] == 2.0
    informational = [k for k in rows if "simulated ideal server" in k]
    assert informational and "informational" in informational[0] and rows[informational[0]]["pass"] is False


def test_relevance_on_a_zipf_mix_is_a_target_with_its_hit_ratio_beside_it() -> None:
    adrank = _system("adrank-relevance", "relevance", 5_500.0)
    adrank["context_cache"] = {"hits": 80.0, "misses": 20.0, "hit_ratio": 0.8}
    rows = _rows(
        {"mix": "lognormal", "queries": "zipf:10000:1"}, a=adrank, n=_system("naive-relevance", "relevance", 2_000.0)
    )
    on = " (lognormal, zipf:10000:1)"
    assert rows[f"adrank-relevance / engine-only, candidates/s at p99 <= 10 ms{on}"]["pass"] is True  # 0.55 >= 0.5
    assert rows[f"adrank-relevance / naive, max candidates/s at p99 <= 10 ms{on}"]["pass"] is False  # 2.75 < 3
    assert rows[f"(informational) adrank-relevance context cache hit ratio{on}"]["value"] == 0.8


def test_light_load_subtracts_the_transport_floor_and_the_paced_model() -> None:
    echo = _system("grpc-echo-cpp", "ctr", 0.0, p50_at_10pct=0.5)
    rows = _rows({}, a=_system("adrank-ctr", "ctr", 30_000.0, p50_at_10pct=0.95), e=echo)
    row = rows["adrank-ctr p50 at 10 % load - (grpc-echo-cpp p50 + direct ORT p50 paced alike)"]
    assert abs(row["value"] - 0.05) < 1e-9 and row["pass"] is True  # 0.95 - (0.5 + 0.4)
    rows = _rows({}, a=_system("adrank-ctr", "ctr", 30_000.0, p50_at_10pct=1.2), e=echo)
    assert rows["adrank-ctr p50 at 10 % load - (grpc-echo-cpp p50 + direct ORT p50 paced alike)"]["pass"] is False
