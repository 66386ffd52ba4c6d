"""The bulk channel (``serve --bulk-port``, dnntune.rpc.bulk) against real servers on
loopback: spoken from the .proto's description alone (raw sockets and generated
messages), and refused as the .proto says, the server serving on. The tensor
round trips through the bulk path (every dtype, 5 MB, RunTail) are in test_transfer.py.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import grpc
import numpy as np
import pytest

from cloud_server import create_server
from dnntune.errors import DnntuneError
from dnntune.rpc import bulk as bulk_module
from dnntune.rpc.client import Endpoint, ProfilerClient
from dnntune.rpc.protocol import load_protocol
from dnntune.rpc.serving import ServerOptions

pb2, services = load_protocol()
# the .proto's frame header: magic, method or status, timeout_ms, M, D
FRAME = struct.Struct("<4sIIQQ")
ECHO, RUN_TAIL = 1, 2


@pytest.fixture(scope="module")
def server():
    running = create_server(ServerOptions(port=0, bulk_port=0, max_tensor_mb=1,
                                          max_concurrent_rpcs=4, token="s3cret"))
    yield running
    running.stop(0)


@pytest.fixture()
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield services.CloudStub(channel)
    channel.close()


AUTH = (("authorization", "Bearer s3cret"),)


def open_connection(stub, server, metadata=AUTH) -> tuple[socket.socket, bytes]:
    """What a client written from the .proto does: OpenBulk, connect, send the ticket,
    read the 0x01."""
    ticket = stub.OpenBulk(pb2.BulkRequest(), metadata=metadata, timeout=10)
    assert ticket.port == server.bulk_port and len(ticket.ticket) == 32 and not ticket.tls
    assert ticket.expires_s > 0
    sock = socket.create_connection(("127.0.0.1", ticket.port), timeout=10)
    sock.sendall(ticket.ticket)
    assert sock.recv(1) == b"\x01"
    return sock, ticket.ticket


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = sock.recv(n - len(out))
        assert piece, "the server closed the bulk connection"
        out += piece
    return bytes(out)


def closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (an orderly close, or a reset when bytes it
    never read were left behind)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def echo_message(arrays: dict[str, np.ndarray]) -> bytes:
    chunks = [pb2.TensorChunk(name=n, dtype=a.dtype.name, shape=a.shape,
                              total_bytes=a.nbytes, bulk=True) for n, a in arrays.items()]
    return pb2.TensorList(tensors=chunks).SerializeToString()


def send_request(sock, method, message, data, timeout_ms=10_000):
    sock.sendall(FRAME.pack(b"DTB1", method, timeout_ms, len(message), len(data)) + message
                 + data)


def read_reply(sock):
    """``(status, message, data)`` of the next reply frame."""
    magic, status, zero, m, d = FRAME.unpack(recv_exactly(sock, FRAME.size))
    assert (magic, zero) == (b"DTB1", 0)
    return status, recv_exactly(sock, m), recv_exactly(sock, d)


def raw_echo(sock, arrays):
    """One EchoUnary over the bulk channel, written from the .proto's steps."""
    send_request(sock, ECHO, echo_message(arrays),
                 b"".join(a.tobytes() for a in arrays.values()))
    return read_reply(sock)


def test_a_client_written_from_the_proto_echoes_over_the_bulk_channel(server, stub):
    sock, _ = open_connection(stub, server)
    try:
        arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
                  "b": np.array([True, False, True]), "c": np.zeros((0, 2), np.int64)}
        for _ in range(3):  # one connection, calls in turn
            status, message, body = raw_echo(sock, arrays)
            assert status == 0
            reply = pb2.TensorList.FromString(message)
            assert [c.name for c in reply.tensors] == ["a", "b", "c"]
            assert all(c.bulk and not c.data for c in reply.tensors)
            assert body == b"".join(a.tobytes() for a in arrays.values())
    finally:
        sock.close()


def test_a_client_written_from_the_proto_runs_a_tail(server, stub, zoo_model):
    """RunTailUnary on the bulk channel: the tail's output equals the unsplit model's."""
    from dnntune.model.loading import call_model
    from tests.conftest import head_at_middle_cut

    loaded = zoo_model("tiny_mlp")
    cut, split, x, held = head_at_middle_cut(loaded)
    crossing = [(n, np.ascontiguousarray(held[n])) for n in split.tail_inputs]
    header = pb2.TailRequest(header=pb2.TailHeader(model=pb2.ModelSpec(zoo_name="tiny_mlp"),
                                                   cut_index=cut.index))
    parts = [header] + [pb2.TailRequest(tensor=pb2.TensorChunk(
        name=n, dtype=a.dtype.name, shape=a.shape, total_bytes=a.nbytes, bulk=True))
        for n, a in crossing]
    sock, _ = open_connection(stub, server)
    try:
        send_request(sock, RUN_TAIL, pb2.TailCall(parts=parts).SerializeToString(),
                     b"".join(a.tobytes() for _, a in crossing), timeout_ms=120_000)
        status, message, body = read_reply(sock)
        assert status == 0, message
        result = pb2.TailResult.FromString(message)
        tensors = [p.tensor for p in result.parts if p.WhichOneof("part") == "tensor"]
        assert [p.WhichOneof("part") for p in result.parts][-1] == "timing"
        assert len(tensors) == 1 and tensors[0].bulk and len(body) == tensors[0].total_bytes
        out = np.frombuffer(body, tensors[0].dtype).reshape(tuple(tensors[0].shape))
        np.testing.assert_allclose(out, call_model(loaded.model, x)[0], rtol=1e-6)
    finally:
        sock.close()


def test_a_wrong_ticket_gets_the_connection_closed(server):
    sock = socket.create_connection(("127.0.0.1", server.bulk_port), timeout=10)
    try:
        sock.sendall(b"\x00" * 32)
        assert sock.recv(1) == b""  # closed, nothing said
    finally:
        sock.close()


def test_a_silent_connection_is_closed_after_the_handshake_time(server):
    sock = socket.create_connection(("127.0.0.1", server.bulk_port), timeout=20)
    try:
        t0 = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - t0 < bulk_module.HANDSHAKE_S + 3
    finally:
        sock.close()


def test_open_bulk_needs_the_token(server, stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.OpenBulk(pb2.BulkRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_frame_it_cannot_read_closes_the_connection_and_the_server_serves_on(server,
                                                                               stub):
    for bad in (b"XXXX" + bytes(24),                                # not a frame
                FRAME.pack(b"DTB1", 9, 0, 0, 0)):                    # no such method
        sock, _ = open_connection(stub, server)
        try:
            sock.sendall(bad)
            assert closed(sock)
        finally:
            sock.close()
    for m, d, words in ((64 << 20, 0, "--max-message-mb"), (10, 2 << 30, "--max-call-mb")):
        sock, _ = open_connection(stub, server)  # sizes over the limits: refused unread
        try:
            sock.sendall(FRAME.pack(b"DTB1", ECHO, 1000, m, d))
            status, text, body = read_reply(sock)
            assert status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert words in text.decode() and body == b""
            assert closed(sock)  # after the call's deadline (1 s), nothing more coming
        finally:
            sock.close()
    sock, _ = open_connection(stub, server)  # still serving
    try:
        status, _, body = raw_echo(sock, {"a": np.ones(2, np.int8)})
        assert status == 0 and body == b"\x01\x01"
    finally:
        sock.close()


def test_tickets_are_good_once_and_must_come_quickly(server, stub):
    sock, ticket = open_connection(stub, server)
    again = socket.create_connection(("127.0.0.1", server.bulk_port), timeout=10)
    try:
        again.sendall(ticket)  # a used ticket
        assert closed(again)
    finally:
        again.close()
        sock.close()
    ticket = stub.OpenBulk(pb2.BulkRequest(), metadata=AUTH, timeout=10).ticket
    slow = socket.create_connection(("127.0.0.1", server.bulk_port), timeout=20)
    try:  # one byte a second: the handshake's 5 s are for all of it
        t0 = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for byte in ticket:
                slow.sendall(bytes([byte]))
                time.sleep(1.0)
        assert time.monotonic() - t0 < bulk_module.HANDSHAKE_S + 3
    finally:
        slow.close()


def test_bulk_and_plain_tensors_mix_in_one_call(server, stub):
    sock, _ = open_connection(stub, server)
    try:
        a, b = np.arange(6, dtype=np.int16), np.array([1.5, -2.0], np.float64)
        message = pb2.TensorList(tensors=[
            pb2.TensorChunk(name="a", dtype="int16", shape=[6], total_bytes=12, bulk=True),
            pb2.TensorChunk(name="b", dtype="float64", shape=[2], total_bytes=16,
                            data=b.tobytes())]).SerializeToString()
        send_request(sock, ECHO, message, a.tobytes())
        status, text, body = read_reply(sock)
        assert status == 0, text
        reply = pb2.TensorList.FromString(text)
        assert [(c.name, c.bulk) for c in reply.tensors] == [("a", True), ("b", True)]
        assert body == a.tobytes() + b.tobytes()  # the reply's tensors, in order
        # data bytes that no bulk tensor declares: refused
        send_request(sock, ECHO, pb2.TensorList(tensors=[
            pb2.TensorChunk(name="b", dtype="float64", shape=[2], total_bytes=16,
                            data=b.tobytes())]).SerializeToString(), bytes(8))
        status, text, _ = read_reply(sock)
        assert status == grpc.StatusCode.INVALID_ARGUMENT.value[0], text
        assert closed(sock)
    finally:
        sock.close()


def test_a_refused_call_gets_its_status_and_the_connection_closes(server, stub):
    cases = [  # (request message, data, status, words of the message)
        (echo_message({"a": np.zeros(4, np.float32)}), bytes(12), grpc.StatusCode.INVALID_ARGUMENT,
         "declare 16"),                                             # D is not the tensors' sum
        (pb2.TensorList(tensors=[pb2.TensorChunk(name="huge", dtype="uint8", shape=[2 << 20],
                                                 total_bytes=2 << 20, bulk=True)]
                        ).SerializeToString(), b"", grpc.StatusCode.RESOURCE_EXHAUSTED,
         "over the limit"),                                         # over --max-tensor-mb 1
        (b"\xff\xff", b"", grpc.StatusCode.INVALID_ARGUMENT, "does not parse"),
        (pb2.TensorList(tensors=[pb2.TensorChunk(name="a", dtype="float32", shape=[3],
                                                 total_bytes=4, bulk=True)]
                        ).SerializeToString(), bytes(4), grpc.StatusCode.INVALID_ARGUMENT,
         "total_bytes says 4")]                                     # shape x dtype != bytes
    for message, data, code, words in cases:
        sock, _ = open_connection(stub, server)
        try:
            send_request(sock, ECHO, message, data)
            status, text, body = read_reply(sock)
            assert status == code.value[0], text
            assert words in text.decode() and body == b""
            assert closed(sock)  # the next call needs a new ticket
        finally:
            sock.close()


def test_bulk_chunks_outside_the_channel_are_invalid_argument(server, stub):
    chunk = pb2.TensorChunk(name="a", dtype="uint8", shape=[4], total_bytes=4, bulk=True)
    for call in (lambda: stub.EchoUnary(pb2.TensorList(tensors=[chunk]), metadata=AUTH,
                                        timeout=10),
                 lambda: list(stub.Echo(iter([chunk]), metadata=AUTH, timeout=10))):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "marked bulk" in caught.value.details()


def test_a_slow_sender_is_cut_off_at_the_calls_deadline(server, stub):
    sock, _ = open_connection(stub, server)
    try:
        message = echo_message({"a": np.zeros(1000, np.uint8)})
        sock.sendall(FRAME.pack(b"DTB1", ECHO, 1500, len(message), 1000) + message + bytes(10))
        t0 = time.monotonic()
        status, text, _ = read_reply(sock)
        assert status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], text
        assert time.monotonic() - t0 < 5
        assert closed(sock)
    finally:
        sock.close()


def test_connections_are_bounded(server, stub):
    """At most --max-concurrent-rpcs tickets and connections; then RESOURCE_EXHAUSTED.
    Closing connections frees their places."""
    held = []
    try:
        while True:
            try:
                held.append(open_connection(stub, server)[0])
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                break
            assert len(held) <= 4
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices closed idle connections when it issues a ticket
        try:
            open_connection(stub, server)[0].close()
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_the_client_uses_the_channel_and_falls_back_without_one(server):
    client = ProfilerClient(Endpoint(f"127.0.0.1:{server.port}", token="s3cret"))
    try:
        x = np.random.default_rng(0).random((64, 64)).astype(np.float32)
        assert np.array_equal(client.echo([("x", x)])["x"], x)
        assert client.bulk and client._bulk_connection is not None
        first = client._bulk_connection
        first.sock.shutdown(socket.SHUT_RDWR)  # the connection dies between calls
        assert np.array_equal(client.echo([("x", x)])["x"], x)  # a new one is opened
        assert client._bulk_connection is not first
    finally:
        client.close()
    plain = create_server(ServerOptions(port=0))
    try:
        client = ProfilerClient(Endpoint(f"127.0.0.1:{plain.port}"))
        assert np.array_equal(client.echo([("x", x)])["x"], x)
        assert not client.bulk and "no bulk channel" in client.bulk_problem
        client.close()
    finally:
        plain.stop(0)


def test_a_call_that_fails_is_reported_with_its_status(server):
    client = ProfilerClient(Endpoint(f"127.0.0.1:{server.port}", token="s3cret"))
    try:
        # over --max-tensor-mb 1, and more than the sockets' buffers hold: the server
        # refuses before reading it, and the client still gets the status, not a reset
        with pytest.raises(DnntuneError, match="RESOURCE_EXHAUSTED: .*over the limit"):
            client.echo([("big", np.zeros(24 << 20, np.uint8))])
        x = np.arange(5, dtype=np.int32)
        assert np.array_equal(client.echo([("x", x)])["x"], x)  # and the next call works
    finally:
        client.close()


def test_tls_servers_speak_tls_on_the_bulk_channel(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    running = create_server(ServerOptions(host="localhost", port=0, bulk_port=0,
                                          tls_cert=str(cert), tls_key=str(key)))
    try:
        client = ProfilerClient(Endpoint(f"localhost:{running.port}", tls_cert=str(cert)))
        big = np.random.default_rng(2).integers(0, 255, 3_000_000, dtype=np.uint8)
        assert np.array_equal(client.echo([("big", big)])["big"], big)
        assert client.bulk and client._bulk_connection is not None
        client.close()
        plain = socket.create_connection(("localhost", running.bulk_port), timeout=10)
        plain.sendall(b"\x00" * 32)  # not a TLS handshake: closed
        try:
            answer = plain.recv(1)
        except ConnectionResetError:
            answer = b""
        assert answer in (b"", b"\x15")  # closed, or a TLS alert first
        plain.close()
    finally:
        running.stop(0)


def test_a_bulk_call_holds_a_call_slot_and_shutdown_waits_for_it():
    """A call on the bulk channel counts among --max-concurrent-rpcs as a gRPC call does;
    a server stopping lets it finish, refuses new ones with UNAVAILABLE, then closes."""
    import threading

    running = create_server(ServerOptions(port=0, bulk_port=0, max_concurrent_rpcs=2))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = services.CloudStub(channel)
    first, _ = open_connection(stub, running, metadata=())
    second, _ = open_connection(stub, running, metadata=())
    try:
        a = np.arange(1000, dtype=np.uint8)
        message = echo_message({"a": a})
        # the first call's data comes in two parts: between them it holds its slot
        first.sendall(FRAME.pack(b"DTB1", ECHO, 20_000, len(message), a.nbytes) + message
                      + a.tobytes()[:10])
        second.sendall(FRAME.pack(b"DTB1", ECHO, 20_000, len(message), a.nbytes) + message
                       + a.tobytes()[:10])
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as caught:  # both slots held by bulk calls
            stub.EchoUnary(pb2.TensorList(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "calls in progress" in caught.value.details()
        second.sendall(a.tobytes()[10:])
        status, _, body = read_reply(second)
        assert status == 0 and body == a.tobytes()
        assert stub.EchoUnary(pb2.TensorList(), timeout=10) == pb2.TensorList()  # a slot free
        second.close()
        second, _ = open_connection(stub, running, metadata=())
        stopped = []
        stopper = threading.Thread(target=lambda: stopped.append(running.stop(15)))
        stopper.start()
        time.sleep(1.0)
        send_request(second, ECHO, message, a.tobytes())  # while the server drains
        status, text, _ = read_reply(second)
        assert status == grpc.StatusCode.UNAVAILABLE.value[0]
        assert "shutting down" in text.decode()
        first.sendall(a.tobytes()[10:])  # the call in flight finishes, answered
        status, _, body = read_reply(first)
        assert status == 0 and body == a.tobytes()
        stopper.join(timeout=30)
        assert stopped == [True]  # nothing abandoned
        assert closed(first)
    finally:
        first.close()
        second.close()
        channel.close()
        running.stop(0)
