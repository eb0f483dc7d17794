"""The Open Inference Protocol (KServe v2) over gRPC and HTTP/REST, called by Triton's own clients as an
outside caller would.

tritonclient 2.51.0 runs from its own environment (`make kserve-env`; tests/kserve/requirements.txt says why
not beside adrank): a plan of calls is written here, tests/kserve/triton_client.py runs it against a server
of each front end and over both protocols, and what it recorded is checked here: live, ready, metadata,
parity with ONNX Runtime on real rows at several N, a pinned version, a canary routed by routing_key, and bad
inputs refused with Rank's own statuses and messages. JSON tensors over REST (what curl sends) are checked
from this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import references
import yaml
from rollout_models import ctr_repository, publish_version

import adrank._core as core
from adrank import __version__
from adrank.server.frontend import TransportOptions
from examples.criteo import CriteoRows
from served import FRONTENDS, MODELS, REPO, ServerThread, missing

KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
CLIENT = REPO / "tests" / "kserve" / "triton_client.py"
SIZES = (1, 7, 100, 333)
KEYS = [f"user-{i}" for i in range(24)]
PROTOCOLS = ["grpc", "http"]
HTTP_STATUS = {"NOT_FOUND": "404", "INVALID_ARGUMENT": "400", "DEADLINE_EXCEEDED": "504"}


def client_python() -> Path:
    if not KSERVE_PYTHON.is_file():
        missing(f"{KSERVE_PYTHON} is missing: `make kserve-env` installs Triton's clients there")
    return KSERVE_PYTHON


def run_plan(work: Path, url: str, protocol: str, steps: list[dict]) -> list[dict]:
    plan, result = work / f"plan-{protocol}.json", work / f"result-{protocol}.json"
    plan.write_text(json.dumps({"url": url, "protocol": protocol, "steps": steps}))
    done = subprocess.run(
        [str(client_python()), str(CLIENT), str(plan), str(result)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(result.read_text())
    assert len(answers) == len(steps)
    return answers


def ctr_step(work: Path, key: str, rows: CriteoRows, **fields) -> dict:
    np.save(work / f"{key}-dense.npy", rows.dense)
    np.save(work / f"{key}-sparse.npy", rows.sparse)
    inputs = [
        {"name": "dense", "datatype": "FP32", "npy": str(work / f"{key}-dense.npy")},
        {"name": "sparse", "datatype": "INT64", "npy": str(work / f"{key}-sparse.npy")},
    ]
    return {"op": "infer", "model": "ctr", "inputs": inputs, "out": str(work / f"{key}.npz"), "key": key, **fields}


def plan(work: Path, criteo: CriteoRows) -> list[dict]:
    steps: list[dict] = [
        {"op": "live", "key": "live"},
        {"op": "ready", "key": "ready"},
        {"op": "server_metadata", "key": "server_metadata"},
        {"op": "model_metadata", "model": "ctr", "key": "ctr_metadata"},
        {"op": "model_metadata", "model": "relevance", "key": "relevance_metadata"},
        {"op": "model_metadata", "model": "nope", "key": "nope_metadata"},
        {"op": "model_config", "model": "relevance", "key": "relevance_config"},
        {"op": "repository_index", "key": "repository_disabled", "headers": {"authorization": "Bearer x"}},
        {"op": "model_ready", "model": "ctr", "key": "ctr_ready"},
        {"op": "model_ready", "model": "ctr", "version": "2", "key": "ctr_2_ready"},
        {"op": "model_ready", "model": "ctr", "version": "9", "key": "ctr_9_ready"},
        {"op": "model_ready", "model": "nope", "key": "nope_ready"},
    ]
    start = 0
    for n in SIZES:
        rows = criteo.take(slice(start, start + n))
        steps.append(ctr_step(work, f"ctr_{n}", rows, version="1", id=f"auction-{n}", n=n, first=start))
        start += n
    rows = criteo.take(slice(0, 20))
    for key in KEYS:
        steps.append(ctr_step(work, f"canary_{key}", rows, parameters={"routing_key": key}))
    steps.append(ctr_step(work, "priority", rows, priority=1, timeout_us=5_000_000))
    golden = references.relevance_meta()["golden"]
    ads = np.array(golden["inputs"]["ad_embedding"], dtype=np.float32)
    query, n = golden["inputs"]["query"][0], golden["inputs"]["request_rows"][0]
    np.save(work / "ads.npy", ads[:n])
    steps.append(
        {
            "op": "infer",
            "model": "relevance",
            "key": "relevance",
            "query": query,
            "inputs": [
                {"name": "query", "datatype": "BYTES", "strings": [query]},
                {"name": "ad_embedding", "datatype": "FP32", "npy": str(work / "ads.npy")},
            ],
            "out": str(work / "relevance.npz"),
        }
    )
    steps += bad_steps(work, rows)
    steps += [  # after every infer: what they did, counted
        {"op": "statistics", "key": "stats_all"},
        {"op": "statistics", "model": "ctr", "key": "stats_ctr"},
        {"op": "statistics", "model": "ctr", "version": "2", "key": "stats_ctr_2"},
        {"op": "statistics", "model": "relevance", "key": "stats_relevance"},
        {"op": "statistics", "model": "nope", "key": "stats_nope"},
        {"op": "statistics", "model": "ctr", "version": "9", "key": "stats_ctr_9"},
    ]
    return steps


def bad_steps(work: Path, rows: CriteoRows) -> list[dict]:
    np.save(work / "dense64.npy", rows.dense.astype(np.float64))
    np.save(work / "dense12.npy", rows.dense[:, :12])
    bad = [
        ctr_step(work, "bad_unknown_model", rows, model="nope"),
        ctr_step(work, "bad_version", rows, version="latest"),
        ctr_step(work, "bad_missing_version", rows, version="9"),
        ctr_step(work, "bad_output", rows, outputs=["logits"]),
        ctr_step(work, "bad_routing_key", rows, parameters={"routing_key": 7}),
        ctr_step(work, "bad_timeout", rows, timeout_us=500),  # under the server's 1 ms reply margin
    ]
    dtype = ctr_step(work, "bad_dtype", rows)
    dtype["inputs"][0].update(datatype="FP64", npy=str(work / "dense64.npy"))
    shape = ctr_step(work, "bad_shape", rows)
    shape["inputs"][0]["npy"] = str(work / "dense12.npy")
    missing_input = ctr_step(work, "bad_missing_input", rows)
    missing_input["inputs"].pop()
    return [
        *bad,
        dtype,
        shape,
        missing_input,
        {"op": "raw_infer", "hex": "0a05ff", "key": "bad_unparseable"},
    ]


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """ctr in versions 1 and 2 (the same graph, published again) with a 50 % canary of 2, and relevance."""
    root = ctr_repository(tmp_path_factory.mktemp("kserve") / "repo")
    assert publish_version(root) == 2
    (root / "ctr" / "rollout.yaml").write_text(yaml.safe_dump({"stable": 1, "canary": {"version": 2, "percent": 50}}))
    (root / "relevance").symlink_to(MODELS / "relevance")
    return root


@pytest.fixture(scope="module")
def criteo() -> CriteoRows:
    return references.criteo_rows()


@pytest.fixture(scope="module", params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


@pytest.fixture(scope="module", params=FRONTENDS)
def answers(request, protocol, repository, criteo, tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """Each step's (step, answer) by key, from tritonclient's client of `protocol` against each front end
    (over HTTP the endpoint is the same; the front end's admission takes its calls)."""
    client_python()
    work = tmp_path_factory.mktemp(f"kserve-{request.param}-{protocol}")
    steps = plan(work, criteo)
    server = ServerThread(repository, frontend=request.param).start()
    assert server.server is not None
    url = server.target if protocol == "grpc" else f"127.0.0.1:{server.server.http_port}"
    try:
        recorded = run_plan(work, url, protocol, steps)
    finally:
        server.stop()
    return {step["key"]: (step, answer) for step, answer in zip(steps, recorded, strict=True)}


def shape(dims: list) -> list[int]:
    """Dims as ints: tritonclient's gRPC JSON gives int64s as strings, its HTTP client as numbers."""
    return [int(d) for d in dims]


def tensors(described: list[dict]) -> list[dict]:
    return [{**t, "shape": shape(t["shape"])} for t in described]


def value(answers: dict, key: str):
    _, answer = answers[key]
    assert answer["ok"], f"{key}: {answer}"
    return answer["value"]


def refusal(answers: dict, key: str) -> tuple[str, str]:
    _, answer = answers[key]
    assert not answer["ok"], f"{key} was answered: {answer}"
    return answer["status"], answer["message"]


def test_the_server_is_live_ready_and_says_what_it_is(answers):
    assert value(answers, "live") is True
    assert value(answers, "ready") is True
    metadata = value(answers, "server_metadata")
    assert metadata["name"] == "adrank" and metadata["version"] == __version__


def test_model_metadata_gives_v2_datatypes_shapes_and_versions(answers):
    ctr = value(answers, "ctr_metadata")
    assert ctr["name"] == "ctr" and ctr["versions"] == ["1", "2"] and ctr["platform"] == "onnxruntime_onnx"
    assert tensors(ctr["inputs"]) == [
        {"name": "dense", "datatype": "FP32", "shape": [-1, 13]},
        {"name": "sparse", "datatype": "INT64", "shape": [-1, 26]},
    ]
    assert tensors(ctr["outputs"]) == [{"name": "ctr", "datatype": "FP32", "shape": [-1]}]
    relevance = value(answers, "relevance_metadata")
    assert tensors(relevance["inputs"]) == [
        {"name": "query", "datatype": "BYTES", "shape": [1]},
        {"name": "ad_embedding", "datatype": "FP32", "shape": [-1, 384]},
    ]
    status, message = refusal(answers, "nope_metadata")
    assert status in ("StatusCode.NOT_FOUND", "404") and "'nope'" in message


def test_model_config_is_what_perf_analyzer_reads(answers):
    config = value(answers, "relevance_config")
    assert config["name"] == "relevance" and config["backend"] == "onnxruntime"
    assert config.get("max_batch_size", 0) == 0  # the candidate count is the -1 dim; adrank batches itself
    inputs = [{**t, "dims": shape(t["dims"])} for t in config["input"]]
    assert inputs == [
        {"name": "query", "data_type": "TYPE_STRING", "dims": [1]},
        {"name": "ad_embedding", "data_type": "TYPE_FP32", "dims": [-1, 384]},
    ]
    assert [{**t, "dims": shape(t["dims"])} for t in config["output"]] == [
        {"name": "relevance", "data_type": "TYPE_FP32", "dims": [-1]}
    ]


def test_model_readiness_follows_the_versions_loaded(answers):
    assert value(answers, "ctr_ready") is True
    assert value(answers, "ctr_2_ready") is True
    assert value(answers, "ctr_9_ready") is False
    assert value(answers, "nope_ready") is False


def test_infer_equals_onnxruntime_on_real_rows_at_several_sizes(answers, criteo):
    direct = references.ctr_direct()
    for n in SIZES:
        step, _ = answers[f"ctr_{n}"]
        response = value(answers, f"ctr_{n}")
        assert response["model_version"] == "1" and response["id"] == f"auction-{n}"
        assert tensors(response["outputs"]) == [{"name": "ctr", "datatype": "FP32", "shape": [n]}]
        scores = np.load(step["out"])["ctr"]
        rows = criteo.take(slice(step["first"], step["first"] + n))
        assert scores.dtype == np.float32 and scores.shape == (n,)
        assert np.max(np.abs(scores - direct(rows.dense, rows.sparse))) <= 1e-6


def test_a_bytes_query_is_context_broadcast_to_its_candidates(answers):
    step, _ = answers["relevance"]
    value(answers, "relevance")
    scores = np.load(step["out"])["relevance"]
    ads = np.load(step["inputs"][1]["npy"])
    assert np.max(np.abs(scores - references.relevance_direct()(step["query"], ads))) <= 1e-6


def test_routing_key_picks_the_canary_stickily_and_the_answer_names_the_version(answers, criteo):
    direct = references.ctr_direct()
    rows = criteo.take(slice(0, 20))
    versions = {}
    for key in KEYS:
        step, _ = answers[f"canary_{key}"]
        versions[key] = value(answers, f"canary_{key}")["model_version"]
        expected = "2" if core.routing_bucket(key) < 5000 else "1"
        assert versions[key] == expected, key
        assert np.max(np.abs(np.load(step["out"])["ctr"] - direct(rows.dense, rows.sparse))) <= 1e-6
    assert set(versions.values()) == {"1", "2"}
    assert value(answers, "priority")["model_name"] == "ctr"  # tritonclient's priority and timeout are taken


def count(stats: dict, *path: str) -> int:
    """A count from tritonclient's statistics: gRPC's JSON omits zeros and gives uint64s as strings."""
    for name in path[:-1]:
        stats = stats.get(name, {})
    return int(stats.get(path[-1], 0))


def test_statistics_count_what_each_version_did(answers, protocol):
    """Triton's statistics extension, through tritonclient's get_inference_statistics: the plan's OK ctr calls
    are 4 pinned to version 1 (1 + 7 + 100 + 333 candidates), 24 canary calls and one more of 20 each."""
    everything = value(answers, "stats_all")["model_stats"]
    relevance = str(references.latest_version("relevance"))
    assert {(m["name"], m["version"]) for m in everything} == {("ctr", "1"), ("ctr", "2"), ("relevance", relevance)}
    ctr = value(answers, "stats_ctr")["model_stats"]
    assert [m["version"] for m in ctr] == ["1", "2"]
    assert sum(count(m, "inference_stats", "success", "count") for m in ctr) == len(SIZES) + len(KEYS) + 1
    assert sum(count(m, "inference_count") for m in ctr) == sum(SIZES) + 20 * (len(KEYS) + 1)
    for m in ctr:
        ok = count(m, "inference_stats", "success", "count")
        assert ok > 0 and count(m, "execution_count") >= 1
        assert count(m, "inference_stats", "queue", "count") == ok
        assert count(m, "inference_stats", "compute_infer", "count") == ok
        assert count(m, "inference_stats", "success", "ns") >= count(m, "inference_stats", "compute_infer", "ns") > 0
    (two,) = value(answers, "stats_ctr_2")["model_stats"]
    assert two == ctr[1]  # no call between the two readings
    (scored,) = value(answers, "stats_relevance")["model_stats"]
    assert count(scored, "inference_stats", "success", "count") == 1
    assert count(scored, "inference_count") == references.relevance_meta()["golden"]["inputs"]["request_rows"][0]
    for key in ("stats_nope", "stats_ctr_9"):
        status, message = refusal(answers, key)
        assert status in ("StatusCode.NOT_FOUND", "404"), message
    assert "'nope'" in refusal(answers, "stats_nope")[1]


@pytest.mark.parametrize(
    "key, status, names",
    [
        ("bad_unknown_model", "NOT_FOUND", "model_name: model 'nope' is not served"),
        ("bad_version", "INVALID_ARGUMENT", "model_version: 'latest'"),
        ("bad_missing_version", "NOT_FOUND", "9"),
        ("bad_output", "INVALID_ARGUMENT", "outputs[0].name: 'logits'"),
        ("bad_routing_key", "INVALID_ARGUMENT", "parameters.routing_key: expected a string_param"),
        ("bad_dtype", "INVALID_ARGUMENT", "'dense' has dtype float64; model 'ctr' expects float32"),
        ("bad_shape", "INVALID_ARGUMENT", "'dense'"),
        ("bad_missing_input", "INVALID_ARGUMENT", "'sparse' is missing"),
        ("bad_unparseable", "INVALID_ARGUMENT", "not an inference.ModelInferRequest"),
        ("bad_timeout", "DEADLINE_EXCEEDED", "leaves no time to run a model and reply"),
    ],
)
def test_bad_inputs_get_ranks_status_and_a_message_naming_the_field(answers, protocol, key, status, names):
    got, message = refusal(answers, key)
    assert got == (f"StatusCode.{status}" if protocol == "grpc" else HTTP_STATUS[status]), message
    if key == "bad_unparseable" and protocol == "http":
        names = "request: not JSON"  # what the REST path parses is JSON
    assert names in message


# ---- REST with JSON tensors, as `curl` sends them ------------------------------------------------------


@pytest.fixture(scope="module")
def rest(repository):
    """A server whose largest request is 64 KiB, reached by plain HTTP from this process."""
    server = ServerThread(repository, transport=TransportOptions(max_message_bytes=64 << 10)).start()
    assert server.server is not None
    yield f"http://127.0.0.1:{server.server.http_port}"
    server.stop()


def http(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_json_tensors_are_scored_as_onnxruntime_scores_them(rest, criteo):
    rows = criteo.take(slice(100, 107))
    document = {
        "id": "curl-1",
        "inputs": [
            {"name": "dense", "datatype": "FP32", "shape": [7, 13], "data": rows.dense.tolist()},
            {"name": "sparse", "datatype": "INT64", "shape": [7, 26], "data": rows.sparse.ravel().tolist()},
        ],
        "parameters": {"routing_key": "user-3"},
    }
    status, body = http(f"{rest}/v2/models/ctr/versions/1/infer", json.dumps(document).encode())
    assert status == 200, body
    answer = json.loads(body)
    assert answer["model_name"] == "ctr" and answer["model_version"] == "1" and answer["id"] == "curl-1"
    (output,) = answer["outputs"]
    assert output["name"] == "ctr" and output["shape"] == [7]
    scores = np.array(output["data"], dtype=np.float32)
    assert np.max(np.abs(scores - references.ctr_direct()(rows.dense, rows.sparse))) <= 1e-6
    status, body = http(f"{rest}/v2")
    assert status == 200 and json.loads(body) == {
        "name": "adrank",
        "version": __version__,
        "extensions": ["binary_tensor_data", "model_repository", "statistics"],
    }
    assert http(f"{rest}/v2/health/live")[0] == 200 and http(f"{rest}/v2/health/ready")[0] == 200
    assert http(f"{rest}/v2/models/ctr/ready")[0] == 200 and http(f"{rest}/v2/models/ctr/versions/9/ready")[0] == 400


@pytest.mark.parametrize(
    "path, body, status, names",
    [
        (
            "/v2/models/ctr/infer",
            b'{"inputs": [{"name": "dense", "datatype": "FP32", "shape": [2, 13], "data": [1, 2]}]}',
            400,
            "inputs[0].data: 2 values for shape [2, 13]",
        ),
        (
            "/v2/models/ctr/infer",
            b'{"inputs": [{"name": "dense", "datatype": "FP32", "shape": [1, 1], "data": ["x"]}]}',
            400,
            "inputs[0].data: not FP32 values",
        ),
        ("/v2/models/ctr/infer", b'{"inputs": []}', 400, "inputs: expected a non-empty list"),
        ("/v2/models/ctr/infer", b"[1, 2", 400, "request: not JSON"),
        (
            "/v2/models/nope/infer",
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}',
            404,
            "model_name: model 'nope' is not served",
        ),
        ("/v2/models/ctr/infer", b"{" + b" " * (70 << 10) + b"}", 413, "at most 65536"),
        ("/v2/models/nope", None, 404, "'nope'"),
        (
            "/v2/models/ctr/infer",
            b'{"parameters": {"priority": 99999999999999999999}, "inputs": [{"name": "dense", "datatype": "FP32",'
            b' "shape": [1, 1], "data": [1]}]}',
            400,
            "parameters.priority: 99999999999999999999 is outside int64",
        ),
        (
            "/v2/models/ctr/infer",
            b'{"inputs": [{"name": "dense", "datatype": "FP32", "shape": [99999999999999999999], "data": [1]}]}',
            400,
            "inputs[0].shape: expected a list of int64 integers",
        ),
    ],
)
def test_bad_rest_calls_get_the_contracts_status_and_name_the_field(rest, path, body, status, names):
    got, reply = http(rest + path, body)
    assert got == status, reply
    assert names in reply.decode()


def test_rest_statistics_are_tritons_json_with_numbers(rest):
    """Every field present and every count a JSON number, as Triton's HTTP API answers (curl, scripts)."""
    status, body = http(f"{rest}/v2/models/ctr/versions/1/stats")
    assert status == 200, body
    (stats,) = json.loads(body)["model_stats"]
    assert (stats["name"], stats["version"]) == ("ctr", "1")
    for field in ("last_inference", "inference_count", "execution_count"):
        assert isinstance(stats[field], int), field
    durations = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit")
    for name in durations:
        assert set(stats["inference_stats"][name]) == {"count", "ns"}
        assert all(isinstance(v, int) for v in stats["inference_stats"][name].values())
    assert stats["batch_stats"] == [] and stats["memory_usage"] == []
    status, body = http(f"{rest}/v2/models/stats")
    assert status == 200 and {m["name"] for m in json.loads(body)["model_stats"]} == {"ctr", "relevance"}
    status, body = http(f"{rest}/v2/models/ctr/versions/latest/stats")
    assert status == 400 and "model_version: 'latest'" in json.loads(body)["error"]


def call(url: str, method: str, body: bytes | None = None) -> tuple[int, str, str | None, bytes]:
    """Any method: the status, Content-Type, Allow header and body."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.headers["Content-Type"], reply.headers["Allow"], reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.headers["Allow"], error.read()


@pytest.mark.parametrize(
    "method, path, status, allow, names",
    [
        ("GET", "/v2/models/stats/nope", 404, None, "no such path: /v2/models/stats/nope"),
        ("GET", "/v2/nope", 404, None, "no such path: /v2/nope"),
        ("POST", "/v2/health/nope", 404, None, "no such path: /v2/health/nope"),
        ("DELETE", "/v2/nope", 404, None, "no such path"),
        ("GET", "/v2/models/ctr/infer", 405, "POST", "GET /v2/models/ctr/infer: this path takes POST"),
        ("GET", "/v2/repository/index", 405, "POST", "this path takes POST"),
        ("POST", "/v2/models/ctr", 405, "GET", "POST /v2/models/ctr: this path takes GET"),
        ("POST", "/v2/health/ready", 405, "GET", "this path takes GET"),
        ("PUT", "/v2/models/ctr/versions/1/infer", 405, "POST", "PUT /v2/models/ctr/versions/1/infer"),
        ("DELETE", "/v2", 405, "GET", "DELETE /v2: this path takes GET"),
    ],
)
def test_every_v2_error_is_json_and_a_wrong_method_is_405_with_allow(rest, method, path, status, allow, names):
    """tritonclient parses every /v2 answer as JSON (KServe v2 REST: `{"error": ...}`)."""
    got, content_type, allowed, body = call(rest + path, method, b"{}" if method in ("POST", "PUT") else None)
    assert (got, allowed) == (status, allow), body
    assert content_type == "application/json"
    assert names in json.loads(body)["error"]


# ---- the repository extension, behind the admin token --------------------------------------------------

TOKEN = "kserve-test-admin-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def repository_plan(work: Path, criteo: CriteoRows) -> list[dict]:
    rows = criteo.take(slice(0, 5))
    return [
        {"op": "repository_index", "key": "index_without_token"},
        {"op": "repository_index", "key": "index", "headers": AUTH},
        {"op": "unload_model", "model": "ctr", "key": "unload_without_token"},
        {"op": "unload_model", "model": "ctr", "key": "unload", "headers": AUTH},
        {"op": "model_ready", "model": "ctr", "key": "ready_after_unload"},
        ctr_step(work, "infer_after_unload", rows, version="1"),
        {"op": "repository_index", "key": "index_after_unload", "headers": AUTH},
        {"op": "model_ready", "model": "relevance", "key": "relevance_ready_after_unload"},
        {"op": "load_model", "model": "ctr", "key": "load", "headers": AUTH},
        {"op": "model_ready", "model": "ctr", "key": "ready_after_load"},
        ctr_step(work, "infer_after_load", rows, version="1"),
        {"op": "load_model", "model": "nope", "key": "load_unknown", "headers": AUTH},
    ]


@pytest.fixture(scope="module", params=FRONTENDS)
def repository_answers(request, protocol, repository, criteo, tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    client_python()
    work = tmp_path_factory.mktemp(f"kserve-repository-{request.param}-{protocol}")
    steps = repository_plan(work, criteo)
    server = ServerThread(repository, frontend=request.param, admin_port=0, admin_token=TOKEN).start()
    assert server.server is not None
    url = server.target if protocol == "grpc" else f"127.0.0.1:{server.server.http_port}"
    try:
        recorded = run_plan(work, url, protocol, steps)
        readiness = server.server.models.ready()
    finally:
        server.stop()
    answers = {step["key"]: (step, answer) for step, answer in zip(steps, recorded, strict=True)}
    answers["server_ready_at_the_end"] = ({}, {"ok": True, "value": readiness})
    return answers


def test_the_repository_extension_needs_the_admin_token(repository_answers, answers, protocol):
    for key in ("index_without_token", "unload_without_token"):
        status, message = refusal(repository_answers, key)
        assert status in ("StatusCode.UNAUTHENTICATED", "401") and "Bearer" in message, key
    # A server started without an admin token does not serve the extension, and says why.
    status, message = refusal(answers, "repository_disabled")
    assert status in ("StatusCode.PERMISSION_DENIED", "403") and "admin token" in message


def test_unload_holds_a_model_out_until_load_serves_it_again(repository_answers, criteo):
    def index(key: str) -> set[tuple[str, str, str]]:
        return {(m["name"], m.get("version", ""), m.get("state", "")) for m in value(repository_answers, key)}

    relevance = str(references.latest_version("relevance"))
    assert {("ctr", "1", "READY"), ("ctr", "2", "READY"), ("relevance", relevance, "READY")} <= index("index")
    value(repository_answers, "unload")
    assert value(repository_answers, "ready_after_unload") is False
    status, message = refusal(repository_answers, "infer_after_unload")
    assert status in ("StatusCode.NOT_FOUND", "404") and "'ctr'" in message
    assert ("ctr", "", "UNAVAILABLE") in index("index_after_unload")
    assert not any(name == "ctr" and state == "READY" for name, _, state in index("index_after_unload"))
    assert value(repository_answers, "relevance_ready_after_unload") is True  # the others serve on
    value(repository_answers, "load")
    assert value(repository_answers, "ready_after_load") is True
    step, _ = repository_answers["infer_after_load"]
    rows = criteo.take(slice(0, 5))
    scores = np.load(step["out"])["ctr"]
    assert np.max(np.abs(scores - references.ctr_direct()(rows.dense, rows.sparse))) <= 1e-6
    status, message = refusal(repository_answers, "load_unknown")
    assert status in ("StatusCode.NOT_FOUND", "404") and "'nope'" in message
    assert value(repository_answers, "server_ready_at_the_end") is True
