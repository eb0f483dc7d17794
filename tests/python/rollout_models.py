"""Repositories and model variants for the lifecycle, rollout and health tests: a copy of the bundled ctr
model, versions of it published the way an engineer would (`adrank publish`), some of them changed, a
second model made of it, a ctr-shaped model with an integer MatMul, and model files damaged after their
publish."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adrank.publish.pipeline import PublishOptions, publish
from served import MODELS


def ctr_repository(root: Path) -> Path:
    """A repository holding the bundled ctr model (version 1) only."""
    shutil.copytree(MODELS / "ctr", root / "ctr", ignore=shutil.ignore_patterns("*.py", "README.md"))
    return root


def shifted_ctr(path: Path) -> Path:
    """ctr whose score is sqrt(ctr): still a probability, but the distribution moves up (PSI >> 0.25)."""
    model = onnx.load(str(MODELS / "ctr" / "1" / "model.onnx"))
    graph = model.graph
    output = graph.output[0]
    raw = output.name + "_unshifted"
    for node in graph.node:
        node.output[:] = [raw if name == output.name else name for name in node.output]
    graph.node.append(helper.make_node("Sqrt", [raw], [output.name], name="shift_scores"))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def quantized_ctr(path: Path, weights: np.ndarray) -> Path:
    """A model over ctr's inputs whose score is 0.5, computed through an integer MatMul as `quantize_dynamic`
    makes them: dense -> DynamicQuantizeLinear (uint8) -> MatMulInteger by the initializer `ctr_int8_weights`
    (`weights`, [13, n], int8 or uint8) -> Cast -> ReduceSum -> * 0 -> + 0.5. Its weights decide whether
    `adrank publish` takes it (repository/integer_kernels.py): int8 using 8 bits can saturate without VNNI."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["dense"], ["dense_q", "dense_scale", "dense_zp"], name="quantize"),
        helper.make_node("MatMulInteger", ["dense_q", "ctr_int8_weights", "dense_zp"], ["mm"], name="dense_matmul"),
        helper.make_node("Cast", ["mm"], ["mm_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["mm_f", "axes"], ["dense_sum"], keepdims=0),
        helper.make_node("Cast", ["sparse"], ["sparse_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["sparse_f", "axes"], ["sparse_sum"], keepdims=0),
        helper.make_node("Add", ["dense_sum", "sparse_sum"], ["total"]),
        helper.make_node("Mul", ["total", "zero"], ["nil"]),
        helper.make_node("Add", ["nil", "half"], ["ctr"]),
    ]
    graph = helper.make_graph(
        nodes,
        "quantized_ctr",
        [
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", 13]),
            helper.make_tensor_value_info("sparse", TensorProto.INT64, ["batch", 26]),
        ],
        [helper.make_tensor_value_info("ctr", TensorProto.FLOAT, ["batch"])],
        [
            numpy_helper.from_array(weights, "ctr_int8_weights"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def int8_weights(bits: int, columns: int = 4) -> np.ndarray:
    """int8 weights [13, columns] spanning [-(2^(bits-1)), 2^(bits-1)] clipped to int8: 8 bits is [-127, 127]
    (quantize_dynamic's default), 7 bits [-64, 64] (its reduce_range=True)."""
    limit = min(127, 2 ** (bits - 1))
    values = np.linspace(-limit, limit, 13 * columns).round().astype(np.int8)
    return values.reshape(13, columns)


def publish_version(
    repository: Path, onnx_file: Path | None = None, version: int | None = None, allow_int8_saturation: bool = False
) -> int:
    """Publishes a version of ctr (the bundled model by default) as `adrank publish` does; its number."""
    options = PublishOptions(
        model="ctr",
        onnx=onnx_file or MODELS / "ctr" / "1" / "model.onnx",
        repository=repository,
        version=version,
        max_slowdown=100.0,  # these tests are about rollout, not the latency gate (test_publish.py)
        bench_reps=3,
        allow_int8_saturation=allow_int8_saturation,
    )
    return publish(options).version


def corrupt(model_file: Path) -> bytes:
    """Damages a published model.onnx (its sha256 no longer matches meta.json); returns the good bytes."""
    good = model_file.read_bytes()
    model_file.write_bytes(good[:-100] + b"\0" * 100)
    return good


def second_model(repo: Path, name: str = "ctr2") -> Path:
    """A copy of ctr (version 1) under another name."""
    shutil.copytree(repo / "ctr", repo / name)
    config = repo / name / "config.yaml"
    config.write_text(config.read_text().replace("name: ctr", f"name: {name}", 1))
    meta_file = repo / name / "1" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["model"] = name
    meta_file.write_text(json.dumps(meta))
    return repo / name
