"""Tensors on the wire: `adrank.v1.Tensor` <-> numpy, shared by the server and the client.

A tensor travels as {name, dtype, shape, raw little-endian bytes}. Decoding a numeric tensor is one
`numpy.frombuffer` over the message's bytes (no per-element work); its length is checked
against shape and dtype first, so a malformed tensor is refused with a message naming it. Text is a
STRING tensor: each element a 4-byte little-endian length, then its UTF-8 bytes (KServe v2's layout).

Decoded arrays are read-only views of the request message: keep the message alive while they are used.
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
    """A tensor that cannot be decoded; the message names it (maps to INVALID_ARGUMENT)."""


def dtype_name(wire_dtype: int) -> str:
    """The numpy-style name of a wire dtype ("float32", "string"), or its number if unknown."""
    if wire_dtype == pb.DATA_TYPE_STRING:
        return "string"
    dtype = _DTYPES.get(wire_dtype)
    return dtype.name if dtype is not None else f"unknown dtype {wire_dtype}"


def _element_count(where: str, shape: list[int]) -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise WireError(f"{where}: shape {shape} has a negative dimension")
        count *= dim
    return count


def decode(tensor: pb.Tensor, where: str) -> np.ndarray:
    """The tensor as a numpy array (numeric: a zero-copy view; STRING: an object array of str).

    `where` names the tensor in errors, e.g. "candidates tensor 'dense'".
    """
    shape = list(tensor.shape)
    if not shape:
        raise WireError(f"{where}: shape is empty; the leading dimension is the row count")
    count = _element_count(where, shape)
    raw = tensor.raw_data  # one read: each access of a bytes field materialises it anew
    if tensor.dtype == pb.DATA_TYPE_STRING:
        return _decode_strings(raw, shape, count, where)
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise WireError(f"{where}: unknown dtype {tensor.dtype}")
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise WireError(f"{where}: raw_data has {len(raw)} bytes, but shape {shape} of {dtype.name} needs {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _decode_strings(raw: bytes, shape: list[int], count: int, where: str) -> np.ndarray:
    values: list[str] = []
    offset = 0
    view = memoryview(raw)
    for index in range(count):
        if offset + 4 > len(raw):
            raise WireError(f"{where}: raw_data ends inside the length of string {index} of {count}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(raw):
            raise WireError(f"{where}: string {index} claims {length} bytes but raw_data ends first")
        try:
            values.append(bytes(view[offset : offset + length]).decode("utf-8"))
        except UnicodeDecodeError as error:
            raise WireError(f"{where}: string {index} is not valid UTF-8 ({error.reason})") from error
        offset += length
    if offset != len(raw):
        raise WireError(f"{where}: raw_data has {len(raw) - offset} bytes after the last of {count} strings")
    array = np.empty(count, dtype=object)
    array[:] = values
    return array.reshape(shape)


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
    return pb.Tensor(name=name, dtype=code, shape=array.shape, raw_data=np.ascontiguousarray(little).tobytes())


def encode_all(tensors: Mapping[str, np.ndarray | list[str] | str] | None) -> list[pb.Tensor]:
    return [encode(name, value) for name, value in (tensors or {}).items()]
