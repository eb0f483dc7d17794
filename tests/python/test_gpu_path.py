"""The GPU path's decisions, checked everywhere (no GPU needed): which execution providers a session gets
and why, the TensorRT optimisation profiles and cache key a config leads to, what the graph reader sees,
the config's `backend`, and that a GPU-only model on a machine without a GPU fails its load clearly
while the rest serves. What only a GPU can show is in test_gpu_parity.py."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import tomllib
from references import version_dir

import adrank._core as core
from adrank.backends import BackendError, tensorrt_engine
from adrank.backends import onnxruntime as ort_backend
from adrank.backends.graph import ModelGraph, onnx_graph_tensors
from adrank.lifecycle.manager import ManagerOptions, ModelManager, VersionState
from adrank.repository.config import ConfigError, TensorRtConfig, load_model_config
from adrank.repository.layout import ModelRepository
from adrank.servable import Servable
from served import MODELS, copy_model

PROBE = core.cuda_probe()
NO_GPU = pytest.mark.skipif(PROBE["available"], reason="checks the behaviour of a machine without a CUDA device")


def graph_of(name: str) -> ModelGraph:
    config = load_model_config(MODELS / name / "config.yaml")
    path = version_dir(name) / "model.onnx"
    return ModelGraph(path, config, *onnx_graph_tensors(path))


@pytest.mark.parametrize("name", ["ctr", "relevance"])
def test_the_onnx_reader_sees_the_graph_as_onnx_runtime_does(name):
    path = version_dir(name) / "model.onnx"
    inputs, outputs = onnx_graph_tensors(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_view = [ort_backend._graph_tensor(n) for n in session.get_inputs()]
    assert inputs == ort_view
    assert outputs == [ort_backend._graph_tensor(n) for n in session.get_outputs()]


def test_each_input_knows_what_its_dims_count():
    ctr = graph_of("ctr").dims
    assert ctr["dense"].shape(rows=7, requests=2, tokens=5) == (7, 13)
    assert ctr["sparse"].shape(rows=7, requests=2, tokens=5) == (7, 26)
    relevance = graph_of("relevance").dims
    assert relevance["ad_embedding"].shape(7, 2, 5) == (7, 384)
    assert relevance["row_request_index"].shape(7, 2, 5) == (7,)
    assert relevance["query_input_ids"].shape(7, 2, 5) == (2, 5)
    assert relevance["query_attention_mask"].shape(7, 2, 5) == (2, 5)
    # Device buffers hold the largest batch: 2048 rows of 384 floats; 2048 requests of 32 tokens.
    config = load_model_config(MODELS / "relevance" / "config.yaml")
    assert relevance["ad_embedding"].max_bytes(config) == 2048 * 384 * 4
    assert relevance["query_input_ids"].max_bytes(config) == 2048 * 32 * 8


def test_profiles_cut_the_rows_at_the_preferred_sizes(tmp_path):
    graph = graph_of("ctr")  # preferred 64, 256, 512 = max_batch_rows
    profiles = tensorrt_engine.optimization_profiles(graph.config, graph.dims)
    assert [(p.low, p.high) for p in profiles] == [(1, 64), (65, 256), (257, 512)]
    assert profiles[1].shapes["dense"] == ((65, 13), (256, 13), (256, 13))
    assert profiles[2].shapes["sparse"] == ((257, 26), (512, 26), (512, 26))

    # A largest preferred size below max_batch_rows gets a bucket above it; none at all gets one bucket.
    config, _ = copy_model(tmp_path / "a", "ctr", batching={"max_batch_rows": 1000, "preferred_batch_rows": [100]})
    assert tensorrt_engine.row_buckets(config) == [(1, 100), (101, 1000)]
    config, _ = copy_model(tmp_path / "b", "ctr", batching={"max_batch_rows": 300})
    assert tensorrt_engine.row_buckets(config) == [(1, 300)]


def test_text_profiles_bound_requests_and_tokens():
    graph = graph_of("relevance")  # one request per batch, queries of at most 32 tokens
    profiles = tensorrt_engine.optimization_profiles(graph.config, graph.dims)
    assert [(p.low, p.high) for p in profiles] == [(1, 64), (65, 256), (257, 1024), (1025, 2048)]
    assert profiles[3].shapes["query_input_ids"] == ((1, 1), (1, 32), (1, 32))
    assert profiles[3].shapes["row_request_index"] == ((1025,), (2048,), (2048,))


def test_tensorrt_provider_options_carry_every_profile_and_the_precision(tmp_path):
    config, version_dir = copy_model(tmp_path, "ctr", tensorrt={"precision": "fp16", "cache": False})
    graph = ModelGraph(version_dir / "model.onnx", config, *onnx_graph_tensors(version_dir / "model.onnx"))
    options = tensorrt_engine.execution_provider_options(version_dir / "model.onnx", config, graph.dims)
    assert options["trt_fp16_enable"] is True
    assert (
        options["trt_profile_min_shapes"]
        == "dense:1x13,sparse:1x26,dense:65x13,sparse:65x26,dense:257x13,sparse:257x26"
    )
    assert (
        options["trt_profile_max_shapes"]
        == "dense:64x13,sparse:64x26,dense:256x13,sparse:256x26,dense:512x13,sparse:512x26"
    )
    assert options["trt_max_workspace_size"] == 1024 << 20
    assert "trt_engine_cache_enable" not in options  # cache: false


def test_the_engine_cache_key_changes_with_what_the_build_depends_on():
    graph = graph_of("ctr")
    profiles = tensorrt_engine.optimization_profiles(graph.config, graph.dims)
    fp32 = TensorRtConfig()
    base = tensorrt_engine.build_digest("a" * 64, fp32, profiles)
    assert base == tensorrt_engine.build_digest("a" * 64, fp32, profiles)
    assert base == tensorrt_engine.build_digest("a" * 64, TensorRtConfig(cache=False), profiles)  # not a build input
    assert base != tensorrt_engine.build_digest("b" * 64, fp32, profiles)
    assert base != tensorrt_engine.build_digest("a" * 64, TensorRtConfig(precision="fp16"), profiles)
    assert base != tensorrt_engine.build_digest("a" * 64, TensorRtConfig(workspace_mb=512), profiles)
    assert base != tensorrt_engine.build_digest("a" * 64, fp32, profiles[:2])
    name = tensorrt_engine.engine_file_name("NVIDIA-H100-80GB-HBM3-sm90-trt10.16.1.11", fp32, base)
    assert name == f"NVIDIA-H100-80GB-HBM3-sm90-trt10.16.1.11-fp32-{base[:16]}.engine"


def test_the_config_names_its_backend(tmp_path):
    config, _ = copy_model(tmp_path / "a", "ctr", backend="tensorrt", tensorrt={"precision": "fp16"})
    assert (config.backend, config.tensorrt.precision) == ("tensorrt", "fp16")
    legacy = (tmp_path / "a" / "ctr" / "config.yaml").read_text().replace("backend: tensorrt", "platform: onnxruntime")
    (tmp_path / "a" / "ctr" / "config.yaml").write_text(legacy)
    assert load_model_config(tmp_path / "a" / "ctr" / "config.yaml").backend == "onnxruntime"  # the older spelling
    for overrides, field in [
        ({"backend": "tvm"}, "backend"),
        ({"tensorrt": {"precision": "int4"}}, "tensorrt.precision"),
        ({"device_id": -1}, "device_id"),
    ]:
        with pytest.raises(ConfigError, match=field):
            copy_model(tmp_path / field, "ctr", **overrides)


def test_providers_a_gpu_build_offers_are_used_only_where_they_can_run(monkeypatch):
    """The onnxruntime-gpu wheel lists its CUDA and TensorRT providers on any machine; a CPU-only one must
    still get the CPU provider by default, and a config that names a device provider a clear refusal."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ort_backend.PREFERRED_PROVIDERS))
    monkeypatch.setattr(ort_backend, "cuda_unavailable_reason", lambda: "cudaErrorNoDevice (100)")
    plan = ort_backend.plan_providers(None)
    assert plan.names == ["CPUExecutionProvider"]
    assert not plan.on_device
    assert plan.skipped["CUDAExecutionProvider"] == "no CUDA device (cudaErrorNoDevice (100))"
    with pytest.raises(BackendError, match="CUDAExecutionProvider cannot run here: no CUDA device"):
        ort_backend.plan_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])

    # With a device but without TensorRT's libraries, the default skips only the TensorRT provider.
    monkeypatch.setattr(ort_backend, "cuda_unavailable_reason", lambda: None)
    monkeypatch.setattr(tensorrt_engine, "unavailable_reason", lambda: "libnvinfer.so.10 does not load")
    plan = ort_backend.plan_providers(None)
    assert plan.names == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert plan.on_device
    assert plan.skipped == {"TensorrtExecutionProvider": "libnvinfer.so.10 does not load"}


def test_a_provider_missing_from_the_build_is_refused():
    available = ort.get_available_providers()
    missing = next(p for p in ort_backend.PREFERRED_PROVIDERS if p not in available) if len(available) < 3 else None
    if missing is None:
        pytest.skip("this ONNX Runtime build has every provider adrank uses")
    with pytest.raises(BackendError, match=f"{missing}'] not in this build"):
        ort_backend.plan_providers([missing])


@NO_GPU
def test_without_a_device_the_cuda_objects_refuse_saying_why():
    assert PROBE["device_count"] == 0 and PROBE["reason"]
    for make in (lambda: core.CudaStream(0), lambda: core.DeviceBuffer(0, 1024)):
        with pytest.raises(core.CoreError) as error:
            make()
        assert error.value.code == "UNAVAILABLE"
        assert PROBE["reason"] in str(error.value)


@NO_GPU
def test_a_tensorrt_model_fails_its_load_saying_why_and_the_others_serve(tmp_path, pool):
    copy_model(tmp_path, "ctr", backend="tensorrt")
    _, relevance = copy_model(tmp_path, "relevance")
    models = ModelManager(pool, ModelRepository(tmp_path), ManagerOptions(poll_interval_s=0))
    models.reconcile()
    described = {m["model"]: m["versions"][0] for m in models.describe()}
    assert described["ctr"]["state"] == VersionState.FAILED.value
    assert "backend tensorrt needs a CUDA device" in described["ctr"]["reason"]
    assert described["relevance"]["state"] == VersionState.AVAILABLE.value
    assert models.route("relevance").servable.version == int(relevance.name)
    # At start-up a model with nothing to serve leaves the others serving and the server not ready.
    assert [s.name for s in models.load_all()] == ["relevance"]
    assert dict(models.readiness()) == {"ctr": False, "relevance": True}
    models.unload_all()


@NO_GPU
def test_a_cpu_session_keeps_the_golden_tolerance_unless_the_config_sets_one(tmp_path, pool):
    config, version_dir = copy_model(tmp_path / "a", "ctr")
    servable = Servable.load(pool, config, version_dir, 1)
    assert [s.parity_atol for s in servable.sessions] == [None]
    assert servable.parity_atol(1e-6) == 1e-6
    servable.unload(pool)
    config, version_dir = copy_model(tmp_path / "b", "ctr", parity_atol=3e-3)
    servable = Servable.load(pool, config, version_dir, 1)
    assert servable.parity_atol(1e-6) == 3e-3
    servable.unload(pool)


def test_the_pool_pins_with_cuda_exactly_where_a_device_is():
    options = core.MemoryPoolOptions()
    options.use_cuda = True
    pool = core.MemoryPool(options)
    assert (pool.stats()["allocator"] == "cuda_host") == bool(PROBE["available"])


def test_the_gpu_extra_matches_what_the_code_loads():
    """onnxruntime-gpu replaces the pinned CPU build in place, so it must be the same release; and the
    TensorRT it brings must be the major version ONNX Runtime's TensorRT provider dlopens."""
    project = tomllib.loads((MODELS.parent / "pyproject.toml").read_text())["project"]
    pins = dict(r.split("==") for r in project["dependencies"] + project["optional-dependencies"]["gpu"] if "==" in r)
    assert pins["onnxruntime-gpu[cuda,cudnn]"] == pins["onnxruntime"]
    assert int(pins["tensorrt-cu13"].split(".")[0]) == tensorrt_engine.ORT_TENSORRT_MAJOR
