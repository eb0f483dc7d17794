"""Every bundled model scores the same on every x86-64 CPU: proven on one machine, whatever its instruction set.

Two checks, each against an exact evaluation rather than against a second kind of machine:
1. End to end. Each bundled model's golden requests are replayed through the server's own path (Servable.score:
   the Rank contract, the batcher, the backend's feeds), and every batch ONNX Runtime ran is run again, on the
   very same feeds, by onnx's reference evaluator (`onnx.reference`, plain numpy: integer ops computed exactly,
   fp32 in numpy's order) on the same graph (the model's, or for a model with a context tower the tower and head
   cut from it: backends/context_tower.py). They must agree within the model's stated parity tolerance (meta.json's
   `golden.atol`, whose `atol_reason` says why it is that wide): that tolerance is what one correct CPU may be
   from another, and a kernel that saturates (1.95e-2 on relevance version 1 on an AVX2-only CPU) is far outside it.
2. Integer kernels, exactly. Every integer MatMul weight of a bundled model is multiplied by ONNX Runtime's
   integer GEMM on this CPU (a one-node MatMulInteger graph, the same MLAS kernels the served graph's fused
   nodes dispatch to) against activations built to provoke 16-bit saturation (all 255, and uniform 0..255), and
   compared with numpy's int64 product: they must be identical, not merely close. Statically, no bundled integer
   node may be one that can saturate (adrank.repository.integer_kernels): 8-bit activations times int8 weights
   that use more than 7 bits.
On a VNNI CPU both pass for any int8 model (its kernels cannot saturate); on an AVX2-only CPU they fail for a
model like relevance version 1, and pass for one quantised with 7-bit weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from references import version_dir

import adrank._core as core
from adrank.repository.config import load_model_config
from adrank.repository.integer_kernels import IntegerNode, integer_nodes, saturation_risks
from adrank.repository.meta import golden_requests, load_meta
from adrank.servable import Servable
from served import MODELS

BUNDLED = sorted(p.name for p in MODELS.iterdir() if (p / "config.yaml").is_file())
# onnx's reference evaluator implements DequantizeLinear from opset 19 on; the op's semantics for these graphs
# (per-tensor or per-axis scale and zero point) are the same in 18 and 19.
REFERENCE_OPSET = 19


@dataclass
class RecordedRuns:
    """What ONNX Runtime was fed and answered, batch by batch, while a version served its golden requests, and the
    graph each run was of."""

    runs: list[tuple[onnx.ModelProto, list[str], dict[str, np.ndarray], list[np.ndarray]]] = field(default_factory=list)


class RecordingSession:
    """Stands in for an onnxruntime.InferenceSession: runs it and keeps a copy of every feed and result."""

    def __init__(self, session: ort.InferenceSession, graph: onnx.ModelProto, record: RecordedRuns) -> None:
        self._session = session
        self._graph = graph
        self._record = record

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self._session.run(output_names, feeds)
        copied = {name: np.array(value, copy=True) for name, value in feeds.items()}
        self._record.runs.append((self._graph, list(output_names), copied, [np.array(r, copy=True) for r in results]))
        return results

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@pytest.fixture(scope="module")
def pool() -> Iterator[core.ThreadPool]:
    pool = core.ThreadPool(num_workers=1)
    yield pool
    pool.shutdown()


def served_golden_runs(pool: core.ThreadPool, model: str) -> tuple[RecordedRuns, float]:
    """The batches the server's own path ran for the model's golden requests, and the model's tolerance."""
    folder = version_dir(model)
    config = load_model_config(MODELS / model / "config.yaml")
    meta = load_meta(folder / "meta.json")
    servable = Servable.load(pool, config, folder, int(folder.name))
    record = RecordedRuns()
    model_graph = onnx.load(str(folder / "model.onnx"))
    try:
        for session in servable.sessions:
            session._session = RecordingSession(session._session, model_graph, record)  # type: ignore[attr-defined]
            tower = session._tower  # type: ignore[attr-defined]
            if tower is not None:  # the model's context tower and head run instead of its whole graph
                split = tower._split
                tower._tower = RecordingSession(tower._tower, onnx.load_from_string(split.tower), record)
                tower._head = RecordingSession(tower._head, onnx.load_from_string(split.head), record)
        servable.score(golden_requests(config, meta.golden.inputs))
    finally:
        servable.unload(pool)
    assert record.runs, f"{model}: the golden requests ran no batch through ONNX Runtime"
    return record, meta.golden.atol


def reference_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy: its opset is raised below
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < REFERENCE_OPSET:
            opset.version = REFERENCE_OPSET
    return ReferenceEvaluator(model)


@pytest.mark.parametrize("model", BUNDLED)
def test_every_golden_batch_agrees_with_the_exact_evaluation(pool: core.ThreadPool, model: str) -> None:
    record, atol = served_golden_runs(pool, model)
    references: dict[int, ReferenceEvaluator] = {}
    worst: dict[str, float] = {}
    for graph, output_names, feeds, results in record.runs:
        if id(graph) not in references:
            references[id(graph)] = reference_evaluator(graph)
        exact = references[id(graph)].run(output_names, feeds)
        for name, got, want in zip(output_names, results, exact, strict=True):
            assert got.shape == want.shape, f"{model}: output {name} {got.shape} vs exact {want.shape}"
            diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
            worst[name] = max(worst.get(name, 0.0), diff)
    assert all(np.isfinite(list(worst.values())))
    assert max(worst.values()) <= atol, (
        f"{model}: ONNX Runtime on this CPU differs from the exact evaluation by {worst} "
        f"(tolerance {atol:g}, meta.json golden.atol)"
    )


def test_every_bundled_model_states_its_tolerance_and_why() -> None:
    for model in BUNDLED:
        golden = load_meta(version_dir(model) / "meta.json").golden
        assert golden.atol_reason and len(golden.atol_reason) > 40, f"{model}: meta.json golden.atol_reason is missing"


def bundled_integer_nodes() -> list[tuple[str, IntegerNode]]:
    found = []
    for model in BUNDLED:
        graph = onnx.load(str(version_dir(model) / "model.onnx"))
        found += [(model, node) for node in integer_nodes(graph)]
    return found


def test_no_bundled_integer_node_can_saturate() -> None:
    for model in BUNDLED:
        risks = saturation_risks(onnx.load(str(version_dir(model) / "model.onnx")))
        assert risks == [], f"{model}: {[(r.graph, r.node, r.weight_bits) for r in risks[:3]]} can saturate"


def matmul_integer_session(weights: np.ndarray) -> ort.InferenceSession:
    """One MatMulInteger, uint8 activations [M, K] by the given weights [K, N], on the served settings."""
    rows, columns = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b", "a_zero_point"], ["y"])],
        "integer_gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [None, rows]),
            helper.make_tensor_value_info("a_zero_point", TensorProto.UINT8, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, columns])],
        [numpy_helper.from_array(weights, "b")],
    )
    # The bundled graphs' IR version: this onnx writes a newer one by default than ONNX Runtime reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def provoking_activations(rows: int, rng: np.random.Generator) -> np.ndarray:
    """All 255 (the largest products, both signs), alternating 255/0, and uniform 0..255."""
    alternating = np.tile(np.array([255, 0], np.uint8), rows // 2 + 1)[:rows]
    uniform = rng.integers(0, 256, size=(6, rows), dtype=np.uint8)
    return np.vstack([np.full(rows, 255, np.uint8), alternating, 255 - alternating, uniform])


def test_integer_kernels_are_exact_on_this_cpu() -> None:
    nodes = [(m, n) for m, n in bundled_integer_nodes() if n.op_type == "MatMulInteger" and n.weights.ndim == 2]
    if not any(m == "relevance" for m, _ in nodes):
        pytest.fail("relevance has no constant MatMulInteger weights: the bundled model is not the int8 one")
    rng = np.random.default_rng(33)
    for model, node in nodes:
        weights = node.weights.astype(np.int8) if node.weights.dtype == np.int8 else node.weights
        session = matmul_integer_session(weights)
        activations = provoking_activations(weights.shape[0], rng)
        for zero_point in (0, 128):
            got = session.run(["y"], {"a": activations, "a_zero_point": np.array(zero_point, np.uint8)})[0]
            exact = (activations.astype(np.int64) - zero_point) @ weights.astype(np.int64)
            wrong = int(np.count_nonzero(got != exact))
            assert wrong == 0, (
                f"{model}: {node.graph} > {node.node} ({node.weight}, {node.weight_bits}-bit weights): "
                f"{wrong} of {exact.size} integer products differ from exact arithmetic on this CPU"
            )
