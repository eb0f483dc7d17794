"""ContextTower: a model's context tower split from its graph at load, and run once per distinct context.

A model may declare in config.yaml that one of its graph outputs depends on the context inputs only
(`context_tower: {output: query_embedding, cache_bytes: ...}`): for relevance, the query's sentence embedding.
At load, `split_graph` cuts the version's own `model.onnx` in two with `onnx.utils.Extractor` — no second
file, no new version, the same sha256 and golden outputs:
- the tower: the context inputs it reads (for a text input, its token ids and mask) -> the output;
- the head: the output, the candidate inputs and `row_request_index` -> the score.
and checks the cut: the tower reads context inputs only, and the head reads exactly the tower's output and
candidate inputs (the score depends on the context through the tower alone). A graph that disagrees is
refused with a BackendError naming the input.

Per batch (`ContextTower.run`), with the version's ContextCache (cpp/context_cache.h):
1. each request's key is its context's bytes (a text input's UTF-8 bytes, its zero padding stripped);
2. the cache fills the output rows of the requests it holds;
3. the tower runs once for the batch's distinct missing contexts together, and its rows are inserted;
4. the head runs on the gathered rows with the batch's candidates.
A cached row is the bytes the tower returned for that context, so a score is the same whether its row came
from the cache or not, as long as the tower computes each context's row independently of the others in its
batch (relevance's Scan encodes each query alone: cached and uncached scores are bit-identical,
tests/python/test_context_cache.py).

Thread-safety: one ContextTower per session (one worker at a time); the cache is the version's, shared by its
instances, and thread-safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

import adrank._core as core
from adrank.backends.base import ROW_REQUEST_INDEX, BackendError
from adrank.backends.graph import ModelGraph
from adrank.repository.config import ModelConfig


@dataclass(frozen=True)
class TowerSplit:
    """The two graphs cut from a version's model, and what the tower's output row is."""

    tower: bytes  # serialized ModelProto
    head: bytes
    tower_inputs: list[str]  # graph input names, in the graph's order
    head_inputs: list[str]
    output: str
    row_shape: tuple[int, ...]  # one request's output row
    dtype: np.dtype


def split_graph(path: Path, config: ModelConfig, graph: ModelGraph) -> TowerSplit:
    """Cuts `path` into tower and head as the config's context_tower declares; BackendError if it cannot be."""
    declared = config.context_tower
    assert declared is not None, "only a model that declares a context tower is split"
    model = onnx.load(str(path))
    where = f"{path}: context_tower.output '{declared.output}'"
    if declared.output not in {o.name for o in model.graph.output}:
        raise BackendError(f"{where} is not an output of the graph")
    context = [name for name in graph.input_names if graph.dims[name].leading[0] == "requests"]
    candidate = [name for name in graph.input_names if name not in context]
    tower_inputs = _sources(model.graph, [declared.output])
    outside = sorted(tower_inputs - set(context))
    if outside:
        raise BackendError(f"{where} depends on {outside}, which are not context inputs")
    extractor = onnx.utils.Extractor(model)
    tower_names = [name for name in context if name in tower_inputs]
    tower = extractor.extract_model(tower_names, [declared.output])
    head = extractor.extract_model([declared.output, *candidate], [config.score_output])
    # The head's inputs are exactly the tower's output and the candidate inputs: a name it reads beyond them is a
    # path from the context to the score that bypasses the tower.
    head_reads = _sources(head.graph, [config.score_output])
    bypass = sorted(head_reads - {declared.output, *candidate})
    if bypass:
        raise BackendError(
            f"{where}: the score '{config.score_output}' depends on {bypass} other than through the tower's output"
        )
    if declared.output not in head_reads:
        raise BackendError(f"{where}: the score '{config.score_output}' does not depend on it")
    row_shape, dtype = _row_of(where, tower.graph.output[0])
    return TowerSplit(
        tower.SerializeToString(),
        head.SerializeToString(),
        tower_names,
        [declared.output, *candidate],
        declared.output,
        row_shape,
        dtype,
    )


def _row_of(where: str, output: onnx.ValueInfoProto) -> tuple[tuple[int, ...], np.dtype]:
    """One request's row of the tower's output: its dims after the request dim must be fixed."""
    kind = output.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]
    if not dims or any(d is None for d in dims[1:]):
        raise BackendError(f"{where}: a cached row needs [requests, fixed dims...], the graph says {dims}")
    return tuple(int(d) for d in dims[1:] if d is not None), np.dtype(
        onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)
    )


def _sources(graph: onnx.GraphProto, names: Iterable[str]) -> set[str]:
    """The names the given tensors are computed from that no node of `graph` produces and no initializer holds:
    the graph inputs they depend on (and, in a cut graph, any name it reads but lacks)."""
    producers = {out: node for node in graph.node for out in node.output}
    constants = {t.name for t in graph.initializer}
    seen: set[str] = set()
    sources: set[str] = set()
    stack = [name for name in names if name]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            if name not in constants:
                sources.add(name)
            continue
        stack.extend(i for i in node.input if i)
        stack.extend(_outer_names(node))
    return sources


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """The names a node's subgraphs (a Scan's or an If's body) read from the enclosing graph."""
    names: set[str] = set()
    for attribute in node.attribute:
        subgraphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
        for sub in subgraphs:
            defined = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            defined |= {out for inner in sub.node for out in inner.output}
            used = {i for inner in sub.node for i in inner.input if i}
            for inner in sub.node:
                used |= _outer_names(inner)
            names |= used - defined
    return names


class ContextTower:
    """The split graph of one session, run per batch through the version's cache."""

    def __init__(
        self,
        split: TowerSplit,
        graph: ModelGraph,
        cache: core.ContextCache,
        sessions: tuple[ort.InferenceSession, ort.InferenceSession],
    ) -> None:
        self._split = split
        self._graph = graph
        self._cache = cache
        self._tower, self._head = sessions
        config = graph.config
        # The config's context inputs the tower reads (a text input through its token ids), in config order: the
        # parts of each request's key.
        token_inputs = {
            name: t.name
            for t in config.inputs
            if t.tokenizer is not None
            for name in (t.tokenizer.input_ids, t.tokenizer.attention_mask)
        }
        read = {token_inputs.get(name, name) for name in split.tower_inputs}
        self._key_inputs = [t.name for t in config.inputs if t.name in read]
        self._text_inputs = {t.name for t in config.inputs if t.tokenizer is not None}

    def run(self, batch: core.Batch) -> None:
        inputs = batch.inputs
        keys = self._keys(inputs)
        rows = np.empty((len(keys), *self._split.row_shape), dtype=self._split.dtype)
        misses = self._cache.lookup(keys, rows)
        if misses.size:
            self._encode(inputs, keys, misses, rows)
        available: dict[str, np.ndarray] = {**inputs, self._split.output: rows}
        if batch.row_request_index is not None:  # the per_request layout, which a tower requires, always has it
            available[ROW_REQUEST_INDEX] = batch.row_request_index
        feeds = {name: available[name] for name in self._split.head_inputs}
        score = self._graph.config.score_output
        (result,) = self._head.run([score], feeds)
        batch.outputs[score][:] = result

    def _keys(self, inputs: Mapping[str, np.ndarray]) -> list[bytes]:
        """Each request's context bytes: its text inputs' UTF-8 bytes (zero padding stripped, as the tokenizer
        reads them), its other context inputs' row bytes; several inputs are joined with length prefixes."""
        parts_per_input = []
        for name in self._key_inputs:
            array = inputs[name]
            if name in self._text_inputs:
                parts_per_input.append([bytes(row).rstrip(b"\0") for row in array])
            else:
                parts_per_input.append([row.tobytes() for row in array])
        if len(parts_per_input) == 1:
            return parts_per_input[0]
        return [
            b"".join(len(p).to_bytes(4, "little") + p for p in parts) for parts in zip(*parts_per_input, strict=True)
        ]

    def _encode(
        self, inputs: Mapping[str, np.ndarray], keys: list[bytes], misses: np.ndarray, rows: np.ndarray
    ) -> None:
        """Runs the tower once on the batch's distinct missing contexts, fills their rows and caches them."""
        first: dict[bytes, int] = {}
        for i in misses.tolist():
            first.setdefault(keys[i], i)
        distinct = np.fromiter(first.values(), dtype=np.int64, count=len(first))
        feeds: dict[str, np.ndarray] = {}
        for name in self._key_inputs:
            array = inputs[name][distinct]
            tokenizer = self._graph.tokenizers.get(name)
            feeds.update(tokenizer.encode_rows(array) if tokenizer is not None else {name: array})
        (computed,) = self._tower.run([self._split.output], {n: feeds[n] for n in self._split.tower_inputs})
        if computed.shape != (len(distinct), *self._split.row_shape):
            raise BackendError(
                f"{self._graph.path}: the context tower returned {list(computed.shape)} for {len(distinct)} contexts"
            )
        computed = np.ascontiguousarray(computed, dtype=self._split.dtype)
        position = {key: j for j, key in enumerate(first)}
        rows[misses] = computed[[position[keys[i]] for i in misses.tolist()]]
        self._cache.insert(list(first), computed)
