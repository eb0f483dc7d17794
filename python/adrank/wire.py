"""Tensors on the wire, as a client builds them: numpy -> `adrank.v1.Tensor`.

A tensor travels as {name, dtype, shape, raw little-endian bytes}. Text is a STRING tensor: each element
a 4-byte little-endian length, then its UTF-8 bytes (KServe v2's layout). The server decodes and checks
them in the core (cpp/wire_request.h), for both front ends.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

from adrank.v1 import ranking_pb2 as pb

_DTYPES: dict[int, np.dtype] = {
    pb.DATA_TYPE_BOOL: np.dtype(np.bool_),
    pb.DATA_TYPE_UINT8: np.dtype("<u1"),
    pb.DATA_TYPE_INT8: np.dtype("<i1"),
    pb.DATA_TYPE_INT16: np.dtype("<i2"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
    pb.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
}
_WIRE_DTYPES: dict[str, int] = {dtype.name: code for code, dtype in _DTYPES.items()}
_WIRE_DTYPES["string"] = pb.DATA_TYPE_STRING
_LENGTH = struct.Struct("<I")


class WireError(ValueError):
    """An array that has no wire type; the message names the tensor."""


def encode(name: str, value: np.ndarray | list[str] | str) -> pb.Tensor:
    """A numpy array (or text: a str, a list of str, an array of str) as a wire tensor."""
    if isinstance(value, str):
        value = np.array([value], dtype=object)
    array = np.asarray(value)
    if array.dtype.kind in ("U", "S", "O"):
        raw = bytearray()
        for item in array.reshape(-1):
            data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            raw += _LENGTH.pack(len(data)) + data
        return pb.Tensor(name=name, dtype=pb.DATA_TYPE_STRING, shape=array.shape, raw_data=bytes(raw))
    code = _WIRE_DTYPES.get(array.dtype.name)
    if code is None:
        raise WireError(f"tensor '{name}': dtype {array.dtype} has no wire type")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return pb.Tensor(
        name=name, dtype=pb.DataType.Name(code), shape=array.shape, raw_data=np.ascontiguousarray(little).tobytes()
    )


def encode_all(tensors: Mapping[str, np.ndarray | list[str] | str] | None) -> list[pb.Tensor]:
    return [encode(name, value) for name, value in (tensors or {}).items()]
