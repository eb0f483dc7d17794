"""perf/limit_model.py on traces whose answers can be worked out by hand: constant or linear service times,
bursts, saturation; the naive simulation against serial processing written out; the best policy against the
others; the sweep's extension and bisection; the transport fit and the naive server's validation. No timing."""

from __future__ import annotations

import numpy as np
import pytest

from perf.limit_model import (
    ONE_AT_A_TIME,
    POLICIES,
    BatchCurve,
    MeasuredPoint,
    Policy,
    Trace,
    TransportCost,
    best_point,
    each_policy,
    per_call_overhead,
    simulate,
    summarize,
    sweep,
    validate_naive,
)

ALL_QUEUED = POLICIES[0]
FREE = TransportCost(0.0, 0.0, "free")
MS = 1e-3


def constant(seconds: float) -> BatchCurve:
    """Every batch takes `seconds`, whatever its rows (up to 10,000)."""
    return BatchCurve((1.0, 10_000.0), (seconds, seconds))


def trace(send_s: list[float], rows: int | list[int] = 1, payload: int = 0) -> Trace:
    count = len(send_s)
    return Trace.of(send_s, rows if isinstance(rows, list) else [rows] * count, [payload] * count)


def latencies(t: Trace, curve: BatchCurve, policy: Policy, transport: TransportCost = FREE) -> list[float]:
    return (simulate(t, curve, transport, policy) - t.send_s).tolist()


def test_spaced_arrivals_never_queue() -> None:
    t = trace([0.0, 2 * MS, 4 * MS, 6 * MS])
    for policy in POLICIES[:2]:
        assert latencies(t, constant(MS), policy) == pytest.approx([MS] * 4)


def test_a_small_queue_worked_out_by_hand() -> None:
    # Service 1 ms; arrivals at 0, 0.3, 0.6 and 2.5 ms.
    t = trace([0.0, 0.3 * MS, 0.6 * MS, 2.5 * MS])
    # One at a time: done at 1, 2, 3 and 4 ms (the last waits for the core from 2.5 to 3 ms).
    assert latencies(t, constant(MS), ONE_AT_A_TIME) == pytest.approx([1 * MS, 1.7 * MS, 2.4 * MS, 1.5 * MS])
    # Everything queued as one batch: 0 alone (done 1), then 0.3 and 0.6 together (done 2), then 2.5 (done 3.5).
    assert latencies(t, constant(MS), ALL_QUEUED) == pytest.approx([1 * MS, 1.7 * MS, 1.4 * MS, 1.0 * MS])


def test_a_burst_must_batch() -> None:
    t = trace([0.0] * 5, rows=100)
    curve = BatchCurve((100.0, 500.0), (1 * MS, 2 * MS))
    assert latencies(t, curve, ALL_QUEUED) == pytest.approx([2 * MS] * 5)  # one batch of 500 rows
    assert latencies(t, curve, ONE_AT_A_TIME) == pytest.approx([1 * MS, 2 * MS, 3 * MS, 4 * MS, 5 * MS])


def test_a_batch_never_exceeds_the_curves_largest_rows() -> None:
    t = trace([0.0] * 4, rows=300)
    curve = BatchCurve((300.0, 600.0), (1 * MS, 2 * MS))  # at most 600 rows: two batches of two requests
    assert latencies(t, curve, ALL_QUEUED) == pytest.approx([2 * MS, 2 * MS, 4 * MS, 4 * MS])


def test_a_saturating_trace_grows_its_queue_linearly() -> None:
    # Arrivals every 0.5 ms, 1 ms each, one at a time: request k is done at (k + 1) ms.
    count = 200
    t = trace([0.5 * MS * k for k in range(count)])
    got = latencies(t, constant(MS), ONE_AT_A_TIME)
    assert got == pytest.approx([(1 + 0.5 * k) * MS for k in range(count)])
    # Within 10.2 ms (clear of rounding at exactly 10): k <= 18, 19 requests.
    point = summarize(t, simulate(t, constant(MS), FREE, ONE_AT_A_TIME), ONE_AT_A_TIME.name, 10.2)
    assert not point.within(10.2) and point.within_bound_fraction == pytest.approx(19 / count)
    assert point.within_deadline_fraction == 1.0
    # Batching keeps the same trace at one or two services of latency.
    assert max(latencies(t, constant(MS), ALL_QUEUED)) <= 2 * MS + 1e-12


def test_wait_to_fill_waits_for_its_rows_or_its_delay() -> None:
    policy = Policy("wait", fill_rows=256, wait_s=0.5 * MS)
    # 100 + 100 rows never reach 256: the batch closes at 0.5 ms, holding both.
    assert latencies(trace([0.0, 0.3 * MS], rows=100), constant(MS), policy) == pytest.approx([1.5 * MS, 1.2 * MS])
    # The third request fills it at 0.4 ms: it starts then.
    got = latencies(trace([0.0, 0.3 * MS, 0.4 * MS], rows=100), constant(MS), policy)
    assert got == pytest.approx([1.4 * MS, 1.1 * MS, 1.0 * MS])


def test_the_naive_simulation_is_serial_processing() -> None:
    rng = np.random.default_rng(3)
    send = np.cumsum(rng.exponential(0.8 * MS, size=500))
    rows = rng.integers(1, 2000, size=500)
    sizes = rng.integers(100, 100_000, size=500)
    t = Trace.of(send, rows, sizes)
    curve = BatchCurve((32.0, 256.0, 2048.0), (0.2 * MS, 0.5 * MS, 3.0 * MS))
    cost = TransportCost(20e-6, 1e-9, "test")
    expected, free_at = [], 0.0
    for at, n, size in zip(send, rows, sizes, strict=True):
        free_at = max(free_at, at) + curve.seconds_for(n) + cost.seconds_for(size)
        expected.append(free_at)
    assert simulate(t, curve, cost, ONE_AT_A_TIME).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("mean_gap_ms", [0.2, 0.5, 1.0, 3.0])
def test_the_best_policy_is_never_worse_than_the_others(mean_gap_ms: float) -> None:
    rng = np.random.default_rng([5, int(mean_gap_ms * 10)])
    send = np.cumsum(rng.exponential(mean_gap_ms * MS, size=2000))
    t = Trace.of(send, rng.integers(20, 700, size=2000), rng.integers(1000, 50_000, size=2000))
    curve = BatchCurve((32.0, 256.0, 2048.0), (0.15 * MS, 0.6 * MS, 4.0 * MS))
    cost = TransportCost(30e-6, 0.5e-9, "test")
    best = best_point(t, curve, cost, 10.0)
    for point in each_policy(t, curve, cost, 10.0):
        assert best.p99_ms <= point.p99_ms
    assert set(best.policy.split(" = ")) <= {p.name for p in POLICIES}


def test_policies_that_give_the_same_figures_share_the_point() -> None:
    spaced = trace([0.0, 5 * MS, 10 * MS], rows=100)  # no batch ever forms: only the waiting policies differ
    best = best_point(spaced, constant(MS), FREE, 10.0)
    assert best.policy == "serve-all-queued = one-at-a-time = serve-queued-up-to-256"
    # One batch of all four (400 rows) wins; waiting for 256 rows costs nothing, for 1,024 it costs 2 ms.
    burst = trace([0.0] * 4, rows=100)
    assert best_point(burst, constant(MS), FREE, 10.0).policy == "serve-all-queued = wait-to-fill-256"


def test_the_sweep_draws_past_the_measured_rates_and_bisects_to_the_limit() -> None:
    # Linear engine: 0.1 ms + 1 us per row; 100 rows per request. Batching makes the ideal server cope far beyond
    # one-at-a-time's 1 / 0.2 ms = 5,000 requests/s; the sweep must find where even it breaks 10 ms.
    curve = BatchCurve((1.0, 2000.0), (0.1 * MS + 1e-6, 0.1 * MS + 2000e-6))

    def draw(rate: float) -> Trace:
        count = 400
        return trace([k / rate for k in range(count)], rows=100)

    result = sweep([draw(100.0), draw(200.0)], curve, FREE, 10.0, draw, refine_steps=8)
    assert result.drawn > 0 and len(result.points) == 2 + result.drawn
    good = [p.offered_rate for p in result.points if p.within(10.0)]
    bad = [p.offered_rate for p in result.points if not p.within(10.0)]
    assert good and bad and max(good) < min(bad) < 1.1 * max(good)  # bisected to within 10 %
    # Batching beats one at a time's 5,000 requests/s (0.2 ms each). At 1 us per row the core carries at most 1e6
    # rows/s, 10,000 requests/s of 100 rows; a 400-request trace hides a slight overload in its queue, no more.
    assert 5_000 < max(good) < 15_000
    assert result.limit_candidates_per_s == pytest.approx(
        max(p.candidates_per_s for p in result.points if p.within(10.0))
    )


def test_the_sweep_goes_below_the_measured_rates_when_none_meets_the_bound() -> None:
    def draw(rate: float) -> Trace:
        return trace([k / rate for k in range(200)])

    result = sweep([draw(1000.0)], constant(2 * MS), FREE, 10.0, draw, policies=[ONE_AT_A_TIME])
    assert result.limit_candidates_per_s > 0
    # 2 ms each at r > 500/s: request k waits k x (2 ms - 1/r), so latency 2 ms + k (2 ms - 1/r); numpy's p99 of
    # 200 requests sits at k = 0.99 x 199. It reaches 10 ms at r*:
    limit_rate = 1 / (2 * MS - 8 * MS / (0.99 * 199))
    good = max(p.offered_rate for p in result.points if p.within(10.0))
    bad = min(p.offered_rate for p in result.points if not p.within(10.0))
    assert 0.95 * limit_rate < good <= limit_rate <= bad


def test_the_batch_curve_interpolates_and_extrapolates() -> None:
    curve = BatchCurve.measured([64, 256, 1024], [1.0, 2.0, 5.0])
    assert curve.seconds_for(160) == pytest.approx(1.5)
    assert curve.seconds_for(2048) == pytest.approx(5.0 + 3.0 * 1024 / 768)
    assert curve.seconds_for(32) == pytest.approx(1.0 - 32 / 192)
    # A first segment steep enough to cross zero is held at proportional to the smallest size.
    steep = BatchCurve.measured([64, 128], [1.0, 10.0])
    assert steep.seconds_for(16) == pytest.approx(0.25)
    # Noise (a larger batch timed faster) is flattened: never decreasing.
    assert BatchCurve.measured([64, 256, 1024], [1.0, 0.9, 3.0]).seconds == (1.0, 1.0, 3.0)
    with pytest.raises(ValueError):
        BatchCurve((1.0,), (1.0,))


def test_the_transport_fit_recovers_per_call_and_per_byte() -> None:
    per_call, per_byte = 40e-6, 2e-9
    runs = [(n, b, n * per_call + b * per_byte) for n, b in [(10_000, 5_000_000), (4_000, 80_000_000)]]
    cost = TransportCost.fitted(runs, "echo")
    assert cost.per_call_s == pytest.approx(per_call) and cost.per_byte_s == pytest.approx(per_byte)
    # Larger payloads measured cheaper per call (noise): per call alone, never a negative cost per byte.
    noisy = TransportCost.fitted([(1000, 1_000, 0.05), (1000, 1_000_000, 0.04)], "echo")
    assert noisy.per_byte_s == 0.0 and noisy.per_call_s == pytest.approx(0.09 / 2000)


def test_the_naive_validation_of_a_server_that_is_its_own_simulation() -> None:
    curve = BatchCurve((1.0, 1000.0), (0.1 * MS, 1.1 * MS))
    probe = trace([0.0] * 100, rows=500)
    engine_s = 100 * curve.seconds_for(500)
    overhead = per_call_overhead(probe, engine_s + 100 * 50e-6, curve)
    assert overhead == pytest.approx(50e-6)
    assert per_call_overhead(probe, 0.5 * engine_s, curve) == 0.0
    traces = [trace([k / rate for k in range(300)], rows=500) for rate in (200.0, 800.0, 3000.0)]
    cost = TransportCost(overhead, 0.0, "naive")
    measured = []
    for t in traces:
        point = summarize(t, simulate(t, curve, cost, ONE_AT_A_TIME), "measured", 10.0)
        measured.append(MeasuredPoint(point.p50_ms, point.p99_ms, point.candidates_per_s, point.within(10.0)))
    validation = validate_naive(traces, measured, overhead, curve, 10.0)
    assert validation.max_candidates_ratio == pytest.approx(1.0)
    assert validation.p50_ratios == pytest.approx([1.0] * 3) and validation.p99_ratios == pytest.approx([1.0] * 3)
    # Twice the measured latency everywhere: the ratios say the simulation is at half.
    doubled = [MeasuredPoint(2 * m.p50_ms, 2 * m.p99_ms, m.candidates_per_s, m.within_bound) for m in measured]
    assert validate_naive(traces, doubled, overhead, curve, 10.0).to_json()["p99_ratio_median"] == pytest.approx(0.5)


def test_a_trace_is_kept_in_send_order() -> None:
    t = Trace.of([0.3, 0.1, 0.2], [3, 1, 2], [30, 10, 20], deadline_s=0.5)
    assert (
        t.send_s.tolist() == [0.1, 0.2, 0.3]
        and t.rows.tolist() == [1, 2, 3]
        and t.payload_bytes.tolist()
        == [
            10,
            20,
            30,
        ]
    )
    assert t.offered_rate == pytest.approx(10.0) and t.deadline_s == 0.5


def test_the_transport_latency_adds_to_every_request_but_not_to_the_core() -> None:
    # 1 ms of core each, 1.5 ms more off the core: the second request still starts when the first ends.
    t = trace([0.0, 0.5 * MS])
    cost = TransportCost(0.0, 0.0, "echo", latency_s=1.5 * MS)
    assert (simulate(t, constant(MS), cost, ONE_AT_A_TIME) - t.send_s).tolist() == pytest.approx([1 * MS, 1.5 * MS])
    (point,) = each_policy(t, constant(MS), cost, 2.6, [ONE_AT_A_TIME])
    assert point.p50_ms == pytest.approx(2.75) and point.within_bound_fraction == pytest.approx(0.5)


def test_a_cost_per_request_is_fitted_on_single_calls_and_charged_per_request() -> None:
    # The engine's truth: 1 ms + 20 us per row + 3 ms per request (a query encoded each). The sweep measured 100
    # rows in 2 requests (9 ms) and 1,000 rows in 8 (45 ms); single calls of 100, 500 and 1,000 rows.
    def truth(rows: float, requests: float) -> float:
        return 1 * MS + 20e-6 * rows + 3 * MS * requests

    curve = BatchCurve.measured([100, 1000], [truth(100, 2), truth(1000, 8)], requests=[2, 8])
    fitted = curve.fit_per_request([(n, truth(n, 1)) for n in (100, 500, 1000)])
    assert fitted.per_request_s == pytest.approx(3 * MS)
    # A call stretched tenfold (the core was lent to someone else) does not move the median.
    calls = [(n, truth(n, 1)) for n in (100, 300, 500, 800, 1000)] + [(600, 10 * truth(600, 1))]
    assert curve.fit_per_request(calls).per_request_s == pytest.approx(3 * MS)
    assert fitted.seconds_for(500, 1) == pytest.approx(truth(500, 1))
    assert fitted.seconds_for(700, 5) == pytest.approx(truth(700, 5))
    assert fitted.seconds_for(700) == pytest.approx(curve.seconds_for(700))  # no count: the sweep's own mix
    # One at a time charges each call as one request.
    t = trace([0.0, 0.0], rows=500)
    assert simulate(t, fitted, FREE, ONE_AT_A_TIME).tolist() == pytest.approx([truth(500, 1), 2 * truth(500, 1)])
    # A curve measured without request counts (or a fit that would make requests cheaper) charges nothing extra.
    plain = BatchCurve.measured([100, 1000], [1 * MS, 5 * MS])
    assert plain.fit_per_request([(100, 9 * MS)]) is plain
    assert curve.fit_per_request([(1000, 60 * MS)]).per_request_s == 0.0


def test_a_capped_policy_batches_up_to_its_rows_and_runs_a_larger_request_alone() -> None:
    capped = Policy("cap", max_rows=256)
    assert latencies(trace([0.0] * 4, rows=100), constant(MS), capped) == pytest.approx([MS, MS, 2 * MS, 2 * MS])
    got = latencies(trace([0.0] * 3, rows=[100, 900, 100]), constant(MS), capped)
    assert got == pytest.approx([MS, 2 * MS, 3 * MS])


def test_the_transports_measured_tail_reaches_the_ideal_servers_p99() -> None:
    # 1,000 spaced requests of 1 ms: nothing queues, so each latency is 1 ms plus its off-core draw. The echo's
    # samples put 2 % of the calls 5 ms off the core: about 20 of the draws, so the p99 carries them.
    t = trace([i * 10 * MS for i in range(1000)])
    samples = (0.0,) * 98 + (5 * MS,) * 2
    tailed = TransportCost(0.0, 0.0, "echo", latency_s=0.0, latency_samples_s=samples)
    draws = np.asarray(tailed.off_core(1000))
    assert set(np.unique(draws)) <= {0.0, 5 * MS} and 5 <= int((draws > 0).sum()) <= 40
    assert np.array_equal(draws, tailed.off_core(1000))  # the same draws every time: a reproducible limit
    (point,) = each_policy(t, constant(MS), tailed, 10.0, [ONE_AT_A_TIME])
    assert point.p50_ms == pytest.approx(1.0) and point.p99_ms == pytest.approx(6.0)
    # Without samples the constant applies to every request, as before.
    (flat,) = each_policy(t, constant(MS), TransportCost(0.0, 0.0, "echo", latency_s=0.5 * MS), 10.0, [ONE_AT_A_TIME])
    assert flat.p50_ms == pytest.approx(1.5) and flat.p99_ms == pytest.approx(1.5)
    # The naive server's validation draws from the same samples: its simulated p99 has the tail too.
    measured = [MeasuredPoint(1.0, 6.0, 100.0, True)]
    validation = validate_naive([t], measured, 0.0, constant(MS), 10.0, tailed)
    assert validation.to_json()["p99_ratio_median"] == pytest.approx(1.0)
