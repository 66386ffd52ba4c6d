"""The tensor path: every dtype and a 5 MB tensor, bit-exact through a real loopback
server, in one message each way (RunTailUnary, EchoUnary), as a stream (RunTail,
Echo: calls over the message limit, old servers) and with the bytes on the bulk channel
(serve --bulk-port); what the encoder writes is what
protobuf would; the loopback calibration."""

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
    encode_tensors,
    read_unary,
    unary_wire,
)
from dnntune.rpc.transfer import measure_loopback_rpc

pb2, _ = load_protocol()


@pytest.fixture(scope="module")
def server():
    running = create_server(ServerOptions(port=0, max_tensor_mb=8))
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def bulk_server():
    running = create_server(ServerOptions(port=0, max_tensor_mb=8, bulk_port=0))
    yield running
    running.stop(0)


class Recorded:
    """A client's call method that notes each use in ``calls``."""

    def __init__(self, method, name, calls):
        self.method, self.name, self.calls = method, name, calls

    def __call__(self, *args, **kwargs):
        self.calls.append(self.name)
        return self.method(*args, **kwargs)


@pytest.fixture(scope="module", params=["unary", "stream", "bulk"])
def client(server, bulk_server, request):
    """The real client: with the default 16 MiB message limit a 5 MB call is one message
    each way; as against an old server (``unary`` off), RunTail/Echo streams of chunks;
    against a server with a bulk channel, unary calls with the bytes on the channel."""
    unary = request.param != "stream"
    port = bulk_server.port if request.param == "bulk" else server.port
    c = ProfilerClient(Endpoint(f"127.0.0.1:{port}"))
    c.unary = unary
    calls = []
    for name in ("_run_tail_unary", "_echo_unary", "_run_tail", "_echo", "_bulk_call"):
        setattr(c, name, Recorded(getattr(c, name), name, calls))
    c.calls = calls
    c.path = {"unary": ("_echo_unary", "_run_tail_unary"), "stream": ("_echo", "_run_tail"),
              "bulk": ("_bulk_call", "_bulk_call")}[request.param]
    yield c
    assert c.bulk == (request.param == "bulk"), c.bulk_problem  # the channel was used
    if request.param == "bulk":
        assert c._bulk_connection is not None and not c._bulk_connection.broken
    c.close()


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
    assert client.calls[-1] == client.path[0]
    assert list(echoed) == [name for name, _ in tensors]
    for name, sent in tensors:
        want = sent.astype(sent.dtype.newbyteorder("=")) if name == "big_endian" else sent
        assert same_bits(echoed[name], want), name


def test_a_5mb_tensor_round_trips_bit_exactly(client):
    big = awkward("float32", (1_250_000,))  # 5 MB: one message, or five chunks each way
    assert client.chunk_bytes == DEFAULT_CHUNK_BYTES
    assert same_bits(client.echo([("big", big)])["big"], big)
    assert same_bits(client.echo([("big", big), ("also", big[::2])])["also"], big[::2])
    assert client.calls[-1] == client.path[0]


def test_run_tail_sends_its_tensors_through_the_same_path(client, zoo_model):
    from dnntune.model.loading import call_model
    from tests.conftest import head_at_middle_cut

    loaded = zoo_model("tiny_mlp")
    cut, split, x, held = head_at_middle_cut(loaded)
    outputs, _ = client.run_tail(model_spec(client.pb2, "tiny_mlp"), cut.index,
                                 [(n, held[n]) for n in split.tail_inputs])
    assert client.calls[-1] == client.path[1]
    expected = call_model(loaded.model, x)[0]
    np.testing.assert_allclose(outputs[split.tail_outputs[0]], expected, rtol=1e-6)


def test_run_tail_carries_a_5mb_tensor_bit_exactly(client, tmp_path_factory):
    """The real RunTail path (the agent's and validate's): a 5 MB crossing tensor
    reaches the tail bit for bit, NaN payloads and all, and comes back as the output of
    an identity tail (every dtype's bytes take the same encoder and reader: above)."""
    import keras

    path = tmp_path_factory.mktemp("identity") / "identity.keras"
    if not path.exists():
        inputs = keras.Input((1_250_000,), name="x")
        keras.Model(inputs, keras.layers.Activation("linear", name="same")(inputs)).save(path)
    client.upload_file(path)
    spec = model_spec(client.pb2, str(path))
    crossing = client.describe(spec).cuts[1].tensors[0]
    x = awkward("float32", tuple(crossing.shape))  # 5 MB
    outputs, timing = client.run_tail(spec, 1, [(crossing.name, x)])
    assert client.calls[-1] == client.path[1]
    assert timing is not None and timing.compute_ms >= 0
    assert same_bits(next(iter(outputs.values())), x)


def test_a_server_keeps_freed_transfer_buffers(server):
    """A 5 MB echo allocates several 5 MB buffers (1,221 pages each) on each side; with
    glibc's default thresholds each was fresh pages (1,751-4,194 faults a call in the
    bench). The server had glibc keep them (ServerOptions.keep_transfer_buffers): once
    the threads' arenas hold what a call needs (a dozen calls here), a call faults far
    fewer pages than one buffer has."""
    import resource
    import statistics

    from dnntune.allocator import keep_transfer_buffers

    assert keep_transfer_buffers()  # glibc took the settings (create_server asked first)
    client = ProfilerClient(Endpoint(f"127.0.0.1:{server.port}"))
    big = awkward("uint8", (5_000_000,))
    faults = []
    try:
        for _ in range(20):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            client.echo([("big", big)])
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        assert same_bits(client.echo([("big", big)])["big"], big)
    finally:
        client.close()
    assert statistics.median(faults[-7:]) < 5_000_000 // 4096 // 2, faults


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


def test_an_old_server_gets_streams_from_a_new_client():
    """A server from before RunTailUnary/EchoUnary answers UNIMPLEMENTED: the client
    sends the same call as a stream, and streams from then on."""
    from concurrent import futures

    import grpc

    from dnntune.rpc.servicers import CloudServicer
    from dnntune.rpc.transfer import loopback_state

    state = loopback_state()
    servicer = CloudServicer(state)
    old = grpc.server(futures.ThreadPoolExecutor(2), handlers=[
        grpc.method_handlers_generic_handler("dnntune.v1.Cloud", {
            "Echo": grpc.stream_stream_rpc_method_handler(
                servicer.Echo, request_deserializer=pb2.TensorChunk.FromString,
                response_serializer=lambda m: m.wire)})])
    port = old.add_insecure_port("127.0.0.1:0")
    old.start()
    c = ProfilerClient(Endpoint(f"127.0.0.1:{port}"))
    try:
        x = awkward("int64", (100,))
        assert same_bits(c.echo([("x", x)])["x"], x) and c.unary is False
        assert same_bits(c.echo([("x", x)])["x"], x)
    finally:
        c.close()
        old.stop(0)
        state.store.close()


def test_a_call_over_the_servers_message_limit_goes_as_a_stream():
    """The client sizes unary calls by its own limit (16 MiB); a server started with a
    smaller one answers RESOURCE_EXHAUSTED, and the same call goes as a stream."""
    small = create_server(ServerOptions(port=0, max_message_mb=4, max_tensor_mb=8))
    c = ProfilerClient(Endpoint(f"127.0.0.1:{small.port}"))
    calls = []
    for name in ("_echo_unary", "_echo"):
        method = getattr(c, name)
        setattr(c, name, lambda *a, _m=method, _n=name, **k: calls.append(_n) or _m(*a, **k))
    try:
        big = awkward("float32", (1_250_000,))
        assert same_bits(c.echo([("big", big)])["big"], big)
        assert calls == ["_echo_unary", "_echo"]
        assert c.unary  # still on: the next call that fits goes as one message
        x = awkward("int8")
        assert same_bits(c.echo([("x", x)])["x"], x)
    finally:
        c.close()
        small.stop(0)


def test_a_malformed_unary_call_is_invalid_argument_and_the_server_serves_on(server):
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        for method in ("EchoUnary", "RunTailUnary"):
            call = channel.unary_unary(f"/dnntune.v1.Cloud/{method}")
            for garbage in (b"\x0a\xff\xff\xff\xff\x0f", b"\x0f", b"\x0a\x03\x2a\x05a"):
                with pytest.raises(grpc.RpcError) as err:
                    call(garbage, timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, garbage)
        c = ProfilerClient(Endpoint(f"127.0.0.1:{server.port}"))
        assert same_bits(c.echo([("x", awkward("uint8"))])["x"], awkward("uint8"))
        c.close()
    finally:
        channel.close()


def test_a_unary_message_is_what_protobuf_would_write_and_reads_back_as_views():
    x, y = awkward("float32"), awkward("bool")
    header = pb2.TailRequest(header=pb2.TailHeader(cut_index=3))
    wire = unary_wire([header, *encode_tensors(pb2, [("x", x), ("y", y)], 1 << 40, field=2)])
    parsed = pb2.TailCall.FromString(wire)
    assert parsed.parts[0] == header
    assert [p.tensor.name for p in parsed.parts[1:]] == ["x", "y"]
    assert parsed.parts[1].tensor.data == x.tobytes()
    parts = list(read_unary(pb2, wire, pb2.TailRequest, 2))
    assert parts[0] == header
    assembler = TensorAssembler()
    for part in parts[1:]:
        assembler.add(part.tensor)
    got = assembler.finish()
    assert same_bits(got["x"], x) and same_bits(got["y"], y)
    assert not got["x"].flags.writeable  # a view of the message, not a copy


def test_chunks_fit_a_small_message_limit():
    assert chunk_bytes_for(16 << 20) == DEFAULT_CHUNK_BYTES
    assert chunk_bytes_for(1 << 20) < 1 << 20


def test_loopback_calibration_gives_the_cost_model_positive_terms():
    rpc_ms, ms_per_mb = measure_loopback_rpc(repeats=3)
    assert 0 <= rpc_ms < 1_000 and 0 <= ms_per_mb < 1_000
    assert rpc_ms + ms_per_mb > 0
