"""Python gRPC's own floor on loopback: a bare unary echo of ``bytes``, sync and asyncio.

No protobuf and no dnntune: a ``grpc.server`` (thread pool) and a ``grpc.aio`` server, each
echoing the request's bytes, against the raw socket of ``bench_transfer.py`` (buffers in
pages of their own, 64 bytes in), timed in the same rounds in turn, 1 and 5 MB. Shares
are of the raw socket's throughput (medians). ``--loop N`` instead runs N sync 5 MB
echoes and nothing else, for ``perf record -g``; ``--offsets`` times only the raw socket,
its buffers and payload at each of these offsets into a page, in the same rounds
(docs/transport.md).

    python benchmarks/bench_grpc_floor.py [--repeats 20]
    perf record -g python benchmarks/bench_grpc_floor.py --loop 150
    python benchmarks/bench_grpc_floor.py --offsets 0,16,48,64,128,1024,2048
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
from bench_transfer import placed, raw_echo_server, raw_round_trip

from dnntune.allocator import keep_transfer_buffers

LIMITS = [("grpc.max_send_message_length", 64 << 20),
          ("grpc.max_receive_message_length", 64 << 20)]
HANDLERS = "bench.Floor"


def sync_echo() -> tuple[Any, Any]:
    """A thread-pool server echoing bytes, and a sync channel's call to it."""
    server = grpc.server(futures.ThreadPoolExecutor(4), options=LIMITS, handlers=[
        grpc.method_handlers_generic_handler(HANDLERS, {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", LIMITS)
    return server, channel.unary_unary(f"/{HANDLERS}/Echo")


async def aio_echo() -> tuple[Any, Any]:
    """An asyncio server echoing bytes, and an aio channel's call to it (same loop)."""
    async def echo(request: bytes, context: Any) -> bytes:
        return request
    server = grpc.aio.server(options=LIMITS, handlers=[grpc.method_handlers_generic_handler(
        HANDLERS, {"Echo": grpc.unary_unary_rpc_method_handler(echo)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=LIMITS)
    return server, channel.unary_unary(f"/{HANDLERS}/Echo")


async def compare(repeats: int) -> None:
    aio_server, aio_call = await aio_echo()
    sync_server, sync_call = sync_echo()
    listener, raw_port = raw_echo_server(5_000_000, 64)
    buffer = placed(5_000_000, 64)
    conn = socket.create_connection(("127.0.0.1", raw_port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def sync_round_trip(payload: bytes) -> float:
        t0 = time.perf_counter()
        sync_call(payload)
        return time.perf_counter() - t0

    async def aio_round_trip(payload: bytes) -> float:
        t0 = time.perf_counter()
        await aio_call(payload)
        return time.perf_counter() - t0

    print(f"{'payload':>8}{'raw ms':>8}{'sync ms':>9}{'sync/raw':>10}{'aio ms':>8}"
          f"{'aio/raw':>9}")
    for mb in (1, 5):
        plain = bytes(range(256)) * (mb * 1_000_000 // 256)
        raw_payload = placed(len(plain), 64)
        raw_payload[:] = plain
        # the raw and sync round trips time themselves on a worker thread (the hop to it
        # is not counted); the aio one on this loop
        runs = {"raw": lambda p=raw_payload: asyncio.to_thread(raw_round_trip, conn, p, buffer),
                "sync": lambda p=plain: asyncio.to_thread(sync_round_trip, p),
                "aio": lambda p=plain: aio_round_trip(p)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs)
        for i in range(5 + repeats):
            k = i % len(order)
            for name in order[k:] + order[:k]:
                elapsed = await runs[name]()
                if i >= 5:
                    times[name].append(elapsed)
        r, s, a = (statistics.median(times[k]) for k in ("raw", "sync", "aio"))
        print(f"{mb:>6}MB{r * 1e3:>8.2f}{s * 1e3:>9.2f}{r / s:>10.0%}{a * 1e3:>8.2f}"
              f"{r / a:>9.0%}")
    conn.close()
    listener.close()
    sync_server.stop(0)
    await aio_server.stop(0)


def loop(count: int) -> None:
    server, call = sync_echo()
    payload = bytes(5_000_000)
    for _ in range(5):
        call(payload)
    t0 = time.perf_counter()
    for _ in range(count):
        call(payload)
    print(f"{(time.perf_counter() - t0) / count * 1e3:.2f} ms per 5 MB echo")
    server.stop(0)


def offsets(places: list[int], repeats: int) -> None:
    """The raw socket's echo throughput with its buffers ``places`` bytes into a page."""
    sockets = {}
    for offset in places:
        _, port = raw_echo_server(5_000_000, offset)
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockets[offset] = (conn, placed(5_000_000, offset), placed(5_000_000, offset))
    print("raw socket echo MB/s by buffer offset into a page: "
          + " ".join(f"{o:>6}" for o in places))
    for mb in (1, 5):
        size = mb * 1_000_000
        times: dict[int, list[float]] = {o: [] for o in places}
        for i in range(5 + repeats):
            k = i % len(places)
            for offset in places[k:] + places[:k]:
                conn, payload, buffer = sockets[offset]
                elapsed = raw_round_trip(conn, payload[:size], buffer)
                if i >= 5:
                    times[offset].append(elapsed)
        print(f"{mb} MB{'':>46}"
              + " ".join(f"{2 * size / statistics.median(times[o]) / 1e6:>6.0f}"
                         for o in places))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--loop", type=int, default=0, metavar="N")
    parser.add_argument("--offsets", default="", metavar="BYTES,...")
    args = parser.parse_args()
    keep_transfer_buffers()  # as dnntune's servers do
    if args.offsets:
        offsets([int(o) for o in args.offsets.split(",")], args.repeats)
    elif args.loop:
        loop(args.loop)
    else:
        asyncio.run(compare(args.repeats))


if __name__ == "__main__":
    main()
