"""OnnxRuntimeBackend: runs `model.onnx` in ONNX Runtime, fed straight from the core's pooled buffers.

Execution providers: the config's list, or TensorRT, CUDA, CPU in that order as this ONNX Runtime
build has them (the CPU build has only the last). Thread counts and the graph optimisation level come
from the config's `onnxruntime` section.

Fed from the core's pooled buffers, no extra copies of the inputs:
- CPU execution provider: `session.run` with the batch's numpy views. ONNX Runtime's Python binding
  wraps a contiguous numeric array's memory as the input tensor (it does not copy it), and the scores,
  4 bytes a row, are copied into the pooled output buffer. Measured on this machine (ctr, 1 thread):
  an IOBinding bound to the same addresses costs ~10 us more per call at 1-8 rows (its per-call Python
  binding work) and gains nothing at 64-1024 rows, so the CPU path does not use one.
- Device execution providers (CUDA, TensorRT): an IOBinding whose inputs and outputs are bound to the
  raw addresses of the pooled (page-locked) buffers, so the copies to and from the device are the
  provider's own asynchronous ones.
Text inputs arrive as UTF-8 byte rows, one per request (tokenizer.py); the session tokenizes the batch's
R texts in one call, padded to the longest.

Thread-safety: one session per model instance; `run` is called by one core worker at a time per
instance and releases the GIL while ONNX Runtime computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

import adrank._core as core
from adrank.backends.base import ROW_REQUEST_INDEX, Backend, BackendError, Session
from adrank.repository.config import ModelConfig
from adrank.tokenizer import QueryTokenizer

MODEL_FILE = "model.onnx"
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
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


def select_providers(requested: list[str] | None) -> list[str]:
    available = ort.get_available_providers()
    if requested is None:
        return [p for p in PREFERRED_PROVIDERS if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        raise BackendError(f"onnxruntime.execution_providers: {missing} not in this build ({available})")
    return list(requested)


def _check_dims(where: str, declared: list[int], graph_shape: list[object]) -> None:
    """Graph dims after the row dim must equal the declared row shape where the graph fixes them."""
    trailing = graph_shape[1:]
    if len(trailing) != len(declared):
        raise BackendError(f"{where}: graph rank {len(graph_shape)} but the config declares row shape {declared}")
    for graph_dim, dim in zip(trailing, declared, strict=True):
        if isinstance(graph_dim, int) and graph_dim != dim:
            raise BackendError(f"{where}: graph shape {graph_shape} but the config declares row shape {declared}")


class OnnxRuntimeSession(Session):
    def __init__(self, path: Path, config: ModelConfig, providers: list[str]) -> None:
        self._tokenizers = {t.name: QueryTokenizer(path.parent, t.tokenizer) for t in config.inputs if t.tokenizer}
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.onnxruntime.intra_op_num_threads
        options.inter_op_num_threads = config.onnxruntime.inter_op_num_threads
        options.graph_optimization_level = _OPTIMIZATION[config.onnxruntime.graph_optimization_level]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as error:  # ORT raises its own exception types for bad files
            raise BackendError(f"{path}: ONNX Runtime cannot load it: {error}") from error
        self._output_names = [t.name for t in config.outputs]
        self._graph_inputs = self._check_signature(path, config)
        self.providers = self._session.get_providers()
        io_binding = config.onnxruntime.io_binding
        self._bind = self.providers[0] != "CPUExecutionProvider" if io_binding is None else io_binding

    def _check_signature(self, path: Path, config: ModelConfig) -> list[str]:
        declared = {spec.name: spec for spec in config.core_signature().inputs if spec.name not in self._tokenizers}
        tokens = {n for t in self._tokenizers.values() for n in (t.config.input_ids, t.config.attention_mask)}
        graph_inputs = {i.name: i for i in self._session.get_inputs()}
        for name, node in graph_inputs.items():
            where = f"{path}: graph input '{name}'"
            if name == ROW_REQUEST_INDEX:
                if config.batching.context_layout != "per_request" or node.type != "tensor(int64)":
                    raise BackendError(f"{where} needs batching.context_layout per_request and int64")
                continue
            if name in tokens:
                # [requests, tokens]: each batch pads its texts to the longest, so the length must be free.
                if node.type != "tensor(int64)" or len(node.shape) != 2 or isinstance(node.shape[1], int):
                    raise BackendError(f"{where} takes token ids: int64 [R, L] with L dynamic, not {node.shape}")
                tokens.discard(name)
                continue
            spec = declared.get(name)
            if spec is None:
                raise BackendError(f"{where} is not an input of the config")
            if _ORT_TYPES.get(node.type) != spec.dtype:
                raise BackendError(f"{where} has type {node.type}, the config says {spec.dtype}")
            _check_dims(where, spec.row_shape, list(node.shape))
        unused = sorted((set(declared) | tokens) - set(graph_inputs))
        if unused:
            raise BackendError(f"{path}: config inputs {unused} are not inputs of the graph")
        graph_outputs = {o.name: o for o in self._session.get_outputs()}
        for spec in config.outputs:
            node = graph_outputs.get(spec.name)
            if node is None:
                raise BackendError(f"{path}: output '{spec.name}' of the config is not an output of the graph")
            if _ORT_TYPES.get(node.type) != spec.dtype:
                raise BackendError(f"{path}: graph output '{spec.name}' has type {node.type}, not {spec.dtype}")
        return list(graph_inputs)

    def run(self, batch: core.Batch) -> None:
        inputs = dict(batch.inputs)
        for name, tokenizer in self._tokenizers.items():
            inputs.update(tokenizer.encode_rows(inputs.pop(name)))
        if batch.row_request_index is not None:
            inputs[ROW_REQUEST_INDEX] = batch.row_request_index
        feeds = {name: inputs[name] for name in self._graph_inputs}
        if not self._bind:
            results = self._session.run(self._output_names, feeds)
            for name, result in zip(self._output_names, results, strict=True):
                batch.outputs[name][:] = result
            return
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        for name in self._output_names:
            array = batch.outputs[name]
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self._session.run_with_iobinding(binding)

    def run_arrays(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the graph itself: text inputs given already tokenized (graph input names)."""
        feeds = {name: inputs[name] for name in self._graph_inputs}
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, feeds), strict=True))


class OnnxRuntimeBackend(Backend):
    def load(self, version_dir: Path, config: ModelConfig, instance: int) -> Session:
        path = version_dir / MODEL_FILE
        if not path.is_file():
            raise BackendError(f"{path} is missing")
        return OnnxRuntimeSession(path, config, select_providers(config.onnxruntime.execution_providers))
