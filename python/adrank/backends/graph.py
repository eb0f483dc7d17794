"""ModelGraph: a model's graph as every backend sees it — its tensors checked against the config, the
arrays a batch feeds it, and the shapes those arrays take.

Every backend (ONNX Runtime on any device, TensorRT) reads the graph's inputs and outputs in its own
terms, turns them into GraphTensors, and lets ModelGraph check them against `config.yaml`: a version
whose graph disagrees is refused at load with a BackendError naming the tensor.

What a batch feeds the graph (`feeds`), per graph input:
- a candidate input, or a context input under the `broadcast` layout: [rows, *row_shape], from the
  batch's pooled buffer;
- a context input under the `per_request` layout: [requests, *row_shape];
- `row_request_index` (per_request layout): int64 [rows], each row's request in the batch;
- the token ids and attention mask of a text input: int64 [requests, tokens], tokenized per batch
  (tokens = the batch's longest text, at most the tokenizer's max_length).
`dims` gives each input's shape as a function of (rows, requests, tokens): what a GPU backend sizes
its device buffers and TensorRT's optimisation profiles from.

Thread-safety: immutable after construction; `feeds` may run on any worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

import adrank._core as core
from adrank.backends.base import ROW_REQUEST_INDEX, BackendError
from adrank.repository.config import ModelConfig
from adrank.tokenizer import QueryTokenizer

# What an input's leading dims count.
Extent = Literal["rows", "requests", "tokens"]


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output as a backend reports it: numpy dtype name (None when it has no numpy
    equivalent) and shape, None for a dim the graph leaves free."""

    name: str
    dtype: str | None
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class InputDims:
    """One graph input's shape: leading dims named by what they count, then fixed dims."""

    leading: tuple[Extent, ...]
    fixed: tuple[int, ...]
    dtype: str

    def shape(self, rows: int, requests: int, tokens: int) -> tuple[int, ...]:
        extent = {"rows": rows, "requests": requests, "tokens": tokens}
        return tuple(extent[d] for d in self.leading) + self.fixed

    def max_bytes(self, config: ModelConfig) -> int:
        """Bytes of the largest array a batch can feed (requests are at most rows)."""
        rows = config.batching.max_batch_rows
        tokens = max((t.tokenizer.max_length for t in config.inputs if t.tokenizer), default=1)
        return int(np.prod(self.shape(rows, rows, tokens), dtype=np.int64)) * np.dtype(self.dtype).itemsize


class ModelGraph:
    def __init__(self, path: Path, config: ModelConfig, inputs: list[GraphTensor], outputs: list[GraphTensor]) -> None:
        self.path = path
        self.config = config
        self.tokenizers = {t.name: QueryTokenizer(path.parent, t.tokenizer) for t in config.inputs if t.tokenizer}
        self.input_names = [t.name for t in inputs]
        self.output_names = [t.name for t in config.outputs]
        self.dims = self._check_inputs(inputs)
        self._check_outputs(outputs)

    def _check_inputs(self, inputs: list[GraphTensor]) -> dict[str, InputDims]:
        config = self.config
        per_request = config.batching.context_layout == "per_request"
        declared = {spec.name: spec for spec in config.core_signature().inputs if spec.name not in self.tokenizers}
        tokens = {n for t in self.tokenizers.values() for n in (t.config.input_ids, t.config.attention_mask)}
        dims: dict[str, InputDims] = {}
        for node in inputs:
            where = f"{self.path}: graph input '{node.name}'"
            if node.name == ROW_REQUEST_INDEX:
                if not per_request or node.dtype != "int64":
                    raise BackendError(f"{where} needs batching.context_layout per_request and int64")
                dims[node.name] = InputDims(("rows",), (), "int64")
                continue
            if node.name in tokens:
                # [requests, tokens]: each batch pads its texts to the longest, so the length must be free.
                if node.dtype != "int64" or len(node.shape) != 2 or node.shape[1] is not None:
                    raise BackendError(f"{where} takes token ids: int64 [R, L] with L dynamic, not {list(node.shape)}")
                dims[node.name] = InputDims(("requests", "tokens"), (), "int64")
                tokens.discard(node.name)
                continue
            spec = declared.get(node.name)
            if spec is None:
                raise BackendError(f"{where} is not an input of the config")
            if node.dtype != spec.dtype:
                raise BackendError(f"{where} has type {node.dtype}, the config says {spec.dtype}")
            _check_dims(where, spec.row_shape, node.shape)
            leading: Extent = "requests" if per_request and spec.role == core.Role.CONTEXT else "rows"
            dims[node.name] = InputDims((leading,), tuple(spec.row_shape), spec.dtype)
        unused = sorted((set(declared) | tokens) - set(dims))
        if unused:
            raise BackendError(f"{self.path}: config inputs {unused} are not inputs of the graph")
        return dims

    def _check_outputs(self, outputs: list[GraphTensor]) -> None:
        graph_outputs = {o.name: o for o in outputs}
        for spec in self.config.outputs:
            node = graph_outputs.get(spec.name)
            if node is None:
                raise BackendError(f"{self.path}: output '{spec.name}' of the config is not an output of the graph")
            if node.dtype != spec.dtype:
                raise BackendError(f"{self.path}: graph output '{spec.name}' has type {node.dtype}, not {spec.dtype}")

    def feeds(self, batch: core.Batch) -> dict[str, np.ndarray]:
        """The graph's inputs for a batch formed by the core (views of its pooled buffers, and tokens)."""
        inputs: dict[str, np.ndarray] = dict(batch.inputs)
        for name, tokenizer in self.tokenizers.items():
            inputs.update(tokenizer.encode_rows(inputs.pop(name)))
        if batch.row_request_index is not None:
            inputs[ROW_REQUEST_INDEX] = batch.row_request_index
        return {name: inputs[name] for name in self.input_names}

    def select(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's inputs out of plain arrays named as the graph names them (text already tokenized)."""
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise BackendError(f"{self.path}: inputs {missing} of the graph are missing")
        return {name: inputs[name] for name in self.input_names}


def onnx_graph_tensors(path: Path) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """A model file's inputs and outputs, read without loading its weights (for backends that check the
    graph before handing the file to a builder)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # DecodeError, OSError: a file that is not a model
        raise BackendError(f"{path}: not a readable ONNX model: {error}") from error
    initializers = {t.name for t in model.graph.initializer}

    def tensor(value: onnx.ValueInfoProto) -> GraphTensor:
        kind = value.type.tensor_type
        try:
            dtype: str | None = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)).name
        except (KeyError, TypeError):
            dtype = None
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim)
        return GraphTensor(value.name, dtype, shape)

    inputs = [tensor(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [tensor(v) for v in model.graph.output]


def _check_dims(where: str, declared: list[int], graph_shape: tuple[int | None, ...]) -> None:
    """Graph dims after the row dim must equal the declared row shape where the graph fixes them."""
    trailing = graph_shape[1:]
    if len(trailing) != len(declared):
        raise BackendError(f"{where}: graph rank {len(graph_shape)} but the config declares row shape {declared}")
    for graph_dim, dim in zip(trailing, declared, strict=True):
        if graph_dim is not None and graph_dim != dim:
            raise BackendError(f"{where}: graph shape {list(graph_shape)} but the config declares row shape {declared}")
