"""How close an emulated link comes to its target: throughput both ways and RTT.

A :class:`MeasurementServer` answers three requests on one TCP connection: an echo
(ping), a sink (upload ``B`` bytes, get a one-byte acknowledgement) and a source
(download ``B`` bytes). :func:`measure_link` times them through whatever sits in
between (a :class:`dnntune.netem.shaper.ShapingProxy`, or a ``tc``-shaped veth pair between
network namespaces) and :func:`summarize_link` turns the raw times into a
:class:`LinkMeasurement`. Each timed transfer includes one round trip, as an inference
request does, so the achieved rate is ``8 B / (T - RTT)`` with the measured median RTT.
Each transfer is timed several times and the median kept: on a shared host one transfer
can lose a retransmission timeout (200 ms or more) or a scheduler stall that says nothing
about the emulated link.

Wire format: a request is one op byte (``P``, ``U``, ``D``) and a big-endian uint64
byte count; ``P`` is followed by that many bytes, echoed back; ``U`` by that many bytes,
answered by ``K``; ``D`` is answered by that many zero bytes.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import statistics
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from dnntune.analysis.traces import BYTES_PER_MS_PER_MBPS
from dnntune.errors import DnntuneError
from dnntune.netem.shaper import LinkShape, ShapingProxy

__all__ = ["LinkMeasurement", "MeasurementServer", "achieved_mbps", "measure_emulated_link",
           "measure_link", "serve_measurement", "summarize_link", "timed_request_ms"]

HEADER = struct.Struct("!cQ")
OP_PING, OP_UP, OP_DOWN, ACK = b"P", b"U", b"D", b"K"
CHUNK_BYTES = 65536
MAX_TRANSFER_BYTES = 1 << 32
PING_BYTES = 32
ACCEPT_POLL_S = 0.2


@dataclass(frozen=True)
class LinkMeasurement:
    """Target vs achieved link figures. Targets are ``None`` for an unshaped link.

    Attributes:
        target_up_mbps, achieved_up_mbps: Uplink rate, Mbit/s.
        target_down_mbps, achieved_down_mbps: Downlink rate, Mbit/s.
        target_rtt_ms, achieved_rtt_ms: Round-trip time (median of the pings), ms.
        min_rtt_ms: The fastest ping: the emulated delay without the host's scheduling
            noise (a busy CPU adds ms to the median, not to the minimum).
        up_bytes, up_ms: The timed upload and its time, request to acknowledgement
            (median of ``transfers`` uploads).
        down_bytes, down_ms: The timed download and its time, request to last byte
            (median of ``transfers`` downloads).
        transfers: How many times each transfer was timed.
    """

    target_up_mbps: float | None
    achieved_up_mbps: float
    target_down_mbps: float | None
    achieved_down_mbps: float
    target_rtt_ms: float | None
    achieved_rtt_ms: float
    min_rtt_ms: float
    up_bytes: int
    up_ms: float
    down_bytes: int
    down_ms: float
    transfers: int = 1

    @property
    def up_error_pct(self) -> float | None:
        """Achieved uplink relative to the target, percent (+ is faster)."""
        return _error_pct(self.achieved_up_mbps, self.target_up_mbps)

    @property
    def down_error_pct(self) -> float | None:
        return _error_pct(self.achieved_down_mbps, self.target_down_mbps)

    @property
    def rtt_error_ms(self) -> float | None:
        """Achieved (median) minus target RTT, ms."""
        return None if self.target_rtt_ms is None else self.achieved_rtt_ms - self.target_rtt_ms

    @property
    def min_rtt_error_ms(self) -> float | None:
        """Fastest ping minus target RTT, ms."""
        return None if self.target_rtt_ms is None else self.min_rtt_ms - self.target_rtt_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "up_error_pct": self.up_error_pct,
                "down_error_pct": self.down_error_pct, "rtt_error_ms": self.rtt_error_ms,
                "min_rtt_error_ms": self.min_rtt_error_ms}


def _error_pct(achieved: float, target: float | None) -> float | None:
    if target is None or not math.isfinite(target):
        return None
    return (achieved - target) / target * 100.0


def achieved_mbps(nbytes: int, elapsed_ms: float, rtt_ms: float) -> float:
    """Rate of a transfer timed with one round trip in it: ``8 B / (T - RTT)``, Mbit/s.

    Example:
        >>> achieved_mbps(1_000_000, elapsed_ms=1040.0, rtt_ms=40.0)
        8.0
    """
    busy_ms = elapsed_ms - rtt_ms
    if busy_ms <= 0:  # an unshaped link: the RTT is all noise
        busy_ms = elapsed_ms
    return nbytes / max(busy_ms, 1e-9) / BYTES_PER_MS_PER_MBPS


def summarize_link(shape: LinkShape | None, rtt_samples_ms: list[float], up_bytes: int,
                   up_ms: float | list[float], down_bytes: int,
                   down_ms: float | list[float]) -> LinkMeasurement:
    """Turn raw times into a :class:`LinkMeasurement` against ``shape`` (or no target).

    ``up_ms`` and ``down_ms`` are one time each or the times of repeated transfers, of
    which the median counts.
    """
    ups = [up_ms] if isinstance(up_ms, (int, float)) else list(up_ms)
    downs = [down_ms] if isinstance(down_ms, (int, float)) else list(down_ms)
    if not ups or len(ups) != len(downs):
        raise ValueError("summarize_link: need as many upload as download times, at least 1")
    up_ms, down_ms = statistics.median(ups), statistics.median(downs)
    rtt = statistics.median(rtt_samples_ms)
    return LinkMeasurement(
        target_up_mbps=None if shape is None else shape.up_mbps,
        achieved_up_mbps=achieved_mbps(up_bytes, up_ms, rtt),
        target_down_mbps=None if shape is None else shape.down_mbps,
        achieved_down_mbps=achieved_mbps(down_bytes, down_ms, rtt),
        target_rtt_ms=None if shape is None else shape.rtt_ms, achieved_rtt_ms=rtt,
        min_rtt_ms=min(rtt_samples_ms),
        up_bytes=up_bytes, up_ms=up_ms, down_bytes=down_bytes, down_ms=down_ms,
        transfers=len(ups))


class MeasurementServer:
    """Echo, sink and source for :func:`measure_link`, served on threads.

    Args:
        host, port: Where to listen (port 0 picks a free port).
        idle_timeout_s: A connection silent for this long is closed.
        max_lifetime_s: The server stops accepting after this long.

    Example:
        >>> with MeasurementServer() as sink:
        ...     sink.port > 0
        True
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, idle_timeout_s: float = 30.0,
                 max_lifetime_s: float = 3600.0) -> None:
        self.host, self.port = host, port
        self.idle_timeout_s, self.max_lifetime_s = idle_timeout_s, max_lifetime_s
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def __enter__(self) -> MeasurementServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> MeasurementServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self._listener = socket.create_server((self.host, self.port), family=family,
                                                  backlog=64)
        except OSError as exc:
            raise DnntuneError(f"measurement server: cannot listen on {self.host}:"
                               f"{self.port} ({exc.strerror or exc})") from None
        self._listener.settimeout(ACCEPT_POLL_S)
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept_loop)
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        for sock in [*self._conns, self._listener]:
            if sock is not None:
                with contextlib.suppress(OSError):  # not connected, or already closed
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=f"dnntune-measure-{self.port}")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        deadline = time.monotonic() + self.max_lifetime_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed by stop()
            self._conns.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.idle_timeout_s)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while not self._stop.is_set() and _answer(conn):
                    pass
            except OSError:
                pass  # the client went away or stayed silent: nothing to report


def _answer(conn: socket.socket) -> bool:
    """Serve one request; ``False`` at the end of the conversation."""
    header = _recv_exact(conn, HEADER.size, allow_eof=True)
    if header is None:
        return False
    op, nbytes = HEADER.unpack(header)
    if nbytes > MAX_TRANSFER_BYTES:
        return False
    if op == OP_PING:
        conn.sendall(_recv_exact(conn, nbytes) or b"")
    elif op == OP_UP:
        _recv_exact(conn, nbytes, keep=False)
        conn.sendall(ACK)
    elif op == OP_DOWN:
        _send_zeros(conn, nbytes)
    else:
        return False
    return True


def _recv_exact(sock: socket.socket, nbytes: int, keep: bool = True,
                allow_eof: bool = False) -> bytes | None:
    """Receive exactly ``nbytes`` (discarded unless ``keep``); ``None`` on a clean EOF
    before the first byte when ``allow_eof``."""
    parts: list[bytes] = []
    got = 0
    while got < nbytes:
        chunk = sock.recv(min(CHUNK_BYTES * 4, nbytes - got))
        if not chunk:
            if allow_eof and got == 0:
                return None
            raise ConnectionError(f"connection closed after {got} of {nbytes} bytes")
        got += len(chunk)
        if keep:
            parts.append(chunk)
    return b"".join(parts)


def _send_zeros(sock: socket.socket, nbytes: int) -> None:
    zeros = bytes(CHUNK_BYTES)
    for start in range(0, nbytes, CHUNK_BYTES):
        sock.sendall(zeros[:min(CHUNK_BYTES, nbytes - start)])


def timed_request_ms(sock: socket.socket, op: bytes, nbytes: int) -> float:
    """Time one request (``OP_PING``, ``OP_UP`` or ``OP_DOWN`` of ``nbytes``) on a
    connected socket, from its first byte sent to its answer's last byte, in ms."""
    start = time.perf_counter()
    sock.sendall(HEADER.pack(op, nbytes))
    if op == OP_PING:
        sock.sendall(bytes(nbytes))
        _recv_exact(sock, nbytes, keep=False)
    elif op == OP_UP:
        _send_zeros(sock, nbytes)
        _recv_exact(sock, len(ACK), keep=False)
    else:
        _recv_exact(sock, nbytes, keep=False)
    return (time.perf_counter() - start) * 1000.0


def measure_link(target: ShapingProxy | int | tuple[str, int],
                 shape: LinkShape | None = None, *, up_bytes: int = 2_000_000,
                 down_bytes: int = 2_000_000, pings: int = 5, transfers: int = 3,
                 timeout_s: float = 60.0) -> LinkMeasurement:
    """Measure RTT, then upload and download throughput, through ``target``.

    Args:
        target: A started proxy whose target is a :class:`MeasurementServer` (its
            shape is the default ``shape``), a loopback port, or ``(host, port)``.
        shape: The target figures to compare with; ``None``: unshaped.
        up_bytes, down_bytes: Size of the timed bulk transfers.
        pings: Timed round trips after one warm-up; the median is the RTT.
        transfers: Each upload and download is timed this many times (alternating);
            the median counts.
        timeout_s: Socket timeout for each step.

    Raises:
        DnntuneError: bad arguments, or the connection failed (one line).

    Example:
        >>> # with MeasurementServer() as sink, ShapingProxy("127.0.0.1", sink.port,
        >>> #         LinkShape(8, 20, 40)) as proxy:
        >>> #     print(measure_link(proxy).to_dict())
    """
    if isinstance(target, ShapingProxy):
        host, port = target.listen_host, target.port
        shape = target.link if shape is None else shape
    elif isinstance(target, tuple):
        host, port = target
    else:
        host, port = "127.0.0.1", target
    for name, value in (("up_bytes", up_bytes), ("down_bytes", down_bytes), ("pings", pings),
                        ("transfers", transfers)):
        if not isinstance(value, int) or value < 1 or value > MAX_TRANSFER_BYTES:
            raise DnntuneError(f"link measurement: {name} must be a positive integer, "
                               f"got {value!r}")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            timed_request_ms(sock, OP_PING, PING_BYTES)  # warm-up: connection set-up behind us
            rtts = [timed_request_ms(sock, OP_PING, PING_BYTES) for _ in range(pings)]
            up_ms: list[float] = []
            down_ms: list[float] = []
            for _ in range(transfers):
                up_ms.append(timed_request_ms(sock, OP_UP, up_bytes))
                down_ms.append(timed_request_ms(sock, OP_DOWN, down_bytes))
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise DnntuneError(f"link measurement via {host}:{port} failed ({reason}); is a "
                           "measurement server behind it?") from None
    return summarize_link(shape, rtts, up_bytes, up_ms, down_bytes, down_ms)


def measure_emulated_link(shape: LinkShape, **kwargs: Any) -> LinkMeasurement:
    """Measure a :class:`ShapingProxy` with ``shape`` in front of a fresh
    :class:`MeasurementServer` on loopback; keyword arguments go to :func:`measure_link`.

    Example:
        >>> m = measure_emulated_link(LinkShape(8.0, 20.0, 20.0), up_bytes=50_000,
        ...                           down_bytes=50_000, pings=2)
        >>> abs(m.rtt_error_ms) < 5
        True
    """
    with MeasurementServer() as sink, ShapingProxy(sink.host, sink.port, shape) as proxy:
        return measure_link(proxy, **kwargs)


def serve_measurement(host: str, port: int = 0, max_s: float = 120.0) -> None:
    """Run a :class:`MeasurementServer` until stdin closes or ``max_s`` passes; print the
    port on the first line of stdout. For a server inside a network namespace::

        ip netns exec NS python -c "from dnntune.netem.linkprobe import serve_measurement; \\
            serve_measurement('10.201.0.2')"
    """
    with MeasurementServer(host, port, max_lifetime_s=max_s) as server:
        print(server.port, flush=True)
        deadline = time.monotonic() + max_s
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sys.stdin], [], [], min(left, 1.0))
            if readable and not os.read(sys.stdin.fileno(), 4096):
                return  # the parent closed our stdin: time to go
