"""Integer kernels: which integer MatMul/Conv nodes of an ONNX model can saturate on CPUs without VNNI.

The rule: a node can saturate when it multiplies 8-bit activations (uint8 or int8; a type that cannot be told
counts as 8-bit) by int8 weights that use more than 7 bits, i.e. some |w| > 64. Weights with every |w| <= 64
(`quantize_dynamic(..., reduce_range=True)`) and uint8 weights (U8U8, `weight_type=QuantType.QUInt8`) cannot.

Why: on x86-64 CPUs without VNNI (AVX2 only, e.g. AMD EPYC before Zen 4), ONNX Runtime's U8S8 integer GEMM
(MLAS) multiplies with `vpmaddubsw`, which adds each pair of adjacent uint8 x int8 products in a signed 16-bit
lane with saturation: 255 * 127 * 2 = 64,770 does not fit in 32,767, while 255 * 64 * 2 = 32,640 does. VNNI
CPUs (`vpdpbusd`) add in 32 bits, and the U8U8 kernels widen to 16 bits before they multiply, so neither
saturates. A model whose nodes can saturate therefore scores differently on the two kinds of CPU (1.95e-2 on
the bundled relevance model's version 1). The rule is conservative: saturation needs two adjacent products
whose sum leaves 16 bits, and any |w| > 64 is taken to allow it; a weight that is not a constant (computed,
or a graph input) is taken to use all the bits of its type.

Which nodes: MatMulInteger and ConvInteger (activation input 0, weight input 1), QLinearMatMul and
QLinearConv (inputs 0 and 3), and ONNX Runtime's com.microsoft forms: MatMulIntegerToFloat and QAttention
(0 and 1), QGemm and QLinearConv (0 and 3), DynamicQuantizeMatMul (1; its float input is quantised to uint8
by the op itself) and DynamicQuantizeLSTM (its W and R, one IntegerNode each; X quantised to uint8). They are
found everywhere in the model: the main graph, every subgraph (Scan and Loop bodies, If branches, nested to
any depth) and the model's local functions. A name is resolved as ONNX scoping resolves it: the subgraph's
own initializers, Constant nodes and values first, then those of each enclosing graph.

An input's dtype is its initializer's, its graph input's or value_info's; uint8 when DynamicQuantizeLinear
produces it; the zero point's when QuantizeLinear does; a Cast's `to`; through Reshape, Transpose and the
like, their input's. What is still unknown is looked up once more after onnx's shape inference (on a copy;
a model it cannot infer stays "unknown", never an error).

Thread-safety: pure functions of the model, which they do not modify.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

MS_DOMAIN = "com.microsoft"
# Every |w| within this is safe: 2 * 255 * 64 = 32,640 fits a signed 16-bit lane (see the header).
SAFE_INT8_MAGNITUDE = 64
EIGHT_BIT_ACTIVATIONS = ("uint8", "int8", "unknown")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class IntegerNode:
    graph: str  # where: "main graph", or e.g. "Scan '/encoder/Scan' body" (nested path joined by " > ")
    node: str  # the node's name, or "#<index> <op_type>" when unnamed
    op_type: str
    domain: str
    activation: str  # onnx dtype name of the activation input: "uint8", "int8" or "unknown"
    weight: str  # the weight tensor's name
    # The weight initializer's values (integer array, its own shape and dtype), or an empty array of the weight's
    # dtype (int8 when that cannot be told) when the weight is not a constant. Not compared: names identify.
    weights: np.ndarray = field(compare=False, repr=False)

    @property
    def weight_bits(self) -> int:
        """Bits the weights use: for int8, b where every |w| <= 2^(b-1) (7 when every |w| <= 64); for uint8, the
        bits of the largest value. A weight that is not a constant uses all of its type's."""
        if self.weights.size == 0:
            return self.weights.dtype.itemsize * 8
        if self.weights.dtype.kind == "i":
            magnitude = int(np.max(np.abs(self.weights.astype(np.int64))))
            return max(1, (magnitude - 1).bit_length() + 1) if magnitude else 1
        return max(1, int(np.max(self.weights)).bit_length())

    @property
    def can_saturate(self) -> bool:
        """int8 weights using more than 7 bits (some |w| > 64) with 8-bit activations (uint8, int8, unknown)."""
        return self.weights.dtype == np.int8 and self.weight_bits > 7 and self.activation in EIGHT_BIT_ACTIVATIONS

    @property
    def weight_range(self) -> tuple[int, int] | None:
        """The weights' smallest and largest value; None when they are not a constant."""
        if self.weights.size == 0:
            return None
        return int(self.weights.min()), int(self.weights.max())

    def describe(self) -> str:
        """One line naming the node and its weights, e.g. "MatMulInteger 'mm' in Scan 'enc' body (int8 weight 'w',
        uint8 activations): weights span [-127, 127]: 8 bits"."""
        span = self.weight_range
        values = (
            f"not a constant: {self.weight_bits} bits assumed"
            if span is None
            else (f"span [{span[0]}, {span[1]}]: {self.weight_bits} bits")
        )
        return (
            f"{self.op_type} '{self.node}' in {self.graph} ({self.weights.dtype.name} weight '{self.weight}', "
            f"{self.activation} activations): weights {values}"
        )


def integer_nodes(model: onnx.ModelProto) -> list[IntegerNode]:
    """Every integer MatMul/Conv of the model, subgraphs and local functions included, in graph order."""
    found = list(_integer_nodes(model, _Types()))
    if any(n.activation == UNKNOWN for n in found):
        inferred = _inferred_types(model)
        if inferred.by_graph:
            found = list(_integer_nodes(model, inferred))
    return found


def saturation_risks(model: onnx.ModelProto) -> list[IntegerNode]:
    """The integer nodes that can saturate on CPUs without VNNI (IntegerNode.can_saturate)."""
    return [node for node in integer_nodes(model) if node.can_saturate]


# Implementation details follow. API users need not read.

# (domain, op_type) -> (activation input or None when the op quantises a float input to uint8 itself, weights)
_OPERANDS: dict[tuple[str, str], tuple[int | None, tuple[int, ...]]] = {
    ("", "MatMulInteger"): (0, (1,)),
    ("", "ConvInteger"): (0, (1,)),
    ("", "QLinearMatMul"): (0, (3,)),
    ("", "QLinearConv"): (0, (3,)),
    (MS_DOMAIN, "MatMulIntegerToFloat"): (0, (1,)),
    (MS_DOMAIN, "QAttention"): (0, (1,)),
    (MS_DOMAIN, "QGemm"): (0, (3,)),
    (MS_DOMAIN, "QLinearConv"): (0, (3,)),
    (MS_DOMAIN, "DynamicQuantizeMatMul"): (None, (1,)),
    (MS_DOMAIN, "DynamicQuantizeLSTM"): (None, (1, 2)),
}
# Ops whose output 0 has the dtype of their input 0.
_SAME_DTYPE = {"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Slice", "Gather"}
_MAX_HOPS = 32  # through chains of the ops above; a longer chain is "unknown"


@dataclass
class _Types:
    """Value dtypes from shape inference, per graph path (empty: not inferred)."""

    by_graph: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Scope:
    """One graph and where ONNX scoping looks next for a name it does not define."""

    path: str
    constants: dict[str, onnx.TensorProto]
    types: dict[str, int]  # elem types declared here: inputs, outputs, value_info, initializers
    producers: dict[str, onnx.NodeProto]
    parent: _Scope | None

    def chain(self) -> Iterator[_Scope]:
        scope: _Scope | None = self
        while scope is not None:
            yield scope
            scope = scope.parent


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index} {node.op_type}"


def _scope(graph: onnx.GraphProto, path: str, parent: _Scope | None, inferred: _Types) -> _Scope:
    constants = {t.name: t for t in graph.initializer}
    types = dict(inferred.by_graph.get(path, {}))
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    types.update({t.name: t.data_type for t in graph.initializer})
    return _Scope(path, constants, types, {}, parent)


def _add_nodes(scope: _Scope, nodes: list[onnx.NodeProto]) -> None:
    for node in nodes:
        for output in node.output:
            scope.producers[output] = node
        if node.op_type == "Constant" and _domain(node) == "":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and node.output:
                scope.constants[node.output[0]] = value
                scope.types[node.output[0]] = value.data_type


def _child_path(parent: str | None, node: onnx.NodeProto, index: int, attribute: str) -> str:
    here = f"{node.op_type} '{_label(node, index)}' {attribute}"
    return here if parent is None else f"{parent} > {here}"


def _graphs(model: onnx.ModelProto, inferred: _Types) -> Iterator[tuple[_Scope, list[onnx.NodeProto]]]:
    """Every graph with its scope: the main graph and its subgraphs (depth first), then local functions."""
    main = _scope(model.graph, "main graph", None, inferred)
    _add_nodes(main, list(model.graph.node))
    yield from _with_subgraphs(main, list(model.graph.node), None, inferred)
    for function in model.functions:
        scope = _Scope(f"function '{function.name}' ({function.domain})", {}, {}, {}, None)
        _add_nodes(scope, list(function.node))
        yield from _with_subgraphs(scope, list(function.node), scope.path, inferred)


def _with_subgraphs(
    scope: _Scope, nodes: list[onnx.NodeProto], path: str | None, inferred: _Types
) -> Iterator[tuple[_Scope, list[onnx.NodeProto]]]:
    yield scope, nodes
    for index, node in enumerate(nodes):
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else []
            if attribute.type == onnx.AttributeProto.GRAPHS:
                subgraphs = list(attribute.graphs)
            for k, graph in enumerate(subgraphs):
                name = attribute.name if len(subgraphs) == 1 else f"{attribute.name}[{k}]"
                child_path = _child_path(path, node, index, name)
                child = _scope(graph, child_path, scope, inferred)
                _add_nodes(child, list(graph.node))
                yield from _with_subgraphs(child, list(graph.node), child_path, inferred)


def _integer_nodes(model: onnx.ModelProto, inferred: _Types) -> Iterator[IntegerNode]:
    for scope, nodes in _graphs(model, inferred):
        for index, node in enumerate(nodes):
            operands = _OPERANDS.get((_domain(node), node.op_type))
            if operands is None:
                continue
            activation_input, weight_inputs = operands
            activation = "uint8" if activation_input is None else _dtype_name(_input(node, activation_input), scope)
            for position in weight_inputs:
                weight = _input(node, position)
                yield IntegerNode(
                    graph=scope.path,
                    node=_label(node, index),
                    op_type=node.op_type,
                    domain=_domain(node),
                    activation=activation,
                    weight=weight,
                    weights=_weights(weight, scope),
                )


def _input(node: onnx.NodeProto, position: int) -> str:
    return node.input[position] if position < len(node.input) else ""


def _weights(name: str, scope: _Scope) -> np.ndarray:
    for s in scope.chain():
        if name in s.constants:
            return numpy_helper.to_array(s.constants[name])
        if name in s.producers or name in s.types:
            break  # defined here, and not a constant: the nearest definition shadows any outer one
    dtype = _dtype(name, scope)
    # Unknown: int8, the type that can saturate (the rule is conservative).
    return np.empty(0, dtype=np.int8 if dtype is None else dtype)


def _dtype_name(name: str, scope: _Scope) -> str:
    dtype = _dtype(name, scope)
    return UNKNOWN if dtype is None else dtype.name


def _dtype(name: str, scope: _Scope) -> np.dtype | None:
    for _ in range(_MAX_HOPS):
        elem_type, producer, where = _lookup(name, scope)
        if elem_type:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
        if producer is None or where is None:
            return None
        known = _produced_dtype(producer, where)
        if known is not None or producer.op_type not in _SAME_DTYPE or not producer.input:
            return known
        name, scope = producer.input[0], where
    return None


def _lookup(name: str, scope: _Scope) -> tuple[int, onnx.NodeProto | None, _Scope | None]:
    """The declared elem type (0 if none) and the producing node of the nearest scope that defines `name`."""
    for s in scope.chain():
        if name in s.types or name in s.producers:
            return s.types.get(name, 0), s.producers.get(name), s
    return 0, None, None


def _produced_dtype(node: onnx.NodeProto, scope: _Scope) -> np.dtype | None:
    if node.op_type == "DynamicQuantizeLinear" and _domain(node) == "":
        return np.dtype(np.uint8)
    if node.op_type == "QuantizeLinear":
        zero_point = _input(node, 2)
        if zero_point:
            return _dtype(zero_point, scope)
        output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(output_dtype)) if output_dtype else np.dtype(np.uint8)
    if node.op_type == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), 0)
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to)) if to else None
    return None


def _inferred_types(model: onnx.ModelProto) -> _Types:
    """The value dtypes onnx's shape inference finds, per graph path; none if it cannot run on this model."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model that inference cannot handle keeps its unknowns: the rule is conservative
        return _Types()
    types = _Types()
    for scope, _ in _graphs(inferred, _Types()):
        types.by_graph[scope.path] = {name: t for name, t in scope.types.items() if t}
    return types
