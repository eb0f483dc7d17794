"""Tensors on the wire: numpy -> adrank.v1.Tensor -> numpy, and the errors that name the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from adrank.v1 import ranking_pb2 as pb
from adrank.wire import WireError, decode, encode


@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"])
def test_numeric_tensors_round_trip_exactly(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    tensor = encode("x", array)
    assert list(tensor.shape) == [2, 3, 4]
    assert len(tensor.raw_data) == array.nbytes
    decoded = decode(tensor, "candidates tensor 'x'")
    assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


def test_big_endian_arrays_travel_little_endian():
    array = np.array([[1.5, -2.0]], dtype=">f4")
    tensor = encode("x", array)
    assert tensor.raw_data == np.array([[1.5, -2.0]], dtype="<f4").tobytes()
    assert np.array_equal(decode(tensor, "x"), array)


def test_text_round_trips_as_length_prefixed_utf8():
    tensor = encode("query", ["running shoes", "", "café crème"])
    assert tensor.dtype == pb.DATA_TYPE_STRING
    assert tensor.raw_data[:4] == (13).to_bytes(4, "little")
    assert decode(tensor, "q").tolist() == ["running shoes", "", "café crème"]
    assert decode(encode("query", "one"), "q").tolist() == ["one"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (pb.Tensor(name="x", dtype=pb.DATA_TYPE_FLOAT32, shape=[2, 3], raw_data=b"\0" * 20), "20 bytes"),
        (pb.Tensor(name="x", dtype=pb.DATA_TYPE_FLOAT32, shape=[2, -3], raw_data=b""), "negative"),
        (pb.Tensor(name="x", dtype=pb.DATA_TYPE_FLOAT32, shape=[], raw_data=b""), "shape is empty"),
        (pb.Tensor(name="x", dtype=99, shape=[1], raw_data=b"\0"), "unknown dtype 99"),
        (pb.Tensor(name="x", dtype=pb.DATA_TYPE_UNSPECIFIED, shape=[1], raw_data=b"\0"), "unknown dtype 0"),
        (pb.Tensor(name="x", dtype=pb.DATA_TYPE_STRING, shape=[1], raw_data=b"\x05\0\0\0ab"), "claims 5 bytes"),
        (pb.Tensor(name="x", dtype=pb.DATA_TYPE_STRING, shape=[2], raw_data=b"\x01\0\0\0a"), "ends inside"),
        (pb.Tensor(name="x", dtype=pb.DATA_TYPE_STRING, shape=[1], raw_data=b"\x01\0\0\0ab"), "after the last"),
        (pb.Tensor(name="x", dtype=pb.DATA_TYPE_STRING, shape=[1], raw_data=b"\x01\0\0\0\xff"), "UTF-8"),
    ],
)
def test_malformed_tensors_are_refused_naming_them(tensor, message):
    with pytest.raises(WireError) as error:
        decode(tensor, "candidates tensor 'x'")
    assert "candidates tensor 'x'" in str(error.value)
    assert message in str(error.value)
