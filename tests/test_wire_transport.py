"""Encoded tensors as they travel in split runs: exact bytes, round trips, every field
checked (pure: dnntune.wire.transport)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dnntune.wire.codecs import parse_encoding
from dnntune.wire.samples import preprocess
from dnntune.wire.transport import TransportError, pack, unpack

X = np.random.default_rng(0).standard_normal((1, 6, 5, 4)).astype(np.float32)
PIXELS = np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize(("name", "nbytes"), [
    ("fp32", 480), ("fp16", 240), ("int8", 128), ("int8c", 152)])
def test_exact_bytes_and_round_trips_within_the_bound(name, nbytes):
    enc = parse_encoding(name)
    packed = pack(enc, X)
    assert packed.nbytes == nbytes == len(enc.encode(X))  # what the analyzer counts
    back = unpack(packed, "float32", X.shape)
    assert back.dtype == np.float32 and back.shape == X.shape
    assert np.abs(back - X).max() <= enc.error_bound(X)
    assert packed.encoding == enc


def test_zstd_compresses_the_codes_and_pixels_are_preprocessed():
    packed = pack(parse_encoding("int8+zstd"), np.zeros((1, 64, 64, 4), np.float32))
    assert packed.compressor == "zstd" and len(packed.data) < 100
    assert unpack(packed, "float32", (1, 64, 64, 4)).max() == 0
    for name in ("uint8", "png", "uint8+zstd"):
        packed = pack(parse_encoding(name), None, PIXELS, "caffe")
        np.testing.assert_array_equal(unpack(packed, "float32", PIXELS.shape),
                                      preprocess(PIXELS, "caffe"))
    jpeg = pack(parse_encoding("jpeg80"), None, PIXELS, "tf")
    assert jpeg.quality == 80 and unpack(jpeg, "float32", PIXELS.shape).shape == PIXELS.shape


def test_every_bad_field_is_named():
    int8 = pack(parse_encoding("int8c"), X)
    jpeg = pack(parse_encoding("jpeg90"), None, PIXELS, "tf")
    cases = [
        (int8, {"codec": "int4"}, X.shape, "encoding.codec"),
        (int8, {"compressor": "gzip"}, X.shape, "encoding.compressor"),
        (int8, {"scale": int8.scale[:-1]}, X.shape, "encoding.scale"),
        (int8, {"scale": (0.0,) * 4}, X.shape, "encoding.scale"),
        (int8, {"scale": (float("nan"),) * 4}, X.shape, "encoding.scale"),
        (int8, {"zero_point": (float("-inf"),) * 4}, X.shape, "encoding.zero_point"),
        (int8, {"quality": 5}, X.shape, "encoding.quality"),
        (int8, {"preprocess": "tf"}, X.shape, "encoding.preprocess"),
        (int8, {}, (1, 6, 5, 5), "encoding.scale"),  # 5 channels, 4 scales
        (int8, {"data": int8.data[:-1]}, X.shape, "shape"),
        (jpeg, {"data": jpeg.data[:40]}, PIXELS.shape, "data"),
        (jpeg, {}, (1, 8, 8, 3), "shape"),
        (jpeg, {"quality": 0}, PIXELS.shape, "encoding.quality"),
        (jpeg, {"preprocess": "vgg"}, PIXELS.shape, "encoding.preprocess"),
        (jpeg, {}, (2, 16, 16, 3), "shape"),
    ]
    for packed, change, shape, field in cases:
        with pytest.raises(TransportError) as info:
            unpack(dataclasses.replace(packed, **change), "float32", shape)
        assert info.value.field == field, (change, shape, str(info.value))
    with pytest.raises(TransportError, match="dtype"):
        unpack(int8, "float16", X.shape)
