"""OnnxRuntimeBackend: runs `model.onnx` in ONNX Runtime, fed straight from the core's pooled buffers.

Execution providers: the config's list, or, by default, TensorRT, CUDA, CPU in that order as this
process can use them. A device provider is only chosen by default when the ONNX Runtime build has it
(the `onnxruntime-gpu` wheel), a CUDA device is present (cpp/cuda_runtime.h), and for TensorRT when
its Python package loads (backends/tensorrt.py). A provider the config names that cannot run here fails
the load with a BackendError saying why: ONNX Runtime itself would fall back to the CPU with only a
log line, and a GPU model silently serving from the CPU is an outage in waiting.

Fed from the core's pooled buffers, no extra copies of the inputs:
- CPU execution provider: `session.run` with the batch's numpy views. ONNX Runtime's Python binding
  wraps a contiguous numeric array's memory as the input tensor (it does not copy it), and the scores,
  4 bytes a row, are copied into the pooled output buffer. Measured on this machine (ctr, 1 thread):
  an IOBinding bound to the same addresses costs ~10 us more per call at 1-8 rows (its per-call Python
  binding work) and gains nothing at 64-1024 rows, so the CPU path does not use one.
- CUDA and TensorRT execution providers: each instance owns a CUDA stream, given to the provider as its
  `user_compute_stream`, and device buffers for every input and output (backends/device_io.py). A batch
  is copied from its page-locked pooled buffers to the device on that stream, bound by device address
  in an IOBinding, run, and its scores copied back into the pooled output buffer on the same stream:
  no allocation, no synchronisation with other instances.
Text inputs arrive as UTF-8 byte rows, one per request (tokenizer.py); the session tokenizes the batch's
R texts in one call, padded to the longest.

A model with a context tower (config.yaml's `context_tower`, backends/context_tower.py): the backend made for a
version cuts its graph once and makes the version's cache (cpp/context_cache.h); each instance opens the tower and
the head as sessions of their own beside the whole graph's, and `run` goes through them (plain runs on every
provider: TensorRT's options describe the whole graph, so the parts run on the providers after it). The whole graph
still serves `run_arrays` (`adrank embed` reads its query_embedding output), at the cost of a second copy of the
tower's weights per instance (23 MB for relevance).

Numerics: on the CUDA provider TF32 is off unless `onnxruntime.use_tf32`, and TensorRT builds fp32
unless `tensorrt.precision: fp16`; `parity_atol` states how far such a session's scores may be from the
CPU's golden ones (1e-4 in fp32, 1e-2 with TF32 or fp16).

Thread-safety: one session per model instance; `run` is called by one core worker at a time per
instance and releases the GIL while ONNX Runtime computes (and while the stream is awaited).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import adrank._core as core
from adrank.backends import tensorrt_engine
from adrank.backends.base import GPU_FP32_ATOL, GPU_REDUCED_ATOL, MODEL_FILE, Backend, BackendError, Session
from adrank.backends.context_tower import ContextTower, TowerSplit, split_graph
from adrank.backends.device_io import DeviceIO, cuda_unavailable_reason
from adrank.backends.graph import GraphTensor, ModelGraph, onnx_graph_tensors
from adrank.log_format import log_fields
from adrank.repository.config import ModelConfig

log = logging.getLogger("adrank.backends.onnxruntime")

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
PREFERRED_PROVIDERS = (TENSORRT_EP, CUDA_EP, CPU_EP)
DEVICE_PROVIDERS = (TENSORRT_EP, CUDA_EP)
_OPTIMIZATION = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# ONNX Runtime's type strings for the dtypes the core batches.
_ORT_TYPES = {
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
}


@dataclass(frozen=True)
class ProviderPlan:
    """The execution providers a session is created with, and why the device ones were left out."""

    names: list[str]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def on_device(self) -> bool:
        return self.names[0] in DEVICE_PROVIDERS


def _device_provider_problem(name: str) -> str | None:
    """Why a device provider cannot run in this process, or None when it can."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        return f"no CUDA device ({reason})"
    if name == TENSORRT_EP:
        return tensorrt_engine.unavailable_reason()
    return None


def plan_providers(requested: list[str] | None) -> ProviderPlan:
    available = ort.get_available_providers()
    if requested is None:
        names: list[str] = []
        skipped: dict[str, str] = {}
        for name in PREFERRED_PROVIDERS:
            if name not in available:
                continue
            problem = _device_provider_problem(name) if name in DEVICE_PROVIDERS else None
            if problem is None:
                names.append(name)
            else:
                skipped[name] = problem
        return ProviderPlan(names, skipped)
    missing = [p for p in requested if p not in available]
    if missing:
        raise BackendError(f"onnxruntime.execution_providers: {missing} not in this build ({available})")
    for name in requested:
        problem = _device_provider_problem(name) if name in DEVICE_PROVIDERS else None
        if problem is not None:
            raise BackendError(f"onnxruntime.execution_providers: {name} cannot run here: {problem}")
    return ProviderPlan(list(requested))


@cache
def _preload_cuda_libraries() -> None:
    """Makes the CUDA and cuDNN libraries of the `nvidia-*` wheels (the `gpu` extra) findable by the CUDA
    provider, once per process; a system-wide CUDA needs nothing."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload(cuda=True, cudnn=True)


@cache
def _check_one_build() -> None:
    """Both ONNX Runtime builds install into the `onnxruntime` package; with both, which one a process
    gets depends on the order pip wrote them. Said once per process, with the fix."""
    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            installed.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    if len(installed) > 1:
        log.warning(
            "%s are both installed into one `onnxruntime` package (this process has the %s build): "
            "`make install-gpu` (README: GPU serving) keeps the GPU build alone",
            " and ".join(installed),
            "GPU" if CUDA_EP in ort.get_available_providers() else "CPU",
        )


def _graph_tensor(node: Any) -> GraphTensor:
    shape = tuple(dim if isinstance(dim, int) else None for dim in node.shape)
    return GraphTensor(node.name, _ORT_TYPES.get(node.type), shape)


@dataclass(frozen=True)
class VersionTower:
    """What a version's instances share when its config declares a context tower: the cut graph and the cache."""

    split: TowerSplit
    cache: core.ContextCache


class OnnxRuntimeSession(Session):
    def __init__(self, path: Path, config: ModelConfig, plan: ProviderPlan, tower: VersionTower | None = None) -> None:
        self._config = config
        self._stream = core.CudaStream(config.device_id) if plan.on_device else None
        if plan.on_device:
            _preload_cuda_libraries()
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.onnxruntime.intra_op_num_threads
        options.inter_op_num_threads = config.onnxruntime.inter_op_num_threads
        options.graph_optimization_level = _OPTIMIZATION[config.onnxruntime.graph_optimization_level]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # The TensorRT provider's profiles need the graph's inputs before the session exists: read them from the
        # file then, and check the graph once, from that reading (it agrees with ONNX Runtime's).
        graph = ModelGraph(path, config, *onnx_graph_tensors(path)) if TENSORRT_EP in plan.names else None
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=self._providers(path, config, plan, graph)
            )
        except Exception as error:  # ORT raises its own exception types for bad files
            raise BackendError(f"{path}: ONNX Runtime cannot load it: {error}") from error
        self.providers = self._session.get_providers()
        if self.providers[0] != plan.names[0]:
            # ONNX Runtime logs a failed provider and goes on without it; this server does not.
            raise BackendError(
                f"{path}: ONNX Runtime could not start {plan.names[0]} (it fell back to {self.providers}); "
                "its log above says why (missing CUDA, cuDNN or TensorRT libraries: install adrank's gpu extra)"
            )
        self.graph = graph or ModelGraph(
            path,
            config,
            [_graph_tensor(n) for n in self._session.get_inputs()],
            [_graph_tensor(n) for n in self._session.get_outputs()],
        )
        io_binding = config.onnxruntime.io_binding
        self._bind = plan.on_device if io_binding is None else io_binding
        self._device = None
        if plan.on_device and self._bind:
            rows = config.batching.max_batch_rows
            output_bytes = {t.name: _row_bytes(t.dtype, t.shape) * rows for t in config.outputs}
            self._device = DeviceIO(self.graph, self._device_stream, output_bytes)
        self._tower = self._context_tower(tower, options, plan) if tower is not None else None

    def _context_tower(self, tower: VersionTower, options: ort.SessionOptions, plan: ProviderPlan) -> ContextTower:
        """The tower and head sessions, with this session's options and providers. They run through plain
        `session.run` on every provider (ONNX Runtime copies to a device): the I/O binding over the pooled
        buffers serves the whole graph only."""
        # TensorRT's options (its optimisation profiles, its engine cache) describe the whole graph: not the parts.
        providers = [p for p in self._providers(self.graph.path, self._config, plan, self.graph) if p[0] != TENSORRT_EP]
        try:
            sessions = tuple(
                ort.InferenceSession(model, sess_options=options, providers=providers)
                for model in (tower.split.tower, tower.split.head)
            )
        except Exception as error:  # ORT raises its own exception types
            raise BackendError(
                f"{self.graph.path}: ONNX Runtime cannot load the context tower's parts: {error}"
            ) from error
        return ContextTower(tower.split, self.graph, tower.cache, (sessions[0], sessions[1]))

    def _providers(
        self, path: Path, config: ModelConfig, plan: ProviderPlan, graph: ModelGraph | None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Each provider with its options: the instance's stream and device, and TensorRT's build settings."""
        providers: list[tuple[str, dict[str, Any]]] = []
        for name in plan.names:
            if name == CUDA_EP:
                providers.append((name, self._cuda_options(config)))
            elif name == TENSORRT_EP:
                assert graph is not None  # read in __init__ whenever TensorRT is planned
                options = tensorrt_engine.execution_provider_options(path, config, graph.dims)
                options.update(device_id=config.device_id, user_compute_stream=str(self._device_stream.handle))
                providers.append((name, options))
            else:
                providers.append((name, {}))
        return providers

    def _cuda_options(self, config: ModelConfig) -> dict[str, Any]:
        return {
            "device_id": config.device_id,
            # Kernels run on this instance's stream, after the copies DeviceIO enqueues there.
            "user_compute_stream": str(self._device_stream.handle),
            "use_tf32": int(config.onnxruntime.use_tf32),
        }

    @property
    def _device_stream(self) -> core.CudaStream:
        """The instance's stream; only the device paths (a provider on a GPU) ask for it."""
        assert self._stream is not None, "a GPU provider is planned only with a stream (plan.on_device)"
        return self._stream

    @property
    def parity_atol(self) -> float | None:
        first = self.providers[0]
        if first == CPU_EP:
            return None
        reduced = (first == CUDA_EP and self._config.onnxruntime.use_tf32) or (
            first == TENSORRT_EP and self._config.tensorrt.precision == "fp16"
        )
        return GPU_REDUCED_ATOL if reduced else GPU_FP32_ATOL

    def run(self, batch: core.Batch) -> None:
        if self._tower is not None:
            self._tower.run(batch)
            return
        feeds = self.graph.feeds(batch)
        if self._device is not None:
            self._run_on_device(feeds, batch.outputs)
        elif self._bind:
            self._run_bound_to_host(feeds, batch.outputs)
        else:
            results = self._session.run(self.graph.output_names, feeds)
            for name, result in zip(self.graph.output_names, results, strict=True):
                batch.outputs[name][:] = result

    def _run_on_device(self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        device = self._device
        assert device is not None  # run() takes this path only with device buffers
        binding = self._session.io_binding()
        try:
            device.stage_inputs(feeds)
            for name, array in feeds.items():
                binding.bind_input(name, "cuda", device.device_id, array.dtype, array.shape, device.inputs[name].ptr)
            for name in self.graph.output_names:
                array = outputs[name]
                binding.bind_output(name, "cuda", device.device_id, array.dtype, array.shape, device.outputs[name].ptr)
            self._session.run_with_iobinding(binding)
            device.fetch_outputs({name: outputs[name] for name in self.graph.output_names})
        finally:
            # Also on failure: the pooled buffers go back to the pool only once no copy touches them.
            device.synchronize()

    def _run_bound_to_host(self, feeds: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        for name in self.graph.output_names:
            array = outputs[name]
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self._session.run_with_iobinding(binding)

    def run_arrays(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the graph itself: text inputs given already tokenized (graph input names)."""
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, self.graph.select(inputs)), strict=True))


def _row_bytes(dtype: str, shape: list[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class OnnxRuntimeBackend(Backend):
    """One per version (backends.create_backend): its instances share the version's context tower and cache."""

    def __init__(self) -> None:
        self._tower: VersionTower | None = None
        self._tower_checked = False

    @property
    def context_cache(self) -> core.ContextCache | None:
        return self._tower.cache if self._tower is not None else None

    def _version_tower(self, path: Path, config: ModelConfig) -> VersionTower | None:
        """The cut graph and the cache, made with the first instance; None without a tower or with the cache off
        (the whole graph then runs; the cut is still checked)."""
        declared = config.context_tower
        if declared is None or self._tower_checked:
            return self._tower
        split = split_graph(path, config, ModelGraph(path, config, *onnx_graph_tensors(path)))
        self._tower_checked = True
        if declared.cache_bytes > 0:
            self._tower = VersionTower(split, core.ContextCache(declared.cache_bytes))
        return self._tower

    def load(self, version_dir: Path, config: ModelConfig, instance: int) -> Session:
        path = version_dir / MODEL_FILE
        if not path.is_file():
            raise BackendError(f"{path} is missing")
        _check_one_build()
        plan = plan_providers(config.onnxruntime.execution_providers)
        if instance == 0 and plan.skipped:
            log.info(
                "%s: %s not used: %s",
                config.name,
                ", ".join(plan.skipped),
                "; ".join(plan.skipped.values()),
                extra=log_fields(model=config.name),
            )
        tower = self._version_tower(path, config)
        try:
            return OnnxRuntimeSession(path, config, plan, tower)
        except core.CoreError as error:
            raise BackendError(f"{path}: device {config.device_id}: {error}") from error
