"""Encoded crossing tensors in RunTail (``TailRequest.encoded``): send, receive, decode.

The device side (:class:`WireSender`) encodes each crossing tensor after the head with a
wire encoding (:mod:`dnntune.wire.transport`) and writes ``EncodedChunk`` messages; the
cloud side (:class:`EncodedAssembler`) checks each header against the limits and the
tensors the cut expects before it keeps any data, then decodes. Every malformed field
is a :class:`~dnntune.rpc.tensors.WireError` naming it (INVALID_ARGUMENT), sizes over
the limits RESOURCE_EXHAUSTED, as for plain tensors (:mod:`dnntune.rpc.tensors`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnntune.rpc.limits import MAX_NAME_CHARS, MAX_RANK, RequestLimits, quoted
from dnntune.rpc.tensors import DEFAULT_CHUNK_BYTES, WireError
from dnntune.wire.codecs import Encoding
from dnntune.wire.codecs import WireError as CodecError
from dnntune.wire.transport import Packed, TransportError, check_fields, pack, unpack

TAIL_REQUEST_ENCODED = 3  # the field number of TailRequest.encoded


def encoded_requests(pb2: Any, name: str, packed: Packed, shape: Sequence[int],
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Any]:
    """``TailRequest`` messages carrying ``packed`` as the tensor ``name`` (float32 ``shape``)."""
    encoding = pb2.TensorEncoding(codec=packed.codec, quality=packed.quality,
                                  compressor=packed.compressor, scale=list(packed.scale),
                                  zero_point=list(packed.zero_point),
                                  preprocess=packed.preprocess)
    data = packed.data
    yield pb2.TailRequest(encoded=pb2.EncodedChunk(
        name=name, dtype="float32", shape=list(shape), encoding=encoding,
        total_bytes=len(data), data=data[:chunk_bytes]))
    for start in range(chunk_bytes, len(data), chunk_bytes):
        yield pb2.TailRequest(encoded=pb2.EncodedChunk(data=data[start:start + chunk_bytes]))


@dataclass
class _Pending:
    name: str
    dtype: str
    shape: tuple[int, ...]
    packed: Packed  # data empty until complete
    total: int
    parts: list[bytes]
    received: int = 0


class EncodedAssembler:
    """Collects ``EncodedChunk`` messages; :meth:`finish` decodes them.

    Args:
        limits: Bytes per tensor and per call (the payload and the decoded tensor).
        expected: The only tensors allowed, by name: ``(dtype, shape)``.
    """

    def __init__(self, limits: RequestLimits, expected: Mapping[str, tuple[str, Any]]) -> None:
        self.limits = limits
        self.expected = expected
        self.done: list[_Pending] = []
        self.current: _Pending | None = None
        self.declared = 0
        self.decode_ms = 0.0

    def add(self, chunk: Any) -> None:
        if chunk.dtype:
            self._close()
            self.current = self._start(chunk)
        elif self.current is None:
            raise WireError(f"EncodedChunk {quoted(chunk.name)}: data before a header "
                            "(name, dtype, shape, encoding, total_bytes)")
        elif ((chunk.name and chunk.name != self.current.name) or chunk.shape
              or chunk.total_bytes or chunk.HasField("encoding")):
            raise WireError(f"EncodedChunk {self.current.name!r}: a continuation chunk "
                            "carries only data (or repeats the name)")
        cur = self.current
        data = chunk.data
        cur.received += len(data)
        if cur.received > cur.total:
            raise WireError(f"EncodedChunk {cur.name!r}.data: more than the "
                            f"{cur.total} bytes total_bytes declares")
        cur.parts.append(data)

    def _start(self, chunk: Any) -> _Pending:
        name = chunk.name
        if not name or len(name) > MAX_NAME_CHARS:
            raise WireError(f"EncodedChunk.name: 1 to {MAX_NAME_CHARS} characters")
        where = f"EncodedChunk {name!r}"
        if name in (p.name for p in self.done):
            raise WireError(f"{where}: sent twice")
        if name not in self.expected:
            raise WireError(f"{where}: not expected here; expected tensors "
                            f"{list(self.expected)}")
        if len(chunk.shape) > MAX_RANK:
            raise WireError(f"{where}.shape: {len(chunk.shape)} dimensions, at most {MAX_RANK}")
        shape = tuple(int(d) for d in chunk.shape)
        want_dtype, want_shape = self.expected[name]
        if shape != tuple(want_shape):
            raise WireError(f"{where}.shape: the cut's tensor is {list(want_shape)}, got "
                            f"{list(shape)}")
        if chunk.dtype != want_dtype:
            raise WireError(f"{where}.dtype: the cut's tensor is {want_dtype}, got "
                            f"{quoted(chunk.dtype)}")
        e = chunk.encoding
        packed = Packed(e.codec, int(e.quality), e.compressor, tuple(e.scale),
                        tuple(e.zero_point), e.preprocess, b"")
        try:
            check_fields(packed, chunk.dtype, shape)
        except TransportError as exc:
            raise WireError(f"{where}.{exc}") from None
        total = int(chunk.total_bytes)
        if total < 1:
            raise WireError(f"{where}.total_bytes: at least 1, got {total}")
        decoded = 4 * math.prod(shape)
        for size, what in ((total, "payload"), (decoded, "decoded tensor")):
            if size > self.limits.max_tensor_bytes:
                raise WireError(f"{where}: its {what} of {size} bytes is over the limit of "
                                f"{self.limits.max_tensor_bytes}", code="RESOURCE_EXHAUSTED")
        self.declared += decoded + total
        if self.declared > self.limits.max_call_bytes:
            raise WireError(f"tensors of this call add up to over the limit of "
                            f"{self.limits.max_call_bytes} bytes", code="RESOURCE_EXHAUSTED")
        return _Pending(name, chunk.dtype, shape, packed, total, [])

    def _close(self) -> None:
        cur = self.current
        if cur is None:
            return
        if cur.received != cur.total:
            raise WireError(f"EncodedChunk {cur.name!r}.data: received {cur.received} of "
                            f"total_bytes {cur.total}")
        self.done.append(cur)
        self.current = None

    def finish(self) -> dict[str, np.ndarray]:
        """Every encoded tensor decoded, by name; the time it took is ``decode_ms``."""
        self._close()
        out = {}
        start = time.perf_counter()
        for p in self.done:
            packed = Packed(p.packed.codec, p.packed.quality, p.packed.compressor,
                            p.packed.scale, p.packed.zero_point, p.packed.preprocess,
                            b"".join(p.parts))
            try:
                out[p.name] = unpack(packed, p.dtype, p.shape)
            except TransportError as exc:
                raise WireError(f"EncodedChunk {p.name!r}.{exc}") from None
        self.decode_ms = (time.perf_counter() - start) * 1e3
        return out


@dataclass(frozen=True)
class WireSender:
    """The device side of ``--wire``: a photograph to run on, and its encoder.

    Attributes:
        encoding: How every crossing tensor is sent.
        inputs: The model inputs (the preprocessed photograph, batch 1).
        pixels: ``(1, H, W, C)`` uint8, the photograph's pixels (pixel codecs send them).
        preprocessing: The mode that turned ``pixels`` into ``inputs``.
    """

    encoding: Encoding
    inputs: list[np.ndarray]
    pixels: np.ndarray | None
    preprocessing: str

    def encode(self, pb2: Any, crossing: Sequence[tuple[str, np.ndarray]],
               chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[list[Any], int]:
        """``TailRequest`` messages for the crossing tensors, and their bytes on the wire."""
        requests: list[Any] = []
        nbytes = 0
        for name, array in crossing:
            try:
                packed = pack(self.encoding, array, self.pixels, self.preprocessing)
            except CodecError as exc:
                raise WireError(f"--wire {self.encoding.name} at tensor {name!r}: {exc}"
                                ) from None
            nbytes += packed.nbytes
            requests.extend(encoded_requests(pb2, name, packed, np.shape(array), chunk_bytes))
        return requests, nbytes
