"""The cloud server and device agent: real gRPC servers on loopback, port 0."""

from __future__ import annotations

import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud_server import create_server
from dnntune.errors import DnntuneError
from dnntune.model.loading import call_model
from dnntune.model.split import Splitter
from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec
from dnntune.rpc.serving import ServerOptions


@pytest.fixture(scope="module")
def cloud():
    # gRPC's own default message limit (4 MB): a 4.9 MB tensor has to be chunked.
    running = create_server(ServerOptions(port=0, max_message_mb=4, max_tensor_mb=8))
    yield running
    running.stop(0)


@pytest.fixture(scope="module")
def client(cloud):
    c = ProfilerClient(Endpoint(f"127.0.0.1:{cloud.port}", max_message_mb=4))
    yield c
    c.close()


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
        return reply.status


def test_health_is_serving(cloud):
    assert health_status(f"127.0.0.1:{cloud.port}") == health_pb2.HealthCheckResponse.SERVING


def test_largest_mobilenet_v2_cut_round_trips_in_chunks(client, zoo_model):
    """block_1_pad's 4.9 MB output crosses in 1 MiB chunks under a 4 MB message limit."""
    loaded = zoo_model("mobilenet_v2")
    splitter = Splitter(loaded.model, loaded.graph)
    cut = max(splitter.cuts, key=lambda c: c.bytes_up)
    assert cut.bytes_up == 4_903_296
    split = splitter.split(cut.index)
    x = loaded.example_inputs()
    held = split.run_head(x)
    spec = model_spec(client.pb2, "mobilenet_v2")
    outputs, timing = client.run_tail(spec, cut.index,
                                      [(n, held[n]) for n in split.tail_inputs])
    expected = call_model(loaded.model, x)[0]
    np.testing.assert_allclose(outputs[split.tail_outputs[0]], expected, rtol=1e-5, atol=1e-7)
    assert timing.compute_ms > 0
    big = held[split.tail_inputs[0]]
    echoed = client.echo([("big", big)])
    assert np.array_equal(echoed["big"], big)


def status_of(fn) -> grpc.StatusCode:
    with pytest.raises(DnntuneError) as info:
        fn()
    return str(info.value)


def raw_tail(client, messages):
    """Call RunTail with hand-made (possibly malformed) messages; returns the status code."""
    try:
        list(client.cloud.RunTail(iter(messages), timeout=60))
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_every_malformed_request_gets_a_status_and_the_server_keeps_serving(client, cloud):
    pb2 = client.pb2
    tiny = pb2.ModelSpec(zoo_name="tiny_mlp")
    head = pb2.ModelIdentity(zoo_name="tiny_mlp")
    header = pb2.TailRequest(header=pb2.TailHeader(model=tiny, cut_index=2, head=head))
    good = pb2.TensorChunk(name="fc1:0", dtype="float32", shape=[1, 32], total_bytes=128,
                           data=bytes(128))
    cases = {
        "unknown model hash": ([pb2.TailRequest(header=pb2.TailHeader(
            model=pb2.ModelSpec(sha256="ab" * 32), cut_index=1,
            head=pb2.ModelIdentity(sha256="ab" * 32)))],
            grpc.StatusCode.NOT_FOUND, "no uploaded model"),
        "dtype not allowed": ([header, pb2.TailRequest(tensor=pb2.TensorChunk(
            name="fc1:0", dtype="complex64", shape=[1, 32], total_bytes=256))],
            grpc.StatusCode.INVALID_ARGUMENT, "dtype 'complex64'"),
        "shape x dtype != bytes": ([header, pb2.TailRequest(tensor=pb2.TensorChunk(
            name="fc1:0", dtype="float32", shape=[1, 32], total_bytes=100))],
            grpc.StatusCode.INVALID_ARGUMENT, "is 128 bytes, but total_bytes says 100"),
        "fewer bytes than declared": ([header, pb2.TailRequest(tensor=pb2.TensorChunk(
            name="fc1:0", dtype="float32", shape=[1, 32], total_bytes=128, data=bytes(64)))],
            grpc.StatusCode.INVALID_ARGUMENT, "received 64 of 128 bytes"),
        "not the cut's shape (refused before any data)": ([header, pb2.TailRequest(
            tensor=pb2.TensorChunk(name="fc1:0", dtype="float32", shape=[1 << 22],
                                   total_bytes=1 << 24))],
            grpc.StatusCode.INVALID_ARGUMENT, "must be float32[1, 32], got float32[4194304]"),
        "bad cut index": ([pb2.TailRequest(header=pb2.TailHeader(model=tiny, cut_index=99,
                                                                 head=head)),
                           pb2.TailRequest(tensor=good)],
                          grpc.StatusCode.INVALID_ARGUMENT, "cut index 99 out of range"),
        "wrong tensor for the cut": ([header, pb2.TailRequest(tensor=pb2.TensorChunk(
            name="fc2:0", dtype="float32", shape=[1, 16], total_bytes=64, data=bytes(64)))],
            grpc.StatusCode.INVALID_ARGUMENT, "expected tensors ['fc1:0']"),
        "no tensor after the header": ([header], grpc.StatusCode.INVALID_ARGUMENT,
                                       "no crossing tensors followed the header"),
        "tail of another model": ([pb2.TailRequest(header=pb2.TailHeader(
            model=tiny, cut_index=2, head=pb2.ModelIdentity(zoo_name="tiny_mlp", seed=7)))],
            grpc.StatusCode.FAILED_PRECONDITION, "run both halves of the same model"),
        "no header": ([pb2.TailRequest(tensor=good)], grpc.StatusCode.INVALID_ARGUMENT,
                      "first message must be a header"),
        "unknown zoo model": ([pb2.TailRequest(header=pb2.TailHeader(
            model=pb2.ModelSpec(zoo_name="alexnet"), cut_index=1,
            head=pb2.ModelIdentity(zoo_name="alexnet")))],
            grpc.StatusCode.INVALID_ARGUMENT, "'alexnet' is not a zoo model"),
    }
    for name, (messages, code, needle) in cases.items():
        got, details = raw_tail(client, messages)
        assert got == code, (name, got, details)
        assert needle in details, (name, details)
    # the same server still answers a good request
    assert raw_tail(client, [header, pb2.TailRequest(tensor=good)])[0] == grpc.StatusCode.OK
    assert health_status(f"127.0.0.1:{cloud.port}") == health_pb2.HealthCheckResponse.SERVING


def test_a_message_over_the_size_limit_is_refused(client):
    pb2 = client.pb2
    huge = pb2.TensorChunk(name="x", dtype="uint8", shape=[5 << 20], total_bytes=5 << 20,
                           data=bytes(5 << 20))
    with pytest.raises(grpc.RpcError) as info:
        list(client.cloud.Echo(iter([huge]), timeout=30))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_token_auth():
    running = create_server(ServerOptions(port=0, token="s3cret"))
    address = f"127.0.0.1:{running.port}"
    try:
        anonymous = ProfilerClient(Endpoint(address))
        with pytest.raises(DnntuneError, match="UNAUTHENTICATED: missing or wrong token"):
            anonymous.echo([("x", np.ones(3, np.float32))])
        wrong = ProfilerClient(Endpoint(address, token="guess"))
        with pytest.raises(DnntuneError, match="UNAUTHENTICATED"):
            wrong.echo([("x", np.ones(3, np.float32))])
        right = ProfilerClient(Endpoint(address, token="s3cret"))
        assert right.echo([("x", np.ones(3, np.float32))])["x"].sum() == 3
        # health checks stay open for load balancers
        assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(0)


def slow_chunks(pb2, release: threading.Event, pieces: int = 4):
    yield pb2.TensorChunk(name="slow", dtype="uint8", shape=[pieces], total_bytes=pieces,
                          data=b"\x01")
    for _ in range(pieces - 1):
        release.wait(20)
        yield pb2.TensorChunk(name="slow", data=b"\x01")


def test_concurrency_limit_answers_resource_exhausted():
    running = create_server(ServerOptions(port=0, max_concurrent_rpcs=1))
    client = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}"))
    release = threading.Event()
    results: list[object] = []
    try:
        holder = threading.Thread(target=lambda: results.append(list(client.cloud.Echo(
            slow_chunks(client.pb2, release), timeout=30))))
        holder.start()
        time.sleep(0.5)
        with pytest.raises(DnntuneError, match="RESOURCE_EXHAUSTED"):
            client.echo([("x", np.zeros(2, np.float32))])
        release.set()
        holder.join(30)
        assert results and results[0]
        assert client.echo([("x", np.zeros(2, np.float32))])["x"].shape == (2,)
    finally:
        release.set()
        running.stop(0)


def test_uploaded_model_is_profiled_by_hash(tmp_path, client):
    import keras

    inp = keras.Input(shape=(8,), name="features")
    out = keras.layers.Dense(4, name="dense")(inp)
    path = tmp_path / "mine.keras"
    keras.Model(inp, out).save(path)
    digest = client.upload_file(path)
    assert client.call(client.profiler.HasModel, client.pb2.ModelRef(sha256=digest)).cached
    assert client.upload_file(path) == digest  # second time: cached, nothing sent
    spec = model_spec(client.pb2, str(path))
    profile = client.profile(spec, num_runs=3, warmup_runs=1, energy="none")
    assert profile.meta.model_name == "mine" and profile.meta.side == "cloud"
    assert profile.layer_names == ("features", "dense")


def test_upload_with_a_wrong_hash_is_refused(client):
    pb2 = client.pb2
    chunk = pb2.ModelChunk(sha256="00" * 32, suffix=".keras", total_bytes=4, data=b"abcd")
    with pytest.raises(DnntuneError, match="INVALID_ARGUMENT: model upload: sha256"):
        client.call(client.profiler.UploadModel, iter([chunk]))
    chunk = pb2.ModelChunk(sha256="00" * 32, suffix=".pkl", total_bytes=4, data=b"abcd")
    with pytest.raises(DnntuneError, match="suffix must be one of"):
        client.call(client.profiler.UploadModel, iter([chunk]))


def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    running = create_server(ServerOptions(host="localhost", port=0, tls_cert=str(cert),
                                          tls_key=str(key)))
    try:
        secure = ProfilerClient(Endpoint(f"localhost:{running.port}", tls_cert=str(cert)))
        assert secure.echo([("x", np.arange(4, dtype=np.int32))])["x"].tolist() == [0, 1, 2, 3]
        address = f"localhost:{running.port}"
        with pytest.raises(DnntuneError, match="the server speaks TLS but this client does not"):
            ProfilerClient(Endpoint(address, connect_timeout_s=1))
        other_key, other = tmp_path / "other-key.pem", tmp_path / "other.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                        "1", "-subj", "/CN=localhost", "-keyout", str(other_key), "-out",
                        str(other)], check=True, capture_output=True)
        with pytest.raises(DnntuneError, match="TLS certificate check failed"):
            ProfilerClient(Endpoint(address, tls_cert=str(other), connect_timeout_s=1))
        with pytest.raises(DnntuneError, match="not a PEM certificate"):
            ProfilerClient(Endpoint(address, tls_cert=__file__, connect_timeout_s=1))
    finally:
        running.stop(0)
    plain = create_server(ServerOptions(host="localhost", port=0))
    try:
        with pytest.raises(DnntuneError, match="the server does not speak TLS"):
            ProfilerClient(Endpoint(f"localhost:{plain.port}", tls_cert=str(cert),
                                    connect_timeout_s=1))
    finally:
        plain.stop(0)


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(DnntuneError, match="cannot reach 127.0.0.1:9: no gRPC server"):
        ProfilerClient(Endpoint("127.0.0.1:9", connect_timeout_s=0.5))


def test_a_deadline_stops_the_profile_and_frees_the_server(client):
    spec = model_spec(client.pb2, "mobilenet_v2")
    started = time.perf_counter()
    with pytest.raises(DnntuneError, match="DEADLINE_EXCEEDED"):
        client.profile(spec, num_runs=10_000, warmup_runs=0, energy="none", timeout_s=4)
    # the abandoned profile stops at its next run, so a new one does not wait for 10k runs
    profile = client.profile(model_spec(client.pb2, "tiny_mlp"), num_runs=3, warmup_runs=0,
                             energy="none", timeout_s=60)
    assert profile.meta.num_runs == 3
    assert time.perf_counter() - started < 60


class SilentProxy:
    """A TCP proxy on loopback that forwards until :meth:`go_silent`, then drops every
    byte both ways while keeping the connections open (a link that dies without a RST)."""

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        self.silent = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self.silent.is_set():
                try:
                    dst.sendall(data)
                except OSError:
                    return

    def go_silent(self) -> None:
        self.silent.set()

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


def test_a_link_that_goes_silent_ends_the_call_within_its_deadline():
    running = create_server(ServerOptions(port=0))
    proxy = SilentProxy(running.port)
    try:
        # keepalive: a dead peer is detected after about 2 × keepalive_s
        client = ProfilerClient(Endpoint(f"127.0.0.1:{proxy.port}", keepalive_s=1.0))
        assert client.echo([("x", np.ones(2, np.float32))])["x"].sum() == 2
        proxy.go_silent()
        started = time.monotonic()
        with pytest.raises(DnntuneError, match="the connection stalled"):
            client.echo([("x", np.ones(2, np.float32))], timeout_s=30)
        assert time.monotonic() - started < 15
        client.close()
        # without keepalive the deadline still ends it
        proxy2 = SilentProxy(running.port)
        slow = ProfilerClient(Endpoint(f"127.0.0.1:{proxy2.port}", keepalive_s=600))
        proxy2.go_silent()
        started = time.monotonic()
        with pytest.raises(DnntuneError, match="DEADLINE_EXCEEDED"):
            slow.echo([("x", np.ones(2, np.float32))], timeout_s=2)
        assert time.monotonic() - started < 6
        slow.close()
        proxy2.close()
    finally:
        proxy.close()
        running.stop(0)


def test_a_profile_runs_alone_on_its_server():
    """Compute calls wait for nothing and disturb nothing: the profile waits for the call
    in flight, and calls that arrive while it measures get UNAVAILABLE."""
    running = create_server(ServerOptions(port=0))
    client = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}"))
    release = threading.Event()
    stages: list[tuple[float, str]] = []
    results: list[object] = []
    try:
        holder = threading.Thread(target=lambda: results.append(list(client.cloud.Echo(
            slow_chunks(client.pb2, release), timeout=60))))
        holder.start()
        time.sleep(0.5)
        profiler = threading.Thread(target=lambda: results.append(client.profile(
            model_spec(client.pb2, "tiny_mlp"), num_runs=400, warmup_runs=0, energy="none",
            progress=lambda stage, done, total: stages.append((time.monotonic(), stage)))))
        profiler.start()
        time.sleep(3)
        assert not stages  # still waiting for the Echo in flight
        with pytest.raises(DnntuneError, match="UNAVAILABLE.*profiling in progress"):
            client.echo([("x", np.zeros(2, np.float32))])
        released_at = time.monotonic()
        release.set()
        holder.join(30)
        profiler.join(120)
        assert stages and stages[0][0] >= released_at
        assert len(results) == 2
        assert client.echo([("x", np.zeros(2, np.float32))])["x"].shape == (2,)
    finally:
        release.set()
        client.close()
        running.stop(0)


def test_a_stored_model_computes_its_reference_outputs_once(zoo_model, tmp_path):
    from dnntune.rpc.modelstore import ModelKey, ModelStore

    store = ModelStore(tmp_path / "store")
    entry = store.get(ModelKey(zoo_name="tiny_resnet"))
    first = entry.reference_outputs()
    assert entry.reference_outputs() is first  # RunSplit after RunSplit reuses it
    expected = call_model(entry.loaded.model, entry.loaded.example_inputs())
    np.testing.assert_allclose(first[0], expected[0], rtol=1e-5, atol=1e-6)
    store.close()


def test_an_oversized_message_is_one_log_line_without_traceback(cloud, caplog):
    """gRPC refuses a message over --max-message-mb (RESOURCE_EXHAUSTED for the client);
    the server logs one line naming the method and the client, never a traceback."""
    from dnntune.rpc.protocol import load_protocol

    pb2, _ = load_protocol()
    first = pb2.TensorChunk(name="x:0", dtype="uint8", shape=[1, 5 << 20],
                            total_bytes=5 << 20, data=bytes(1 << 10))
    big = pb2.TensorChunk(data=bytes((5 << 20) - (1 << 10)))

    def requests():
        # A valid first chunk, then a pause, so the server's handler is reading the stream
        # (not skipped as already ended) when the oversized chunk arrives.
        yield first
        time.sleep(1.0)
        yield big
    options = [("grpc.max_send_message_length", 64 << 20)]
    with caplog.at_level("INFO"), grpc.insecure_channel(f"127.0.0.1:{cloud.port}",
                                                        options) as channel:
        echo = channel.stream_stream("/dnntune.v1.Cloud/Echo",
                                     request_serializer=pb2.TensorChunk.SerializeToString,
                                     response_deserializer=pb2.TensorChunk.FromString)
        with pytest.raises(grpc.RpcError) as info:
            list(echo(requests(), timeout=30))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        time.sleep(2)  # the handler runs on its own thread
    # gRPC either raises in the handler's request stream (one warning line) or just ends
    # the stream (the handler's own refusal goes to a client that has gone): never a
    # traceback either way. The one-line path is pinned down by the test below.
    lines = [r for r in caplog.records if "Echo" in r.getMessage()]
    assert len(lines) <= 1, caplog.text
    assert all("127.0.0.1" in r.getMessage() for r in lines), caplog.text
    assert not any(r.exc_info for r in caplog.records), caplog.text
    assert "Traceback" not in caplog.text
    assert health_status(f"127.0.0.1:{cloud.port}") == health_pb2.HealthCheckResponse.SERVING


def test_a_request_stream_ended_by_grpc_is_one_warning_and_reraised_as_is(caplog):
    """What the servicers do when gRPC ends a request stream: one line with the method
    and the client, and the same RpcError re-raised (gRPC then logs nothing itself)."""
    from dnntune.rpc.servicers import rpc_errors

    class Context:
        def peer(self) -> str:
            return "ipv4:127.0.0.1:5555"

        def abort(self, code, details):  # must not be called: the call is over
            raise AssertionError((code, details))

    ended = grpc.RpcError()
    with caplog.at_level("INFO"), pytest.raises(grpc.RpcError) as info, \
            rpc_errors(Context(), "Echo"):  # type: ignore[arg-type]
        raise ended
    assert info.value is ended
    [line] = caplog.records
    assert line.levelname == "WARNING" and not line.exc_info
    assert line.getMessage().startswith("Echo from ipv4:127.0.0.1:5555: the request stream")
