"""User-space link emulation: a TCP proxy on loopback that shapes bandwidth and delay.

:class:`ShapingProxy` sits between a client (the device agent) and a server (the cloud
server). Bytes from the client to the server cross the emulated *uplink*, bytes back
cross the *downlink*. Each direction is one FIFO serialisation queue shared by every
connection through the proxy (a link is one bottleneck), followed by a fixed one-way
propagation delay of ``rtt_ms / 2``: bytes handed over at ``t`` start serialising when
the queue is free, finish after their share of capacity, and are delivered
``rtt_ms / 2`` later. A bulk transfer of ``B`` bytes therefore takes
``rtt_ms / 2 + 8 B / rate``, and a request/response ``rtt_ms + 8 B_up / up + 8 B_down /
down``: the analyzer's transfer model. The capacity of a direction can instead follow a
recorded trace (:mod:`dnntune.analysis.traces`), byte-accurately, looping from the proxy's start.

The proxy forwards bytes, so any TCP protocol (gRPC over HTTP/2 included) passes through
unchanged; half-closes are forwarded in order after the data before them. It runs an
asyncio loop on its own thread and is thread-safe to start and stop.

How close the emulation comes to its target is measured by :mod:`dnntune.netem.linkprobe`;
kernel shaping with ``tc`` inside network namespaces lives in :mod:`dnntune.netem.netns`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dnntune.analysis.traces import BYTES_PER_MS_PER_MBPS, PACKET_BYTES, Trace
from dnntune.errors import DnntuneError

if TYPE_CHECKING:
    from dnntune.analysis.links import Link

__all__ = ["LinkDirection", "LinkShape", "ShapingProxy"]

log = logging.getLogger(__name__)

READ_BYTES = 65536
DEFAULT_BUFFER_BYTES = 1 << 20  # per direction and connection; more than a preset's BDP
CONNECT_TIMEOUT_S = 5.0
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
# epoll rounds timeouts up to whole ms: waking half a ms early centres the timing error.
TIMER_SLACK_MS = 0.5


def now_ms() -> float:
    """The proxy's clock: ``time.monotonic`` in ms (system-wide, so shared by processes)."""
    return time.monotonic() * 1000.0


@dataclass(frozen=True)
class LinkShape:
    """What the emulated link does to each direction.

    Attributes:
        up_mbps: Client-to-server rate, Mbit/s, or ``math.inf`` for no rate limit (with
            ``up_trace``: only reported, give the trace's mean).
        down_mbps: Server-to-client rate, Mbit/s, or ``math.inf``.
        rtt_ms: Round-trip propagation delay; half is added in each direction.
        up_trace: Uplink capacity over time (looping from the proxy's start), or ``None``.
        down_trace: Downlink capacity over time, or ``None``.

    Example:
        >>> shape = LinkShape(up_mbps=5.85, down_mbps=13.76, rtt_ms=64.0)
        >>> round(shape.transfer_ms(100_000, 4_000), 1)  # 64 + 136.8 + 2.3
        203.1
    """

    up_mbps: float
    down_mbps: float
    rtt_ms: float = 0.0
    up_trace: Trace | None = field(default=None, compare=False, repr=False)
    down_trace: Trace | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for key in ("up_mbps", "down_mbps"):
            value = getattr(self, key)
            if not _is_number(value) or not value > 0:
                raise DnntuneError(f"link shape: {key} must be a positive number of "
                                   f"Mbit/s (math.inf for no limit), got {value!r}")
        if not _is_number(self.rtt_ms) or not (math.isfinite(self.rtt_ms)
                                               and self.rtt_ms >= 0):
            raise DnntuneError(f"link shape: rtt_ms must be a finite number >= 0 ms, "
                               f"got {self.rtt_ms!r}")
        for key in ("up_trace", "down_trace"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, Trace):
                raise DnntuneError(f"link shape: {key} must be a trace from "
                                   f"dnntune.analysis.traces.load_trace or None, got {value!r}")

    @classmethod
    def from_link(cls, link: Link) -> LinkShape:
        """The shape of a :class:`dnntune.analysis.links.Link`, its uplink trace included."""
        return cls(link.up_mbps, link.down_mbps, link.rtt_ms, up_trace=link.trace)

    @classmethod
    def delay_only(cls, rtt_ms: float) -> LinkShape:
        """Delay without rate limits: the proxy's part when ``tc`` shapes the rate."""
        return cls(math.inf, math.inf, rtt_ms)

    def transfer_ms(self, up_bytes: float, down_bytes: float) -> float:
        """Predicted time of a request of ``up_bytes`` answered by ``down_bytes``, ms
        (mean rates for traces)."""
        return (self.rtt_ms + up_bytes / (self.up_mbps * BYTES_PER_MS_PER_MBPS)
                + down_bytes / (self.down_mbps * BYTES_PER_MS_PER_MBPS))


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and not math.isnan(value))


class LinkDirection:
    """One direction of the link: a FIFO serialisation queue, then a fixed delay.

    Shared by every connection through one proxy. Not thread-safe (the proxy's loop
    owns it). Times are in ms on any clock, consistently.

    Example:
        >>> up = LinkDirection(rate_mbps=8.0, delay_ms=10.0)  # 1000 bytes per ms
        >>> up.schedule(5000, arrival_ms=0.0), up.schedule(1000, arrival_ms=1.0)
        (15.0, 16.0)
    """

    def __init__(self, rate_mbps: float, delay_ms: float, trace: Trace | None = None,
                 origin_ms: float = 0.0) -> None:
        self.bytes_per_ms = rate_mbps * BYTES_PER_MS_PER_MBPS
        self.delay_ms = delay_ms
        self.trace = trace
        self.origin_ms = origin_ms
        self._free_at_ms = -math.inf  # constant rate: when the queue is next idle
        self._used_bytes = 0.0  # trace: capacity used, in bytes since origin_ms

    @property
    def segment_bytes(self) -> int:
        """Bytes scheduled as one unit: about 1 ms of serialisation, at least a packet,
        so delivery is smooth without a timer per packet."""
        if self.trace is not None:
            return PACKET_BYTES
        if math.isinf(self.bytes_per_ms):
            return READ_BYTES
        return int(min(READ_BYTES, max(PACKET_BYTES, self.bytes_per_ms)))

    def schedule(self, nbytes: int, arrival_ms: float) -> float:
        """When ``nbytes`` handed to the link at ``arrival_ms`` are delivered, ms."""
        if self.trace is not None:
            t_ms = arrival_ms - self.origin_ms
            # Capacity left unused while the queue was idle is lost, as on a real link.
            start = max(self._used_bytes, float(self.trace.delivered_bytes(t_ms)))
            self._used_bytes = start + nbytes
            finish = self.origin_ms + float(self.trace.finish_time_ms(self._used_bytes))
        elif math.isinf(self.bytes_per_ms):
            finish = arrival_ms
        else:
            finish = max(self._free_at_ms, arrival_ms) + nbytes / self.bytes_per_ms
            self._free_at_ms = finish
        return finish + self.delay_ms


class _Pipe:
    """Bytes from one socket to another through a :class:`LinkDirection`, in order."""

    def __init__(self, link: LinkDirection, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, buffer_bytes: int) -> None:
        self.link, self.reader, self.writer = link, reader, writer
        self.buffer_bytes = buffer_bytes
        self.pending: deque[tuple[float, bytes | None]] = deque()  # (deliver at, data|EOF)
        self.pending_bytes = 0
        self.last_ms = -math.inf
        self.queued = asyncio.Event()
        self.drained = asyncio.Event()

    def _push(self, at_ms: float, data: bytes | None) -> None:
        self.last_ms = max(self.last_ms, at_ms)
        self.pending.append((self.last_ms, data))
        self.pending_bytes += len(data or b"")
        self.queued.set()

    async def ingest(self) -> None:
        while True:
            while self.pending_bytes >= self.buffer_bytes:  # back-pressure on the sender
                self.drained.clear()
                await self.drained.wait()
            data = await self.reader.read(READ_BYTES)
            arrival = now_ms()
            if not data:
                self._push(arrival + self.link.delay_ms, None)
                return
            step = self.link.segment_bytes
            for i in range(0, len(data), step):
                segment = data[i:i + step]
                self._push(self.link.schedule(len(segment), arrival), segment)

    async def deliver(self) -> None:
        while True:
            while not self.pending:
                self.queued.clear()
                await self.queued.wait()
            wait_s = (self.pending[0][0] - now_ms() - TIMER_SLACK_MS) / 1000.0
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            parts: list[bytes] = []
            eof = False
            now = now_ms() + TIMER_SLACK_MS
            while self.pending and self.pending[0][0] <= now and not eof:
                data = self.pending.popleft()[1]
                eof = data is None
                parts.append(data or b"")
            batch = b"".join(parts)
            if batch:
                self.writer.write(batch)
                await self.writer.drain()
            self.pending_bytes -= len(batch)
            self.drained.set()
            if eof:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return


async def _run_pipes(pipes: tuple[_Pipe, _Pipe]) -> None:
    """Run both directions until both have delivered EOF; raise the first error."""
    tasks = [asyncio.create_task(job) for p in pipes for job in (p.ingest(), p.deliver())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ShapingProxy:
    """A TCP proxy on loopback that shapes traffic to a :class:`LinkShape`.

    Args:
        target_host, target_port: The server the proxy connects to for each client.
        link: The emulated link (uplink = client to server).
        listen_host, listen_port: Where clients connect; port 0 picks a free port.
        buffer_bytes: Bytes a direction of one connection may hold before the proxy
            stops reading from the sender.
        upstream_netns: Name of a network namespace (``ip netns``) in which to open the
            connections to the target (root only; see :mod:`dnntune.netem.netns`).

    Unreachable target: the client's connection is closed, one line is logged as a
    warning and appended to :attr:`errors`. Traces play from :attr:`trace_origin_ms`
    (on the :func:`now_ms` clock), so a trace transfer can be predicted exactly.

    Example:
        >>> # with ShapingProxy("127.0.0.1", cloud_port, LinkShape.from_link(link)) as p:
        >>> #     channel = grpc.insecure_channel(f"127.0.0.1:{p.port}")
    """

    def __init__(self, target_host: str, target_port: int, link: LinkShape,
                 listen_host: str = "127.0.0.1", listen_port: int = 0, *,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 upstream_netns: str | None = None) -> None:
        if not isinstance(link, LinkShape):
            raise DnntuneError(f"shaping proxy: link must be a LinkShape, got {link!r}")
        if not isinstance(buffer_bytes, int) or buffer_bytes < 1:
            raise DnntuneError(f"shaping proxy: buffer_bytes must be a positive integer, "
                               f"got {buffer_bytes!r}")
        self.target_host, self.target_port = target_host, int(target_port)
        self.link = link
        self.listen_host, self.listen_port = listen_host, int(listen_port)
        self.buffer_bytes = buffer_bytes
        self.upstream_netns = upstream_netns
        self.errors: list[str] = []
        self.connections_served = 0
        self.trace_origin_ms = math.nan  # traces start here (clock: now_ms()) at start()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: str | None = None
        self._closing = False
        self._conns: set[asyncio.Task[Any]] = set()
        self._up: LinkDirection | None = None
        self._down: LinkDirection | None = None

    @property
    def port(self) -> int:
        """The port clients connect to (known once started)."""
        return self.listen_port

    def __enter__(self) -> ShapingProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> ShapingProxy:
        """Listen and serve on a background thread; returns ``self``.

        Raises:
            DnntuneError: if the address cannot be bound or the proxy fails to start.
        """
        if self._thread is not None:
            raise DnntuneError("shaping proxy: already started")
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        try:
            sock = socket.create_server((self.listen_host, self.listen_port),
                                        family=family, backlog=256)
        except OSError as exc:
            raise DnntuneError(f"shaping proxy: cannot listen on {self.listen_host}:"
                               f"{self.listen_port} ({exc.strerror or exc})") from None
        self.listen_port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), daemon=True,
                                        name=f"dnntune-shaper-{self.listen_port}")
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S) or self._failure is not None:
            self.stop()
            raise DnntuneError(self._failure or "shaping proxy: did not start within "
                                                f"{START_TIMEOUT_S:g} s")
        return self

    def reshape(self, link: LinkShape) -> None:
        """Change the emulated link while it runs (constant rates only): bytes already
        queued keep their schedule, later ones follow ``link`` (a handover)."""
        if not isinstance(link, LinkShape) or link.up_trace or link.down_trace:
            raise DnntuneError("shaping proxy: reshape takes a LinkShape without traces")
        loop = self._loop
        if loop is None or self._up is None or self._down is None:
            raise DnntuneError("shaping proxy: reshape needs a started proxy")
        up, down = self._up, self._down

        def apply() -> None:
            for direction, rate in ((up, link.up_mbps), (down, link.down_mbps)):
                direction.bytes_per_ms = rate * BYTES_PER_MS_PER_MBPS
                direction.delay_ms = link.rtt_ms / 2.0
            self.link = link
            done.set()
        done = threading.Event()
        loop.call_soon_threadsafe(apply)
        if not done.wait(START_TIMEOUT_S):
            raise DnntuneError("shaping proxy: its loop did not take the new link")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Close the listener and every connection; returns within about ``timeout_s``."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("shaping proxy on port %d did not stop within %.1f s",
                        self.listen_port, timeout_s)

    def _run(self, sock: socket.socket) -> None:
        try:
            if self.upstream_netns is not None:
                from dnntune.netem.netns import join_netns
                join_netns(self.upstream_netns)  # this thread only: the listener stays
            asyncio.run(self._main(sock))
        except (DnntuneError, OSError) as exc:
            self._failure = f"shaping proxy: {exc}"
            sock.close()
            self._started.set()

    async def _main(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_exception_handler)
        self._loop, self._stop_event = loop, asyncio.Event()
        origin = self.trace_origin_ms = now_ms()
        shape = self.link
        self._up = LinkDirection(shape.up_mbps, shape.rtt_ms / 2, shape.up_trace, origin)
        self._down = LinkDirection(shape.down_mbps, shape.rtt_ms / 2, shape.down_trace,
                                   origin)
        server = await asyncio.start_server(self._serve, sock=sock)
        self._started.set()
        try:
            await self._stop_event.wait()
        finally:
            self._closing = True
            server.close()
            for task in list(self._conns):
                task.cancel()
            if self._conns:
                await asyncio.wait(list(self._conns), timeout=STOP_TIMEOUT_S / 2)

    async def _serve(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._closing or task is None or self._up is None or self._down is None:
            client_writer.transport.abort()
            return
        self._conns.add(task)
        self.connections_served += 1
        server_writer: asyncio.StreamWriter | None = None
        clean = False
        try:
            server = await self._connect_target()
            if server is None:
                clean = True
                return
            server_reader, server_writer = server
            for writer in (client_writer, server_writer):
                _set_nodelay(writer)
            pipes = (_Pipe(self._up, client_reader, server_writer, self.buffer_bytes),
                     _Pipe(self._down, server_reader, client_writer, self.buffer_bytes))
            await _run_pipes(pipes)
            clean = True
        except OSError as exc:  # resets and broken pipes: a peer went away
            log.debug("shaping proxy: connection ended (%s)", exc)
        except asyncio.CancelledError:
            # stop(): end quietly (Python 3.11's start_server logs cancelled handlers).
            log.debug("shaping proxy: connection closed by stop()")
        finally:
            for end in (client_writer, server_writer):
                if end is not None:
                    end.close() if clean else end.transport.abort()
            self._conns.discard(task)

    async def _connect_target(self) -> tuple[asyncio.StreamReader,
                                             asyncio.StreamWriter] | None:
        address = f"{self.target_host}:{self.target_port}"
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port),
                CONNECT_TIMEOUT_S)
        except TimeoutError:
            reason = f"no answer within {CONNECT_TIMEOUT_S:g} s"
        except OSError as exc:  # asyncio's strerror repeats the address; errno does not
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
        message = (f"shaping proxy: cannot connect to the target {address} ({reason}); "
                   "closed the client connection")
        # One warning per distinct failure: gRPC clients retry, so this repeats.
        level = logging.DEBUG if message in self.errors else logging.WARNING
        log.log(level, "%s", message)
        self.errors.append(message)
        del self.errors[:-100]
        return None


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Send each delivery at once. asyncio skips sockets whose ``proto`` is 0, as
    accepted ones are; with loopback's 64 KB MSS Nagle would then hold small writes
    for a delayed ACK (40 ms)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop,
                             context: dict[str, Any]) -> None:
    """Peers vanishing is normal for a proxy: log it in one line, never a traceback."""
    error = context.get("exception")
    level = logging.DEBUG if isinstance(error, OSError) else logging.WARNING
    log.log(level, "shaping proxy: %s%s", context.get("message", "error"),
            f" ({error!r})" if error is not None else "")

