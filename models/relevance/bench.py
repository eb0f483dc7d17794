"""Engine-only latency of a published relevance version: ONNX Runtime's CPU provider, 1 intra-op thread, graph
optimisation all, as config.yaml sets; no server, no batching, nothing written. Run it through ``export.py``:

    .venv-train/bin/python models/relevance/export.py --bench 1

To compare versions, run them alternately (1, 2, 1, 2, ...) pinned to one core (``taskset -c 1``), so that noise
from other jobs on the machine hits both alike, and compare medians (``perf/results/relevance-v2-export-*.md``).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from head import HIDDEN
from query_tokens import MAX_LENGTH, serving_tokenizer, tokenize
from runtime import run_model, session


def median_ms(run: Callable[[], object], repeats: int) -> float:
    for _ in range(max(5, repeats // 5)):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e3, 3)


def bench(folder: Path, texts: Path, seed: int, repeats: int = 50) -> dict[str, Any]:
    """Median latency of the version in `folder`.

    One request with a 4-word query ([CLS] + 4 word pieces + [SEP] = 6 tokens, padding trimmed as the backend
    may) and N candidates; N=1 is in effect the encoder alone (the head is one 384-wide dot). Then the same query
    untrimmed (L=32), and 8 requests at once (the first 8 queries of `texts`)."""
    sess = session(folder / "model.onnx")
    tokenizer = serving_tokenizer(folder / "tokenizer.json")
    query = "cheap flights to lisbon"
    padded_ids, padded_mask = tokenize(tokenizer, [query])
    length = int(padded_mask.sum())
    ids, mask = padded_ids[:, :length], padded_mask[:, :length]
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = {"query": query, "query_tokens": length, "repeats": repeats}
    for n in (1, 100, 1000):
        ads = rng.standard_normal((n, HIDDEN)).astype(np.float32)
        ads /= np.linalg.norm(ads, axis=1, keepdims=True)
        rows = np.zeros(n, dtype=np.int64)
        result[f"R=1 N={n} ms"] = median_ms(lambda a=ads, r=rows: run_model(sess, ids, mask, a, r), repeats)
    one_ad, one_row = np.zeros((1, HIDDEN), dtype=np.float32), np.zeros(1, dtype=np.int64)
    result[f"R=1 N=1 untrimmed L={MAX_LENGTH} ms"] = median_ms(
        lambda: run_model(sess, padded_ids, padded_mask, one_ad, one_row), repeats
    )
    queries = list(json.loads(texts.read_text())["queries"])
    many_ids, many_mask = tokenize(tokenizer, queries[:8])
    width = int(many_mask.sum(axis=1).max())
    result["R=8 (texts.json queries) N=8 ms"] = median_ms(
        lambda: run_model(
            sess, many_ids[:, :width], many_mask[:, :width], np.zeros((8, HIDDEN), np.float32), np.arange(8)
        ),
        repeats,
    )
    return result
