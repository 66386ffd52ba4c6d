"""A crossing tensor as it travels in a split run: a codec's payload and its parameters.

:func:`pack` turns a tensor (or, for the pixel codecs, the image behind the model input)
into a :class:`Packed`: the codec's name, the JPEG quality, the compressor, int8's scales
and zero points as separate fields, the preprocessing the cloud applies to pixels, and
the payload bytes. :func:`unpack` checks every field against the tensor the receiver
expects (dtype and shape, with the batch axis) and decodes it; any problem raises
:class:`TransportError` naming the field (``encoding.scale``, ``shape``, ``data``...),
which a server answers with INVALID_ARGUMENT. The payload is what
:meth:`~dnntune.wire.codecs.Encoding.encode` makes, except that int8's parameters travel
as fields (so zstd compresses only the codes). Pure: numpy, Pillow, zstandard.

Example:
    >>> import numpy as np
    >>> from dnntune.wire.codecs import parse_encoding
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 4, 4, 4)
    >>> p = pack(parse_encoding("int8c"), x)
    >>> len(p.data), len(p.scale), p.nbytes
    (64, 4, 96)
    >>> bool(np.abs(unpack(p, "float32", x.shape) - x).max() < 0.01)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.wire.codecs import (
    _DECODERS,
    _ENCODERS,
    INPUT_CODECS,
    TENSOR_CODECS,
    ZSTD_LEVEL,
    Encoding,
    WireError,
    _max_raw_bytes,
)
from dnntune.wire.samples import preprocess

COMPRESSORS = ("", "zstd")
PREPROCESSING_MODES = ("", "identity", "tf", "caffe", "torch", "unit")


class TransportError(DnntuneError):
    """A field of an encoded tensor that is malformed; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class Packed:
    """One encoded tensor as sent (the fields of ``TensorEncoding`` and the payload)."""

    codec: str
    quality: int
    compressor: str
    scale: tuple[float, ...]
    zero_point: tuple[float, ...]
    preprocess: str
    data: bytes

    @property
    def nbytes(self) -> int:
        """Bytes on the wire: the payload and the float32 scales and zero points."""
        return len(self.data) + 4 * (len(self.scale) + len(self.zero_point))

    @property
    def encoding(self) -> Encoding:
        return Encoding(self.codec, self.quality or None, self.compressor == "zstd")


def pack(enc: Encoding, x: np.ndarray, pixels: np.ndarray | None = None,
         preprocessing: str = "") -> Packed:
    """``x`` (a float32 crossing tensor, with batch) encoded by ``enc``.

    Pixel codecs (``uint8``, ``png``, ``jpeg``) send ``pixels`` (``(1, H, W, C)``
    uint8, the image ``x`` was preprocessed from with ``preprocessing``) instead.

    Raises:
        WireError: a pixel codec without pixels, or a batch of several images.
    """
    scale: tuple[float, ...] = ()
    zero: tuple[float, ...] = ()
    if enc.for_input:
        if pixels is None or pixels.ndim != 4 or pixels.shape[0] != 1:
            raise WireError(f"{enc.name}: sends the pixels of one image (batch 1)")
        raw = _ENCODERS[enc.codec](pixels[0], enc.quality)
    else:
        a = np.asarray(x, dtype=np.float32)
        raw = _ENCODERS[enc.codec](a, None)
        if enc.codec in ("int8", "int8c"):
            channels = a.shape[-1] if enc.codec == "int8c" and a.ndim else 1
            zero = tuple(np.frombuffer(raw, np.float32, channels, 0).tolist())
            scale = tuple(np.frombuffer(raw, np.float32, channels, 4 * channels).tolist())
            raw = raw[8 * channels:]
    if enc.zstd:
        import zstandard

        raw = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    return Packed(enc.codec, enc.quality or 0, "zstd" if enc.zstd else "", scale, zero,
                  (preprocessing if enc.for_input else ""), raw)


def check_fields(p: Packed, dtype: str, shape: Sequence[int]) -> tuple[int, ...]:
    """Every field of ``p`` against the tensor expected; returns the shape as ints."""
    dims = tuple(int(d) for d in shape)
    if p.codec not in (*TENSOR_CODECS, *INPUT_CODECS):
        raise TransportError("encoding.codec", f"unknown codec {p.codec[:40]!r}: expected one "
                                               f"of {', '.join((*TENSOR_CODECS, *INPUT_CODECS))}")
    if p.compressor not in COMPRESSORS:
        raise TransportError("encoding.compressor", f"unknown compressor "
                                                    f"{p.compressor[:40]!r}: expected '' or zstd")
    if p.codec == "jpeg" and not 1 <= p.quality <= 100:
        raise TransportError("encoding.quality", f"jpeg needs a quality from 1 to 100, got "
                                                 f"{p.quality}")
    if p.codec != "jpeg" and p.quality:
        raise TransportError("encoding.quality", f"only jpeg has a quality, {p.codec} has "
                                                 f"{p.quality}")
    if dtype != "float32":
        raise TransportError("dtype", f"encoded tensors decode to float32, got {dtype[:40]!r}")
    if not dims or any(d < 1 for d in dims):
        raise TransportError("shape", f"{list(dims)[:8]}: every dimension must be at least 1")
    if p.codec in INPUT_CODECS:
        if len(dims) != 4 or dims[0] != 1 or dims[-1] not in (1, 3):
            raise TransportError("shape", f"{p.codec} carries one image: [1, H, W, 1 or 3], "
                                          f"got {list(dims)}")
        if p.preprocess not in PREPROCESSING_MODES:
            raise TransportError("encoding.preprocess", f"unknown mode {p.preprocess[:40]!r}: "
                                 f"expected one of {', '.join(PREPROCESSING_MODES[1:])} or ''")
    elif p.preprocess:
        raise TransportError("encoding.preprocess", f"only pixel codecs are preprocessed, "
                                                    f"{p.codec} has {p.preprocess[:40]!r}")
    channels = {"int8": 1, "int8c": dims[-1]}.get(p.codec, 0)
    if len(p.scale) != channels:
        raise TransportError("encoding.scale", f"{p.codec} needs {channels} value(s), got "
                                               f"{len(p.scale)}")
    if len(p.zero_point) != channels:
        raise TransportError("encoding.zero_point", f"{p.codec} needs {channels} value(s), "
                                                    f"got {len(p.zero_point)}")
    if not all(math.isfinite(s) and s > 0 for s in p.scale):
        bad = next(s for s in p.scale if not (math.isfinite(s) and s > 0))
        raise TransportError("encoding.scale", f"every scale must be finite and > 0, got {bad}")
    if not all(math.isfinite(z) for z in p.zero_point):
        bad = next(z for z in p.zero_point if not math.isfinite(z))
        raise TransportError("encoding.zero_point", f"every zero point must be finite, got "
                                                    f"{bad}")
    return dims


def unpack(p: Packed, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """The float32 tensor of ``shape`` that ``p`` encodes (pixels preprocessed).

    Raises:
        TransportError: naming the field that is wrong (see :func:`check_fields`); a
            payload that does not decode, or decodes to another size, is ``data`` or
            ``shape``.
    """
    dims = check_fields(p, dtype, shape)
    target = dims[1:] if p.codec in INPUT_CODECS else dims
    raw = p.data
    if p.compressor == "zstd":
        import zstandard

        try:
            raw = zstandard.ZstdDecompressor().decompress(
                raw, max_output_size=_max_raw_bytes(p.codec, target))
        except zstandard.ZstdError as exc:
            raise TransportError("data", f"not a valid zstd frame of at most "
                                         f"{_max_raw_bytes(p.codec, target)} bytes "
                                         f"({str(exc)[:120]})") from None
    if p.codec in ("int8", "int8c"):
        count = math.prod(target)
        if len(raw) != count:
            raise TransportError("shape", f"{list(dims)} holds {count} values, the {p.codec} "
                                          f"payload decodes to {len(raw)} codes")
        raw = (np.asarray(p.zero_point, np.float32).tobytes()
               + np.asarray(p.scale, np.float32).tobytes() + raw)
    elif p.codec in ("fp32", "fp16", "uint8"):
        item = {"fp32": 4, "fp16": 2, "uint8": 1}[p.codec]
        if len(raw) != item * math.prod(target):
            raise TransportError("shape", f"{list(dims)} holds {math.prod(target)} values, "
                                          f"the {p.codec} payload decodes to {len(raw)} "
                                          f"bytes ({item} per value)")
    try:
        out = _DECODERS[p.codec](raw, target)
    except WireError as exc:
        field = "shape" if "expected shape" in str(exc) or "decoded" in str(exc) else "data"
        raise TransportError(field, str(exc)[:200]) from None
    if p.codec in INPUT_CODECS:
        out = preprocess(out, p.preprocess or "identity")[np.newaxis]
    return np.ascontiguousarray(out, dtype=np.float32).reshape(dims)
