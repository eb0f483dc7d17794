"""End to end: the bundled models served over gRPC on an ephemeral loopback port.

Scores must equal ONNX Runtime run directly on the same inputs; every bad request gets the right status
code and a message naming the field, and leaves the server healthy.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import references
from references import latest_version, version_dir

from adrank.client import AsyncRankClient, RankClient, RankError, build_request
from adrank.server.frontend import TransportOptions
from adrank.v1 import ranking_pb2_grpc as pb_grpc
from examples.criteo import CriteoRows
from served import FRONTENDS, MODELS, ServerThread


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request):
    """The bundled models served by each front end in turn: both hold the same contract."""
    running = ServerThread(frontend=request.param).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with RankClient(server.target) as rank_client:
        yield rank_client


@pytest.fixture(scope="module")
def criteo() -> CriteoRows:
    return references.criteo_rows()


@pytest.fixture(scope="module")
def ctr_direct():
    return references.ctr_direct()


@pytest.fixture(scope="module")
def relevance_meta() -> dict:
    return references.relevance_meta()


@pytest.fixture(scope="module")
def relevance_direct():
    return references.relevance_direct()


def ctr_inputs(rows: CriteoRows) -> dict[str, np.ndarray]:
    return {"dense": rows.dense, "sparse": rows.sparse}


def test_ctr_scores_on_real_rows_equal_onnxruntime_run_directly(client, criteo, ctr_direct):
    start = 0
    for n in (1, 7, 100, 333, 1024, 534):  # 1999 rows in requests of several sizes
        rows = criteo.take(slice(start, start + n))
        result = client.rank(["ctr"], ctr_inputs(rows), timeout=30)
        scores = result["ctr"].scores
        assert scores.dtype == np.float32 and scores.shape == (n,)
        assert result["ctr"].version == latest_version("ctr")
        assert np.max(np.abs(scores - ctr_direct(rows.dense, rows.sparse))) <= 1e-6
        assert np.all((scores >= 0) & (scores <= 1))
        start += n
    assert start == len(criteo)


def test_ctr_reproduces_the_golden_outputs_recorded_at_training(client):
    golden = json.loads((version_dir("ctr") / "meta.json").read_text())["golden"]
    dense = np.array(golden["inputs"]["dense"], dtype=np.float32)
    sparse = np.array(golden["inputs"]["sparse"], dtype=np.int64)
    scores = client.rank(["ctr"], {"dense": dense, "sparse": sparse}, timeout=30)["ctr"].scores
    assert np.max(np.abs(scores - np.array(golden["outputs"]["ctr"], dtype=np.float32))) <= golden["atol"]


def test_ctr_scores_are_informative_on_real_rows(client, criteo):
    # The served model is the trained one: on rows it learned from it ranks clicks above non-clicks.
    scores = client.rank(["ctr"], ctr_inputs(criteo), timeout=30)["ctr"].scores
    clicked, skipped = scores[criteo.labels == 1], scores[criteo.labels == 0]
    auc = (clicked[:, None] > skipped[None, :]).mean() + 0.5 * (clicked[:, None] == skipped[None, :]).mean()
    assert auc > 0.6


def test_relevance_scores_equal_the_encoder_run_directly(client, relevance_meta, relevance_direct):
    golden = relevance_meta["golden"]
    ads = np.array(golden["inputs"]["ad_embedding"], dtype=np.float32)
    expected = np.array(golden["outputs"]["relevance"], dtype=np.float32)
    start = 0
    for query, n in zip(golden["inputs"]["query"], golden["inputs"]["request_rows"], strict=True):
        candidates = ads[start : start + n]
        result = client.rank(["relevance"], {"ad_embedding": candidates}, {"query": query}, timeout=30)
        scores = result["relevance"].scores
        assert np.max(np.abs(scores - relevance_direct(query, candidates))) <= 1e-6
        assert np.max(np.abs(scores - expected[start : start + n])) <= golden["atol"]
        start += n


def test_relevance_of_a_query_does_not_depend_on_the_requests_batched_with_it(server, relevance_direct):
    """Concurrent queries of different lengths share batches; each still gets its own exact scores."""
    rng = np.random.default_rng(7)
    queries = ["shoes", "cheap flights to lisbon in may", "noise cancelling headphones", "car insurance quote"] * 4
    ads = rng.standard_normal((len(queries), 50, 384)).astype(np.float32)
    ads /= np.linalg.norm(ads, axis=2, keepdims=True)
    errors: list[str] = []

    def one(i: int) -> None:
        with RankClient(server.target) as own:
            scores = own.rank(["relevance"], {"ad_embedding": ads[i]}, {"query": queries[i]}, timeout=30)
        diff = np.max(np.abs(scores["relevance"].scores - relevance_direct(queries[i], ads[i])))
        if diff > 1e-6:
            errors.append(f"query {i} '{queries[i]}': max abs diff {diff}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_64_concurrent_clients_each_get_exactly_their_own_scores(server, ctr_direct):
    rng = np.random.default_rng(0)
    sizes = [1, 2000, *rng.integers(1, 2001, size=62).tolist()]
    requests = []
    for n in sizes:
        dense = rng.integers(0, 1000, size=(n, 13)).astype(np.float32)
        sparse = rng.integers(-(2**40), 2**40, size=(n, 26), dtype=np.int64)
        requests.append((dense, sparse))
    results: dict[int, np.ndarray] = {}
    failures: list[BaseException] = []
    refusals: list[int] = []
    barrier = threading.Barrier(len(requests))

    def one(i: int) -> None:
        # 64 x ~1000 rows at once is twice the queue's cap: the overflow is refused at once with
        # RESOURCE_EXHAUSTED and, like a well-behaved ads server, retried after a short backoff.
        try:
            with RankClient(server.target) as own:
                barrier.wait(timeout=30)
                dense, sparse = requests[i]
                for attempt in range(200):
                    try:
                        results[i] = own.rank(["ctr"], {"dense": dense, "sparse": sparse}, timeout=60)["ctr"].scores
                        return
                    except RankError as error:
                        if error.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        refusals.append(i)
                        time.sleep(min(0.002 * 2**attempt, 0.1))
        except BaseException as error:  # reported below, with the thread's index
            failures.append(error)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    for i, (dense, sparse) in enumerate(requests):
        assert results[i].shape == (len(dense),)
        assert np.max(np.abs(results[i] - ctr_direct(dense, sparse))) <= 1e-6, f"client {i} got other scores"


def test_one_request_scores_ctr_and_relevance_together(client, criteo, ctr_direct, relevance_direct):
    rows = criteo.take(slice(0, 40))
    rng = np.random.default_rng(3)
    ads = rng.standard_normal((40, 384)).astype(np.float32)
    ads /= np.linalg.norm(ads, axis=1, keepdims=True)
    result = client.rank(
        ["ctr", "relevance"],
        {**ctr_inputs(rows), "ad_embedding": ads},
        {"query": "running shoes for women"},
        request_id="auction-17",
        timeout=30,
    )
    assert result.request_id == "auction-17" and list(result) == ["ctr", "relevance"]
    assert np.max(np.abs(result["ctr"].scores - ctr_direct(rows.dense, rows.sparse))) <= 1e-6
    assert np.max(np.abs(result["relevance"].scores - relevance_direct("running shoes for women", ads))) <= 1e-6
    for model in ("ctr", "relevance"):
        assert result[model].batch_rows >= 40 and result[model].compute_us > 0


def test_a_pinned_version_answers_and_the_async_client_works(server, criteo, ctr_direct):
    import asyncio

    rows = criteo.take(slice(0, 5))

    async def call():
        async with AsyncRankClient(server.target) as async_client:
            return await async_client.rank([("ctr", latest_version("ctr"))], ctr_inputs(rows), timeout=30)

    result = asyncio.run(call())
    assert result["ctr"].version == latest_version("ctr")
    assert np.max(np.abs(result["ctr"].scores - ctr_direct(rows.dense, rows.sparse))) <= 1e-6


def good_ctr(n: int = 4) -> dict[str, np.ndarray]:
    return {"dense": np.ones((n, 13), np.float32), "sparse": np.arange(n * 26, dtype=np.int64).reshape(n, 26)}


def with_nan() -> dict[str, np.ndarray]:
    inputs = good_ctr()
    inputs["dense"][2, 5] = np.nan
    return inputs


def with_inf() -> dict[str, np.ndarray]:
    inputs = good_ctr()
    inputs["dense"][0, 0] = -np.inf
    return inputs


INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_REQUESTS = {
    "unknown model": (["nope"], good_ctr(), None, grpc.StatusCode.NOT_FOUND, "'nope'"),
    "unknown version": ([("ctr", 999)], good_ctr(), None, grpc.StatusCode.NOT_FOUND, "version 999"),
    "no model": ([], good_ctr(), None, INVALID, "models"),
    "missing input": (["ctr"], {"dense": good_ctr()["dense"]}, None, INVALID, "'sparse'"),
    "unexpected input": (["ctr"], {**good_ctr(), "bid": np.ones(4, np.float32)}, None, INVALID, "'bid'"),
    "wrong dtype": (["ctr"], {**good_ctr(), "dense": np.ones((4, 13), np.float64)}, None, INVALID, "'dense'"),
    "wrong trailing dim": (["ctr"], {**good_ctr(), "dense": np.ones((4, 12), np.float32)}, None, INVALID, "'dense'"),
    "N disagrees": (["ctr"], {**good_ctr(), "dense": np.ones((5, 13), np.float32)}, None, INVALID, "disagree on N"),
    "N = 0": (["ctr"], good_ctr(0), None, INVALID, "0 rows"),
    "N above the limit": (["ctr"], good_ctr(2049), None, INVALID, "max_candidates"),
    "context of two rows": (
        ["relevance"],
        {"ad_embedding": np.zeros((3, 384), np.float32)},
        {"query": ["a", "b"]},
        INVALID,
        "'query'",
    ),
    "NaN where forbidden": (["ctr"], with_nan(), None, INVALID, "'dense': row 2"),
    "inf where forbidden": (["ctr"], with_inf(), None, INVALID, "'dense': row 0"),
    "text as a number": (
        ["relevance"],
        {"ad_embedding": np.zeros((3, 384), np.float32)},
        {"query": np.zeros((1, 4), np.float32)},
        INVALID,
        "'query'",
    ),
    "context sent as candidates": (
        ["relevance"],
        {"ad_embedding": np.zeros((3, 384), np.float32), "query": ["a", "b", "c"]},
        None,
        INVALID,
        "'query'",
    ),
    "priority out of range": (["ctr"], good_ctr(), None, INVALID, "priority"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_the_right_status_naming_the_field_and_the_server_stays_healthy(client, case):
    models, candidates, context, code, field = BAD_REQUESTS[case]
    priority = 7 if case == "priority out of range" else None
    with pytest.raises(RankError) as error:
        client.rank(models, candidates, context, timeout=30, priority=priority)
    assert error.value.code == code, error.value.details
    assert field in error.value.details, error.value.details
    assert client.rank(["ctr"], good_ctr(), timeout=30)["ctr"].scores.shape == (4,)
    assert client.serving()


def test_raw_bytes_not_matching_the_shape_are_refused_naming_the_tensor(server):
    request = build_request(["ctr"], good_ctr())
    request.candidates[0].raw_data = request.candidates[0].raw_data[:-4]
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as error:
        pb_grpc.RankingStub(channel).Rank(request, timeout=30)
    assert error.value.code() == INVALID
    assert "candidates tensor 'dense'" in error.value.details() and "bytes" in error.value.details()


def test_a_deadline_already_passed_is_refused_and_the_model_never_runs_for_it(server):
    ctr = server.server.models.route("ctr").servable.model
    before = ctr.stats()
    request = build_request(["ctr"], good_ctr(2000))
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.RankingStub(channel)
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as error:
                stub.Rank(request, timeout=1e-6)
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = ctr.stats()
    assert after["batches"] == before["batches"] and after["batch_rows"] == before["batch_rows"]
    assert after["completed_ok"] == before["completed_ok"]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_the_models_get_the_deadline_less_the_reply_margin(tmp_path, frontend):
    """A call left less than the reply margin is refused at once, not computed and answered late; one with
    more is served. (A 0.5 s margin makes the arithmetic visible; the default is 1 ms.)"""
    shutil.copytree(MODELS / "ctr", tmp_path / "ctr", ignore=shutil.ignore_patterns("*.py", "README.md"))
    running = ServerThread(
        repository=tmp_path, workers=1, frontend=frontend, transport=TransportOptions(reply_margin_s=0.5)
    ).start()
    try:
        ctr = running.server.models.route("ctr").servable.model
        request = build_request(["ctr"], good_ctr())
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.RankingStub(channel)
            assert len(stub.Rank(request, timeout=5).results[0].scores) == 4 * 4  # float32 per candidate
            before = ctr.stats()
            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as error:
                stub.Rank(request, timeout=0.3)
            elapsed = time.perf_counter() - started
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "reply margin 500000 µs" in error.value.details()
        assert elapsed < 0.25, f"refused after {elapsed:.3f} s: the server waited instead of refusing"
        assert ctr.stats()["submitted"] == before["submitted"]
    finally:
        running.stop()


def test_response_carries_server_timing(client):
    result = client.rank(["ctr"], good_ctr(10), timeout=30)
    assert result["ctr"].batch_rows >= 10 and result["ctr"].compute_us > 0
    assert result.server_us >= result["ctr"].compute_us


def test_a_string_tensor_in_the_wrong_layout_is_refused_naming_it(server):
    request = build_request(["relevance"], {"ad_embedding": np.zeros((2, 384), np.float32)}, {"query": "a"})
    request.context[0].raw_data = b"\x09\x00\x00\x00short"
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as error:
        pb_grpc.RankingStub(channel).Rank(request, timeout=30)
    assert error.value.code() == INVALID and "context tensor 'query'" in error.value.details()


def test_the_example_scores_real_rows_against_a_running_server(server):
    import subprocess
    import sys

    from served import REPO

    example = REPO / "examples" / "rank_example.py"
    command = [sys.executable, str(example), "--target", server.target, "--auctions", "3", "--query", "running shoes"]
    command += ["--timeout", "2"]  # a loaded test machine, not the auction budget, is what this would measure
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("auction ")]
    assert len(lines) == 3 and all("ctr v" in line and "relevance mean" in line for line in lines), done.stdout


@pytest.mark.parametrize(
    ("defect", "why"),
    [
        ("cut off", "candidates[1] at byte 237: claims 849 bytes, 842 remain"),
        ("not UTF-8", "candidates[0].name at byte "),
        ("invalid wire type", "invalid wire type 7"),
        ("group never closed", "group 1 is never closed"),
    ],
)
def test_unparseable_bytes_get_invalid_argument_naming_the_field_and_byte(server, defect, why):
    good = build_request(["ctr"], good_ctr(), request_id="r").SerializeToString()
    data = {
        "cut off": good[:-7],
        "not UTF-8": good.replace(b"\x0a\x05dense", b"\x0a\x05d\xffnse"),
        "invalid wire type": good + b"\x0f",
        "group never closed": good + b"\x0b\x08\x01",
    }[defect]
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as error:
        channel.unary_unary("/adrank.v1.Ranking/Rank")(data, timeout=30)
    assert error.value.code() == INVALID
    assert error.value.details().startswith(f"request: not an adrank.v1.RankRequest ({len(data)} bytes): ")
    assert why in error.value.details(), error.value.details()
