"""RunTail with encoded crossing tensors (TailRequest.encoded), driven only through stubs
compiled from proto/ (tests/proto_stubs.py) against a real `dnntune serve` on loopback.

The payloads are made here with numpy, Pillow and zstandard, as a client in another
language would make them from the .proto's comments: nothing of dnntune's Python.
"""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import zstandard
from PIL import Image

from tests.proto_stubs import REPO, Protocol
from tests.test_protocol import LIMIT_FLAGS, decode, serve, status, tensor_chunks

MODEL = "tiny_resnet"  # 32x32x3 images: a pixel codec at cut 0, activations inside


@pytest.fixture(scope="module")
def proto(tmp_path_factory):
    return Protocol(tmp_path_factory.mktemp("proto"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("server"), *LIMIT_FLAGS) as (proc, address):
        yield proc, address


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server[1]) as ch:
        yield ch


@pytest.fixture(scope="module")
def cloud(proto, channel):
    return proto.stub(channel, "Cloud")


@pytest.fixture(scope="module")
def desc(proto, channel):
    profiler = proto.stub(channel, "Profiler")
    return profiler.Describe(proto.DescribeRequest(model=proto.ModelSpec(zoo_name=MODEL)),
                             timeout=120)


def _inner_cut(desc) -> int:
    """A cut in the middle where one 4-D activation crosses."""
    cuts = [c for c in desc.cuts if len(c.tensors) == 1 and len(c.tensors[0].shape) == 4
            and c.index > 2]
    return cuts[len(cuts) // 2].index


def _header(proto, desc, cut: int):
    return proto.TailRequest(header=proto.TailHeader(model=proto.ModelSpec(zoo_name=MODEL),
                                                     cut_index=cut, head=desc.identity))


def _encoded(proto, name, shape, data: bytes, chunk: int = 1 << 20, **encoding):
    yield proto.TailRequest(encoded=proto.EncodedChunk(
        name=name, dtype="float32", shape=list(shape),
        encoding=proto.TensorEncoding(**encoding), total_bytes=len(data), data=data[:chunk]))
    for start in range(chunk, len(data), chunk):
        yield proto.TailRequest(encoded=proto.EncodedChunk(data=data[start:start + chunk]))


def _int8(x: np.ndarray, per_channel: bool) -> tuple[bytes, list[float], list[float]]:
    flat = x.reshape(-1, x.shape[-1]) if per_channel else x.reshape(-1, 1)
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    scale = np.where(hi > lo, (hi - lo) / 255, 1).astype(np.float32)
    q = np.clip(np.rint((flat - lo) / scale), 0, 255).astype(np.uint8)
    return q.tobytes(), scale.tolist(), lo.astype(np.float32).tolist()


def _outputs(cloud, requests) -> tuple[dict[str, np.ndarray], object]:
    replies = list(cloud.RunTail(iter(requests), timeout=120))
    assert replies[-1].WhichOneof("part") == "timing"
    return decode(r.tensor for r in replies[:-1]), replies[-1].timing


def test_encoded_activations_decode_to_what_plain_tensors_give(proto, cloud, desc):
    """fp32 encoded gives the plain tensor's outputs exactly; fp16, int8, int8c+zstd
    within their quantisation, and the timing reports the cloud's decode time."""
    cut = _inner_cut(desc)
    (crossing,) = desc.cuts[cut].tensors
    x = np.random.default_rng(1).standard_normal(list(crossing.shape)).astype(np.float32)
    plain, _ = _outputs(cloud, [_header(proto, desc, cut),
                                *(proto.TailRequest(tensor=c)
                                  for c in tensor_chunks(proto, crossing.name, x))])
    (out_name,) = plain
    ref = plain[out_name]
    same, timing = _outputs(cloud, [_header(proto, desc, cut), *_encoded(
        proto, crossing.name, x.shape, x.astype("<f4").tobytes(), codec="fp32")])
    np.testing.assert_array_equal(same[out_name], ref)
    assert timing.decode_ms > 0
    q, scale, zero = _int8(x, per_channel=True)
    variants = {
        "fp16": (x.astype("<f2").tobytes(), {}),
        "int8": (_int8(x, False)[0], {"scale": _int8(x, False)[1],
                                      "zero_point": _int8(x, False)[2]}),
        "int8c+zstd": (zstandard.ZstdCompressor().compress(q),
                       {"scale": scale, "zero_point": zero, "compressor": "zstd"}),
    }
    for name, (data, fields) in variants.items():
        codec = name.split("+")[0]
        got, _ = _outputs(cloud, [_header(proto, desc, cut), *_encoded(
            proto, crossing.name, x.shape, data, codec=codec, **fields)])
        err = float(np.abs(got[out_name] - ref).max())
        assert 0 < err < 0.05 * float(np.abs(ref).max()) + 1e-3, (name, err)


def test_pixels_as_jpeg_png_and_uint8_at_cut_0_with_the_preprocessing(proto, cloud, desc):
    """The input image as pixels: the server decodes and applies `preprocess`; PNG and
    raw uint8 give what the preprocessed float32 input gives."""
    (inp,) = desc.cuts[0].tensors
    _, h, w, c = inp.shape
    pixels = np.random.default_rng(2).integers(0, 256, (h, w, c), dtype=np.uint8)
    x = (pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0))[np.newaxis]
    plain, _ = _outputs(cloud, [_header(proto, desc, 0), *(
        proto.TailRequest(tensor=t) for t in tensor_chunks(proto, inp.name, x))])
    (out_name,) = plain
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    for codec, data, extra in (("uint8", pixels.tobytes(), {}), ("png", png.getvalue(), {})):
        got, _ = _outputs(cloud, [_header(proto, desc, 0), *_encoded(
            proto, inp.name, inp.shape, data, codec=codec, preprocess="tf", **extra)])
        np.testing.assert_allclose(got[out_name], plain[out_name], rtol=1e-5, atol=1e-5)
    jpeg = io.BytesIO()
    Image.fromarray(pixels).save(jpeg, "JPEG", quality=90)
    got, _ = _outputs(cloud, [_header(proto, desc, 0), *_encoded(
        proto, inp.name, inp.shape, jpeg.getvalue(), codec="jpeg", quality=90,
        preprocess="tf")])
    assert got[out_name].shape == plain[out_name].shape


def test_every_malformed_field_is_invalid_argument_naming_it(proto, cloud, desc, channel):
    cut = _inner_cut(desc)
    (crossing,) = desc.cuts[cut].tensors
    (inp,) = desc.cuts[0].tensors
    x = np.random.default_rng(3).standard_normal(list(crossing.shape)).astype(np.float32)
    q, scale, zero = _int8(x, per_channel=False)
    int8 = {"codec": "int8", "scale": scale, "zero_point": zero}
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros(list(inp.shape[1:]), np.uint8)).save(jpeg, "JPEG", quality=90)
    z = zstandard.ZstdCompressor().compress(q)
    wrong = list(crossing.shape)
    wrong[-1] += 1
    cases = {
        "unknown codec": (cut, crossing.shape, q, {"codec": "int9"}, "encoding.codec"),
        "NaN scale": (cut, crossing.shape, q, {**int8, "scale": [float("nan")]},
                      "encoding.scale"),
        "zero scale": (cut, crossing.shape, q, {**int8, "scale": [0.0]}, "encoding.scale"),
        "infinite zero point": (cut, crossing.shape, q, {**int8, "zero_point": [float("inf")]},
                                "encoding.zero_point"),
        "scales per channel on int8": (cut, crossing.shape, q, {**int8, "scale": [1.0, 2.0]},
                                       "encoding.scale"),
        "unknown compressor": (cut, crossing.shape, q, {**int8, "compressor": "lz4"},
                               "encoding.compressor"),
        "truncated zstd": (cut, crossing.shape, z[:-7], {**int8, "compressor": "zstd"},
                           "data"),
        "fp32 payload of another size": (cut, crossing.shape, x.tobytes()[:-4],
                                         {"codec": "fp32"}, "shape"),
        "shape not the cut's": (cut, wrong, q, int8, "shape"),
        "truncated jpeg": (0, inp.shape, jpeg.getvalue()[:len(jpeg.getvalue()) // 2],
                           {"codec": "jpeg", "quality": 90, "preprocess": "tf"}, "data"),
        "jpeg without quality": (0, inp.shape, jpeg.getvalue(),
                                 {"codec": "jpeg", "preprocess": "tf"}, "encoding.quality"),
        "unknown preprocessing": (0, inp.shape, jpeg.getvalue(),
                                  {"codec": "jpeg", "quality": 90, "preprocess": "vgg"},
                                  "encoding.preprocess"),
        "pixels past cut 0": (cut, crossing.shape, jpeg.getvalue(),
                              {"codec": "jpeg", "quality": 90}, "shape"),
    }
    name_of = {cut: crossing.name, 0: inp.name}
    for what, (at, shape, data, encoding, field) in cases.items():
        code, details = status(cloud.RunTail, iter([
            _header(proto, desc, at), *_encoded(proto, name_of[at], shape, data,
                                                **encoding)]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, code, details)
        assert field in details and "\n" not in details, (what, details)
    # the server keeps serving: a well-formed encoded tensor right after
    got, _ = _outputs(cloud, [_header(proto, desc, cut), *_encoded(
        proto, crossing.name, crossing.shape, q, **int8)])
    assert got


def test_an_encoded_tensor_over_the_limits_is_refused_before_decoding(proto, cloud, desc):
    cut = _inner_cut(desc)
    (crossing,) = desc.cuts[cut].tensors
    header = proto.TailRequest(encoded=proto.EncodedChunk(
        name=crossing.name, dtype="float32", shape=list(crossing.shape),
        encoding=proto.TensorEncoding(codec="fp32"), total_bytes=5 << 20, data=b"\0"))
    code, details = status(cloud.RunTail, iter([_header(proto, desc, cut), header]))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "payload" in details


def test_a_client_of_the_proto_before_encoded_tensors_still_runs_tails(tmp_path, channel,
                                                                        proto, desc):
    """Compatibility within v1: stubs of the .proto as it was before TailRequest.encoded
    (tests/data/proto_before_wire, a copy of that version) send plain tensors and get
    the same outputs as today's, and a timing whose unknown decode_ms they ignore."""
    old = Protocol(tmp_path, root=REPO / "tests" / "data" / "proto_before_wire")
    assert "encoded" not in old.TailRequest.DESCRIPTOR.fields_by_name
    cut = _inner_cut(desc)
    (crossing,) = desc.cuts[cut].tensors
    x = np.random.default_rng(4).standard_normal(list(crossing.shape)).astype(np.float32)
    old_cloud = old.stub(channel, "Cloud")
    requests = [old.TailRequest(header=old.TailHeader(model=old.ModelSpec(zoo_name=MODEL),
                                                      cut_index=cut)),
                *(old.TailRequest(tensor=c) for c in tensor_chunks(old, crossing.name, x))]
    old_replies = list(old_cloud.RunTail(iter(requests), timeout=120))
    new, _ = _outputs(proto.stub(channel, "Cloud"), [_header(proto, desc, cut), *(
        proto.TailRequest(tensor=c) for c in tensor_chunks(proto, crossing.name, x))])
    got = decode(r.tensor for r in old_replies if r.WhichOneof("part") == "tensor")
    assert list(got) == list(new)
    for name in new:
        np.testing.assert_array_equal(got[name], new[name])
