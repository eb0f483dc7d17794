"""Which integer MatMul/Conv nodes can saturate on CPUs without VNNI (python/adrank/repository/integer_kernels.py).

Small models made here with onnx.helper, as ONNX Runtime's quantisation makes them: 8-bit activations (from
DynamicQuantizeLinear, a uint8 graph input, QuantizeLinear with an int8 zero point) times int8 weights that
use 8 bits are found, wherever they are (the main graph, a Scan body whose weight is an initializer of the
enclosing graph, nested If branches); 7-bit int8 weights (reduce_range) and uint8 weights (U8U8) are not.
The subgraph model also runs in ONNX Runtime, so it is a model that exists, not a shape only the walker knows.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from rollout_models import int8_weights

from adrank.repository.integer_kernels import IntegerNode, integer_nodes, saturation_risks

OPSET = [helper.make_opsetid("", 18)]
MS_OPSET = [*OPSET, helper.make_opsetid("com.microsoft", 1)]


def model(nodes, inputs, outputs, initializers, opsets=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "integer_kernels", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def matmul_integer(weights: np.ndarray) -> onnx.ModelProto:
    """x float [N, 13] -> DynamicQuantizeLinear -> MatMulInteger 'mm' by the initializer 'w'."""
    return model(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["y"], name="mm"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 13])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", weights.shape[1]])],
        [numpy_helper.from_array(weights, "w")],
    )


def scan_encoder(weights: np.ndarray) -> onnx.ModelProto:
    """A Scan named 'encoder' over the rows of x [N, 13] whose body quantises its row and multiplies it by 'w',
    an initializer of the main graph (the body names it from the enclosing scope, as exporters do)."""
    body = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["row", "zero_axis"], ["row2d"]),
            helper.make_node("DynamicQuantizeLinear", ["row2d"], ["rq", "rs", "rz"]),
            helper.make_node("MatMulInteger", ["rq", "w", "rz"], ["ri"], name="encoder/mm"),
            helper.make_node("Squeeze", ["ri", "zero_axis"], ["out"]),
        ],
        "encode_row",
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, [13])],
        [helper.make_tensor_value_info("out", TensorProto.INT32, [weights.shape[1]])],
        [numpy_helper.from_array(np.array([0], np.int64), "zero_axis")],
    )
    return model(
        [helper.make_node("Scan", ["x"], ["y"], name="encoder", body=body, num_scan_inputs=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 13])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", weights.shape[1]])],
        [numpy_helper.from_array(weights, "w")],
    )


def conv_integer(weights: np.ndarray) -> onnx.ModelProto:
    """ConvInteger over a uint8 image input, unnamed, by the initializer 'kernel'."""
    return model(
        [helper.make_node("ConvInteger", ["image", "kernel"], ["features"])],
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.INT32, None)],
        [numpy_helper.from_array(weights, "kernel")],
    )


def test_int8_weights_using_8_bits_behind_dynamic_quantization_can_saturate():
    (node,) = integer_nodes(matmul_integer(int8_weights(8)))
    assert (node.graph, node.node, node.op_type, node.domain) == ("main graph", "mm", "MatMulInteger", "")
    assert (node.activation, node.weight, node.weight_bits) == ("uint8", "w", 8)
    assert node.weights.dtype == np.int8 and node.weights.shape == (13, 4)
    assert np.array_equal(node.weights, int8_weights(8)) and node.weight_range == (-127, 127)
    assert node.can_saturate
    assert saturation_risks(matmul_integer(int8_weights(8))) == [node]
    assert node.describe() == (
        "MatMulInteger 'mm' in main graph (int8 weight 'w', uint8 activations): weights span [-127, 127]: 8 bits"
    )


@pytest.mark.parametrize(
    ("weights", "bits"),
    [
        (int8_weights(7), 7),  # quantize_dynamic(..., reduce_range=True): [-64, 64]
        (np.full((13, 4), -64, np.int8), 7),
        (np.arange(-32, 20).astype(np.int8).reshape(13, 4), 6),
        (np.zeros((13, 4), np.int8), 1),
        (np.arange(52).astype(np.uint8).reshape(13, 4) * 4 + 50, 8),  # U8U8: uint8 weights up to 254
        (np.arange(52).astype(np.uint8).reshape(13, 4), 6),
    ],
    ids=["7-bit", "all -64", "6-bit", "zeros", "uint8 8-bit", "uint8 6-bit"],
)
def test_7_bit_int8_weights_and_uint8_weights_cannot_saturate(weights: np.ndarray, bits: int):
    (node,) = integer_nodes(matmul_integer(weights))
    assert node.weight_bits == bits and node.weights.dtype == weights.dtype
    assert not node.can_saturate
    assert saturation_risks(matmul_integer(weights)) == []


@pytest.mark.parametrize("edge", [65, -65, -128])
def test_one_int8_weight_beyond_64_is_enough(edge: int):
    weights = int8_weights(7)
    weights[5, 2] = edge
    (risk,) = saturation_risks(matmul_integer(weights))
    assert risk.weight_bits == 8 and risk.node == "mm"


def test_a_scan_body_with_its_weight_in_the_enclosing_graph_is_found_and_runs():
    encoder = scan_encoder(int8_weights(8))
    onnx.checker.check_model(encoder, full_check=True)
    (node,) = saturation_risks(encoder)
    assert (node.graph, node.node, node.weight, node.activation) == ("Scan 'encoder' body", "encoder/mm", "w", "uint8")
    assert np.array_equal(node.weights, int8_weights(8))
    assert saturation_risks(scan_encoder(int8_weights(7))) == []
    # ONNX Runtime takes it: the weight of the body is the outer graph's initializer.
    session = ort.InferenceSession(encoder.SerializeToString(), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"x": np.linspace(-1, 1, 26, dtype=np.float32).reshape(2, 13)})
    assert scores.shape == (2, 4) and scores.dtype == np.int32


def test_nested_subgraphs_are_named_by_their_path():
    inner = helper.make_graph(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["y"]),
        ],
        "inner",
        [],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
    )
    empty = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "empty", [], [helper.make_tensor_value_info("y", 0, None)]
    )
    outer_branch = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="inner_choice", then_branch=empty, else_branch=inner)],
        "outer_branch",
        [],
        [helper.make_tensor_value_info("y", 0, None)],
    )
    nested = model(
        [helper.make_node("If", ["flag"], ["y"], name="choice", then_branch=outer_branch, else_branch=empty)],
        [
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 13]),
        ],
        [helper.make_tensor_value_info("y", 0, None)],
        [numpy_helper.from_array(int8_weights(8), "w")],
    )
    (node,) = integer_nodes(nested)
    assert node.graph == "If 'choice' then_branch > If 'inner_choice' else_branch"
    assert node.node == "#1 MatMulInteger"  # unnamed: its index in its graph
    assert node.can_saturate and node.weight_range == (-127, 127)


def test_conv_integer_over_uint8_inputs_is_checked_like_a_matmul():
    kernel = np.array([[[[-100, 3], [7, 90]]]], np.int8)
    (node,) = integer_nodes(conv_integer(kernel))
    assert (node.op_type, node.node, node.activation, node.weight) == (
        "ConvInteger",
        "#0 ConvInteger",
        "uint8",
        "kernel",
    )
    assert node.can_saturate and node.weight_bits == 8
    assert saturation_risks(conv_integer(kernel // 2)) == []  # [-50, 45]: 7 bits


def test_qlinear_ops_take_their_weight_from_input_3_and_int8_activations_count():
    inputs = ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    matmul = model(
        [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("QLinearMatMul", inputs, ["y"], name="qmm"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 13])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, ["N", 4])],
        [
            numpy_helper.from_array(np.array(0.1, np.float32), "xs"),
            numpy_helper.from_array(np.array(0, np.int8), "xz"),  # int8 zero point: int8 activations
            numpy_helper.from_array(int8_weights(8), "w"),
            numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
            numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
            numpy_helper.from_array(np.array(0, np.int8), "yz"),
        ],
    )
    (node,) = saturation_risks(matmul)
    assert (node.op_type, node.activation, node.weight) == ("QLinearMatMul", "int8", "w")


def test_onnx_runtime_fused_forms_are_found_in_their_domain():
    fused = model(
        [
            helper.make_node(
                "DynamicQuantizeMatMul", ["x", "w", "ws", "wz"], ["y"], name="dqmm", domain="com.microsoft"
            ),
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node(
                "MatMulIntegerToFloat", ["xq", "w7", "xs", "ws", "xz"], ["z"], name="mitf", domain="com.microsoft"
            ),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 13])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            numpy_helper.from_array(int8_weights(8), "w"),
            numpy_helper.from_array(int8_weights(7), "w7"),
            numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
        ],
        MS_OPSET,
    )
    found = {n.node: n for n in integer_nodes(fused)}
    assert set(found) == {"dqmm", "mitf"}
    assert (found["dqmm"].domain, found["dqmm"].activation, found["dqmm"].can_saturate) == (
        "com.microsoft",
        "uint8",  # the op quantises its float input to uint8 itself
        True,
    )
    assert (found["mitf"].activation, found["mitf"].weight_bits, found["mitf"].can_saturate) == ("uint8", 7, False)


def test_a_weight_that_is_not_a_constant_counts_as_all_its_bits():
    def dynamic(weight_type: int, quantized: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])]
        weight = "w_in"
        if quantized:  # both operands quantised on the fly: U8U8
            nodes.append(helper.make_node("DynamicQuantizeLinear", ["w_in"], ["wq", "wsc", "wz"]))
            weight = "wq"
        nodes.append(helper.make_node("MatMulInteger", ["xq", weight, "xz"], ["y"], name="mm"))
        return model(
            nodes,
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 13]),
                helper.make_tensor_value_info("w_in", weight_type, [13, 4]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4])],
            [],
        )

    (node,) = integer_nodes(dynamic(TensorProto.INT8, quantized=False))
    assert node.weights.size == 0 and node.weights.dtype == np.int8 and node.weight_range is None
    assert node.weight_bits == 8 and node.can_saturate
    assert "weights not a constant: 8 bits assumed" in node.describe()
    (node,) = integer_nodes(dynamic(TensorProto.FLOAT, quantized=True))
    assert node.weights.dtype == np.uint8 and not node.can_saturate


def test_an_activation_type_only_shape_inference_knows_is_found():
    # Max of two uint8 graph inputs: no rule of the walker knows its type; onnx's shape inference does.
    inferred = model(
        [
            helper.make_node("Max", ["a", "b"], ["ab"]),
            helper.make_node("MatMulInteger", ["ab", "w"], ["y"], name="mm"),
        ],
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, ["N", 13]),
            helper.make_tensor_value_info("b", TensorProto.UINT8, ["N", 13]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4])],
        [numpy_helper.from_array(int8_weights(8), "w")],
    )
    assert integer_nodes(inferred)[0].activation == "uint8"
    # A type nothing can tell counts as 8 bits: the rule is conservative.
    unknown = model(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"], name="mm", domain="")],
        [helper.make_tensor_value_info("b", TensorProto.UINT8, ["N", 13])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 4])],
        [numpy_helper.from_array(int8_weights(8), "w")],
    )
    (node,) = integer_nodes(unknown)
    assert node.activation == "unknown" and node.can_saturate


def test_a_model_without_integer_nodes_has_none_and_nodes_compare_by_name():
    plain = model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.ones((13, 4), np.float32), "w")],
    )
    assert integer_nodes(plain) == [] and saturation_risks(plain) == []
    a, b = integer_nodes(matmul_integer(int8_weights(8)))[0], integer_nodes(matmul_integer(int8_weights(8)))[0]
    assert a == b and isinstance(a, IntegerNode) and "weights=" not in repr(a)
