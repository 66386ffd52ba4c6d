"""Wire encodings: how one tensor (or the input image) is turned into bytes and back.

Names (``--wire``, config key ``wire:``), each optionally followed by ``+zstd`` (the
payload then goes through zstandard at level 3, lossless):

* for the model input, on the image's uint8 pixels (H x W x 3): ``uint8`` (raw pixels),
  ``jpeg<Q>`` (Pillow, quality Q in 1..100, 4:2:0 chroma), ``png`` (Pillow, level 6);
  the cloud decodes to pixels and applies the model's preprocessing;
* for any tensor: ``fp32`` (as-is, what DNNTune assumes), ``fp16`` (IEEE half, values
  clipped to +-65504), ``int8`` (affine, one scale and zero point per tensor) and
  ``int8c`` (affine per channel, the last axis).

A payload holds the data and the quantisation parameters (int8: float32 minimum and
scale, 8 bytes per tensor or per channel); its length is the exact byte count the cost
model uses. The shape and codec name travel beside it (the receiver knows the graph).
Pure: numpy, Pillow, zstandard; no TensorFlow.

Example:
    >>> import numpy as np
    >>> enc = parse_encoding("int8")
    >>> x = np.linspace(-1, 1, 1000, dtype=np.float32).reshape(10, 100)
    >>> payload = enc.encode(x)
    >>> len(payload)
    1008
    >>> bool(np.abs(enc.decode(payload, x.shape) - x).max() <= enc.error_bound(x))
    True
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dnntune.errors import ConfigError, DnntuneError

INPUT_CODECS = ("uint8", "jpeg", "png")
TENSOR_CODECS = ("fp32", "fp16", "int8", "int8c")
ZSTD_LEVEL = 3
FP16_MAX = 65504.0
_NAME = re.compile(r"^(fp32|fp16|int8c|int8|uint8|png|jpeg(\d{1,3})?)(\+zstd)?$")


class WireError(DnntuneError):
    """A payload that does not decode to the shape it claims (corrupt or mismatched)."""


@dataclass(frozen=True)
class Encoding:
    """One wire encoding.

    Attributes:
        codec: ``fp32``, ``fp16``, ``int8``, ``int8c``, ``uint8``, ``jpeg`` or ``png``.
        quality: JPEG quality (1..100), else ``None``.
        zstd: Whether the payload is then compressed with zstandard.
    """

    codec: str
    quality: int | None = None
    zstd: bool = False

    @property
    def name(self) -> str:
        base = f"jpeg{self.quality}" if self.codec == "jpeg" else self.codec
        return base + ("+zstd" if self.zstd else "")

    @property
    def for_input(self) -> bool:
        """Encodes the input image's pixels (not a float tensor)."""
        return self.codec in INPUT_CODECS

    @property
    def lossless(self) -> bool:
        """Decodes to exactly what was encoded (pixels for input codecs)."""
        return self.codec in ("fp32", "uint8", "png")

    def error_bound(self, x: npt.NDArray[np.floating]) -> float:
        """Largest absolute error a round trip of ``x`` may have (inf for JPEG).

        int8: half a quantisation step (plus float rounding); fp16: half a unit in the
        last place of the largest magnitude; lossless codecs: 0.
        """
        if self.lossless:
            return 0.0
        if self.codec == "jpeg":
            return float("inf")
        a = np.asarray(x, dtype=np.float32)
        if self.codec == "fp16":
            top = min(float(np.abs(a).max(initial=0.0)), FP16_MAX)
            return top * 2.0**-11 + 2.0**-25
        _, scale = _affine_params(a, per_channel=self.codec == "int8c")
        return float(np.max(scale)) * 0.5 * (1 + 1e-5) + 1e-6 * float(np.abs(a).max(initial=0))

    def encode(self, x: np.ndarray) -> bytes:
        """The payload for one sample (no batch axis): pixels for input codecs."""
        payload = _ENCODERS[self.codec](x, self.quality)
        if self.zstd:
            import zstandard

            payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload)
        return payload

    def decode(self, payload: bytes, shape: Sequence[int]) -> np.ndarray:
        """The array of ``shape`` back from ``payload`` (uint8 pixels or float32).

        Raises:
            WireError: the payload is corrupt or does not hold an array of ``shape``.
        """
        shape = tuple(int(d) for d in shape)
        if self.zstd:
            import zstandard

            try:
                payload = zstandard.ZstdDecompressor().decompress(
                    payload, max_output_size=_max_raw_bytes(self.codec, shape))
            except zstandard.ZstdError as exc:
                raise WireError(f"{self.name}: corrupt zstd payload ({exc})") from None
        return _DECODERS[self.codec](payload, shape)


def parse_encoding(text: str) -> Encoding:
    """An :class:`Encoding` from its name (``int8+zstd``, ``jpeg90``, ...).

    Raises:
        ConfigError: naming the value and the accepted forms.
    """
    match = _NAME.match(text.strip().lower())
    if not match:
        raise ConfigError("--wire", f"unknown encoding {text!r}: expected fp32, fp16, int8, "
                                    "int8c, uint8, png or jpeg<1-100>, each optionally "
                                    "with +zstd")
    codec, quality, zstd = match.group(1), match.group(2), bool(match.group(3))
    if codec.startswith("jpeg"):
        if quality is None or not 1 <= int(quality) <= 100:
            raise ConfigError("--wire", f"{text!r}: a JPEG quality from 1 to 100 is "
                                        "needed, e.g. jpeg90")
        return Encoding("jpeg", int(quality), zstd)
    return Encoding(codec, None, zstd)


def parse_encodings(items: Sequence[str] | str) -> tuple[Encoding, ...]:
    """Comma-separated or listed names, in order, duplicates dropped.

    Example:
        >>> [e.name for e in parse_encodings("fp32,int8+zstd,jpeg90")]
        ['fp32', 'int8+zstd', 'jpeg90']
    """
    texts = [items] if isinstance(items, str) else list(items)
    names = [t for text in texts for t in str(text).split(",")]
    if not names or any(not n.strip() for n in names):
        raise ConfigError("--wire", f"expected a comma-separated list of encodings, got "
                                    f"{','.join(texts)!r}")
    found = {e.name: e for e in (parse_encoding(n) for n in names)}
    return tuple(found.values())


def _affine_params(a: np.ndarray, per_channel: bool
                   ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Minimum and step of the 256-level grid (per last-axis channel, or one pair)."""
    flat = a.reshape(-1, a.shape[-1]) if per_channel and a.ndim else a.reshape(-1, 1)
    if flat.size == 0:
        return np.zeros(1, np.float32), np.ones(1, np.float32)
    lo = flat.min(axis=0).astype(np.float32)
    hi = flat.max(axis=0).astype(np.float32)
    scale = ((hi - lo) / np.float32(255.0)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    return lo, scale


def _encode_int8(x: np.ndarray, per_channel: bool) -> bytes:
    a = np.asarray(x, dtype=np.float32)
    if not np.isfinite(a).all():
        raise WireError("int8: the tensor holds inf or NaN")
    lo, scale = _affine_params(a, per_channel)
    shaped = a.reshape(-1, len(lo)) if per_channel and a.ndim else a.reshape(-1, 1)
    q = np.clip(np.rint((shaped - lo) / scale), 0, 255).astype(np.uint8)
    return lo.tobytes() + scale.tobytes() + q.tobytes()


def _decode_int8(payload: bytes, shape: tuple[int, ...], per_channel: bool) -> np.ndarray:
    channels = shape[-1] if per_channel and shape else 1
    count = int(np.prod(shape))
    if len(payload) != 8 * channels + count:
        raise WireError(f"int8{'c' if per_channel else ''}: payload of {len(payload)} bytes "
                        f"does not hold shape {list(shape)} ({8 * channels + count} expected)")
    lo = np.frombuffer(payload, np.float32, channels, 0)
    scale = np.frombuffer(payload, np.float32, channels, 4 * channels)
    q = np.frombuffer(payload, np.uint8, count, 8 * channels).reshape(-1, channels)
    return (q.astype(np.float32) * scale + lo).reshape(shape)


def _encode_float(x: np.ndarray, dtype: str) -> bytes:
    a = np.asarray(x, dtype=np.float32)
    if dtype == "float16":
        return np.clip(a, -FP16_MAX, FP16_MAX).astype("<f2").tobytes()
    return a.astype("<f4").tobytes()


def _decode_float(payload: bytes, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    item = 2 if dtype == "float16" else 4
    count = int(np.prod(shape))
    if len(payload) != item * count:
        raise WireError(f"{'fp16' if item == 2 else 'fp32'}: payload of {len(payload)} bytes "
                        f"does not hold shape {list(shape)} ({item * count} expected)")
    return np.frombuffer(payload, "<f2" if item == 2 else "<f4").astype(np.float32).reshape(shape)


def _pixels(x: np.ndarray, codec: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise WireError(f"{codec}: expects uint8 pixels of shape (H, W, 1 or 3), got "
                        f"{a.dtype} {list(a.shape)}")
    return a


def _encode_image(x: np.ndarray, fmt: str, quality: int | None) -> bytes:
    from PIL import Image

    a = _pixels(x, fmt.lower())
    image = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=quality)
    else:
        image.save(out, "PNG", compress_level=6)
    return out.getvalue()


def _decode_image(payload: bytes, shape: tuple[int, ...], fmt: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(payload), formats=[fmt]) as image:
            if len(shape) != 3 or image.size != (shape[1], shape[0]):
                # before decoding: a header claiming a huge image allocates nothing
                raise WireError(f"{fmt.lower()}: an image of {image.size[0]}x"
                                f"{image.size[1]} pixels, expected shape {list(shape)}")
            image.load()
            a = np.asarray(image.convert("RGB" if shape[-1] == 3 else "L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise WireError(f"{fmt.lower()}: corrupt payload ({exc})") from None
    a = a.reshape(*a.shape[:2], -1)
    if a.shape != shape:
        raise WireError(f"{fmt.lower()}: decoded {list(a.shape)}, expected {list(shape)}")
    return a


def _decode_raw_pixels(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) != 3 or len(payload) != int(np.prod(shape)):
        raise WireError(f"uint8: payload of {len(payload)} bytes does not hold pixels of "
                        f"shape {list(shape)}")
    return np.frombuffer(payload, np.uint8).reshape(shape)


def _max_raw_bytes(codec: str, shape: tuple[int, ...]) -> int:
    """A bound on the payload before zstd, so a corrupt frame cannot claim gigabytes."""
    count = int(np.prod(shape))
    channels = shape[-1] if shape else 1
    return {"fp32": 4 * count, "fp16": 2 * count, "int8": count + 8,
            "int8c": count + 8 * channels, "uint8": count}.get(codec, 4 * count + 65536)


_ENCODERS = {
    "fp32": lambda x, q: _encode_float(x, "float32"),
    "fp16": lambda x, q: _encode_float(x, "float16"),
    "int8": lambda x, q: _encode_int8(x, False),
    "int8c": lambda x, q: _encode_int8(x, True),
    "uint8": lambda x, q: _pixels(x, "uint8").tobytes(),
    "jpeg": lambda x, q: _encode_image(x, "JPEG", q),
    "png": lambda x, q: _encode_image(x, "PNG", None),
}
_DECODERS = {
    "fp32": lambda p, s: _decode_float(p, s, "float32"),
    "fp16": lambda p, s: _decode_float(p, s, "float16"),
    "int8": lambda p, s: _decode_int8(p, s, False),
    "int8c": lambda p, s: _decode_int8(p, s, True),
    "uint8": _decode_raw_pixels,
    "jpeg": lambda p, s: _decode_image(p, s, "JPEG"),
    "png": lambda p, s: _decode_image(p, s, "PNG"),
}
