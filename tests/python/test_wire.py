"""Tensors on the wire as the client encodes them: numpy -> adrank.v1.Tensor, read back as the server
reads them (raw little-endian bytes; text length-prefixed UTF-8). The server's decoding and its errors are
the core's (cpp/wire_request_test.cc, and test_serving / test_wire_fuzz against a running server)."""

from __future__ import annotations

import numpy as np
import pytest

from adrank.v1 import ranking_pb2 as pb
from adrank.wire import WireError, encode


def strings(tensor: pb.Tensor) -> list[str]:
    raw, out, at = tensor.raw_data, [], 0
    while at < len(raw):
        length = int.from_bytes(raw[at : at + 4], "little")
        out.append(raw[at + 4 : at + 4 + length].decode("utf-8"))
        at += 4 + length
    return out


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"])
def test_numeric_tensors_travel_as_their_exact_little_endian_bytes(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    tensor = encode("x", array)
    assert list(tensor.shape) == [2, 3, 4]
    assert pb.DataType.Name(tensor.dtype) == f"DATA_TYPE_{dtype.upper()}"
    assert tensor.raw_data == array.astype(array.dtype.newbyteorder("<")).tobytes()


def test_big_endian_arrays_travel_little_endian():
    array = np.array([[1.5, -2.0]], dtype=">f4")
    tensor = encode("x", array)
    assert tensor.raw_data == np.array([[1.5, -2.0]], dtype="<f4").tobytes()


def test_text_travels_as_length_prefixed_utf8():
    tensor = encode("query", ["running shoes", "", "café crème"])
    assert tensor.dtype == pb.DATA_TYPE_STRING and list(tensor.shape) == [3]
    assert tensor.raw_data[:4] == (13).to_bytes(4, "little")
    assert strings(tensor) == ["running shoes", "", "café crème"]
    assert strings(encode("query", "one")) == ["one"]


def test_an_array_with_no_wire_type_is_refused_naming_the_tensor():
    with pytest.raises(WireError) as error:
        encode("when", np.array(["2026-12-04"], dtype="datetime64[D]"))
    assert "tensor 'when'" in str(error.value) and "no wire type" in str(error.value)
