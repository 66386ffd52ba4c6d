"""The tensor path: every dtype and a 5 MB tensor, bit-exact through a real loopback
server; what the encoder writes is what protobuf would; the loopback calibration."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from cloud_server import create_server
from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec
from dnntune.rpc.protocol import load_protocol
from dnntune.rpc.serving import ServerOptions
from dnntune.rpc.tensors import (
    ALLOWED_DTYPES,
    DEFAULT_CHUNK_BYTES,
    TensorAssembler,
    chunk_bytes_for,
    encode_tensor,
)
from dnntune.rpc.transfer import measure_loopback_rpc

pb2, _ = load_protocol()


@pytest.fixture(scope="module")
def client():
    running = create_server(ServerOptions(port=0, max_message_mb=4, max_tensor_mb=8))
    c = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}", max_message_mb=4))
    yield c
    c.close()
    running.stop(0)


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def awkward(name: str, shape: tuple[int, ...] = (3, 5, 7)) -> np.ndarray:
    """Every byte pattern the dtype allows, NaN payloads, -0 and infinities included."""
    dtype = numpy_dtype(name)
    if name == "bool":
        return np.random.default_rng(1).integers(0, 2, shape).astype(bool)
    raw = np.random.default_rng(1).integers(0, 256, math.prod(shape) * dtype.itemsize,
                                            dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def test_every_allowed_dtype_round_trips_bit_exactly(client):
    tensors = [(name, awkward(name)) for name in ALLOWED_DTYPES]
    tensors += [("scalar", np.array(2.5, np.float32)), ("empty", np.zeros((0, 4), np.int16)),
                ("transposed", awkward("float64").transpose(2, 0, 1)),
                ("big_endian", np.arange(12, dtype=">i4").reshape(3, 4))]
    echoed = client.echo(tensors)
    assert list(echoed) == [name for name, _ in tensors]
    for name, sent in tensors:
        want = sent.astype(sent.dtype.newbyteorder("=")) if name == "big_endian" else sent
        assert same_bits(echoed[name], want), name


def test_a_5mb_tensor_round_trips_bit_exactly_in_chunks(client):
    big = awkward("float32", (1_250_000,))  # 5 MB: five chunks each way
    assert client.chunk_bytes == DEFAULT_CHUNK_BYTES
    assert same_bits(client.echo([("big", big)])["big"], big)
    assert same_bits(client.echo([("big", big), ("also", big[::2])])["also"], big[::2])


def test_run_tail_sends_its_tensors_through_the_same_path(client, zoo_model):
    from dnntune.model.loading import call_model
    from dnntune.model.split import Splitter

    loaded = zoo_model("tiny_mlp")
    splitter = Splitter(loaded.model, loaded.graph)
    cut = splitter.cuts[len(splitter.cuts) // 2]
    split = splitter.split(cut.index)
    x = loaded.example_inputs()
    held = split.run_head(x)
    outputs, _ = client.run_tail(model_spec(client.pb2, "tiny_mlp"), cut.index,
                                 [(n, held[n]) for n in split.tail_inputs])
    expected = call_model(loaded.model, x)[0]
    np.testing.assert_allclose(outputs[split.tail_outputs[0]], expected, rtol=1e-6)


@pytest.mark.parametrize("field", [None, 1, 2])
def test_chunks_are_what_protobuf_itself_would_write(field):
    array = np.arange(10, dtype=np.float32)
    chunks = list(encode_tensor(pb2, "t", array, chunk_bytes=16, field=field))
    wrapper = {None: None, 1: pb2.TailReply, 2: pb2.TailRequest}[field]
    parsed = [pb2.TensorChunk.FromString(c.wire) if wrapper is None
              else wrapper.FromString(c.wire).tensor for c in chunks]
    want = [pb2.TensorChunk(name="t", dtype="float32", shape=[10], total_bytes=40,
                            data=array.tobytes()[:16]),
            pb2.TensorChunk(data=array.tobytes()[16:32]),
            pb2.TensorChunk(data=array.tobytes()[32:])]
    assert parsed == want
    if wrapper is None:  # byte for byte, as protobuf serialises it
        assert [c.wire for c in chunks] == [m.SerializeToString() for m in want]


def test_received_tensors_are_assembled_with_one_copy_at_most():
    array = np.arange(1000, dtype=np.int64)
    one = TensorAssembler()
    for c in encode_tensor(pb2, "t", array):
        one.add(pb2.TensorChunk.FromString(c.wire))
    got = one.finish()["t"]
    assert not got.flags.writeable  # a view of the message's bytes
    many = TensorAssembler()
    for c in encode_tensor(pb2, "t", array, chunk_bytes=100):
        many.add(pb2.TensorChunk.FromString(c.wire))
    assert np.array_equal(many.finish()["t"], array) and np.array_equal(got, array)


def test_chunks_fit_a_small_message_limit():
    assert chunk_bytes_for(16 << 20) == DEFAULT_CHUNK_BYTES
    assert chunk_bytes_for(1 << 20) < 1 << 20


def test_loopback_calibration_gives_the_cost_model_positive_terms():
    rpc_ms, ms_per_mb = measure_loopback_rpc(repeats=3)
    assert 0 <= rpc_ms < 1_000 and 0 <= ms_per_mb < 1_000
    assert rpc_ms + ms_per_mb > 0
