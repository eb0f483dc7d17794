"""The GPU paths against the CPU: ONNX Runtime on its CUDA and TensorRT execution providers, and the
native TensorRT backend, serve the bundled models through the core (pinned pooled buffers, a stream per
instance) with the scores of the CPU within the tolerance each path states: 1e-4 in fp32 (TF32 off),
1e-2 in fp16. Each test needs a CUDA device, and the packages of adrank's gpu extra for its path; where
they are missing it skips, saying which."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

import adrank._core as core
from adrank.backends import tensorrt_engine
from adrank.backends.base import GPU_FP32_ATOL, GPU_REDUCED_ATOL
from adrank.backends.graph import ModelGraph, onnx_graph_tensors
from adrank.lifecycle.manager import ManagerOptions, ModelManager, VersionState
from adrank.repository.layout import ModelRepository
from adrank.repository.meta import golden_outputs, golden_requests, load_meta
from adrank.servable import Servable
from served import copy_model

PROBE = core.cuda_probe()
GPU = pytest.mark.skipif(not PROBE["available"], reason=f"needs a CUDA device: {PROBE['reason']}")
ORT_GPU = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason=f"needs onnxruntime-gpu (pip install 'adrank[gpu]'); this build has {ort.get_available_providers()}",
)
_TRT_REASON = tensorrt_engine._import_tensorrt()[1]
TENSORRT = pytest.mark.skipif(_TRT_REASON is not None, reason=f"needs TensorRT: {_TRT_REASON}")

CPU_EP = ["CPUExecutionProvider"]
CUDA_EP = {"onnxruntime": {"execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}}
TRT_EP = {"onnxruntime": {"execution_providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", *CPU_EP]}}

PATHS = [
    pytest.param("ctr", CUDA_EP, GPU_FP32_ATOL, marks=[GPU, ORT_GPU], id="ctr-cuda-ep"),
    pytest.param("relevance", CUDA_EP, GPU_FP32_ATOL, marks=[GPU, ORT_GPU], id="relevance-cuda-ep"),
    pytest.param("ctr", TRT_EP, GPU_FP32_ATOL, marks=[GPU, ORT_GPU, TENSORRT], id="ctr-tensorrt-ep"),
    pytest.param("ctr", {"backend": "tensorrt"}, GPU_FP32_ATOL, marks=[GPU, TENSORRT], id="ctr-tensorrt"),
    pytest.param(
        "ctr",
        {"backend": "tensorrt", "tensorrt": {"precision": "fp16"}},
        GPU_REDUCED_ATOL,
        marks=[GPU, TENSORRT],
        id="ctr-tensorrt-fp16",
    ),
]


@pytest.fixture
def gpu_pool() -> Iterator[core.ThreadPool]:
    """The core as a GPU server runs it: its memory pool pins with cudaHostAlloc."""
    options = core.MemoryPoolOptions()
    options.use_cuda = True
    pool = core.ThreadPool(2, core.MemoryPool(options))
    yield pool
    pool.shutdown()


def served_scores(servable: Servable, requests: list) -> np.ndarray:
    return np.concatenate(servable.score(requests, timeout_s=60))


@pytest.mark.parametrize(("model", "overrides", "atol"), PATHS)
def test_golden_requests_score_as_on_the_cpu(tmp_path, gpu_pool, model, overrides, atol):
    config, version_dir = copy_model(tmp_path, model, **overrides)
    servable = Servable.load(gpu_pool, config, version_dir, 1)
    assert gpu_pool.memory_pool.stats()["allocator"] == "cuda_host"
    assert [s.parity_atol for s in servable.sessions] == [atol]
    servable.warm_up()
    golden = load_meta(version_dir / "meta.json").golden
    got = served_scores(servable, golden_requests(config, golden.inputs))
    expected = golden_outputs(config, golden.outputs)
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
    servable.unload(gpu_pool)


@pytest.mark.parametrize(("model", "overrides", "atol"), [p for p in PATHS if p.values[0] == "ctr"])
def test_every_batch_size_scores_as_on_the_cpu(tmp_path, gpu_pool, model, overrides, atol):
    """Random Criteo-shaped rows at sizes inside and at the edges of every profile bucket."""
    config, version_dir = copy_model(tmp_path, model, **overrides)
    servable = Servable.load(gpu_pool, config, version_dir, 1)
    cpu = ort.InferenceSession(str(version_dir / "model.onnx"), providers=CPU_EP)
    rng = np.random.default_rng(11)
    for rows in (1, 63, 64, 65, 200, 256, 257, 511, 512, 2048):
        dense = rng.integers(0, 500, size=(rows, 13)).astype(np.float32)
        sparse = rng.integers(-(2**62), 2**62, size=(rows, 26), dtype=np.int64)
        got = servable.model.submit({"dense": dense, "sparse": sparse}).wait(timeout_s=60).outputs["ctr"]
        expected = cpu.run(["ctr"], {"dense": dense, "sparse": sparse})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=f"{rows} rows")
        direct = servable.sessions[0].run_arrays({"dense": dense, "sparse": sparse})["ctr"]
        np.testing.assert_allclose(direct, expected, rtol=0, atol=atol, err_msg=f"run_arrays, {rows} rows")
    servable.unload(gpu_pool)


@pytest.mark.parametrize(("model", "overrides", "atol"), PATHS)
def test_the_lifecycle_loads_a_gpu_version_through_its_parity_check(tmp_path, gpu_pool, model, overrides, atol):
    copy_model(tmp_path, model, **overrides)
    models = ModelManager(gpu_pool, ModelRepository(tmp_path), ManagerOptions(poll_interval_s=0))
    models.load_all()
    version = models.describe()[0]["versions"][0]
    assert version["state"] == VersionState.AVAILABLE.value, version["reason"]
    models.unload_all()


@GPU
@TENSORRT
def test_the_engine_is_built_once_and_cached_by_gpu_and_tensorrt_version(tmp_path, gpu_pool):
    config, version_dir = copy_model(tmp_path, "ctr", backend="tensorrt")
    path = version_dir / "model.onnx"
    graph = ModelGraph(path, config, *onnx_graph_tensors(path))
    first = tensorrt_engine.load_engine(graph)
    assert first.source == "built"
    trt = tensorrt_engine.tensorrt_module()
    name = first.path.name
    assert first.path.parent == version_dir / "tensorrt"
    assert name.startswith(tensorrt_engine._slug(core.cuda_device_name(0)))
    assert f"trt{trt.__version__}-fp32-" in name
    again = tensorrt_engine.load_engine(graph)
    assert (again.source, again.path) == ("cache", first.path)
    # A damaged file is rebuilt, not served.
    first.path.write_bytes(b"not an engine")
    assert tensorrt_engine.load_engine(graph).source == "built"


@GPU
def test_streams_and_device_buffers_round_trip_pinned_rows():
    stream = core.CudaStream(0)
    buffer = core.DeviceBuffer(0, 4 * 4096)
    rows = np.arange(4096, dtype=np.float32)
    back = np.zeros_like(rows)
    stream.copy_to_device(buffer, rows)
    stream.copy_to_host(back, buffer)
    stream.synchronize()
    np.testing.assert_array_equal(back, rows)
    with pytest.raises(core.CoreError, match="do not fit"):
        stream.copy_to_device(buffer, rows, offset=8)
