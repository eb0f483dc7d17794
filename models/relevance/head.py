"""The head the bundled ``relevance`` model's graph gets on top of its sentence encoder (``export.py`` builds
the version): each query row encoded alone (a Scan over the batch's queries, so that a query's embedding
never moves with its batch-mates), then each ad's cosine with its request's query, picked by
``row_request_index``; and the check that the finished graph has the signature ``config.yaml`` serves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx
from onnx import TensorProto, helper

MODEL_NAME = "relevance"
HIDDEN = 384
IDS, MASK, AD, ROW_INDEX = "query_input_ids", "query_attention_mask", "ad_embedding", "row_request_index"
RELEVANCE, QUERY_EMBEDDING = "relevance", "query_embedding"
# The encoder's own output, renamed to QUERY_EMBEDDING when the head is attached.
ENCODER_OUTPUT = "sentence_embedding"


def tensor_info(name: str, elem_type: int, dims: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(dims))


def per_query_body(encoder: onnx.GraphProto) -> onnx.GraphProto:
    """The Scan body: one query row [L] -> its embedding [384], the encoder run on that query alone.

    The row is trimmed to its own length (last mask position + 1) before the encoder sees it. Dynamic int8
    quantisation picks activation scales per tensor at run time, so in a batched encoder a query's embedding would
    move (by up to ~0.03 per element) with its batch-mates and with the padding the batch carries. Run alone and
    trimmed, it depends on its own tokens only: the same query scores the same ads identically in any batch.
    """
    inner_ids, inner_mask = "encoder_input_ids", "encoder_attention_mask"
    renames = {IDS: inner_ids, MASK: inner_mask}
    nodes = list(encoder.node)
    for node in nodes:
        node.input[:] = [renames.get(n, n) for n in node.input]
    constants = [
        helper.make_tensor("one_zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("one_one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("one_one_scalar", TensorProto.INT64, [], [1]),
    ]
    trim = [
        helper.make_node("Shape", ["one_mask"], ["one_shape"], name="one_shape"),
        helper.make_node("Add", ["one_shape", "one_one"], ["one_end"], name="one_end"),
        helper.make_node("Squeeze", ["one_end", "one_zero"], ["one_limit"], name="one_limit"),
        helper.make_node(
            "Range", ["one_one_scalar", "one_limit", "one_one_scalar"], ["one_positions"], name="one_range"
        ),
        helper.make_node("Mul", ["one_mask", "one_positions"], ["one_weighted"], name="one_weighted"),
        helper.make_node("ReduceMax", ["one_weighted"], ["one_last"], name="one_last", keepdims=1),
        helper.make_node("Max", ["one_last", "one_one"], ["one_length"], name="one_length"),
        helper.make_node("Slice", ["one_ids", "one_zero", "one_length", "one_zero"], ["one_ids_trim"], name="one_ids"),
        helper.make_node("Slice", ["one_mask", "one_zero", "one_length", "one_zero"], ["one_mask_trim"], name="one_m"),
        helper.make_node("Unsqueeze", ["one_ids_trim", "one_zero"], [inner_ids], name="one_ids_2d"),
        helper.make_node("Unsqueeze", ["one_mask_trim", "one_zero"], [inner_mask], name="one_mask_2d"),
    ]
    squeeze = helper.make_node("Squeeze", [ENCODER_OUTPUT, "one_zero"], ["one_embedding"], name="one_embedding")
    return helper.make_graph(
        [*trim, *nodes, squeeze],
        "encode_one_query",
        [tensor_info("one_ids", TensorProto.INT64, ["L"]), tensor_info("one_mask", TensorProto.INT64, ["L"])],
        [tensor_info("one_embedding", TensorProto.FLOAT, [HIDDEN])],
        initializer=[*constants, *encoder.initializer],
        value_info=list(encoder.value_info),
    )


def attach_head(encoder: onnx.ModelProto) -> onnx.ModelProto:
    """Wraps the quantised encoder in a Scan over the R queries and appends the fp32 gather/dot head."""
    graph = encoder.graph
    if [i.name for i in graph.input] != [IDS, MASK] or [o.name for o in graph.output] != [ENCODER_OUTPUT]:
        raise SystemExit(f"unexpected encoder signature: {[i.name for i in graph.input]} -> {graph.output}")
    names = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    ours = {n for n in names if n.startswith(("one_", "head_", "encoder_"))}
    if ours:
        raise SystemExit(f"encoder graph already uses {sorted(ours)}")
    body = per_query_body(graph)
    outer = helper.make_graph(
        [
            helper.make_node(
                "Scan", [IDS, MASK], [QUERY_EMBEDDING], name="encode_queries", num_scan_inputs=2, body=body
            ),
            helper.make_node("Gather", [QUERY_EMBEDDING, ROW_INDEX], ["head_query_rows"], name="head_gather", axis=0),
            helper.make_node("Mul", ["head_query_rows", AD], ["head_products"], name="head_mul"),
            helper.make_node("ReduceSum", ["head_products", "head_axes"], [RELEVANCE], name="head_dot", keepdims=0),
        ],
        MODEL_NAME,
        [
            tensor_info(IDS, TensorProto.INT64, ["R", "L"]),
            tensor_info(MASK, TensorProto.INT64, ["R", "L"]),
            tensor_info(AD, TensorProto.FLOAT, ["N", HIDDEN]),
            tensor_info(ROW_INDEX, TensorProto.INT64, ["N"]),
        ],
        [
            tensor_info(RELEVANCE, TensorProto.FLOAT, ["N"]),
            tensor_info(QUERY_EMBEDDING, TensorProto.FLOAT, ["R", HIDDEN]),
        ],
        initializer=[helper.make_tensor("head_axes", TensorProto.INT64, [1], [1])],
        doc_string=(
            "relevance[n] = dot(query_embedding[row_request_index[n]], ad_embedding[n]); query_embedding[r] = "
            "L2-normalised mean-pooled all-MiniLM-L6-v2 (int8 dynamic per-channel) embedding of query r, each "
            "query encoded alone (Scan), trimmed to its own length."
        ),
    )
    model = helper.make_model(
        outer,
        opset_imports=list(encoder.opset_import),
        ir_version=encoder.ir_version,
        producer_name="adrank models/relevance/export.py",
        producer_version="1",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def check_signature(model: onnx.ModelProto) -> dict[str, Any]:
    def describe(values: Sequence[onnx.ValueInfoProto]) -> list[dict[str, Any]]:
        out = []
        for v in values:
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
            out.append({"name": v.name, "dtype": dtype, "shape": dims})
        return out

    inputs, outputs = describe(model.graph.input), describe(model.graph.output)
    expected_inputs = [
        {"name": IDS, "dtype": "int64", "shape": ["R", "L"]},
        {"name": MASK, "dtype": "int64", "shape": ["R", "L"]},
        {"name": AD, "dtype": "float32", "shape": ["N", HIDDEN]},
        {"name": ROW_INDEX, "dtype": "int64", "shape": ["N"]},
    ]
    expected_outputs = [
        {"name": RELEVANCE, "dtype": "float32", "shape": ["N"]},
        {"name": QUERY_EMBEDDING, "dtype": "float32", "shape": ["R", HIDDEN]},
    ]
    if inputs != expected_inputs or outputs != expected_outputs:
        raise SystemExit(f"signature mismatch: {inputs} -> {outputs}")
    return {"inputs": inputs, "outputs": outputs}
