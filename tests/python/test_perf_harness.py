"""Smoke test of the benchmark harness (perf/bench.py --smoke): it runs end to end and writes its three files.

Not a benchmark: the sweep is tiny and its figures mean nothing. It checks that the engine-only run, the naive
baseline and adrank (ctr) are measured, that the JSON holds finite figures and successful requests for each,
and that the Markdown table and the PNG plot exist. PyTriton is never involved (--smoke skips it).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert math.isfinite(paced["p50_ms"])
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

    markdown = json_file.with_suffix(".md").read_text()
    assert "| adrank-ctr | ctr |" in markdown and "| naive | ctr |" in markdown and "## Targets" in markdown
    assert json_file.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
