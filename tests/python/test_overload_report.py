"""The overload benchmark's arithmetic (perf/overload_report.py) on records made up here, no server.

The refusal bound, the recovery time read off the probes, the RSS growth, the median of a load's runs, and the
targets' pass/fail: a target the run could not measure is n/a, never a pass, a recovery that never came is a fail,
and a run whose generator fell behind is no result.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from perf.overload_report import (
    markdown,
    median_point,
    probe_windows,
    recovery_time,
    refusal_bound,
    rss_growth,
    targets,
)

IDLE_P50 = 0.001  # s
WINDOW = 0.1


def _recovery(latency_at: dict[float, float], stop: float, ok_until: float = math.inf) -> float | None:
    """Probes every 10 ms over 2 s, between window edges; latency_at maps a send time to the latency from then on."""
    sent = np.arange(200) * 0.01 + 0.005
    latency = np.zeros_like(sent)
    for start, value in sorted(latency_at.items()):
        latency[sent >= start] = value
    ok = np.ones_like(sent, dtype=bool) if math.isinf(ok_until) else sent >= ok_until
    return recovery_time(sent, latency, ok, stop, IDLE_P50, WINDOW)


def test_refusal_bound_is_what_the_core_has_left_after_refusing() -> None:
    assert refusal_bound(4000.0, 2000.0, 50e-6) == pytest.approx(4000.0 * 0.9)
    assert refusal_bound(4000.0, 0.0, 50e-6) == 4000.0
    assert refusal_bound(4000.0, 30_000.0, 50e-6) == 0.0  # refusing alone would take more than the core


def test_recovery_is_the_end_of_the_first_normal_window() -> None:
    stop = 0.5
    # Slow before the stop, normal at once after it: one window.
    assert _recovery({0.0: 0.02, 0.5: 0.0011}, stop) == pytest.approx(0.1)
    # Normal from 0.3 s after the stop: its window ends at 0.4 s.
    assert _recovery({0.0: 0.02, 0.8: 0.0012}, stop) == pytest.approx(0.4)
    # Normal from 0.35 s: the window of 0.3-0.4 s is half slow, so its median is not normal yet.
    assert _recovery({0.0: 0.02, 0.85: 0.0012}, stop) == pytest.approx(0.5)


def test_one_slow_window_later_does_not_undo_a_recovery() -> None:
    assert _recovery({0.0: 0.02, 0.5: 0.001, 1.2: 0.02, 1.3: 0.001}, 0.5) == pytest.approx(0.1)


def test_a_lucky_window_amid_a_backlog_is_no_recovery() -> None:
    # Slow for 1 s after the stop but for one window at 0.1-0.2 s: the probes from it on are mostly slow.
    latency = {0.0: 0.02, 0.6: 0.001, 0.7: 0.02, 1.5: 0.001}
    assert _recovery(latency, 0.5) == pytest.approx(1.1)


def test_failed_probes_are_no_sign_of_recovery() -> None:
    # Quick answers that are refusals (deadline, overload) until 1.0 s: recovered only when they are OK.
    assert _recovery({0.0: 0.0005}, 0.5, ok_until=1.0) == pytest.approx(0.6)


def test_probe_windows_are_the_p50_of_each_window_after_the_stop() -> None:
    sent = np.array([0.9, 1.01, 1.02, 1.03, 1.25, 1.26])
    latency = np.array([9.0, 0.001, 0.003, 0.5, 0.002, 0.004])
    ok = np.array([True, True, True, False, True, True])
    windows = probe_windows(sent, latency, ok, 1.0, WINDOW)
    assert [(round(start, 3), p50, n) for start, p50, n in windows] == [(0.0, 0.003, 3), (0.2, 0.003, 2)]


def test_no_recovery_is_none() -> None:
    assert _recovery({0.0: 0.02}, 0.5) is None
    assert _recovery({0.0: 0.001}, 5.0) is None  # no probe after the stop


def test_rss_growth_tells_a_growing_queue_from_a_bounded_one() -> None:
    growing = [(t, 200_000_000 + 3_000_000 * t) for t in range(60)]
    assert rss_growth(growing) > 1.1
    levelled = [(t, 200_000_000 + min(t, 5) * 3_000_000) for t in range(60)]
    assert rss_growth(levelled) == pytest.approx(1.0)
    assert rss_growth(growing[:3]) is None


def _load(multiple: float, goodput: float, bound: float, p99: float, growth: float, recovery: float | None) -> dict:
    return {
        "multiple": multiple,
        "seconds": 60.0,
        "offered_rate": multiple * 4000.0,
        "goodput": goodput,
        "refusals_per_s": multiple * 4000.0 - goodput,
        "bound": bound,
        "fractions": {"OK": 0.5, "DEADLINE_EXCEEDED": 0.5},
        "ok_latency_ms": {"p50": 5.0, "p99": p99},
        "server_cpu": 1.0,
        "rss": {"before": 2e8, "peak": 2.1e8, "after": 2e8, "samples": []},
        "rss_growth": growth,
        "recovery": {"seconds": recovery, "note": "", "probe_rate": 200.0, "idle_p50_ms": 1.0},
        "run": {"notes": [], "generator_saturated": False},
    }


def _report(adrank: dict | None) -> dict:
    return {
        "date": "2026-12-03",
        "git": {"sha": "abc", "dirty": False},
        "mode": "full",
        "command": "perf/overload_bench.py",
        "seconds": 1.0,
        "candidates": 100,
        "deadline_ms": 20.0,
        "generator": "adrank_loadgen",
        "settings": {"recovery_window_s": 0.1},
        "machine": {"cpu_model": "cpu", "nproc": 2, "kernel": "k", "load_average_at_start": [0.0, 0.0, 0.0]},
        "pinning": {"server_core": 0, "generator_core": 1, "adrank_workers": 1},
        "systems": {} if adrank is None else {"adrank": adrank},
    }


def test_targets_pass_and_fail_on_the_measured_figures() -> None:
    adrank = {
        "status": "ok",
        "saturation": {"rate": 4000.0},
        "refusal": {"cpu_per_refusal_s": 20e-6, "fractions": {"NOT_FOUND": 1.0}},
        "loads": [
            _load(1.5, goodput=3500.0, bound=3800.0, p99=18.0, growth=1.02, recovery=0.3),  # all within
            _load(2.0, goodput=2000.0, bound=3600.0, p99=25.0, growth=1.4, recovery=None),  # all beyond
        ],
        "crashes": 0,
        "tenants": {
            "light": {"ok_fraction": 0.97, "latency_ms": {"p99": 12.0}},
            "heavy": {"ok_fraction": 1.0, "latency_ms": {"p99": 400.0}},
        },
    }
    rows = {row["target"]: row["pass"] for row in targets(_report(adrank))}
    assert [v for k, v in rows.items() if k.startswith("1.5x")] == [True] * 5
    assert [v for k, v in rows.items() if k.startswith("2x")] == [False] * 5  # never recovered: a fail, not n/a
    assert "2x saturation: recovery to normal latency after the load stops (not back to normal while probed)" in rows
    assert rows["server crashes over the run"] is True
    assert [v for k, v in rows.items() if k.startswith("tenants")] == [True, True]
    adrank["tenants"]["light"]["ok_fraction"] = 0.9
    adrank["crashes"] = 1
    rows = {row["target"]: row["pass"] for row in targets(_report(adrank))}
    assert not rows["server crashes over the run"]
    assert not rows["tenants: light tenant's OK fraction, heavy keeping 32 x 2048 rows in flight"]


def test_targets_not_measured_are_not_passed() -> None:
    rows = targets(_report(None))
    assert rows and all(row["pass"] is None for row in rows)
    assert "| n/a |" in markdown({**_report(None), "targets": rows})
    # Cut short by something else than the server exiting: no phase, and no claim that it never crashes.
    cut_short = {"status": "failed: the sender exited with 1", "loads": [], "crashes": 0, "exit_code": 0}
    rows = targets(_report(cut_short))
    assert all(row["pass"] is None for row in rows)
    assert "| adrank | - | - | - | - | - | failed: the sender exited with 1 |" in markdown(
        {**_report(cut_short), "targets": rows}
    )


def _run(goodput: float, saturated: bool = False, connections: int = 1) -> dict:
    load = _load(1.5, goodput=goodput, bound=3800.0, p99=18.0, growth=1.0, recovery=0.2)
    load["run"]["generator_saturated"] = saturated
    return {**load, "connections": connections}


def test_a_load_reports_its_median_run_among_those_whose_generator_kept_up() -> None:
    runs = [_run(3000.0), _run(9999.0, saturated=True), _run(3400.0, connections=2), _run(3200.0, connections=2)]
    point = median_point(runs)
    assert point["goodput"] == 3200.0 and point["generator_fell_behind"] is False and point["kept_runs"] == 3
    assert [r["goodput"] for r in point["repeats"]] == [3000.0, 9999.0, 3400.0, 3200.0]
    assert "median of 3 runs (goodput 3,000 / 3,400 / 3,200 req/s); 1 re-run" in markdown(
        {**_report({"status": "ok", "loads": [point], "crashes": 0}), "targets": []}
    )
    assert median_point([_run(3000.0), _run(3600.0)])["goodput"] == 3000.0  # an even count: the lower median


def test_a_load_whose_generator_fell_behind_in_every_run_is_no_result() -> None:
    point = median_point([_run(5000.0, saturated=True), _run(5100.0, saturated=True, connections=4)])
    assert point["generator_fell_behind"] is True and point["connections"] == 4 and point["kept_runs"] == 0
    adrank = {"status": "ok", "saturation": {"rate": 4000.0}, "loads": [point], "crashes": 0}
    rows = [row for row in targets(_report(adrank)) if row["target"].startswith("1.5x")]
    assert len(rows) == 5 and all(row["pass"] is None for row in rows)
    assert all("fell behind in every run: no result" in row["target"] for row in rows)
    with pytest.raises(ValueError, match="at least one run"):
        median_point([])
