"""The Prometheus metrics: a prometheus-client collector that turns one Sample into metric families.

Nothing is counted in Python: each scrape takes a fresh sample of the core's cumulative counters
(sample.py) and writes them out, so a scrape costs the same at any request rate and a server that is
never scraped pays only the core's counting.

Histograms, never summaries: bucket counts of several replicas add up, so
`histogram_quantile(0.99, sum by (model, le) (rate(adrank_request_latency_seconds_bucket[1m])))` is the
fleet's p99. Latency buckets are histogram.py's (20 per decade from 0.1 to 100 ms).

Metrics (labels model, version unless said otherwise; deploy/ has the Grafana panels and alerts):
  adrank_requests_total{code}             requests by final gRPC status code; a call naming two models
                                          is a request to each
  adrank_candidates_total                 candidates scored (rows of OK requests)
  adrank_request_latency_seconds          histogram: the call's arrival until this model's part is done
  adrank_queue_latency_seconds            histogram: waiting in the batcher
  adrank_compute_latency_seconds          histogram: the batch's execution
  adrank_batch_rows                       histogram of real rows per executed batch
  adrank_batches_total
  adrank_queue_rows, adrank_queue_requests   gauges: queued, not yet in a batch
  adrank_shed_total{reason}               queue_full (refused at submit), deadline_expired (passed while
                                          queued, or before it), deadline_unreachable (shed: its batch
                                          could not finish in time), shadow (mirror shed, queue behind)
  adrank_late_total                       computed, but finished after the caller's deadline
  adrank_context_cache_hits_total, adrank_context_cache_misses_total, adrank_context_cache_evictions_total
                                          a context-tower cache's lookups by result and its entries evicted
                                          for room (models with a context_tower only; cpp/context_cache.h)
  adrank_context_cache_bytes, adrank_context_cache_entries, adrank_context_cache_max_bytes
                                          gauges: what the cache holds now, and its bound
  adrank_rank_calls_total{code}           whole Rank calls, including those refused before any model
  adrank_unknown_model_requests_total{code}  (code only: NOT_FOUND) requests naming a model no version
                                          serves; with adrank_requests_total summed by code, every request
  adrank_retried_calls_total              (no labels) calls that were a client's retry (gRPC retry policy)
                                          or hedged copy (the client's hedging)
  adrank_repository_errors_total          (no labels) repository polls that could not read the repository;
                                          every loaded version kept serving
  adrank_memory_pool_bytes{state}         total, in_use, locked
  adrank_memory_pool_leases_total, adrank_memory_pool_misses_total, adrank_memory_pool_cap_rejections_total
  adrank_memory_pool_info{allocator}
  adrank_model_state{state}               1 for the version's lifecycle state, 0 for the others
  adrank_cpu_info{vendor, model_name, avx2, avx512f, avx512_vnni, avx_vnni, amx_int8}
  adrank_tls_certificate_expiry_timestamp_seconds{port}, adrank_tls_reloads_total{port, result} (TLS ports only)
                                          (these labels only) 1: the CPU and its integer-kernel features,
                                          "true"/"false"/"unknown" (cpu_features.py); without avx512_vnni,
                                          avx_vnni or amx_int8, int8 weights using 8 bits saturate
  adrank_rollout_traffic_percent{role}    share of routing keys (shadow: share mirrored)
  adrank_rollout_p99_ratio{role}, adrank_rollout_error_rate_excess{role}, adrank_rollout_psi{role}:
                                          the guardrails' latest window, candidate against stable
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from adrank.cpu_features import cpu_features
from adrank.histogram import (
    BATCH_ROWS_BOUNDS,
    EXPORTED_LATENCY_INDEX,
    LATENCY_BOUNDS_US,
    cumulative,
)
from adrank.lifecycle.manager import VersionState
from adrank.metrics.sample import MetricsSource, Sample, VersionSample
from adrank.status import StatusCode

CODE_NAMES = {int(code): code.name for code in StatusCode}
STATES = [s.value for s in VersionState]
VERSION_LABELS = ["model", "version"]
LATENCY_LE = [f"{b / 1e6:.6g}" for b in LATENCY_BOUNDS_US[EXPORTED_LATENCY_INDEX]] + ["+Inf"]
BATCH_ROWS_LE = [floatToGoString(b) for b in BATCH_ROWS_BOUNDS] + ["+Inf"]
BATCH_ROWS_INDEX = np.arange(len(BATCH_ROWS_BOUNDS))
LATENCIES = (
    ("request", "The call's arrival at the server until this model's part is done (OK requests)."),
    ("queue", "Time a request waited in the model's batcher (OK requests)."),
    ("compute", "Execution time of the batch a request rode in (OK requests)."),
)


# Each TLS port's figures: (port, certificate expiry in Unix seconds, reloads by result) (server/tls.py).
TlsFigures = Callable[[], list[tuple[str, float, Mapping[str, int]]]]


def create_registry(source: MetricsSource, tls: TlsFigures | None = None) -> CollectorRegistry:
    """A registry of this server's own (no global state): adrank's metrics plus process_* and python_info, and
    each TLS port's certificate expiry and reloads where `tls` gives them."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(source))
    if tls is not None:
        registry.register(TlsCollector(tls))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class ServerCollector(Collector):
    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        sample = self._source.sample()
        for family in (*version_metrics(sample), *server_metrics(sample), *rollout_metrics(sample)):
            yield family
            # The exposition is formatted family by family as they are yielded: letting go of the GIL
            # between them keeps a scrape from holding up a backend call (which needs the GIL) for more
            # than one family's formatting, a fraction of a millisecond.
            time.sleep(0)


class TlsCollector(Collector):
    def __init__(self, figures: TlsFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "adrank_tls_certificate_expiry_timestamp_seconds",
            "When the certificate a port serves expires (Unix time): alert well before it.",
            labels=["port"],
        )
        reloads = CounterMetricFamily(
            "adrank_tls_reloads",
            "Certificate files that changed on disk, by result: ok (now served) or refused (the old one kept).",
            labels=["port", "result"],
        )
        for port, not_after, counts in self._figures():
            expiry.add_metric([port], not_after)
            for result in ("ok", "refused"):
                reloads.add_metric([port, result], counts.get(result, 0))
        yield expiry
        yield reloads


def _labels(v: VersionSample) -> list[str]:
    return [v.model, str(v.version)]


def version_metrics(sample: Sample) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "adrank_requests", "Requests to a model version by final gRPC status code.", labels=[*VERSION_LABELS, "code"]
    )
    candidates = CounterMetricFamily(
        "adrank_candidates", "Candidates scored (rows of OK requests).", labels=VERSION_LABELS
    )
    latencies = {
        phase: HistogramMetricFamily(f"adrank_{phase}_latency_seconds", text, labels=VERSION_LABELS)
        for phase, text in LATENCIES
    }
    batch_rows = HistogramMetricFamily("adrank_batch_rows", "Real rows per executed batch.", labels=VERSION_LABELS)
    batches = CounterMetricFamily("adrank_batches", "Batches executed.", labels=VERSION_LABELS)
    queue_rows = GaugeMetricFamily("adrank_queue_rows", "Rows queued, not yet in a batch.", labels=VERSION_LABELS)
    queue_requests = GaugeMetricFamily("adrank_queue_requests", "Requests queued.", labels=VERSION_LABELS)
    shed = CounterMetricFamily("adrank_shed", "Requests not computed, by reason.", labels=[*VERSION_LABELS, "reason"])
    late = CounterMetricFamily(
        "adrank_late", "Requests computed but finished after their deadline.", labels=VERSION_LABELS
    )
    for v in sample.versions:
        labels = _labels(v)
        codes = v.stats["codes"]
        for number, count in enumerate(codes):
            if count or number == 0:
                requests.add_metric([*labels, CODE_NAMES.get(number, str(number))], int(count))
        candidates.add_metric(labels, int(v.stats["candidates"]))
        for phase, _ in LATENCIES:
            counts = v.stats[f"{phase}_counts"]
            buckets = cumulative(counts, EXPORTED_LATENCY_INDEX)
            latencies[phase].add_metric(
                labels, list(zip(LATENCY_LE, (int(c) for c in buckets), strict=True)), v.stats[f"{phase}_us_sum"] / 1e6
            )
        q = v.queue
        rows = cumulative(q["batch_rows_counts"], BATCH_ROWS_INDEX)
        batch_rows.add_metric(labels, list(zip(BATCH_ROWS_LE, (int(c) for c in rows), strict=True)), q["batch_rows"])
        batches.add_metric(labels, q["batches"])
        queue_rows.add_metric(labels, q["queued_rows"])
        queue_requests.add_metric(labels, q["queued_requests"])
        for reason, count in (
            ("queue_full", q["rejected_queue_full"]),
            ("tenant_limit", q["rejected_tenant"]),
            ("priority_denied", q["rejected_denied"]),
            ("deadline_expired", q["expired"] + q["rejected_expired"]),
            ("deadline_unreachable", q["shed"]),
            ("shadow", v.stats["shadow_shed"]),
        ):
            shed.add_metric([*labels, reason], int(count))
        late.add_metric(labels, q["late"])
    yield from (requests, candidates, *latencies.values(), batch_rows, batches, queue_rows, queue_requests, shed, late)
    yield from tenant_metrics(sample)
    yield from context_cache_metrics(sample)


def context_cache_metrics(sample: Sample) -> Iterator[Metric]:
    """Per version with a context-tower cache: its lookups by result, evictions and what it holds."""
    counters = {
        key: CounterMetricFamily(f"adrank_context_cache_{key}", text, labels=VERSION_LABELS)
        for key, text in (
            ("hits", "Context-tower cache lookups that found the context's output (the tower did not run for it)."),
            ("misses", "Context-tower cache lookups that did not (the tower ran for the context)."),
            ("evictions", "Context-tower cache entries evicted, least recently used first, to stay within its bytes."),
        )
    }
    gauges = {
        key: GaugeMetricFamily(f"adrank_context_cache_{key}", text, labels=VERSION_LABELS)
        for key, text in (
            ("bytes", "Bytes the context-tower cache holds (keys, outputs and per-entry overhead)."),
            ("entries", "Contexts the context-tower cache holds."),
            ("max_bytes", "The context-tower cache's bound in bytes (config.yaml's context_tower.cache_bytes)."),
        )
    }
    for v in sample.versions:
        if v.context_cache is None:
            continue
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {**counters, **gauges}
        for key, family in families.items():
            family.add_metric(_labels(v), int(v.context_cache[key]))
    yield from (*counters.values(), *gauges.values())


# A tenant's requests by how they ended (cpp/tenants.h TenantCounters).
TENANT_OUTCOMES = ("completed_ok", "deadline", "refused_limit", "refused_denied", "failed")


def tenant_metrics(sample: Sample) -> Iterator[Metric]:
    """Per tenant of each version's queue: outcomes, rows, what it holds now. A tenant shows once it has
    sent a request (its names are bounded by the core's max_tenants)."""
    labels = [*VERSION_LABELS, "tenant"]
    requests = CounterMetricFamily(
        "adrank_tenant_requests", "A tenant's requests to a model version, by outcome.", labels=[*labels, "outcome"]
    )
    rows = CounterMetricFamily(
        "adrank_tenant_rows", "Candidate rows a tenant's accepted requests carried.", labels=labels
    )
    queued = GaugeMetricFamily(
        "adrank_tenant_queued_rows", "Rows a tenant has queued, not yet in a batch.", labels=labels
    )
    in_flight = GaugeMetricFamily(
        "adrank_tenant_in_flight", "A tenant's requests accepted, not yet answered.", labels=labels
    )
    for v in sample.versions:
        for t in v.tenants:
            if not (t["submitted"] or t["refused_limit"] or t["refused_denied"]):
                continue
            tenant_labels = [*_labels(v), str(t["tenant"])]
            for outcome in TENANT_OUTCOMES:
                requests.add_metric([*tenant_labels, outcome], int(t[outcome]))
            rows.add_metric(tenant_labels, int(t["rows"]))
            queued.add_metric(tenant_labels, int(t["queued_rows"]))
            in_flight.add_metric(tenant_labels, int(t["in_flight"]))
    yield from (requests, rows, queued, in_flight)


def server_metrics(sample: Sample) -> Iterator[Metric]:
    calls = CounterMetricFamily("adrank_rank_calls", "Rank calls answered, by gRPC status code.", labels=["code"])
    for number, count in enumerate(sample.calls):
        if count or number == 0:
            calls.add_metric([CODE_NAMES.get(number, str(number))], count)
    yield calls
    unknown = CounterMetricFamily(
        "adrank_unknown_model_requests",
        "Requests naming a model no version serves (answered NOT_FOUND, in no version's counts).",
        labels=["code"],
    )
    unknown.add_metric([StatusCode.NOT_FOUND.name], sample.unknown_model_requests)
    yield unknown
    yield CounterMetricFamily(
        "adrank_retried_calls",
        "Calls that were a client's retry of an attempt that failed, here or on another replica (gRPC's retry"
        " policy: grpc-previous-rpc-attempts), or a hedged copy of a call not yet answered (the client's hedging:"
        " x-adrank-previous-attempts); a fleet's retries are the sum over its replicas.",
        value=sample.retried_calls,
    )
    yield CounterMetricFamily(
        "adrank_repository_errors",
        "Repository polls that could not read the repository (loaded versions kept serving).",
        value=sample.repository_errors,
    )
    pool = sample.memory_pool
    memory = GaugeMetricFamily("adrank_memory_pool_bytes", "Batch buffer memory, by state.", labels=["state"])
    for state in ("total", "in_use", "locked"):
        memory.add_metric([state], pool[f"{state}_bytes"])
    yield memory
    for name, key, text in (
        ("leases", "leases", "Buffers leased."),
        ("misses", "misses", "Leases that had to allocate from the OS."),
        ("cap_rejections", "cap_rejections", "Leases refused at the pool's byte cap."),
    ):
        yield CounterMetricFamily(f"adrank_memory_pool_{name}", text, value=pool[key])
    info = GaugeMetricFamily("adrank_memory_pool_info", "The pool's allocator.", labels=["allocator"])
    info.add_metric([pool["allocator"]], 1)
    yield info
    lifecycle = GaugeMetricFamily(
        "adrank_model_state", "1 for a version's lifecycle state, 0 for the others.", labels=[*VERSION_LABELS, "state"]
    )
    for model, version, current in sample.states:
        for s in STATES:
            lifecycle.add_metric([model, str(version), s], 1 if s == current else 0)
    yield lifecycle
    yield cpu_info()


def cpu_info() -> InfoMetricFamily:
    """adrank_cpu_info: the CPU's vendor, model name and integer-kernel features (read once per process)."""
    return InfoMetricFamily(
        "adrank_cpu",
        "The CPU and its integer-kernel features (int8 models score differently without VNNI).",
        value=cpu_features().labels(),
    )


def rollout_metrics(sample: Sample) -> Iterator[Metric]:
    labels = [*VERSION_LABELS, "role"]
    traffic = GaugeMetricFamily(
        "adrank_rollout_traffic_percent", "Share of routing keys a version takes (shadow: mirrored).", labels=labels
    )
    for t in sample.traffic:
        traffic.add_metric([t.model, str(t.version), t.role], t.percent)
    yield traffic
    ratio = GaugeMetricFamily(
        "adrank_rollout_p99_ratio", "Guardrails: candidate p99 over stable's, latest window.", labels=labels
    )
    errors = GaugeMetricFamily(
        "adrank_rollout_error_rate_excess", "Guardrails: candidate error rate minus stable's.", labels=labels
    )
    psi = GaugeMetricFamily(
        "adrank_rollout_psi", "Guardrails: population stability index of candidate scores vs stable.", labels=labels
    )
    for model, version, role, verdict in sample.verdicts:
        figures = verdict.figures
        values = [model, str(version), role]
        rates = figures["error_rate"]
        for family, value in (
            (ratio, figures["p99_ratio"]),
            (errors, rates[role] - rates["stable"]),
            (psi, figures["psi"]),
        ):
            if value is not None and math.isfinite(value):
                family.add_metric(values, value)
    yield from (ratio, errors, psi)
