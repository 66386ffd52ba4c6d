"""The .proto is the contract: a `dnntune serve` process driven only through stubs
compiled from proto/ (tests/proto_stubs.py), as a client in another language would."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.proto_stubs import REPO, Protocol, raw_method

LIMIT_FLAGS = ["--max-tensor-mb", "4", "--max-call-mb", "6", "--max-input-elements", "100000",
               "--max-concurrent-rpcs", "4", "--max-message-mb", "4"]
OK_CODES = {grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OK}


@contextlib.contextmanager
def serve(tmp: Path, *flags: str, cwd: Path = REPO
          ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``dnntune serve --port 0 FLAGS`` with its own temp dir, started in ``cwd``; yields
    it and its address."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "dnntune", "serve", "--port", "0", *flags],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"listening on (\S+)", line)
        assert match, (line, proc.stderr.read() if proc.stderr else "")
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


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
def stubs(proto, channel):
    return (proto.stub(channel, "Profiler"), proto.stub(channel, "Cloud"))


def status(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    """Make a call (consuming a response stream); its status code and details."""
    try:
        result = call(*args, timeout=30, **kwargs)
        if hasattr(result, "__next__"):
            list(result)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def tensor_chunks(proto, name: str, array: np.ndarray, chunk: int = 1 << 20):
    """A tensor as the .proto says: header chunk, then chunks that carry only data."""
    raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    yield proto.TensorChunk(name=name, dtype=array.dtype.name, shape=list(array.shape),
                            total_bytes=len(raw), data=raw[:chunk])
    for start in range(chunk, len(raw), chunk):
        yield proto.TensorChunk(data=raw[start:start + chunk])


def decode(chunks) -> dict[str, np.ndarray]:
    out, parts, head = {}, [], None
    for c in [*chunks, None]:
        if c is None or c.dtype:
            if head is not None:
                out[head.name] = np.frombuffer(b"".join(parts), np.dtype(head.dtype).newbyteorder(
                    "<")).reshape(list(head.shape))
            head, parts = c, []
        if c is not None:
            parts.append(c.data)
    return out


BAD_IDS = {"absolute": "/etc/passwd", "traversal": "../../etc/hosts",
           "uppercase": "AB" * 32, "short": "ab" * 31, "long": "a" * 10_000,
           "outside file": None}


def test_every_sha256_field_refuses_anything_but_64_lowercase_hex(proto, stubs, tmp_path):
    profiler, cloud = stubs
    outside = tmp_path / "outside.keras"
    outside.write_bytes(b"x")
    ids = {**BAD_IDS, "outside file": str(outside.with_suffix(""))}
    for what, bad in ids.items():
        spec = proto.ModelSpec(sha256=bad)
        good_head = proto.ModelIdentity(zoo_name="tiny_mlp")
        calls = {
            "ModelRef.sha256": (profiler.HasModel, proto.ModelRef(sha256=bad)),
            "ModelChunk.sha256": (profiler.UploadModel, iter([proto.ModelChunk(
                sha256=bad, suffix=".keras", total_bytes=1, data=b"x")])),
            "Describe ModelSpec.sha256": (profiler.Describe, proto.DescribeRequest(model=spec)),
            "Profile ModelSpec.sha256": (profiler.Profile, proto.ProfileRequest(model=spec)),
            "RunTail ModelSpec.sha256": (cloud.RunTail, iter([proto.TailRequest(
                header=proto.TailHeader(model=spec, cut_index=1, head=good_head))])),
            "TailHeader.head.sha256": (cloud.RunTail, iter([proto.TailRequest(
                header=proto.TailHeader(model=proto.ModelSpec(zoo_name="tiny_mlp"),
                                        cut_index=1,
                                        head=proto.ModelIdentity(sha256=bad)))])),
        }
        for field, (call, request) in calls.items():
            code, details = status(call, request)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, field, code, details)
            assert "64 lowercase hex digits" in details, (what, field, details)
            assert len(details) < 300 and "dnntune-models" not in details, details


def test_sizes_a_request_controls_are_refused_before_anything_is_built(proto, stubs):
    profiler, cloud = stubs
    spec = proto.ModelSpec
    cases = {
        "input × batch": (profiler.Describe, proto.DescribeRequest(
            model=spec(zoo_name="tiny_resnet", input_shape=[1024, 1024, 3])),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "--max-input-elements"),
        "batch": (profiler.Describe, proto.DescribeRequest(
            model=spec(zoo_name="tiny_mlp", batch_size=5000)),
            grpc.StatusCode.INVALID_ARGUMENT, "batch_size"),
        "10,000 input dims": (profiler.Describe, proto.DescribeRequest(
            model=spec(zoo_name="tiny_mlp", input_shape=[1] * 10_000)),
            grpc.StatusCode.INVALID_ARGUMENT, "at most 8 allowed"),
        "energy": (profiler.Profile, proto.ProfileRequest(
            model=spec(zoo_name="tiny_mlp"), energy="x" * 10_000),
            grpc.StatusCode.INVALID_ARGUMENT, "ProfileRequest.energy"),
        "runs": (profiler.Profile, proto.ProfileRequest(
            model=spec(zoo_name="tiny_mlp"), num_runs=1_000_000),
            grpc.StatusCode.INVALID_ARGUMENT, "num_runs"),
        "one tensor over --max-tensor-mb": (cloud.Echo, iter([proto.TensorChunk(
            name="t", dtype="float32", shape=[2 << 20], total_bytes=8 << 20)]),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit"),
        "tensors over --max-call-mb": (cloud.Echo, iter(
            [c for i in range(3) for c in tensor_chunks(proto, f"t{i}",
                                                         np.zeros(3 << 20, np.uint8))]),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "tensors of this call"),
        "65 tensors": (cloud.Echo, iter(
            [c for i in range(65) for c in tensor_chunks(proto, f"t{i}", np.zeros(1, np.int8))]),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "more than 64 tensors"),
        "10,000 tensor dims": (cloud.Echo, iter([proto.TensorChunk(
            name="t", dtype="int8", shape=[1] * 10_000, total_bytes=1, data=b"\x01")]),
            grpc.StatusCode.INVALID_ARGUMENT, "at most 8 allowed"),
    }
    for name, (call, request, code, needle) in cases.items():
        started = time.perf_counter()
        got, details = status(call, request)
        assert (got, needle in details) == (code, True), (name, got, details)
        assert time.perf_counter() - started < 10, name


def test_a_data_only_continuation_chunk_is_accepted(proto, stubs):
    _, cloud = stubs
    big = np.arange(700_000, dtype=np.float32)  # 2.8 MB: three chunks of at most 1 MiB
    chunks = list(tensor_chunks(proto, "big", big))
    assert len(chunks) == 3 and not chunks[1].name
    echoed = decode(cloud.Echo(iter(chunks), timeout=30))
    assert np.array_equal(echoed["big"], big)


def test_describe_builds_a_run_tail_request_from_scratch(proto, stubs):
    """Cuts 0 and 1 are the same partition: both take the raw input, same outputs."""
    profiler, cloud = stubs
    spec = proto.ModelSpec(zoo_name="tiny_mlp")
    desc = profiler.Describe(proto.DescribeRequest(model=spec), timeout=60)
    assert [c.index for c in desc.cuts] == list(range(len(desc.layers) + 1))
    x = np.random.default_rng(0).standard_normal(list(desc.model_inputs[0].shape)
                                                 ).astype(desc.model_inputs[0].dtype)
    outputs = []
    for cut in (0, 1):
        (crossing,) = desc.cuts[cut].tensors
        assert list(crossing.shape) == list(x.shape) and crossing.bytes == x.nbytes
        requests = [proto.TailRequest(header=proto.TailHeader(model=spec, cut_index=cut,
                                                              head=desc.identity)),
                    *(proto.TailRequest(tensor=c) for c in tensor_chunks(proto, crossing.name, x))]
        replies = list(cloud.RunTail(iter(requests), timeout=60))
        assert replies[-1].WhichOneof("part") == "timing"
        got = decode(r.tensor for r in replies[:-1])
        out = desc.model_outputs[0]
        assert list(got) == [out.name] and list(got[out.name].shape) == list(out.shape)
        outputs.append(got[out.name])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_tail_of_another_model_is_refused_in_one_line(proto, stubs):
    _, cloud = stubs
    header = proto.TailHeader(model=proto.ModelSpec(zoo_name="tiny_mlp", seed=2), cut_index=2,
                              head=proto.ModelIdentity(zoo_name="tiny_mlp", seed=1))
    code, details = status(cloud.RunTail, iter([proto.TailRequest(header=header)]))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert "seed 1" in details and "seed 2" in details and "\n" not in details
    # No head at all is the tail's own model (what clients before the field meant): the
    # header is accepted, and only the missing crossing tensors are refused.
    code, details = status(cloud.RunTail, iter([proto.TailRequest(header=proto.TailHeader(
        model=proto.ModelSpec(zoo_name="tiny_mlp"), cut_index=2))]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no crossing tensors followed the header" in details


def test_a_client_of_the_proto_before_tail_header_head_still_runs_tails(tmp_path, channel,
                                                                        proto, stubs):
    """Compatibility within v1: a RunTail built by stubs of the .proto as it was before
    TailHeader.head (tests/data/proto_before_head, a copy of that version) still works,
    and gets the same outputs as a request that names the head."""
    old = Protocol(tmp_path, root=REPO / "tests" / "data" / "proto_before_head")
    assert "head" not in old.TailHeader.DESCRIPTOR.fields_by_name
    profiler, cloud = stubs
    spec = proto.ModelSpec(zoo_name="tiny_mlp")
    desc = profiler.Describe(proto.DescribeRequest(model=spec), timeout=60)
    (crossing,) = desc.cuts[2].tensors
    x = np.random.default_rng(3).standard_normal(list(crossing.shape)).astype(crossing.dtype)
    old_requests = [old.TailRequest(header=old.TailHeader(
                        model=old.ModelSpec(zoo_name="tiny_mlp"), cut_index=2)),
                    *(old.TailRequest(tensor=c) for c in tensor_chunks(old, crossing.name, x))]
    old_cloud = old.stub(channel, "Cloud")
    old_replies = list(old_cloud.RunTail(iter(old_requests), timeout=60))
    new_requests = [proto.TailRequest(header=proto.TailHeader(model=spec, cut_index=2,
                                                              head=desc.identity)),
                    *(proto.TailRequest(tensor=c) for c in tensor_chunks(proto, crossing.name, x))]
    new_replies = list(cloud.RunTail(iter(new_requests), timeout=60))
    got_old = decode(r.tensor for r in old_replies if r.WhichOneof("part") == "tensor")
    got_new = decode(r.tensor for r in new_replies if r.WhichOneof("part") == "tensor")
    assert list(got_old) == list(got_new) and got_old
    for name in got_new:
        np.testing.assert_array_equal(got_old[name], got_new[name])


def test_first_run_tail_reports_model_loading_apart(proto, stubs):
    profiler, cloud = stubs
    spec = proto.ModelSpec(zoo_name="tiny_resnet", seed=77)  # never built by another test
    head = proto.ModelIdentity(zoo_name="tiny_resnet", seed=77)
    desc = profiler.Describe(proto.DescribeRequest(model=spec), timeout=60)
    (crossing,) = desc.cuts[1].tensors
    # Describe built the model already; at a new input shape it is a new model
    spec.input_shape[:] = [24, 24, 3]
    head.input_shape[:] = [24, 24, 3]
    timings = []
    for _ in range(2):
        x = np.zeros([1, 24, 24, 3], np.float32)
        replies = list(cloud.RunTail(iter([
            proto.TailRequest(header=proto.TailHeader(model=spec, cut_index=1, head=head)),
            *(proto.TailRequest(tensor=c) for c in tensor_chunks(proto, crossing.name, x))]),
            timeout=60))
        timings.append(replies[-1].timing)
    assert timings[0].load_ms > 10 * max(timings[1].load_ms, 0.01)
    assert timings[0].receive_ms < timings[0].load_ms


def test_uploads_that_are_not_models_are_refused_at_upload(proto, stubs, server):
    import hashlib

    profiler, _ = stubs
    blank = io.BytesIO()
    with zipfile.ZipFile(blank, "w") as z:
        z.writestr("metadata.json", "{}")
    for data, needle in ((os.urandom(300), "must be a zip archive"),
                         (blank.getvalue(), "no config.json")):
        digest = hashlib.sha256(data).hexdigest()
        code, details = status(profiler.UploadModel, iter([proto.ModelChunk(
            sha256=digest, suffix=".keras", total_bytes=len(data), data=data)]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details, details
        assert not profiler.HasModel(proto.ModelRef(sha256=digest), timeout=10).cached
    # a zip that looks like a model but is not: refused at load, naming no server path
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("config.json", '{"class_name": "Functional", "config": 5}')
    data = broken.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    profiler.UploadModel(iter([proto.ModelChunk(sha256=digest, suffix=".keras",
                                                total_bytes=len(data), data=data)]), timeout=30)
    code, details = status(profiler.Describe, proto.DescribeRequest(
        model=proto.ModelSpec(sha256=digest)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"uploaded model {digest}" in details and "/tmp" not in details, details
    assert "dnntune-models" not in details and str(REPO) not in details, details


def slow_echo(proto, release: threading.Event):
    yield proto.TensorChunk(name="held", dtype="uint8", shape=[2], total_bytes=2, data=b"\x01")
    release.wait(30)
    yield proto.TensorChunk(data=b"\x02")


def test_health_answers_while_every_call_slot_is_held(proto, stubs, channel):
    _, cloud = stubs
    release = threading.Event()
    held: list[object] = []
    calls = [cloud.Echo(slow_echo(proto, release), timeout=60) for _ in range(4)]
    threads = [threading.Thread(target=lambda c=c: held.append(list(c))) for c in calls]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        code, details = status(cloud.Echo, tensor_chunks(proto, "x", np.zeros(1, np.uint8)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        for _ in range(5):
            assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert len(held) == 4


def test_random_bytes_on_every_method_leave_the_server_serving(proto, stubs, channel, server):
    rng = np.random.default_rng(11)
    file = proto.file
    for service in ("Profiler", "Cloud"):
        for method in file.services_by_name[service].methods:
            call = raw_method(channel, f"/dnntune.v1.{service}/{method.name}",
                              method.client_streaming, method.server_streaming)
            for _ in range(200):
                payload = rng.bytes(int(rng.integers(0, 48)))
                request = iter([payload]) if method.client_streaming else payload
                code, details = status(call, request)
                assert code in OK_CODES, (method.name, payload, code, details)
    assert server[0].poll() is None
    assert health(channel) == health_pb2.HealthCheckResponse.SERVING
    _, cloud = stubs
    echoed = decode(cloud.Echo(tensor_chunks(proto, "x", np.arange(3, dtype=np.int32)),
                               timeout=30))
    assert echoed["x"].tolist() == [0, 1, 2]


def test_token_guards_reflection_and_bearer_is_case_insensitive(proto, tmp_path):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with serve(tmp_path, "--token-file", str(token), "--reflection") as (_, address), \
            grpc.insecure_channel(address) as ch:
        def list_services(metadata=()):
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            return list(stub.ServerReflectionInfo(iter([request]), metadata=metadata,
                                                  timeout=10))
        with pytest.raises(grpc.RpcError) as info:
            list_services()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert list_services((("authorization", "bearer s3cret"),))
        profiler = proto.stub(ch, "Profiler")
        reply = profiler.HasModel(proto.ModelRef(sha256="0" * 64), timeout=10,
                                  metadata=(("authorization", "BEARER s3cret"),))
        assert not reply.cached
        assert health(ch) == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_after_a_malformed_stream_message_ends_within_the_grace(proto, tmp_path):
    with serve(tmp_path, "--grace-s", "2") as (proc, address), \
            grpc.insecure_channel(address) as ch:
        echo = raw_method(ch, "/dnntune.v1.Cloud/Echo", True, True)
        release = threading.Event()

        def requests():
            yield b"\xff\xff\xff"
            release.wait(60)  # the client stays connected

        call = echo(requests(), timeout=60)
        threading.Thread(target=lambda: status(lambda **_: call), daemon=True).start()
        time.sleep(1.0)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(2 + 5 + 10)  # grace + the stop bound + start-up slack
        finally:
            release.set()
        assert code in (0, 3), code
        assert time.monotonic() - started < 17
    assert not list(tmp_path.glob("dnntune-models-*"))  # its upload folder went with it
