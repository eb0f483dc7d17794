"""Relevance throughput with its context-tower cache on and off, on a Zipf-like query mix, in one run.

What it measures: the core and the backend, in process — requests submitted to the relevance model's batcher
(`Model.submit`, the path every front end hands a call to), batched, run by the ONNX Runtime backend and answered
— without the transport, so that the figure is the cache's effect on the work per request.

The mix (issue 35): `--distinct` queries (10,000 by default) built from the relevance evaluation texts (each of its
25 queries, with one of its 40 ad titles' first words and a modifier appended), drawn Zipf-like with s = `--zipf-s`
(1.0): the query of rank k with probability proportional to 1 / k^s. Each request carries `--candidates` ad
embeddings (unit rows; the scores' values do not change the work).

Two versions of the bundled relevance model are loaded side by side on one core worker: the bundled config
(cache on, `context_tower.cache_bytes`), and the same with `context_tower: null` (the whole graph per batch, as
before the cache). Rounds alternate on, off (`--rounds` of each, `--round-s` seconds), each a closed loop of
`--concurrency` callers on the same query stream, so the machine's drift is spread over both; the cache stays
warm across its rounds, as a serving replica's does. `--max-batch-requests` overrides the config's for both.
Figures per round: requests/s, candidates/s, p50 and p99 latency, and for the cache its hit ratio over the round.

Output: perf/results/context-cache-<date>-<sha>.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: import the perf package from the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import adrank._core as core
from adrank.repository.config import load_model_config
from adrank.servable import Servable
from adrank.tokenizer import text_row
from perf.bench import git_info
from perf.report import save
from perf.requests import distinct_queries, zipf_stream

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
RESULTS = REPO / "perf" / "results"


@dataclass
class Round:
    cache: bool
    requests: int
    seconds: float
    latencies_ms: list[float]
    candidates: int
    hit_ratio: float | None

    def figures(self) -> dict[str, float | bool | None]:
        lat = sorted(self.latencies_ms)
        return {
            "cache": self.cache,
            "requests_per_s": round(self.requests / self.seconds, 1),
            "candidates_per_s": round(self.requests * self.candidates / self.seconds, 1),
            "p50_ms": round(lat[len(lat) // 2], 3),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
            "hit_ratio": None if self.hit_ratio is None else round(self.hit_ratio, 4),
        }


class Stream:
    """The shared query stream: each caller takes the next query (the same order for both servables)."""

    def __init__(self, queries: list[str]) -> None:
        self._queries = queries
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            query = self._queries[self._next % len(self._queries)]
            self._next += 1
            return query


def run_round(servable: Servable, stream: Stream, ads: np.ndarray, concurrency: int, seconds: float) -> Round:
    tokenizer = servable.config.inputs[0].tokenizer
    assert tokenizer is not None  # relevance's first input is its query text
    max_bytes = tokenizer.max_bytes
    cache = servable.context_cache
    before = cache.stats() if cache is not None else None
    stop = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(concurrency)]

    def caller(mine: list[float]) -> None:
        while time.perf_counter() < stop:
            query = stream.take()
            start = time.perf_counter()
            request = servable.model.submit({"ad_embedding": ads}, {"query": text_row(query, max_bytes)}, timeout_s=30)
            request.wait(timeout_s=60)
            request.result()
            mine.append((time.perf_counter() - start) * 1e3)

    began = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(latencies[i],)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    hit_ratio = None
    if cache is not None and before is not None:
        after = cache.stats()
        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
        hit_ratio = hits / (hits + misses) if hits + misses else None
    flat = [x for mine in latencies for x in mine]
    return Round(cache is not None, len(flat), elapsed, flat, len(ads), hit_ratio)


def load_servables(pool: core.ThreadPool, max_batch_requests: int | None) -> tuple[Servable, Servable]:
    config = load_model_config(MODELS / "relevance" / "config.yaml")
    if max_batch_requests is not None:
        batching = config.batching.model_copy(update={"max_batch_requests": max_batch_requests})
        config = config.model_copy(update={"batching": batching})
    version_dir = MODELS / "relevance" / "2"
    on = Servable.load(pool, config, version_dir, 2)
    off_config = config.model_copy(update={"context_tower": None})
    off = Servable.load(pool, off_config, version_dir, 3)
    for servable in (on, off):
        servable.warm_up()
    return on, off


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distinct", type=int, default=10_000)
    parser.add_argument("--zipf-s", type=float, default=1.0)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=35)
    parser.add_argument(
        "--max-batch-requests", type=int, default=None, help="batching.max_batch_requests for both (default: config's)"
    )
    parser.add_argument("--out", type=Path, default=None, help="result stem (default perf/results/context-cache-...)")
    args = parser.parse_args(argv)

    queries = distinct_queries(args.distinct)
    stream_queries = zipf_stream(queries, args.zipf_s, 200_000, args.seed)
    rng = np.random.default_rng(args.seed)
    ads = rng.standard_normal((args.candidates, 384)).astype(np.float32)
    ads /= np.linalg.norm(ads, axis=1, keepdims=True)
    pool = core.ThreadPool(num_workers=1)
    rounds: list[Round] = []
    on, off = load_servables(pool, args.max_batch_requests)
    # Each servable reads its own copy of the same stream, so both see the same queries in the same order.
    streams = {True: Stream(stream_queries), False: Stream(stream_queries)}
    for index in range(args.rounds):
        for servable in (on, off):
            stream = streams[servable.context_cache is not None]
            result = run_round(servable, stream, ads, args.concurrency, args.round_s)
            rounds.append(result)
            print(f"round {index + 1} cache {'on ' if result.cache else 'off'}: {result.figures()}", flush=True)
    stats = on.context_cache.stats() if on.context_cache is not None else {}
    on.unload(pool)
    off.unload(pool)
    pool.shutdown()
    report(args, rounds, stats)


def median_of(rounds: list[Round], cache: bool, key: str) -> float | None:
    values = [r.figures()[key] for r in rounds if r.cache == cache]
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(numbers) if numbers else None


def report(args: argparse.Namespace, rounds: list[Round], stats: dict[str, int]) -> None:
    info = git_info()
    date = dt.date.today().isoformat()
    summary = {
        key: {"on": median_of(rounds, True, key), "off": median_of(rounds, False, key)}
        for key in ("requests_per_s", "candidates_per_s", "p50_ms", "p99_ms")
    }
    ratio = (summary["requests_per_s"]["on"] or 0) / (summary["requests_per_s"]["off"] or 1)
    hit_ratios = [r.hit_ratio for r in rounds if r.hit_ratio is not None]
    whole_hit_ratio = stats["hits"] / (stats["hits"] + stats["misses"]) if stats else None
    result = {
        "date": date,
        "git": info,
        "cpu": os.uname().machine,
        "cpu_model": _cpu_model(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rounds": [r.figures() for r in rounds],
        "medians": summary,
        "throughput_ratio_on_over_off": round(ratio, 3),
        "hit_ratio_per_round": [round(h, 4) for h in hit_ratios],
        "hit_ratio_whole_run": None if whole_hit_ratio is None else round(whole_hit_ratio, 4),
        "cache_stats": stats,
    }
    lines = [
        f"# Relevance context cache: on vs off ({date}, {info['sha']}{' dirty' if info['dirty'] else ''})",
        "",
        f"{_cpu_model()}; in process (core + ONNX Runtime backend, 1 core worker, no transport); "
        f"{args.distinct} distinct queries, Zipf s={args.zipf_s}, {args.candidates} candidates per request, "
        f"{args.concurrency} callers, {args.rounds} rounds of {args.round_s} s each, alternating; "
        f"max_batch_requests {'as configured' if args.max_batch_requests is None else args.max_batch_requests}.",
        "",
        "| round | cache | requests/s | candidates/s | p50 ms | p99 ms | hit ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(rounds):
        f = r.figures()
        hit = "-" if f["hit_ratio"] is None else f"{f['hit_ratio']:.3f}"
        lines.append(
            f"| {i // 2 + 1} | {'on' if r.cache else 'off'} | {f['requests_per_s']} | {f['candidates_per_s']} | "
            f"{f['p50_ms']} | {f['p99_ms']} | {hit} |"
        )
    lines += [
        "",
        f"Medians: requests/s on {summary['requests_per_s']['on']} vs off {summary['requests_per_s']['off']} "
        f"(x{ratio:.2f}); p99 on {summary['p99_ms']['on']} ms vs off {summary['p99_ms']['off']} ms. "
        f"Hit ratio over the whole run (warm-up included): {result['hit_ratio_whole_run']}; cache at the end: "
        f"{stats.get('entries')} entries, {stats.get('bytes')} bytes, {stats.get('evictions')} evictions.",
        "",
    ]
    stem = args.out or RESULTS / f"context-cache-{date}-{info['sha']}"
    save(result, stem, "\n".join(lines))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
