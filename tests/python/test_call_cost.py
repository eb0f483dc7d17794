"""perf/call_cost.py: `perf stat` output parsing, the per-call arithmetic and the targets on canned figures, and the
--smoke run end to end where perf can count another process.

The canned text is what `perf stat -x, -p PID` printed on this machine kind (perf 6.1), the uprobe line included.
The smoke run's figures mean nothing (fractions of a second on a busy machine): it checks that every system ran,
every per-call figure is finite and every target was evaluated, whether this commit passes it or not.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perf import call_cost, perf_stat
from perf.call_cost import derive, engine_share, net_per_call
from perf.loadgen import find_built
from perf.perf_stat import Window, parse_perf_stat

REPO = Path(__file__).resolve().parents[2]
CRITEO = REPO.parent / "shared" / "data" / "criteo" / "train_1999.csv"

PERF_TEXT = """\
# started on Mon Dec  7 21:32:44 2026

438.01,msec,task-clock,438012158,100.00,0.455,CPUs utilized
167,,context-switches,438012158,100.00,381.268,/sec
27,,cpu-migrations,438012158,100.00,61.642,/sec
10754,,page-faults,438012158,100.00,24.552,K/sec
43489,,adrank_call_cost:malloc,438012158,100.00,99.287,K/sec
<not supported>,,cycles,0,100.00,,
"""


def test_parse_perf_stat_reads_every_event_and_its_unit() -> None:
    counts = parse_perf_stat(PERF_TEXT)
    assert counts == {
        "task-clock": 438.01,
        "context-switches": 167.0,
        "cpu-migrations": 27.0,
        "page-faults": 10754.0,
        "adrank_call_cost:malloc": 43489.0,
        "cycles": None,
    }


def test_parse_perf_stat_counts_a_task_that_never_ran_as_zero_and_skips_warnings() -> None:
    text = (
        "Error: some warning, with commas, in it\n"
        "<not counted>,msec,task-clock,0,100.00,,\n"
        "<not counted>,,context-switches,0,100.00,,\n"
    )
    assert parse_perf_stat(text) == {"task-clock": 0.0, "context-switches": 0.0}


def test_parse_perf_stat_converts_seconds_and_nanoseconds_to_ms() -> None:
    text = "1.5,sec,task-clock,1,100.00,,\n2500000,ns,duration_time,1,100.00,,\n"
    assert parse_perf_stat(text) == {"task-clock": 1500.0, "duration_time": 2.5}


PER_THREAD_TEXT = """\
adrank-6478,412.50,msec,task-clock,412500000,100.00,0.413,CPUs utilized
nexting_thread-6488,71.25,msec,task-clock,71250000,100.00,0.071,CPUs utilized
nexting_thread-6487,56.00,msec,task-clock,56000000,100.00,0.056,CPUs utilized
default-executo-6480,18.00,msec,task-clock,18000000,100.00,0.018,CPUs utilized
grpc_global_tim-6482,<not counted>,msec,task-clock,0,100.00,,
adrank-6478,1900,,context-switches,412500000,100.00,4.606,K/sec
nexting_thread-6488,800,,context-switches,71250000,100.00,11.228,K/sec
"""


def test_parse_per_thread_sums_the_threads_of_one_name_and_keeps_dashes_in_names() -> None:
    threads = perf_stat.parse_per_thread(PER_THREAD_TEXT)
    assert threads == {
        "adrank": {"task-clock": 412.5, "context-switches": 1900.0},
        "nexting_thread": {"task-clock": 127.25, "context-switches": 800.0},
        "default-executo": {"task-clock": 18.0},
        "grpc_global_tim": {"task-clock": 0.0},
    }
    assert perf_stat.summed(threads) == {"task-clock": 557.75, "context-switches": 2700.0}


def test_grpc_threads_cpu_is_every_thread_not_named_as_the_process() -> None:
    idle = _window(1.0, {}, threads={"adrank": {"task-clock": 10.0}, "nexting_thread": {"task-clock": 0.0}})
    load = _window(2.0, {}, threads=perf_stat.parse_per_thread(PER_THREAD_TEXT))
    by_thread = call_cost.net_by_thread(load, "task-clock", idle, 100)
    assert by_thread == pytest.approx(
        {"adrank": (412.5 - 20.0) / 100, "nexting_thread": 1.2725, "default-executo": 0.18, "grpc_global_tim": 0.0}
    )
    assert call_cost.grpc_threads_cpu_us(by_thread, "adrank") == pytest.approx((1.2725 + 0.18) * 1e3)
    assert call_cost.grpc_threads_cpu_us({}, "adrank") is None


def _window(
    seconds: float, counts: dict[str, float | None], threads: dict[str, dict[str, float | None]] | None = None
) -> Window:
    return Window(seconds, 100.0, 100.0 + seconds, counts, 0, 0, threads or {})


def test_net_per_call_subtracts_the_idle_rate_over_the_window() -> None:
    idle = _window(2.0, {"task-clock": 20.0, "context-switches": 100.0})  # 10 ms/s, 50/s
    load = _window(3.0, {"task-clock": 1030.0, "context-switches": 1150.0})
    assert net_per_call(load, "task-clock", idle, 100) == pytest.approx((1030.0 - 30.0) / 100)
    assert net_per_call(load, "context-switches", idle, 100) == pytest.approx((1150.0 - 150.0) / 100)
    assert net_per_call(load, "task-clock", None, 100) == pytest.approx(10.3)
    assert net_per_call(load, "task-clock", idle, 0) is None
    assert net_per_call(_window(3.0, {"cycles": None}), "cycles", idle, 10) is None


def test_calls_in_and_covered_use_the_window_bounds() -> None:
    window = _window(3.0, {})  # [100, 103]
    done = np.array([99.9, 100.0, 101.5, 103.0, 103.1])
    assert call_cost.calls_in(done, window) == 3
    assert call_cost.covered(np.array([99.0, 102.0]), np.array([99.5, 103.5]), window)
    assert not call_cost.covered(np.array([100.5, 102.0]), np.array([101.0, 103.5]), window)  # started late
    assert not call_cost.covered(np.array([99.0, 102.0]), np.array([99.5, 102.5]), window)  # ended early


def _figures(cpu_us: float, switches: float, engine_us: float | None = None) -> dict:
    return {
        "candidates": 100,
        "per_call": {
            "cpu_us": cpu_us,
            "context_switches": switches,
            "engine_cpu_us": engine_us,
            "transport_cpu_us": None if engine_us is None else cpu_us - engine_us,
        },
        "batches": {},
    }


def test_engine_rows_and_share_follow_the_batches_adrank_ran() -> None:
    merged = {"candidates": 100, "batches": {"ctr": {"batches": 10.0, "rows": 4000.0}}}  # 4 calls per batch
    assert call_cost.engine_rows(merged) == 400
    assert engine_share(merged, 800.0) == pytest.approx(200.0)
    split = {"candidates": 2000, "batches": {"ctr": {"batches": 40.0, "rows": 20000.0}}}  # 4 batches per call
    assert call_cost.engine_rows(split) == 500
    assert engine_share(split, 1000.0) == pytest.approx(4000.0)
    assert call_cost.engine_rows({"batches": {}}) is None  # no batch seen: refusals, the echo


def test_derive_computes_the_ratios_and_each_target_verdict() -> None:
    loads = {
        "served/1": _figures(900.0, 5.0, engine_us=300.0),
        "refused/1": _figures(160.0, 3.0),
        "echo/1": _figures(200.0, 4.0),
    }
    (row,) = derive(loads, (1,))
    assert row["transport_cpu_us"] == pytest.approx(600.0)
    assert row["transport_vs_echo"] == pytest.approx(3.0)
    assert row["refusal_vs_echo"] == pytest.approx(0.8)
    verdicts = {t["target"]: t["pass"] for t in row["targets"]}
    assert verdicts == {
        "context switches per served call": False,  # 5 > 4
        "transport CPU per served call / echo's": False,  # 3x > 2x
        "CPU per refusal / echo's": True,  # 0.8x <= 1.5x
    }
    loads["echo/1"] = _figures(310.0, 4.0)
    (row,) = derive(loads, (1,))
    assert {t["target"]: t["pass"] for t in row["targets"]}["transport CPU per served call / echo's"] is True


def test_derive_leaves_a_target_unevaluated_when_a_system_is_missing() -> None:
    (row,) = derive({"served/16": _figures(300.0, 3.0, engine_us=100.0)}, (16,))
    verdicts = {t["target"]: t["pass"] for t in row["targets"]}
    assert verdicts["context switches per served call"] is True
    assert verdicts["transport CPU per served call / echo's"] is None
    assert verdicts["CPU per refusal / echo's"] is None


def test_median_of_rounds_takes_each_figure_s_median_and_adds_up_calls_and_batches() -> None:
    def round_(cpu: float, mallocs: float | None, calls: int, batches: float) -> dict:
        return {
            "load": "served",
            "calls": calls,
            "calls_per_s": calls / 2.5,
            "per_call": {"cpu_us": cpu, "mallocs": mallocs},
            "cpu_us_by_thread": {"adrank": cpu * 0.75, **({"nexting_thread": cpu * 0.25} if cpu > 500 else {})},
            "switches_by_thread": {"adrank": 2.0, "nexting_thread": calls / 20},
            "batches": {"ctr": {"batches": batches, "rows": batches * 100}},
            "engine": {"batch_rows": 100, "batch_cpu_us": 250.0},
            "run": {},
            "notes": ["late"] if calls < 50 else [],
        }

    rounds = [round_(900.0, 200.0, 100, 100.0), round_(400.0, None, 40, 40.0), round_(600.0, 240.0, 60, 60.0)]
    merged = call_cost.median_of_rounds(rounds)
    assert merged["per_call"] == {"cpu_us": 600.0, "mallocs": 220.0}
    assert merged["calls"] == 200 and merged["calls_per_s"] == pytest.approx(24.0)
    assert merged["batches"] == {"ctr": {"batches": 200.0, "rows": 20000.0}}
    assert merged["cpu_us_by_thread"] == {"adrank": 450.0, "nexting_thread": 150.0}  # a thread absent counts 0
    assert merged["switches_by_thread"] == {"adrank": 2.0, "nexting_thread": 3.0}
    assert merged["notes"] == ["round 2: late"] and len(merged["rounds"]) == 3


def _perf_refusal() -> str | None:
    unusable = perf_stat.perf_unusable()
    if unusable:
        return unusable
    # The paranoid level and root aside, a container may still forbid perf_event_open: try it.
    done = subprocess.run(
        ["perf", "stat", "-x", ",", "-e", "task-clock", "--", "true"], capture_output=True, text=True, check=False
    )
    return None if done.returncode == 0 else f"perf stat fails here: {done.stderr.strip()[-200:]}"


@pytest.mark.skipif(not CRITEO.is_file(), reason=f"the Criteo rows are not at {CRITEO}")
def test_call_cost_smoke_runs_end_to_end(tmp_path: Path) -> None:
    reason = _perf_refusal()
    if reason:
        pytest.skip(f"perf cannot count a server here: {reason}")
    done = subprocess.run(
        [sys.executable, str(REPO / "perf" / "call_cost.py"), "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (json_file,) = tmp_path.glob("call-cost-*-smoke.json")
    report = json.loads(json_file.read_text())
    systems = ["served/1", "refused/1", *(["echo/1"] if find_built("adrank_echo") else [])]
    for key in systems:
        figures = report["loads"][key]
        assert figures["calls"] > 0, key
        for name in ("cpu_us", "context_switches", "page_faults"):
            value = figures["per_call"][name]
            assert isinstance(value, float) and math.isfinite(value), (key, name, value)
        assert figures["per_call"]["mallocs"] is not None or report["mallocs"].startswith("not measured: ")
        assert figures["per_call"]["grpc_threads_cpu_us"] is not None and figures["cpu_us_by_thread"], key
    assert [row["candidates"] for row in report["scale"]] == [1, 100]
    assert all(row["cpu_us"] is not None for row in report["scale"])
    (row,) = report["derived"]
    assert row["engine_cpu_us"] is not None and row["engine_cpu_us"] > 0
    assert report["loads"]["served/1"]["engine"]["batch_rows"] >= 1
    if find_built("adrank_echo"):
        assert all(target["pass"] is not None for target in row["targets"])
    markdown = json_file.with_suffix(".md").read_text()
    assert "| served | 1 | 100 |" in markdown and "## Derived, and the issue's targets" in markdown
    assert "## By thread name, per call: CPU µs / context switches" in markdown
