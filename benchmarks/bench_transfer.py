"""Tensor transfer over gRPC on loopback against a raw TCP socket, in the same run.

For 0.1, 1 and 5 MB payloads (a uint8 tensor), all in this one process, each server on
its own thread(s), client and servers talking over 127.0.0.1:

- **bulk**: ``ProfilerClient.echo`` against a cloud server with a bulk channel
  (``serve --bulk-port``, :mod:`dnntune.rpc.bulk`): the call goes by gRPC
  (EchoUnary/RunTailUnary with tensor headers only), the tensor bytes in one frame each
  way on the bulk connection, read straight into page-placed buffers. The same encoder
  and assembler as RunTail's crossing tensors and outputs.
- **dnntune gRPC**: the same client and server with the bulk channel off
  (``Endpoint(bulk=False)``): the path RunTail takes through gRPC alone (the agent's and
  validate's): a call that fits the message limit (16 MiB) goes as one message each way
  (EchoUnary/RunTailUnary).
- **stream**: the same client with the unary calls off: the Echo stream of 1 MiB
  TensorChunks (the path before RunTailUnary, and the one old servers get).
- **raw socket**: a Python echo server on a TCP socket (TCP_NODELAY both ends): the
  client ``sendall``s an 8-byte length and the payload; the server ``recv_into``s a
  buffer allocated once, ``sendall``s it back, and the client ``recv_into``s a buffer
  allocated once. No framing, no allocation per message: the socket's own cost, from
  Python, at its best. Its speed depends on where its buffers start in a page: the
  kernel's copies run 2-4x slower here when a buffer starts 0-16 bytes into a page (as
  a plain multi-MB ``bytearray``, which glibc mmaps, does: page + 16) than 48 or more
  bytes in. The payload and both buffers are therefore pages of their own (``mmap``)
  entered ``--raw-offset`` bytes in (default 64: the fast case, the honest baseline;
  ``--raw-offset 16`` is the lenient one a plain ``bytearray`` gives).
- **bare unary**: a plain gRPC unary echo of the payload's bytes (no protobuf, no
  dnntune; gRPC's default options but the message limits): Python gRPC's floor.

Throughput counts the payload once each way. The five are measured in alternation, one
round trip each in turn (each going first in turn), so a machine shared with other work
slows all alike; medians are printed with the bulk path's, dnntune gRPC's and the bare
echo's share of the raw socket's throughput (issue 20's targets for the project's tensor
path: at least 50 % at 1 MB, 80 % at 5 MB), and the median minor page faults of the
process per bulk round trip (fresh multi-MB buffers fault every call unless the
allocator keeps them: docs/transport.md).
Last, the fixed and per-MB cost of this path as the cost model takes them
(:func:`dnntune.rpc.transfer.measure_loopback_rpc`).

    python benchmarks/bench_transfer.py [--repeats 30] [--chunk-kib 1024] [--raw-offset 64]
        [--bulk-offset 1024] [--allocator keep|default]
        [--bare-option grpc.http2.max_frame_size=16777215]
"""

from __future__ import annotations

import argparse
import mmap
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

TARGETS = {1.0: 0.5, 5.0: 0.8}  # payload MB: least share of the raw socket's throughput
MAX_PAYLOAD = 5_000_000


def placed(size: int, offset: int) -> memoryview:
    """``size`` bytes of pages of their own (``mmap``, allocated once), starting
    ``offset`` bytes into the first page, wherever the allocator would have put them."""
    pages = mmap.mmap(-1, size + offset + mmap.PAGESIZE)
    return memoryview(pages)[offset:offset + size]


def faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def raw_echo_server(max_bytes: int, offset: int = 0) -> tuple[socket.socket, int]:
    """A TCP echo server: an 8-byte little-endian length, then that many bytes, back."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        buffer = placed(max_bytes, offset)  # no allocation per message
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                while len(header := conn.recv(8, socket.MSG_WAITALL)) == 8:
                    size = int.from_bytes(header, "little")
                    received = 0
                    while received < size:
                        received += conn.recv_into(buffer[received:size])
                    conn.sendall(header)
                    conn.sendall(buffer[:size])
    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def raw_round_trip(conn: socket.socket, payload: Any, buffer: memoryview) -> float:
    """Send ``payload`` with its length and read the echo into ``buffer``; seconds."""
    t0 = time.perf_counter()
    conn.sendall(len(payload).to_bytes(8, "little"))
    conn.sendall(payload)
    size = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "little")
    received = 0
    while received < size:
        received += conn.recv_into(buffer[received:size])
    return time.perf_counter() - t0


def bare_grpc_echo(extra: tuple[tuple[str, Any], ...] = ()
                   ) -> tuple[Any, Callable[[bytes], float]]:
    """A plain gRPC unary echo of bytes (no protobuf, no dnntune): gRPC's floor; with
    ``extra`` channel arguments on both the server and the channel."""
    from concurrent import futures

    import grpc

    limit = [("grpc.max_send_message_length", 64 << 20),
             ("grpc.max_receive_message_length", 64 << 20), *extra]
    server = grpc.server(futures.ThreadPoolExecutor(4), options=limit, handlers=[
        grpc.method_handlers_generic_handler("bench.Bare", {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    call = grpc.insecure_channel(f"127.0.0.1:{port}", limit).unary_unary("/bench.Bare/Echo")

    def round_trip(payload: bytes) -> float:
        t0 = time.perf_counter()
        call(payload)
        return time.perf_counter() - t0
    return server, round_trip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--chunk-kib", type=int, default=0,
                        help="data per TensorChunk of the stream (default: dnntune's own, "
                             "1024); up to 4032 either way (replies stay within gRPC's "
                             "default 4 MiB)")
    parser.add_argument("--raw-offset", type=int, default=64, metavar="BYTES",
                        help="start the raw socket's buffers and payload this many bytes "
                             "into a page: 0-16 (16 is where a plain bytearray of MBs "
                             "starts) makes the kernel's copies 2-4x slower here than 48 "
                             "or more (default 64: the raw socket at its best)")
    parser.add_argument("--bulk-offset", type=int, default=0, metavar="BYTES",
                        help="start the bulk channel's receive buffers this many bytes into "
                             "a page (default: dnntune's own, dnntune.rpc.bulk.FAST_OFFSET)")
    parser.add_argument("--allocator", choices=("keep", "default"), default="keep",
                        help="keep: the servers keep freed multi-MB buffers "
                             "(ServerOptions.keep_transfer_buffers, the default); default: "
                             "glibc's own thresholds (fresh pages every call)")
    parser.add_argument("--bare-option", action="append", default=[], metavar="NAME=INT",
                        help="also time a bare unary echo with this gRPC channel argument "
                             "on its server and channel (repeatable; e.g. "
                             "grpc.http2.max_frame_size=16777215): column tuned/raw")
    args = parser.parse_args()
    tuned_options = tuple((name, int(value)) for name, _, value in
                          (o.partition("=") for o in args.bare_option))

    from dnntune.profiling.rss import peak_rss_bytes, rss_bytes
    from dnntune.rpc import tensors

    if args.chunk_kib:  # before the server and the client size their chunks
        tensors.DEFAULT_CHUNK_BYTES = args.chunk_kib << 10
    from dnntune.rpc import bulk as bulk_channel

    if args.bulk_offset:
        bulk_channel.FAST_OFFSET = args.bulk_offset
    from cloud_server import create_server
    from dnntune.rpc.client import Endpoint, ProfilerClient
    from dnntune.rpc.serving import ServerOptions
    from dnntune.rpc.transfer import measure_loopback_rpc

    keep = args.allocator == "keep"
    running = create_server(ServerOptions(port=0, keep_transfer_buffers=keep, bulk_port=0))
    bulk = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}"))
    client = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}", bulk=False))
    streams = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}", bulk=False))
    streams.unary = False
    bare_server, bare_round_trip = bare_grpc_echo()
    tuned_server, tuned_round_trip = bare_grpc_echo(tuned_options)
    listener, raw_port = raw_echo_server(MAX_PAYLOAD, args.raw_offset)
    buffer = placed(MAX_PAYLOAD, args.raw_offset)
    conn = socket.create_connection(("127.0.0.1", raw_port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(f"stream chunks of {streams.chunk_bytes >> 10} KiB; times are medians of "
          f"{args.repeats}, ms")
    print(f"raw socket buffers {args.raw_offset} bytes into a page; bulk receive buffers "
          f"{bulk_channel.FAST_OFFSET}; allocator: {args.allocator}")
    if tuned_options:
        print(f"tuned: a bare unary echo with {dict(tuned_options)}")
    print(f"{'payload':>8}{'bulk':>7}{'dnntune':>9}{'raw':>7}{'bulk MB/s':>11}{'raw MB/s':>10}"
          f"{'bulk/raw':>10}{'dnntune/raw':>13}{'stream':>8}{'bare unary':>12}{'b/raw':>7}"
          f"{'faults':>8}" + (f"{'tuned/raw':>11}" if tuned_options else "")
          + "  target (bulk)")
    for mb in (0.1, 1.0, 5.0):
        size = int(mb * 1e6)
        tensor = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
        plain = tensor.tobytes()
        payload = placed(size, args.raw_offset)
        payload[:] = plain
        runs: dict[str, Callable[[], float]] = {
            "bulk": lambda t=tensor: echo_round_trip(bulk, t),
            "grpc": lambda t=tensor: echo_round_trip(client, t),
            "raw": lambda p=payload: raw_round_trip(conn, p, buffer),
            "stream": lambda t=tensor: echo_round_trip(streams, t),
            "bare": lambda p=plain: bare_round_trip(p)}
        if tuned_options:
            runs["tuned"] = lambda p=plain: tuned_round_trip(p)
        times, faulted = interleaved(runs, args.repeats)
        u, g, r, st, b = (statistics.median(times[k])
                          for k in ("bulk", "grpc", "raw", "stream", "bare"))
        share = r / u
        target = TARGETS.get(mb)
        verdict = (f">= {target:.0%}: {'met' if share >= target else 'NOT met'}" if target
                   else "")
        print(f"{mb:>6.1f}MB{u * 1e3:>7.2f}{g * 1e3:>9.2f}{r * 1e3:>7.2f}"
              f"{2 * size / u / 1e6:>11.0f}{2 * size / r / 1e6:>10.0f}{share:>10.0%}"
              f"{r / g:>13.0%}{st * 1e3:>8.2f}{b * 1e3:>12.2f}{r / b:>7.0%}{faulted:>8.0f}"
              + (f"{r / statistics.median(times['tuned']):>11.0%}" if tuned_options else "")
              + f"  {verdict}")
    assert client.unary, "the unary calls were refused: this measured the streams"
    assert bulk.bulk, f"the bulk channel was not used: {bulk.bulk_problem}"
    conn.close()
    bulk.close()
    listener.close()
    client.close()
    streams.close()
    running.stop(0)
    bare_server.stop(0)
    tuned_server.stop(0)
    print(f"this process: resident {rss_bytes() / 2**20:.0f} MiB, peak "
          f"{peak_rss_bytes() / 2**20:.0f} MiB")
    rpc_ms, ms_per_mb = measure_loopback_rpc()
    print(f"cost model terms for this path (measure_loopback_rpc): rpc_ms {rpc_ms:.3g}, "
          f"rpc_ms_per_mb {ms_per_mb:.3g} (each way: {1e3 / ms_per_mb if ms_per_mb else 0:.0f}"
          " MB/s)")


def interleaved(runs: dict[str, Callable[[], float]], repeats: int
                ) -> tuple[dict[str, list[float]], float]:
    """Seconds of each run, one of each in turn (each going first in turn), after 5
    warm-up rounds (flow-control windows grow); and the median page faults per
    bulk round trip (``runs["bulk"]``)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    faulted: list[int] = []
    order = list(runs)
    for i in range(5 + repeats):
        k = i % len(order)
        for name in order[k:] + order[:k]:
            before = faults()
            elapsed = runs[name]()
            if i >= 5:
                times[name].append(elapsed)
                if name == "bulk":
                    faulted.append(faults() - before)
    return times, statistics.median(faulted)


def echo_round_trip(client: Any, tensor: np.ndarray) -> float:
    t0 = time.perf_counter()
    client.echo([("x", tensor)])
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
