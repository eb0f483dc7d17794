"""TensorRtBackend (`backend: tensorrt`): runs a version's `model.onnx` as a TensorRT engine on a GPU.

Loading a version: the graph's inputs and outputs are checked against the config from the ONNX file
(before any build, so that a wrong model fails in milliseconds), the engine is loaded from the cache
beside the model or built once (backends/tensorrt_engine.py: profiles, cache, precision), and shared
by the version's instances. Each instance (TensorRtSession) owns a CUDA stream, device buffers for every
input and output (backends/device_io.py), and one execution context per optimisation profile, whose
tensor addresses are bound once, at load.

Running a batch: pick the context of the smallest profile that holds the batch's rows; copy the inputs
from their page-locked pooled buffers to the device, set the input shapes, enqueue the engine
(`execute_async_v3`), copy the scores back into the pooled output buffers, all on the instance's
stream, and wait for it without the GIL. Nothing is allocated per batch.

Same interface and contract as the ONNX Runtime backend (backends/base.py); `parity_atol` is 1e-4 in
fp32 and 1e-2 in fp16 (the config must ask for fp16: `tensorrt.precision`).

Needs a CUDA device and the TensorRT Python package (`pip install 'adrank[gpu]'`); without either the
load fails with a BackendError saying which is missing, and the server serves the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import adrank._core as core
from adrank.backends.base import GPU_FP32_ATOL, GPU_REDUCED_ATOL, MODEL_FILE, Backend, BackendError, Session
from adrank.backends.device_io import DeviceIO, cuda_unavailable_reason
from adrank.backends.graph import ModelGraph, onnx_graph_tensors
from adrank.backends.tensorrt_engine import EngineLoad, load_engine, tensorrt_module
from adrank.log_format import log_fields
from adrank.repository.config import ModelConfig

log = logging.getLogger("adrank.backends.tensorrt")


class TensorRtSession(Session):
    def __init__(self, graph: ModelGraph, load: EngineLoad, config: ModelConfig) -> None:
        trt = tensorrt_module()
        self.graph = graph
        self._config = config
        engine = load.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._check_io(graph)
        try:
            self._stream = core.CudaStream(config.device_id)
            self._contexts = self._create_contexts(engine, load)
            self._device = DeviceIO(graph, self._stream, self._output_bytes(load), inputs=self._inputs)
        except core.CoreError as error:
            raise BackendError(f"{graph.path}: device {config.device_id}: {error}") from error
        for _, context in self._contexts:
            for name in self._inputs:
                context.set_tensor_address(name, self._device.inputs[name].ptr)
            for name in self._outputs:
                context.set_tensor_address(name, self._device.outputs[name].ptr)

    def _check_io(self, graph: ModelGraph) -> None:
        where = f"{graph.path} (TensorRT engine)"
        unknown = sorted(set(self._inputs) - set(graph.input_names))
        if unknown:
            raise BackendError(f"{where}: engine inputs {unknown} are not inputs of the graph")
        for name in self._inputs:
            if self._dtypes[name].name != graph.dims[name].dtype:
                graph_dtype = graph.dims[name].dtype
                raise BackendError(f"{where}: input '{name}' is {self._dtypes[name]}, the graph's is {graph_dtype}")
        for spec in self._config.outputs:
            if spec.name not in self._outputs:
                raise BackendError(f"{where}: output '{spec.name}' of the config is not an output of the engine")
            if self._dtypes[spec.name].name != spec.dtype:
                raise BackendError(f"{where}: output '{spec.name}' is {self._dtypes[spec.name]}, not {spec.dtype}")

    def _create_contexts(self, engine: Any, load: EngineLoad) -> list[tuple[int, Any]]:
        """One execution context per profile, with the bucket top it serves up to."""
        contexts = []
        for index, profile in enumerate(load.profiles):
            context = engine.create_execution_context()
            if context is None:
                raise BackendError(f"{self.graph.path}: TensorRT cannot create an execution context (device memory?)")
            if not context.set_optimization_profile_async(index, self._stream.handle):
                raise BackendError(f"{self.graph.path}: TensorRT refused optimisation profile {index}")
            contexts.append((profile.high, context))
        self._stream.synchronize()
        return contexts

    def _output_bytes(self, load: EngineLoad) -> dict[str, int]:
        """Each output's bytes at the largest shapes the last profile admits."""
        _, context = self._contexts[-1]
        for name in self._inputs:
            context.set_input_shape(name, load.profiles[-1].shapes[name][2])
        sizes = {}
        for name in self._outputs:
            shape = tuple(context.get_tensor_shape(name))
            if any(dim < 0 for dim in shape):
                raise BackendError(f"{self.graph.path}: output '{name}' has a data-dependent shape {shape}")
            sizes[name] = int(np.prod(shape, dtype=np.int64)) * self._dtypes[name].itemsize
        return sizes

    @property
    def parity_atol(self) -> float | None:
        return GPU_REDUCED_ATOL if self._config.tensorrt.precision == "fp16" else GPU_FP32_ATOL

    def _context(self, rows: int) -> Any:
        for high, context in self._contexts:
            if rows <= high:
                return context
        largest = self._contexts[-1][0]
        raise BackendError(f"{self.graph.path}: {rows} rows exceed the engine's largest profile ({largest})")

    def _execute(self, feeds: Mapping[str, np.ndarray], rows: int, outputs: Mapping[str, np.ndarray] | None) -> Any:
        """Runs one batch; fills `outputs` (host arrays, by name) or, if None, returns every output."""
        context = self._context(rows)
        device = self._device
        feeds = {name: feeds[name] for name in self._inputs}
        try:
            device.stage_inputs(feeds)
            for name, array in feeds.items():
                if not context.set_input_shape(name, array.shape):
                    raise BackendError(f"input '{name}': shape {list(array.shape)} is outside the engine's profiles")
            if outputs is None:
                outputs = {n: np.empty(tuple(context.get_tensor_shape(n)), self._dtypes[n]) for n in self._outputs}
            for name, array in outputs.items():
                if tuple(context.get_tensor_shape(name)) != array.shape:
                    raise BackendError(f"output '{name}': the engine gives {tuple(context.get_tensor_shape(name))}")
            if not context.execute_async_v3(self._stream.handle):
                raise BackendError(f"{self.graph.path}: TensorRT could not enqueue the batch (its log says why)")
            device.fetch_outputs(outputs)
        finally:
            device.synchronize()
        return outputs

    def run(self, batch: core.Batch) -> None:
        self._execute(self.graph.feeds(batch), batch.rows, {n: batch.outputs[n] for n in self.graph.output_names})

    def run_arrays(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self.graph.select(inputs)
        rows = next(feeds[n].shape[0] for n, d in self.graph.dims.items() if d.leading[0] == "rows")
        return dict(self._execute(feeds, rows, None))


class TensorRtBackend(Backend):
    """Loads the engine once per version; every instance shares it (a context each)."""

    def __init__(self) -> None:
        self._engines: dict[Path, EngineLoad] = {}

    def load(self, version_dir: Path, config: ModelConfig, instance: int) -> Session:
        path = version_dir / MODEL_FILE
        if not path.is_file():
            raise BackendError(f"{path} is missing")
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise BackendError(f"{path}: backend tensorrt needs a CUDA device: {reason}")
        tensorrt_module()
        graph = ModelGraph(path, config, *onnx_graph_tensors(path))
        load = self._engines.get(path)
        if load is None:
            load = self._engines[path] = load_engine(graph)
            log.info(
                "%s: TensorRT engine %s (%s)",
                config.name,
                load.source,
                load.path or "in memory",
                extra=log_fields(model=config.name),
            )
        return TensorRtSession(graph, load, config)
