"""Tensors on the wire: `adrank.v1.Tensor` <-> numpy, shared by the server and the client.

A tensor travels as {name, dtype, shape, raw little-endian bytes}. Decoding a numeric tensor is one
`numpy.frombuffer` over the message's bytes (no per-element work); its length is checked
against shape and dtype first, so a malformed tensor is refused with a message naming it. Text is a
STRING tensor: each element a 4-byte little-endian length, then its UTF-8 bytes (KServe v2's layout).

A request arrives as bytes and is parsed here (`parse_request`): bytes that are not an
adrank.v1.RankRequest are refused with a message naming the field path and byte offset where they
stop being one, and why — the words of the C++ front end (cpp/wire_request.h ParseError).

Decoded arrays are read-only views of the request message: keep the message alive while they are used.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

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
# numpy's limit on an array's dimensions; a shape with more is refused, naming the tensor.
_MAX_DIMS = 32
_MAX_NESTING = 100  # protobuf's own recursion limit
_PACKABLE = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_BOOL,
    FieldDescriptor.TYPE_ENUM,
}


class WireError(ValueError):
    """A tensor that cannot be decoded; the message names it (maps to INVALID_ARGUMENT)."""


def parse_request(data: bytes) -> pb.RankRequest:
    """The request's bytes as a RankRequest; WireError naming where they stop being one."""
    try:
        return pb.RankRequest.FromString(data)
    except (DecodeError, RecursionError, ValueError):
        raise WireError(parse_error(data)) from None


def parse_error(data: bytes) -> str:
    """Why `data` (which protobuf refused) is not a RankRequest: the field, the byte, the defect."""
    why = _ParseWalker(data).message(0, len(data), pb.RankRequest.DESCRIPTOR, "", 0) or "protobuf refused it"
    return f"request: not an adrank.v1.RankRequest ({len(data)} bytes): {why}"


class _ParseWalker:
    """Walks wire bytes by a descriptor to the first defect (only on the error path)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.group_end = 0

    def _varint(self, pos: int, end: int) -> tuple[int, int] | None:
        value = 0
        for shift in range(0, 70, 7):
            if pos >= end:
                return None
            byte = self._data[pos]
            pos += 1
            if shift == 63 and byte > 1:
                return None  # beyond 64 bits
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
        return None

    @staticmethod
    def _fail(at: int, where: str, what: str) -> str:
        return f"{where or 'the message'} at byte {at}: {what}"

    def message(self, pos: int, end: int, kind: Descriptor | None, path: str, depth: int, group: int = 0) -> str | None:
        """None if the bytes in [pos, end) are well formed, else the defect."""
        if depth > _MAX_NESTING:
            return self._fail(pos, path, f"nested more than {_MAX_NESTING} deep")
        seen: dict[int, int] = {}
        while pos < end:
            tag_at = pos
            read = self._varint(pos, end)
            if read is None:
                return self._fail(tag_at, path, "a field tag is cut off or over-long")
            tag, pos = read
            number, wire = tag >> 3, tag & 7
            if number == 0 or number > 536870911:
                return self._fail(tag_at, path, f"field number {number}")
            field = kind.fields_by_number.get(number) if kind is not None else None
            name = field.name if field is not None else f"field {number}"
            where = f"{path}.{name}" if path else name
            if field is not None and field.is_repeated:
                where += f"[{seen.get(number, 0)}]"
                seen[number] = seen.get(number, 0) + 1
            if wire == 0:
                read = self._varint(pos, end)
                if read is None:
                    return self._fail(tag_at, where, "its varint is cut off or over-long")
                pos = read[1]
            elif wire in (1, 5):
                width = 8 if wire == 1 else 4
                if end - pos < width:
                    return self._fail(tag_at, where, f"its {width} bytes are cut off")
                pos += width
            elif wire == 2:
                read = self._varint(pos, end)
                if read is None:
                    return self._fail(tag_at, where, "its length is cut off or over-long")
                length, pos = read
                if length > end - pos:
                    return self._fail(tag_at, where, f"claims {length} bytes, {end - pos} remain")
                if field is not None:
                    defect = self._payload(pos, pos + length, field, where, depth)
                    if defect is not None:
                        return defect
                pos += length
            elif wire == 3:  # a group (proto2's, unknown here): its fields up to the matching end tag
                defect = self.message(pos, end, None, where, depth + 1, number)
                if defect is not None:
                    return defect
                pos = self.group_end
            elif wire == 4:
                if group == number:
                    self.group_end = pos
                    return None
                return self._fail(tag_at, where, "an end-group tag with no group open")
            else:
                return self._fail(tag_at, where, f"invalid wire type {wire}")
        if group:
            return self._fail(end, path, f"group {group} is never closed")
        return None

    def _payload(self, pos: int, end: int, field: FieldDescriptor, where: str, depth: int) -> str | None:
        """A length-delimited known field: a message, a string (UTF-8), or packed varints."""
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message(pos, end, field.message_type, where, depth + 1)
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                self._data[pos:end].decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(pos, where, "a string that is not valid UTF-8")
        elif field.type in _PACKABLE and field.is_repeated:
            while pos < end:
                read = self._varint(pos, end)
                if read is None:
                    return self._fail(pos, where, "a packed varint is cut off or over-long")
                pos = read[1]
        return None


def _element_count(where: str, shape: list[int]) -> int:
    if len(shape) > _MAX_DIMS:
        raise WireError(f"{where}: shape has {len(shape)} dimensions; at most {_MAX_DIMS}")
    count = 1
    for dim in shape:
        if dim < 0:
            raise WireError(f"{where}: shape {shape} has a negative dimension")
        # As the C++ front end: no tensor of more than 2^40 elements, zero-sized or not (numpy could not
        # even describe its shape).
        if dim > 1 << 40 or (dim and count > (1 << 40) // dim):
            raise WireError(f"{where}: shape {shape} is too large")
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
    return pb.Tensor(
        name=name, dtype=pb.DataType.Name(code), shape=array.shape, raw_data=np.ascontiguousarray(little).tobytes()
    )


def encode_all(tensors: Mapping[str, np.ndarray | list[str] | str] | None) -> list[pb.Tensor]:
    return [encode(name, value) for name, value in (tensors or {}).items()]
