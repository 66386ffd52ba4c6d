"""Tensors on the wire: numpy arrays to and from chunked ``TensorChunk`` streams.

No pickle: a tensor is its name, dtype (from an allowed list), shape and raw
little-endian C-order bytes, split into chunks no larger than ``chunk_bytes``: a header
chunk (name, dtype, shape, total_bytes, first data), then chunks that carry only data,
as the .proto says. The decoder checks every header against the limits and against the
tensors it expects *before* it keeps any data, and raises :class:`WireError` (which
servers turn into INVALID_ARGUMENT or RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from math import prod
from typing import Any

import numpy as np

from dnntune.rpc.limits import MAX_NAME_CHARS, MAX_RANK, RequestLimits, quoted

ALLOWED_DTYPES = ("float16", "float32", "float64", "bfloat16", "int8", "uint8", "int16",
                  "int32", "int64", "bool")
DEFAULT_CHUNK_BYTES = 1 << 20


class WireError(ValueError):
    """A malformed or oversized tensor stream; ``code`` is the gRPC status name to use."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code


def encode_tensor(pb2: Any, name: str, array: np.ndarray,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Any]:
    """Yield ``TensorChunk`` messages for ``array``: a header chunk, then data."""
    array = np.asarray(array)
    dtype = array.dtype.name
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"tensor {name!r}: dtype {dtype} is not one of {', '.join(ALLOWED_DTYPES)}")
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    raw = memoryview(data.tobytes())
    first = raw[:chunk_bytes]
    yield pb2.TensorChunk(name=name, dtype=dtype, shape=list(array.shape),
                          total_bytes=len(raw), data=bytes(first))
    for start in range(chunk_bytes, len(raw), chunk_bytes):
        yield pb2.TensorChunk(data=bytes(raw[start:start + chunk_bytes]))


def encode_tensors(pb2: Any, named: Iterable[tuple[str, np.ndarray]],
                   chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Any]:
    for name, array in named:
        yield from encode_tensor(pb2, name, array, chunk_bytes)


class TensorAssembler:
    """Collects ``TensorChunk`` messages back into named numpy arrays, checking each.

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
        self._parts: list[bytes] = []
        self._received = 0
        self._declared = 0  # bytes of all tensors announced so far

    def add(self, chunk: Any) -> None:
        if chunk.dtype:  # a header: a new tensor starts
            self._finish()
            self._start(chunk)
        elif self._current is None:
            raise WireError(f"tensor chunk {quoted(chunk.name)} has no header (name, dtype, "
                            "shape, total_bytes) before its data")
        elif (chunk.name and chunk.name != self._current[0]) or chunk.shape or chunk.total_bytes:
            raise WireError(f"tensor {self._current[0]!r}: a continuation chunk carries only "
                            "data (or repeats the name); start a new tensor with a dtype")
        self._received += len(chunk.data)
        if self._current is not None and self._received > self._current[3]:
            raise WireError(f"tensor {self._current[0]!r}: received more than its declared "
                            f"{self._current[3]} bytes")
        self._parts.append(chunk.data)

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
        self._parts, self._received = [], 0

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
        raw = b"".join(self._parts)
        if dtype == "bool" and raw.translate(None, b"\x00\x01"):
            raise WireError(f"tensor {name!r}: a bool tensor's bytes must be 0 or 1")
        self.tensors[name] = np.frombuffer(raw, dtype=_numpy_dtype(dtype).newbyteorder("<")
                                           ).astype(_numpy_dtype(dtype)).reshape(shape)
        self.order.append(name)
        self._current, self._parts, self._received = None, [], 0

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
