"""The relevance model's context tower: its query embeddings cached per distinct query (cpp/context_cache.h,
backends/context_tower.py). Scores are bit-identical with the cache on or off, cold or warm, in batches that mix
hits and misses; the tower runs once per distinct missing query; the cache stays within its bytes, shows on
/metrics, and goes with its version."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

import adrank._core as core
from adrank.backends import BackendError
from adrank.client import RankClient
from adrank.metrics.exporter import context_cache_metrics
from adrank.metrics.sample import Sample, VersionSample
from adrank.repository.config import ConfigError, ModelConfig, load_model_config
from adrank.repository.meta import golden_requests
from adrank.servable import Servable
from adrank.tokenizer import text_row
from served import MODELS, ServerThread, copy_model

QUERIES = json.loads((MODELS / "relevance" / "texts.json").read_text())["queries"]
EMBEDDING_BYTES = 384 * 4


def load(tmp_path, pool, version: int = 2, **overrides) -> Servable:
    """Version 2 of relevance; `version` is the number it registers with the pool as (two copies side by side).
    Requests merge into batches (the bundled config runs one per batch), so that batches mix hits and misses."""
    config, version_dir = copy_model(tmp_path, "relevance", batching__max_batch_requests=0, **overrides)
    return Servable.load(pool, config, version_dir, version)


def ads(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, 384)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def score_all(servable: Servable, requests: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
    """Submits every request at once (they ride in shared batches) and returns their scores in order."""
    max_bytes = servable.config.inputs[0].tokenizer.max_bytes
    pending = [
        servable.model.submit({"ad_embedding": rows}, {"query": text_row(query, max_bytes)}, timeout_s=120)
        for query, rows in requests
    ]
    return [request.wait(timeout_s=120).outputs["relevance"].copy() for request in pending]


def entry_bytes(query: str) -> int:
    return len(query.encode()) + EMBEDDING_BYTES + core.ContextCache.entry_overhead_bytes


def test_scores_are_bit_identical_with_the_cache_on_or_off_cold_or_warm_and_in_mixed_batches(tmp_path, pool):
    rng = np.random.default_rng(35)
    cached = load(tmp_path / "on", pool)
    uncached = load(tmp_path / "off", pool, version=3, context_tower=None)
    assert cached.context_cache is not None and uncached.context_cache is None
    # Cold: 10 distinct queries, three of them twice in the same burst; then warm: the same requests again; then
    # a burst mixing 5 cached queries with 5 new ones.
    sizes = [1, 7, 50, 3, 200, 2, 9, 64, 5, 11, 4, 6, 8]
    cold = [(q, ads(rng, n)) for q, n in zip(QUERIES[:10] + QUERIES[:3], sizes, strict=True)]
    mixed = [(q, ads(rng, 17)) for q in QUERIES[5:15]]
    for requests in (cold, cold, mixed):
        with_cache = score_all(cached, requests)
        without = score_all(uncached, requests)
        for (query, _), a, b in zip(requests, with_cache, without, strict=True):
            assert a.tobytes() == b.tobytes(), query
    stats = cached.context_cache.stats()
    assert stats["hits"] >= 10 + 3 + 5  # the warm burst and the mixed burst's cached half at least
    assert stats["insertions"] == 15  # each distinct query encoded once
    cached.unload(pool)
    uncached.unload(pool)


def test_golden_outputs_hold_through_the_cut_graph_cold_and_cached(tmp_path, pool):
    servable = load(tmp_path, pool)
    golden = json.loads((servable.version_dir / "meta.json").read_text())["golden"]
    expected = np.asarray(golden["outputs"]["relevance"], dtype=np.float32)
    requests = golden_requests(servable.config, golden["inputs"])
    cold = np.concatenate(servable.score(requests))
    cached = np.concatenate(servable.score(requests))
    assert np.max(np.abs(cold - expected)) <= golden["atol"]
    assert cold.tobytes() == cached.tobytes()
    servable.unload(pool)


def test_the_tower_runs_once_per_distinct_query(tmp_path, pool):
    servable = load(tmp_path, pool)
    rng = np.random.default_rng(1)
    score_all(servable, [("running shoes for women", ads(rng, 3)) for _ in range(6)])
    stats = servable.context_cache.stats()
    # Encoded and inserted once, whatever batches the six requests rode in.
    assert stats["insertions"] == 1 and stats["entries"] == 1
    assert stats["hits"] + stats["misses"] >= 6
    servable.unload(pool)


def test_the_cache_evicts_the_least_recently_used_query_to_stay_within_its_bytes(tmp_path, pool):
    queries = ["cheap flights to lisbon", "running shoes for women", "best pizza in naples", "used cars for sale"]
    budget = sum(entry_bytes(q) for q in queries[:2])  # the later queries are no longer than the first
    servable = load(tmp_path, pool, context_tower={"output": "query_embedding", "cache_bytes": budget})
    rng = np.random.default_rng(2)
    for query in queries:
        score_all(servable, [(query, ads(rng, 2))])
    stats = servable.context_cache.stats()
    assert stats["bytes"] <= budget == stats["max_bytes"]
    assert stats["evictions"] == 2 and stats["entries"] == 2
    before = servable.context_cache.stats()["misses"]
    score_all(servable, [(queries[0], ads(rng, 2))])  # evicted first: a miss again
    score_all(servable, [(queries[3], ads(rng, 2))])  # the most recent: a hit
    after = servable.context_cache.stats()
    assert after["misses"] == before + 1 and after["hits"] == stats["hits"] + 1
    servable.unload(pool)


def test_the_cache_shows_on_metrics_per_model_and_version(tmp_path, pool):
    servable = load(tmp_path, pool)
    score_all(servable, [("running shoes for women", ads(np.random.default_rng(3), 3))] * 2)
    stats = servable.context_cache.stats()
    version = VersionSample("relevance", 2, "stable", {}, {}, [], context_cache=stats)
    plain = VersionSample("ctr", 1, "stable", {}, {}, [])
    sample = Sample(0.0, [version, plain], [], [], [], {}, [])
    values = {
        (family.name, s.name, s.labels["model"], s.labels["version"]): s.value
        for family in context_cache_metrics(sample)
        for s in family.samples
    }
    labels = ("relevance", "2")
    assert values[("adrank_context_cache_hits", "adrank_context_cache_hits_total", *labels)] == stats["hits"]
    assert values[("adrank_context_cache_misses", "adrank_context_cache_misses_total", *labels)] == stats["misses"]
    assert values[("adrank_context_cache_evictions", "adrank_context_cache_evictions_total", *labels)] == 0
    assert values[("adrank_context_cache_bytes", "adrank_context_cache_bytes", *labels)] == stats["bytes"] > 0
    assert values[("adrank_context_cache_entries", "adrank_context_cache_entries", *labels)] == 1
    assert all(key[2] == "relevance" for key in values)  # a model without a tower has no cache series
    servable.unload(pool)


def test_the_cache_is_dropped_with_its_version(tmp_path, pool):
    servable = load(tmp_path, pool)
    cache = servable.context_cache
    score_all(servable, [("running shoes for women", ads(np.random.default_rng(4), 3))])
    assert cache.stats()["entries"] == 1
    servable.unload(pool)
    assert cache.stats()["entries"] == 0 and cache.stats()["bytes"] == 0
    again = Servable.load(pool, servable.config, servable.version_dir, 2)
    assert again.context_cache is not cache
    assert again.context_cache.stats() == {**cache.stats(), **dict.fromkeys(("hits", "misses", "insertions"), 0)}
    again.unload(pool)


def test_cache_bytes_zero_runs_the_whole_graph(tmp_path, pool):
    servable = load(tmp_path, pool, context_tower={"output": "query_embedding", "cache_bytes": 0})
    assert servable.context_cache is None
    (scores,) = score_all(servable, [("running shoes for women", ads(np.random.default_rng(6), 4))])
    assert scores.shape == (4,)
    servable.unload(pool)


def test_a_tower_output_the_graph_lacks_is_refused_at_load(tmp_path, pool):
    with pytest.raises(BackendError, match=r"context_tower.output 'sentence_embedding' is not an output of the graph"):
        load(tmp_path, pool, context_tower={"output": "sentence_embedding"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"context_tower": {"output": "relevance"}}, "must be a graph output other than the score"),
        ({"context_tower": {"output": "query_embedding"}, "backend": "tensorrt"}, "use onnxruntime"),
        ({"context_tower": {"output": "query_embedding", "cache_bytes": -1}}, "cache_bytes"),
        ({"context_tower": {"output": "query_embedding", "size": 1}}, "size"),
    ],
)
def test_a_bad_context_tower_is_refused_naming_the_field(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        copy_model(tmp_path, "relevance", **overrides)


def test_the_bundled_relevance_config_declares_its_query_tower():
    tower = load_model_config(MODELS / "relevance" / "config.yaml").context_tower
    assert tower is not None and tower.output == "query_embedding" and tower.cache_bytes > 0


def tower_model(tmp_path, tower: str = "square", bypass: bool = False) -> tuple[ModelConfig, Path]:
    """A small model with a context input `ctx` [R, 2], a candidate input `cand` [N, 2] and a context tower
    `tower_out` [R, 2]; score = sum(tower_out[row_request_index] * cand). `tower`: "square" reads the context
    only, "mixed" the candidates too; `bypass`: the score also reads the context other than through the tower."""
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    nodes = [helper.make_node("Mul", ["ctx", "ctx"], ["squared"])]
    if tower == "mixed":
        nodes += [
            helper.make_node("ReduceMean", ["cand"], ["cand_mean"], keepdims=1),
            helper.make_node("Add", ["squared", "cand_mean"], ["tower_out"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["squared"], ["tower_out"]))
    nodes += [
        helper.make_node("Gather", ["tower_out", "row_request_index"], ["gathered"], axis=0),
        helper.make_node("Mul", ["gathered", "cand"], ["products"]),
    ]
    if bypass:
        nodes += [
            helper.make_node("Gather", ["ctx", "row_request_index"], ["raw"], axis=0),
            helper.make_node("Add", ["products", "raw"], ["summed"]),
        ]
    nodes.append(helper.make_node("ReduceSum", ["summed" if bypass else "products", "axes"], ["score"], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "tower",
        [
            helper.make_tensor_value_info("ctx", f32, ["R", 2]),
            helper.make_tensor_value_info("cand", f32, ["N", 2]),
            helper.make_tensor_value_info("row_request_index", i64, ["N"]),
        ],
        [helper.make_tensor_value_info("score", f32, ["N"]), helper.make_tensor_value_info("tower_out", f32, ["R", 2])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    (tmp_path / "tower" / "1").mkdir(parents=True)
    onnx.save(model, str(tmp_path / "tower" / "1" / "model.onnx"))
    config = {
        "name": "tower",
        "inputs": [
            {"name": "ctx", "dtype": "float32", "shape": [2], "role": "context"},
            {"name": "cand", "dtype": "float32", "shape": [2]},
        ],
        "outputs": [{"name": "score", "dtype": "float32"}],
        "batching": {"context_layout": "per_request"},
        "context_tower": {"output": "tower_out"},
    }
    (tmp_path / "tower" / "config.yaml").write_text(yaml.safe_dump(config))
    return load_model_config(tmp_path / "tower" / "config.yaml"), tmp_path / "tower" / "1"


def test_a_numeric_context_is_keyed_by_its_row_bytes_and_scores_as_the_whole_graph(tmp_path, pool):
    config, version_dir = tower_model(tmp_path)
    servable = Servable.load(pool, config, version_dir, 1)
    whole = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    contexts = [rng.standard_normal((1, 2)).astype(np.float32) for _ in range(3)]
    for ctx in [*contexts, *contexts]:
        cand = rng.standard_normal((5, 2)).astype(np.float32)
        got = servable.model.submit({"cand": cand}, {"ctx": ctx}).wait(timeout_s=60).outputs["score"]
        feeds = {"ctx": ctx, "cand": cand, "row_request_index": np.zeros(5, np.int64)}
        assert got.tobytes() == whole.run(["score"], feeds)[0].tobytes()
    stats = servable.context_cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (3, 3, 3)
    servable.unload(pool)


@pytest.mark.parametrize(
    ("tower", "bypass", "message"),
    [
        ("mixed", False, r"depends on \['cand'\], which are not context inputs"),
        ("square", True, r"depends on \['ctx'\] other than through the tower's output"),
    ],
)
def test_a_tower_that_is_not_one_is_refused_at_load_naming_the_input(tmp_path, pool, tower, bypass, message):
    config, version_dir = tower_model(tmp_path, tower, bypass)
    with pytest.raises(BackendError, match=message):
        Servable.load(pool, config, version_dir, 1)


def test_a_served_relevance_counts_its_cache_on_metrics(tmp_path):
    copy_model(tmp_path, "relevance")
    server = ServerThread(tmp_path).start()
    try:
        ads_rows = ads(np.random.default_rng(8), 5)
        with RankClient(server.target) as client:
            for _ in range(3):
                client.rank(["relevance"], {"ad_embedding": ads_rows}, {"query": "running shoes for women"}, timeout=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server.http_port}/metrics", timeout=10) as reply:
            body = reply.read().decode()
    finally:
        server.stop()
    found = {
        s.name: s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name.startswith("adrank_context_cache") and s.labels == {"model": "relevance", "version": "2"}
    }
    # Warm-up's query and this one missed once each; this one then hit twice.
    assert found["adrank_context_cache_misses_total"] >= 2 and found["adrank_context_cache_hits_total"] >= 2
    assert found["adrank_context_cache_entries"] >= 2 and found["adrank_context_cache_bytes"] > 0
    assert found["adrank_context_cache_max_bytes"] == 64 << 20
    assert found["adrank_context_cache_evictions_total"] == 0
