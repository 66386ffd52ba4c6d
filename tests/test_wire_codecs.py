"""Wire codecs: exact byte counts, round trips within each stated bound, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from dnntune.errors import ConfigError
from dnntune.wire.codecs import Encoding, WireError, parse_encoding, parse_encodings

RNG = np.random.default_rng(0)
ACT = (RNG.standard_normal((14, 14, 32)) * 3).astype(np.float32)
PIXELS = RNG.integers(0, 256, (32, 48, 3), dtype=np.uint8)


@pytest.mark.parametrize(("name", "expected"), [
    ("fp32", 4 * ACT.size),
    ("fp16", 2 * ACT.size),
    ("int8", ACT.size + 8),
    ("int8c", ACT.size + 8 * 32),
])
def test_tensor_payload_sizes_are_exact(name: str, expected: int) -> None:
    assert len(parse_encoding(name).encode(ACT)) == expected


def test_uint8_input_is_the_pixels() -> None:
    assert len(parse_encoding("uint8").encode(PIXELS)) == PIXELS.size


@pytest.mark.parametrize("name", ["fp32", "fp16", "int8", "int8c", "fp16+zstd",
                                  "int8+zstd", "int8c+zstd", "fp32+zstd"])
def test_tensor_round_trip_within_bound(name: str) -> None:
    enc = parse_encoding(name)
    back = enc.decode(enc.encode(ACT), ACT.shape)
    assert back.dtype == np.float32 and back.shape == ACT.shape
    assert float(np.abs(back - ACT).max()) <= enc.error_bound(ACT)


def test_constant_and_fp16_overflow_tensors() -> None:
    flat = np.full((4, 5), 2.5, np.float32)
    enc = parse_encoding("int8")
    assert np.array_equal(enc.decode(enc.encode(flat), flat.shape), flat)
    big = np.array([1e6, -1e6, 1.0], np.float32)
    half = parse_encoding("fp16")
    assert np.isfinite(half.decode(half.encode(big), big.shape)).all()


@pytest.mark.parametrize("name", ["uint8", "png", "uint8+zstd", "png+zstd"])
def test_lossless_image_codecs(name: str) -> None:
    enc = parse_encoding(name)
    assert np.array_equal(enc.decode(enc.encode(PIXELS), PIXELS.shape), PIXELS)


def test_jpeg_size_falls_with_quality_and_decodes() -> None:
    smooth = np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], 32, 0)
    smooth = np.repeat(smooth, 3, 2)
    sizes = [len(parse_encoding(f"jpeg{q}").encode(smooth)) for q in (20, 90)]
    assert sizes[0] < sizes[1]
    back = parse_encoding("jpeg90").decode(parse_encoding("jpeg90").encode(smooth), smooth.shape)
    assert np.abs(back.astype(int) - smooth).max() <= 8


def test_zstd_shrinks_sparse_activations() -> None:
    relu = np.maximum(ACT, 0)
    relu[:, :, 16:] = 0
    plain = len(parse_encoding("fp16").encode(relu))
    assert len(parse_encoding("fp16+zstd").encode(relu)) < plain


@pytest.mark.parametrize("bad", ["fp64", "jpeg", "jpeg0", "jpeg101", "int8+gzip", "", "fp16,"])
def test_bad_names_are_one_line(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_encodings(bad)
    assert "--wire" in str(info.value) and "\n" not in str(info.value)


def test_names_are_canonical_and_deduplicated() -> None:
    assert [e.name for e in parse_encodings(["FP16,int8+ZSTD", "fp16"])] == ["fp16", "int8+zstd"]
    assert parse_encoding("jpeg75") == Encoding("jpeg", 75)


@pytest.mark.parametrize("name", ["fp32", "fp16", "int8", "int8c", "int8+zstd"])
def test_corrupt_or_mismatched_payload_is_refused(name: str) -> None:
    enc = parse_encoding(name)
    payload = enc.encode(ACT)
    with pytest.raises(WireError):
        enc.decode(payload, (14, 14, 33))
    with pytest.raises(WireError):
        enc.decode(payload[:-3], ACT.shape)


@pytest.mark.parametrize("name", ["jpeg90", "png", "uint8"])
def test_corrupt_image_payload_is_refused(name: str) -> None:
    enc = parse_encoding(name)
    with pytest.raises(WireError):
        enc.decode(b"\x00garbage" * 10, PIXELS.shape)
    with pytest.raises(WireError):
        enc.encode(ACT)  # not pixels
