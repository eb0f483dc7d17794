"""Engine-only: the model run in ONNX Runtime directly, no server: the ceiling and the per-request reference.

Two figures per model, on the core this process is pinned to (the bench runs it under `taskset -c 0`, the core the
servers get):
- ceiling: candidates/s of `session.run` over the benchmark's own request set packed into batches of B rows (the
  way a batching server packs them: whole requests in arrival order, a request split across batches where it
  overflows one; for relevance each batch carries one tokenized query per request it holds, trimmed to the batch's
  longest query), for B in 64..2048 and the model config's thread counts (intra-op 1 on one core). The best B is
  the candidates/s no server on that core can beat, since a server runs the same session plus its own work. The
  sweep is also the engine's batch-time curve (`ms_per_run_p50`, the median run, against `rows_per_run`, with
  `requests_per_run`) that perf/limit_model.py interpolates.
- direct: the latency of `session.run` on each request alone (p50/p99): what a request costs with nothing but the
  engine in the way, the reference for a server's latency at light load. Back to back by default; with
  `--paced RATE`, each call starts at its Poisson arrival at RATE requests/s (the loadgen's draw for that rate) and
  the core idles in between, as a server's does at that load. The pace matters: on this machine a call after a few
  milliseconds idle takes 2-3x as long as one straight after another (the core's caches and clock go cold), so
  the light-load reference is the paced figure at the rate of the server's 10 % point. `samples` holds each call's
  [rows, ms]: with the sweep, they tell a batch's cost per request (one query each) from its cost per row.

Inputs are built before any timing. The session is adrank's own backend session for the model's config
(`Session.run_arrays`): ONNX Runtime with the config's threads and providers, or TensorRT for `backend: tensorrt`,
so that with `--repository` naming a repository whose configs run on a GPU the ceiling is the GPU's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

if __package__ in (None, ""):  # run as a script: import the perf package from the checkout, not perf/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from perf import requests as request_sets

ROW_REQUEST_INDEX = "row_request_index"


class Engine:
    """One model's backend session, as adrank creates it from the model's config (ONNX Runtime on the CPU or
    a GPU, or TensorRT), run with no server in between."""

    def __init__(self, model: str, models: Path = request_sets.MODELS, intra_op_threads: int | None = None) -> None:
        from adrank.backends import create_backend
        from adrank.repository import ModelRepository

        entry = ModelRepository(models).entry(model)
        version_dir = entry.version_dir(entry.versions[-1])
        config = entry.config
        self.intra_op_threads = intra_op_threads or config.onnxruntime.intra_op_num_threads
        threads = config.onnxruntime.model_copy(update={"intra_op_num_threads": self.intra_op_threads})
        self.config = config.model_copy(update={"onnxruntime": threads})
        self.session = create_backend(self.config.backend).load(version_dir, self.config, 0)
        self.outputs = [t.name for t in entry.config.outputs]
        self.text = next((t for t in entry.config.inputs if t.tokenizer is not None), None)
        self.tokenizer = None
        if self.text is not None:
            from tokenizers import Tokenizer

            assert self.text.tokenizer is not None
            self.tokenizer = Tokenizer.from_file(str(version_dir / self.text.tokenizer.file))
            self.tokenizer.enable_truncation(max_length=self.text.tokenizer.max_length)
            self.tokenizer.enable_padding(length=self.text.tokenizer.max_length, pad_id=0)

    def tokenize(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids and mask int64 [R, L], trimmed to the longest query (as adrank's backend trims)."""
        assert self.tokenizer is not None and self.text is not None and self.text.tokenizer is not None
        encodings = self.tokenizer.encode_batch(list(queries))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        length = max(int(mask.sum(axis=1).max()), 1)
        names = self.text.tokenizer
        return {
            names.input_ids: np.ascontiguousarray(ids[:, :length]),
            names.attention_mask: np.ascontiguousarray(mask[:, :length]),
        }

    def feed(self, parts: Sequence[tuple[int, slice]], requests: request_sets.RequestSet) -> dict[str, np.ndarray]:
        """The inputs of one batch made of row ranges of requests: [(request index, rows), ...]."""
        names = list(requests.feeds[0])
        feed = {name: np.concatenate([requests.feeds[i][name][rows] for i, rows in parts]) for name in names}
        if self.tokenizer is not None:
            feed.update(self.tokenize([requests.context[i] for i, _ in parts]))
            counts = [_rows(requests, i, rows) for i, rows in parts]
            feed[ROW_REQUEST_INDEX] = np.repeat(np.arange(len(parts), dtype=np.int64), counts)
        return {name: np.ascontiguousarray(array) for name, array in feed.items()}

    def run(self, feed: dict[str, np.ndarray]) -> None:
        self.session.run_arrays(feed)


def _rows(requests: request_sets.RequestSet, index: int, rows: slice) -> int:
    return len(range(*rows.indices(int(requests.candidates[index]))))


def pack(requests: request_sets.RequestSet, batch_rows: int) -> list[list[tuple[int, slice]]]:
    """The request set in arrival order packed into batches of `batch_rows` rows (the last one may be short)."""
    batches: list[list[tuple[int, slice]]] = []
    current: list[tuple[int, slice]] = []
    room = batch_rows
    for i, n in enumerate(requests.candidates):
        start = 0
        while start < n:
            take = min(room, int(n) - start)
            current.append((i, slice(start, start + take)))
            start += take
            room -= take
            if room == 0:
                batches.append(current)
                current, room = [], batch_rows
    if current:
        batches.append(current)
    return batches


def ceiling(engine: Engine, requests: request_sets.RequestSet, batch_rows: int, seconds: float) -> dict[str, float]:
    """Candidates/s of back-to-back `session.run` over the set packed into `batch_rows`-row batches."""
    batches = pack(requests, batch_rows)
    if len(batches) > 1:
        batches = batches[:-1]  # a short tail batch would understate the size
    feeds = [engine.feed(parts, requests) for parts in batches]
    rows = [sum(_rows(requests, i, part) for i, part in parts) for parts in batches]
    for feed in feeds[:2]:
        engine.run(feed)  # warm-up: the first run at a shape allocates
    done_rows, done_requests, runs = 0, 0, 0
    each: list[float] = []
    start = time.perf_counter()
    while True:
        feed_index = runs % len(feeds)
        began = time.perf_counter()
        engine.run(feeds[feed_index])
        each.append(time.perf_counter() - began)
        done_rows += rows[feed_index]
        done_requests += len(batches[feed_index])
        runs += 1
        elapsed = time.perf_counter() - start
        if (elapsed >= seconds and runs >= 3) or runs >= 100_000:
            break
    return {
        "batch_rows": batch_rows,
        "runs": runs,
        "seconds": elapsed,
        "candidates_per_s": done_rows / elapsed,
        "ms_per_run": elapsed / runs * 1e3,
        # The median run: a core shared with other work (a busy machine) stretches some runs, and the mean with them.
        "ms_per_run_p50": float(np.median(each)) * 1e3,
        "rows_per_run": done_rows / runs,  # below batch_rows where the whole set fits one batch
        # Requests (whole or split) per run: for a model that encodes a context per request (relevance's query) the
        # time depends on them as well as on the rows.
        "requests_per_run": done_requests / runs,
    }


def direct(
    engine: Engine, requests: request_sets.RequestSet, count: int, rate: float | None = None, seed: int = 7
) -> dict[str, object]:
    """Latency of `session.run` on each request alone (its own rows, its own query), in ms.

    `rate`: start call i at its Poisson arrival (the draw perf/loadgen.py makes for that rate and seed) instead of
    straight after call i-1. Latency is the call's own time either way (start to return), never time spent waiting
    for the schedule.
    """
    feeds = [engine.feed([(i, slice(None))], requests) for i in range(min(count, len(requests)))]
    for feed in feeds[:5]:
        engine.run(feed)
    arrivals = np.zeros(len(feeds))
    if rate is not None:
        rng = np.random.default_rng([seed, round(rate * 1000)])
        arrivals = np.cumsum(rng.exponential(1.0 / rate, size=len(feeds)))
    latency = np.empty(len(feeds))
    clock = time.perf_counter()
    for i, feed in enumerate(feeds):
        idle = clock + arrivals[i] - time.perf_counter()
        if idle > 0:
            time.sleep(idle)
        start = time.perf_counter()
        engine.run(feed)
        latency[i] = time.perf_counter() - start
    latency *= 1e3
    rows = [int(requests.candidates[i]) for i in range(len(feeds))]
    return {
        "requests": len(feeds),
        "samples": [[n, round(float(ms), 4)] for n, ms in zip(rows, latency, strict=True)],  # [rows, ms] per call
        "rate": rate,
        "p50_ms": float(np.percentile(latency, 50)),
        "p90_ms": float(np.percentile(latency, 90)),
        "p99_ms": float(np.percentile(latency, 99)),
        "mean_ms": float(latency.mean()),
    }


def measure(
    model: str,
    count: int,
    sizes: Sequence[int],
    seconds: float,
    direct_count: int,
    threads: Sequence[int] = (1,),
    models: Path = request_sets.MODELS,
    mix: request_sets.Mix = request_sets.LOGNORMAL,
    queries: request_sets.QueryMix = request_sets.EVALUATION_QUERIES,
) -> dict[str, object]:
    requests = request_sets.build(model, count, mix=mix, queries=queries)
    sweep = []
    for intra in threads:
        engine = Engine(model, models, intra_op_threads=intra)
        for size in sizes:
            sweep.append({"intra_op_threads": intra, **ceiling(engine, requests, size, seconds)})
    best = max(sweep, key=lambda point: float(point["candidates_per_s"]))
    return {
        "model": model,
        "cores": sorted(os.sched_getaffinity(0)),
        "onnxruntime": ort.__version__,
        "request_set": requests.summary(),
        "batch_sweep": sweep,
        "best": best,
        "ceiling_candidates_per_s": best["candidates_per_s"],
        "direct": direct(Engine(model, models, intra_op_threads=int(best["intra_op_threads"])), requests, direct_count),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ctr")
    parser.add_argument("--requests", type=int, default=1000, help="size of the request set (as the bench builds)")
    parser.add_argument("--sizes", default="64,128,256,512,1024,2048", help="batch sizes (rows)")
    parser.add_argument("--threads", default="1", help="intra-op thread counts to try")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per batch size")
    parser.add_argument("--direct", type=int, default=500, help="requests timed one at a time")
    parser.add_argument("--paced", type=float, help="only the direct latency, calls paced at this many requests/s")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    parser.add_argument("--repository", type=Path, default=request_sets.MODELS, help="the model repository")
    parser.add_argument(
        "--mix", type=request_sets.Mix.parse, default=request_sets.Mix(), help="candidates (as the bench)"
    )
    parser.add_argument(
        "--queries", type=request_sets.QueryMix.parse, default=request_sets.QueryMix(), help="relevance's query mix"
    )
    args = parser.parse_args(argv)
    built = request_sets.build(args.model, args.requests, mix=args.mix, queries=args.queries)
    if args.paced:
        engine = Engine(args.model, args.repository, intra_op_threads=int(args.threads.split(",")[0]))
        paced = direct(engine, built, args.direct, rate=args.paced)
        _write(json.dumps({"model": args.model, "direct": paced}, indent=2), args.out)
        return
    result = measure(
        args.model,
        args.requests,
        [int(s) for s in args.sizes.split(",")],
        args.seconds,
        args.direct,
        [int(t) for t in args.threads.split(",")],
        args.repository,
        args.mix,
        args.queries,
    )
    _write(json.dumps(result, indent=2), args.out)


def _write(text: str, out: Path | None) -> None:
    if out:
        out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
