"""Tensors on the wire: numpy arrays to and from chunked ``TensorChunk`` streams.

No pickle: a tensor is its name, dtype (from an allowed list), shape and raw
little-endian C-order bytes, split into chunks no larger than ``chunk_bytes``: a header
chunk (name, dtype, shape, total_bytes, first data), then chunks that carry only data,
as the .proto says. The decoder checks every header against the limits and against the
tensors it expects *before* it keeps any data, and raises :class:`WireError` (which
servers turn into INVALID_ARGUMENT or RESOURCE_EXHAUSTED).

The data path copies as little as Python gRPC allows. Sending, a chunk is written in
protobuf's wire format straight from the array's memory (:class:`WireMessage`: the
header fields serialised by protobuf, then the data field appended, one copy); gRPC
sends those bytes as they are (:func:`wire_serializer`). Receiving, a tensor that came
in one chunk is a numpy view of the message's bytes (no copy); one in several chunks is
copied once into its own buffer. Chunks carry 1 MiB of data, less only if the message
limit needs it (:func:`chunk_bytes_for`).

A call that fits one message goes as one message each way (``RunTailUnary``,
``EchoUnary``: on loopback a unary call costs a fraction of a stream's): the same
``TailRequest``/``TailReply``/``TensorChunk`` messages, each tensor in one chunk, joined
into the enclosing message with one copy (:func:`unary_wire`) and read back without
protobuf copying the data (:func:`read_unary`: each tensor a view of the received bytes).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from dnntune.rpc.limits import MAX_NAME_CHARS, MAX_RANK, RequestLimits, quoted

ALLOWED_DTYPES = ("float16", "float32", "float64", "bfloat16", "int8", "uint8", "int16",
                  "int32", "int64", "bool")
# Room in a message for everything beside a chunk's data: name (at most 256 characters),
# dtype, shape (at most 8 dimensions), total_bytes, the field tags and the enclosing
# TailRequest/TailReply. A few hundred bytes at most; 64 KiB leaves a wide margin.
MESSAGE_OVERHEAD_BYTES = 64 << 10
GRPC_DEFAULT_MESSAGE_BYTES = 4 << 20  # what any gRPC peer accepts unless told otherwise
# Data per chunk. Larger chunks were measured slower, not faster: glibc hands out each
# allocation above its mmap threshold as fresh pages, and their page faults cost more
# than gRPC's per-message work (a 5 MB Echo on loopback: 12.1 ms in 1 MiB chunks, 16.2
# ms in 256 KiB, 35.9 ms in 4032 KiB; `benchmarks/bench_transfer.py --chunk-kib N`,
# docs/servers.md). With servers keeping freed buffers (dnntune.allocator) larger chunks
# are still no faster: 17.0-20.9 ms in 4032 KiB against 15.1-15.3 (docs/transport.md).
DEFAULT_CHUNK_BYTES = 1 << 20
_DATA_TAG = b"\x2a"  # TensorChunk.data: field 5, length-delimited


class WireError(ValueError):
    """A malformed or oversized tensor stream; ``code`` is the gRPC status name to use."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class WireMessage:
    """A message in protobuf's wire format, as the pieces that make it up (the tensor's
    data among them, not yet copied); :func:`wire_serializer` sends it as is, and
    :func:`unary_wire` puts several into one enclosing message with one copy."""

    parts: tuple[Any, ...]

    @property
    def wire(self) -> bytes:
        return b"".join(self.parts)


def wire_serializer(message_type: Any) -> Callable[[Any], bytes]:
    """The serializer of ``message_type`` for gRPC, passing :class:`WireMessage` through."""
    serialize = message_type.SerializeToString

    def run(message: Any) -> bytes:
        return message.wire if isinstance(message, WireMessage) else serialize(message)
    return run


def chunk_bytes_for(max_message_bytes: int) -> int:
    """Data bytes per chunk: :data:`DEFAULT_CHUNK_BYTES`, or less if a chunk with its
    header would not fit ``max_message_bytes``."""
    return max(min(DEFAULT_CHUNK_BYTES, max_message_bytes - MESSAGE_OVERHEAD_BYTES), 1 << 12)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _wrapped(parts: list[Any], field: int | None) -> list[Any]:
    """``parts`` as field ``field`` (length-delimited) of an enclosing message."""
    if field is None:
        return parts
    return [_varint(field << 3 | 2), _varint(sum(len(p) for p in parts)), *parts]


def _chunk(header: bytes, data: memoryview, field: int | None) -> WireMessage:
    """One ``TensorChunk`` (inside field ``field`` of an enclosing message, if given).

    Its data is not copied here: :attr:`WireMessage.wire` or :func:`unary_wire` joins
    the parts, the only copy of the data on this side.
    """
    parts: list[Any] = [header]
    if len(data):
        parts += [_DATA_TAG, _varint(len(data)), data]
    return WireMessage(tuple(_wrapped(parts, field)))


def encode_tensor(pb2: Any, name: str, array: np.ndarray,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, field: int | None = None
                  ) -> Iterator[WireMessage]:
    """Yield ``TensorChunk`` messages for ``array``: a header chunk, then data.

    Args:
        pb2: The generated messages module.
        name: The tensor's name.
        array: Any array of an allowed dtype (copied only if not C-ordered little-endian).
        chunk_bytes: Data bytes per chunk (:func:`chunk_bytes_for` the message limit).
        field: When given, each chunk is wrapped as this field of an enclosing message
            (``TailRequest.tensor`` is 2, ``TailReply.tensor`` is 1).
    """
    header, raw = _header_and_bytes(pb2, name, array, bulk=False)
    yield _chunk(header, raw[:chunk_bytes], field)
    for start in range(chunk_bytes, len(raw), chunk_bytes):
        yield _chunk(b"", raw[start:start + chunk_bytes], field)


def _header_and_bytes(pb2: Any, name: str, array: np.ndarray, bulk: bool
                      ) -> tuple[bytes, memoryview]:
    """A tensor's ``TensorChunk`` header fields (wire bytes) and its raw bytes (a view of
    the array's memory, copied only if not C-ordered little-endian)."""
    array = np.asarray(array)
    dtype = _dtype_name(array.dtype)
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"tensor {name!r}: dtype {dtype} is not one of {', '.join(ALLOWED_DTYPES)}")
    data = array
    if not (array.flags.c_contiguous and array.dtype.byteorder in _LITTLE):
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    raw = memoryview(data.reshape(-1).view(np.uint8).data)
    header = pb2.TensorChunk(name=name, dtype=dtype, shape=array.shape,
                             total_bytes=len(raw), bulk=bulk).SerializeToString()
    return header, raw


# Byte orders that are little-endian as they are: "<", "|" (one byte), and "=" (native)
# on a little-endian machine.
_LITTLE = ("<", "|", "=") if sys.byteorder == "little" else ("<", "|")
_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, remembered (numpy computes it in Python each time)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def encode_bulk(pb2: Any, named: Iterable[tuple[str, np.ndarray]], field: int | None = None
                ) -> tuple[list[WireMessage], list[memoryview]]:
    """Tensors for a call over the bulk channel (:mod:`dnntune.rpc.bulk`): their
    ``TensorChunk`` headers marked ``bulk`` (wrapped as ``field``, as
    :func:`encode_tensor` does), and their bytes for the bulk frame, in the same order."""
    headers, raws = [], []
    for name, array in named:
        header, raw = _header_and_bytes(pb2, name, array, bulk=True)
        headers.append(WireMessage(tuple(_wrapped([header], field))))
        raws.append(raw)
    return headers, raws


def encode_tensors(pb2: Any, named: Iterable[tuple[str, np.ndarray]],
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES, field: int | None = None
                   ) -> Iterator[WireMessage]:
    for name, array in named:
        yield from encode_tensor(pb2, name, array, chunk_bytes, field)


def unary_wire(messages: Iterable[Any], field: int = 1) -> bytes:
    """One message whose repeated field ``field`` holds ``messages`` in order (each a
    :class:`WireMessage` or a protobuf message), joined with one copy of the data.

    ``TailCall`` of ``TailRequest`` parts, ``TailResult`` of ``TailReply`` parts and
    ``TensorList`` of ``TensorChunk`` all have that field as 1.
    """
    parts: list[Any] = []
    for message in messages:
        inner = (list(message.parts) if isinstance(message, WireMessage)
                 else [message.SerializeToString()])
        parts += _wrapped(inner, field)
    return b"".join(parts)


def unary_serializer(message: bytes) -> bytes:
    """gRPC serializer of a message :func:`unary_wire` built: sent as it is."""
    return message


@dataclass(frozen=True)
class ChunkView:
    """A ``TensorChunk`` read from a received message without copying its data: the
    header fields parsed by protobuf, ``data`` a view of the message's bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    total_bytes: int
    data: memoryview
    bulk: bool = False  # the data travels on the bulk channel (empty here)


@dataclass(frozen=True)
class TensorPart:
    """A ``TailRequest`` or ``TailReply`` that carries a tensor (``part == "tensor"``)."""

    tensor: ChunkView

    def WhichOneof(self, group: str) -> str:  # noqa: N802 - protobuf's name for it
        return "tensor"


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("a unary tensor message is malformed (a truncated varint)")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def wire_fields(buf: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, start of the field's tag, end)`` of each field of a
    message's wire bytes; a length-delimited field's value is ``buf[end - length:end]``."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        kind = key & 7
        if kind == 0:
            _, pos = _read_varint(buf, pos)
        elif kind == 1:
            pos += 8
        elif kind == 2:
            length, pos = _read_varint(buf, pos)
            pos += length
        elif kind == 5:
            pos += 4
        else:
            raise WireError(f"a unary tensor message is malformed (wire type {kind})")
        if key >> 3 == 0 or pos > len(buf):
            raise WireError("a unary tensor message is malformed (a field runs past its end)")
        yield key >> 3, kind, start, pos


def _value(buf: memoryview, start: int, end: int) -> memoryview:
    """The value of the length-delimited field at ``buf[start:end]``."""
    _, pos = _read_varint(buf, start)
    _, pos = _read_varint(buf, pos)
    return buf[pos:end]


def read_chunk(pb2: Any, buf: memoryview) -> ChunkView:
    """A ``TensorChunk``'s wire bytes as a :class:`ChunkView` (its data not copied)."""
    data = buf[:0]
    header = bytearray()
    for field, kind, start, end in wire_fields(buf):
        if field == 5 and kind == 2:
            data = _value(buf, start, end)  # as protobuf: the last occurrence counts
        else:
            header += buf[start:end]
    try:
        chunk = pb2.TensorChunk.FromString(bytes(header))
    except DecodeError as exc:
        raise WireError(f"a tensor chunk's header does not parse ({exc})") from None
    return ChunkView(chunk.name, chunk.dtype, tuple(chunk.shape), chunk.total_bytes, data,
                     chunk.bulk)


def read_parsed(pb2: Any, message: bytes, container: Any, tensor_part: str | None
                ) -> list[Any]:
    """The parts of a message whose tensors carry no data (a bulk channel call's:
    :mod:`dnntune.rpc.bulk`), parsed by protobuf in one go: the chunks of a
    ``TensorList`` as :class:`ChunkView` (``tensor_part`` None), or the parts of a
    ``TailCall``/``TailResult`` with each tensor a :class:`TensorPart`. A tensor that
    does carry data in the message is copied once, by protobuf.
    """
    try:
        parsed = container.FromString(message)
    except DecodeError as exc:
        raise WireError(f"a {container.DESCRIPTOR.name} does not parse ({exc})") from None
    if tensor_part is None:
        return [_view(c) for c in parsed.tensors]
    return [TensorPart(_view(p.tensor)) if p.WhichOneof("part") == tensor_part else p
            for p in parsed.parts]


def _view(chunk: Any) -> ChunkView:
    return ChunkView(chunk.name, chunk.dtype, tuple(chunk.shape), chunk.total_bytes,
                     memoryview(chunk.data), chunk.bulk)


def bulk_sizes(chunks: Iterable[Any], limits: RequestLimits) -> list[int]:
    """The byte counts of the ``bulk`` chunks among ``chunks``, checked against
    ``limits`` before a byte of them is read."""
    sizes: list[int] = []
    for chunk in chunks:
        if not chunk.bulk:
            continue
        if len(chunk.data):
            raise WireError(f"tensor {quoted(chunk.name)}: a bulk chunk carries no data")
        if not chunk.dtype:
            raise WireError(f"tensor {quoted(chunk.name)}: a bulk chunk is a whole tensor "
                            "(name, dtype, shape, total_bytes)")
        size = int(chunk.total_bytes)
        if size < 0 or size > limits.max_tensor_bytes:
            raise WireError(f"tensor {quoted(chunk.name)}: {size} bytes is over the limit of "
                            f"{limits.max_tensor_bytes}", code="RESOURCE_EXHAUSTED")
        sizes.append(size)
        if len(sizes) > limits.max_tensors:
            raise WireError(f"more than {limits.max_tensors} tensors in one call",
                            code="RESOURCE_EXHAUSTED")
    if sum(sizes) > limits.max_call_bytes:
        raise WireError(f"tensors of this call add up to over the limit of "
                        f"{limits.max_call_bytes} bytes", code="RESOURCE_EXHAUSTED")
    return sizes


def with_bulk_data(chunks: Iterable[ChunkView], data: Iterable[memoryview]
                   ) -> list[ChunkView]:
    """``chunks`` with each ``bulk`` one's data taken, in order, from ``data``."""
    pieces = iter(data)
    out = []
    for chunk in chunks:
        if chunk.bulk:
            piece = next(pieces, None)
            if piece is None:
                raise WireError("fewer bulk tensors in the frame than the message marks")
            chunk = ChunkView(chunk.name, chunk.dtype, chunk.shape, chunk.total_bytes, piece)
        out.append(chunk)
    if next(pieces, None) is not None:
        raise WireError("more bulk tensors in the frame than the message marks")
    return out


def read_unary(pb2: Any, message: bytes, part_type: Any | None, tensor_field: int
               ) -> Iterator[Any]:
    """The parts of a ``TailCall``/``TailResult`` (``part_type`` ``TailRequest`` or
    ``TailReply``, whose tensor is field ``tensor_field``) or the chunks of a
    ``TensorList`` (``part_type`` None), in order, tensors as views of ``message``."""
    buf = memoryview(message)
    for field, kind, start, end in wire_fields(buf):
        if field != 1 or kind != 2:
            continue  # a field this version does not know: ignored, as protobuf does
        part = _value(buf, start, end)
        if part_type is None:
            yield read_chunk(pb2, part)
            continue
        inner = list(wire_fields(part))
        if len(inner) == 1 and inner[0][0] == tensor_field and inner[0][1] == 2:
            yield TensorPart(read_chunk(pb2, _value(part, inner[0][2], inner[0][3])))
        else:  # a header, a timing, or anything else: small, parsed by protobuf
            try:
                yield part_type.FromString(bytes(part))
            except DecodeError as exc:
                raise WireError(f"a {part_type.DESCRIPTOR.name} does not parse ({exc})"
                                ) from None


class TensorAssembler:
    """Collects ``TensorChunk`` messages back into named numpy arrays, checking each.

    A tensor that arrived in one chunk is a read-only view of that chunk's bytes (no
    copy); one in several chunks is copied once into a buffer of its own.

    Args:
        limits: Bytes per tensor, bytes per call and tensors per call.
        expected: When given, the only tensors allowed, by name: ``(dtype, shape)``.
    """

    def __init__(self, limits: RequestLimits | None = None,
                 expected: Mapping[str, tuple[str, tuple[int, ...]]] | None = None) -> None:
        self.limits = limits or RequestLimits()
        self.expected = expected
        self.tensors: dict[str, np.ndarray] = {}
        self.order: list[str] = []
        self._current: tuple[str, str, tuple[int, ...], int] | None = None
        self._first = b""  # the data of the current tensor's first chunk
        self._buffer: np.ndarray | None = None  # its bytes, once a second chunk came
        self._received = 0
        self._declared = 0  # bytes of all tensors announced so far

    def add(self, chunk: Any) -> None:
        if getattr(chunk, "bulk", False):
            raise WireError(f"tensor {quoted(chunk.name)} is marked bulk, which only a call "
                            "on a bulk connection may send")
        if chunk.dtype:  # a header: a new tensor starts
            self._finish()
            self._start(chunk)
        elif self._current is None:
            raise WireError(f"tensor chunk {quoted(chunk.name)} has no header (name, dtype, "
                            "shape, total_bytes) before its data")
        elif (chunk.name and chunk.name != self._current[0]) or chunk.shape or chunk.total_bytes:
            raise WireError(f"tensor {self._current[0]!r}: a continuation chunk carries only "
                            "data (or repeats the name); start a new tensor with a dtype")
        data = chunk.data  # each read of a bytes field is a copy: read it once
        start, self._received = self._received, self._received + len(data)
        if self._current is None:
            return
        if self._received > self._current[3]:
            raise WireError(f"tensor {self._current[0]!r}: received more than its declared "
                            f"{self._current[3]} bytes")
        if start == 0:
            self._first = data
            return
        if self._buffer is None:  # a second chunk: from now on, one buffer of the tensor
            self._buffer = np.empty(self._current[3], np.uint8)
            self._buffer[:len(self._first)] = np.frombuffer(self._first, np.uint8)
            self._first = b""
        self._buffer[start:self._received] = np.frombuffer(data, np.uint8)

    def _start(self, chunk: Any) -> None:
        name, dtype = chunk.name, chunk.dtype
        if not name or len(name) > MAX_NAME_CHARS:
            raise WireError(f"a tensor header needs a name of 1 to {MAX_NAME_CHARS} characters")
        if name in self.tensors:
            raise WireError(f"tensor {name!r} sent twice")
        if len(self.tensors) >= self.limits.max_tensors:
            raise WireError(f"more than {self.limits.max_tensors} tensors in one call",
                            code="RESOURCE_EXHAUSTED")
        if dtype not in ALLOWED_DTYPES:
            raise WireError(f"tensor {name!r}: dtype {quoted(dtype)} is not one of "
                            f"{', '.join(ALLOWED_DTYPES)}")
        if len(chunk.shape) > MAX_RANK:
            raise WireError(f"tensor {name!r}: {len(chunk.shape)} dimensions, at most "
                            f"{MAX_RANK} allowed")
        shape = tuple(int(d) for d in chunk.shape)
        if any(d < 0 for d in shape):
            raise WireError(f"tensor {name!r}: negative dimension in shape {list(shape)}")
        if self.expected is not None:
            self._check_expected(name, dtype, shape)
        expected = prod(shape) * _itemsize(dtype)
        if chunk.total_bytes != expected:
            raise WireError(f"tensor {name!r}: shape {list(shape)} × {dtype} is {expected} "
                            f"bytes, but total_bytes says {chunk.total_bytes}")
        if expected > self.limits.max_tensor_bytes:
            raise WireError(f"tensor {name!r}: {expected} bytes is over the limit of "
                            f"{self.limits.max_tensor_bytes}", code="RESOURCE_EXHAUSTED")
        self._declared += expected
        if self._declared > self.limits.max_call_bytes:
            raise WireError(f"tensors of this call add up to over the limit of "
                            f"{self.limits.max_call_bytes} bytes", code="RESOURCE_EXHAUSTED")
        self._current = (name, dtype, shape, expected)
        self._first, self._buffer, self._received = b"", None, 0

    def _check_expected(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        assert self.expected is not None
        if name not in self.expected:
            raise WireError(f"tensor {name!r} is not expected here; expected tensors "
                            f"{list(self.expected)}")
        want_dtype, want_shape = self.expected[name]
        if (dtype, shape) != (want_dtype, tuple(want_shape)):
            raise WireError(f"tensor {name!r} must be {want_dtype}{list(want_shape)}, got "
                            f"{dtype}{list(shape)}")

    def _finish(self) -> None:
        if self._current is None:
            return
        name, dtype, shape, expected = self._current
        if self._received != expected:
            raise WireError(f"tensor {name!r}: received {self._received} of {expected} bytes")
        raw = np.frombuffer(self._first, np.uint8) if self._buffer is None else self._buffer
        if dtype == "bool" and raw.size and int(raw.max()) > 1:
            raise WireError(f"tensor {name!r}: a bool tensor's bytes must be 0 or 1")
        wire_dtype = _numpy_dtype(dtype).newbyteorder("<")
        self.tensors[name] = raw.view(wire_dtype).astype(_numpy_dtype(dtype), copy=False
                                                         ).reshape(shape)
        self.order.append(name)
        self._current, self._first, self._buffer, self._received = None, b"", None, 0

    def finish(self) -> dict[str, np.ndarray]:
        """Complete the last tensor; returns every tensor by name (in arrival order)."""
        self._finish()
        return {name: self.tensors[name] for name in self.order}


def _numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _itemsize(name: str) -> int:
    return 2 if name == "bfloat16" else np.dtype(name).itemsize
