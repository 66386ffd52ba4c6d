"""The bulk channel: EchoUnary and RunTailUnary on a TCP connection of their own.

Python gRPC copies a message's bytes four or more times in each direction (into a
slice sending; slice to ``bytes`` to ``bytearray`` to ``bytes`` receiving) and costs
about half a millisecond per call on loopback, which caps a tensor echo at about 40 % of
a raw socket's throughput (docs/transport.md). A server started with ``--bulk-port``
also listens on a plain TCP port. A client asks for a ticket over gRPC (``OpenBulk``,
authenticated like any call), connects, sends the ticket, and then sends its unary calls
as frames: the same request message (tensors marked ``bulk``, without data), then the
tensors' bytes, read with ``recv_into`` straight into a buffer the tensors are views of.
The reply comes back the same way. The .proto (above ``BulkRequest``) is the contract;
this module is both ends of it, and the servicer (:meth:`dnntune.rpc.servicers.
CloudServicer.bulk_call`) runs the calls with the same code, limits and statuses as
over gRPC.

What keeps it safe: a ticket is 32 random bytes, binds one connection, and expires unused
after :data:`TICKET_TTL_S`; a connection that does not present a live ticket within
:data:`HANDSHAKE_S` is closed; there are at most ``max_sessions`` connections, each
served by one thread; a server with TLS speaks TLS here too, with the same certificate;
the message and data sizes are checked against the server's limits before they are
read; any failure closes the connection.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dnntune.errors import DnntuneError
from dnntune.rpc.tensors import WireError

MAGIC = b"DTB1"
FRAME = struct.Struct("<4sIIQQ")  # magic, method or status, timeout_ms or 0, M, D
ECHO, RUN_TAIL = 1, 2  # the methods a request frame names
METHOD_NAMES = {ECHO: "/dnntune.v1.Cloud/EchoUnary", RUN_TAIL: "/dnntune.v1.Cloud/RunTailUnary"}
TICKET_BYTES = 32
ACCEPTED = b"\x01"
TICKET_TTL_S = 10.0      # connect within this after OpenBulk
HANDSHAKE_S = 5.0        # a new connection must present its ticket within this
IDLE_S = 300.0           # a connection unused this long is closed
DEFAULT_TIMEOUT_MS = 60_000
MAX_TIMEOUT_MS = 600_000  # the longest deadline a request frame may give the server
MAX_REPLY_DATA = 1 << 31  # the most tensor bytes a client reads from one reply
SLICE_S = 1.0  # the longest one system call blocks: deadlines are checked between them
SCRATCH_BYTES = 64 << 10  # headers, messages and small data are read in one go
MAX_HANDSHAKES = 8       # connections presenting tickets at once; more are closed
PAGE = 4096
# Where in a page a receive buffer starts. A buffer whose offset in its page is near the
# data's offset in the kernel's pages copies 2-3x slower on loopback (a raw socket's
# buffer 0-16 bytes into a page: docs/transport.md, section 1). Here the frame header and
# message come first, so the data starts some 60-100 bytes into the stream, and buffers
# 64 bytes into a page were the slow case: `benchmarks/bench_transfer.py --bulk-offset`
# (docs/transport.md, section 5).
FAST_OFFSET = 1024


log = logging.getLogger("dnntune.server")


class FrameError(ValueError):
    """A frame that does not follow the protocol: the connection is closed."""


def page_buffer(nbytes: int) -> np.ndarray:
    """``nbytes`` of uint8 starting :data:`FAST_OFFSET` bytes into a page
    (``np.empty`` gives no say in it)."""
    raw = np.empty(nbytes + PAGE, np.uint8)
    start = (FAST_OFFSET - raw.__array_interface__["data"][0]) % PAGE
    return raw[start:start + nbytes]




class FrameSocket:
    """One end of a bulk connection, reading and writing frames with as few system
    calls as it can: header, message and small data in one ``recv`` (through a scratch
    buffer), large data straight into its buffer. Every call blocks at most
    :data:`SLICE_S` in the kernel and gives up at its ``until`` (``time.monotonic()``).

    A plain socket stays in blocking mode with kernel timeouts (``SO_RCVTIMEO``): a
    Python socket timeout would add a ``poll`` before every read and an ``ioctl`` every
    time it changed. A TLS socket uses Python's timeout.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        if self.tls:
            sock.settimeout(SLICE_S)
        else:
            sock.settimeout(None)
            slice_ = struct.pack("ll", int(SLICE_S), int(SLICE_S % 1 * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, slice_)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, slice_)
        self._scratch = bytearray(SCRATCH_BYTES)
        self._view = memoryview(self._scratch)
        self._start = self._end = 0  # bytes received, not yet read: scratch[start:end]

    def _recv_into(self, out: memoryview, until: float) -> int:
        """Some bytes into ``out``; ``TimeoutError`` once ``until`` has passed, however
        the bytes trickle in."""
        while True:
            if time.monotonic() > until:
                raise TimeoutError("the bulk connection did not deliver in time")
            try:
                n = self.sock.recv_into(out, len(out))
            except (BlockingIOError, TimeoutError):  # nothing for SLICE_S
                continue
            if n == 0:
                raise ConnectionError("the bulk connection was closed by the other end")
            return n

    def read_small(self, n: int, until: float) -> bytes:
        """The next ``n`` bytes (at most :data:`SCRATCH_BYTES`)."""
        if self._end - self._start < n:
            if self._start:  # keep what is left at the front
                left = self._end - self._start
                self._view[:left] = self._view[self._start:self._end]
                self._start, self._end = 0, left
            while self._end < n:
                self._end += self._recv_into(self._view[self._end:], until)
        out = bytes(self._view[self._start:self._start + n])
        self._start += n
        return out

    def read_into(self, out: memoryview, until: float) -> None:
        """Fill ``out``: first from what was received already, then straight from the
        socket."""
        got = min(self._end - self._start, len(out))
        if got:
            out[:got] = self._view[self._start:self._start + got]
            self._start += got
        while got < len(out):
            got += self._recv_into(out[got:], until)

    def read_header(self, until: float) -> tuple[int, int, int, int]:
        """``(method or status, timeout_ms, M, D)`` of the next frame."""
        magic, first, second, m, d = FRAME.unpack(self.read_small(FRAME.size, until))
        if magic != MAGIC:
            raise FrameError("not a DTB1 frame")
        return first, second, m, d

    def read_message(self, m: int, until: float) -> bytes:
        if m <= SCRATCH_BYTES:
            return self.read_small(m, until)
        message = bytearray(m)
        self.read_into(memoryview(message), until)
        return bytes(message)

    def read_data(self, sizes: Sequence[int], declared: int, until: float
                  ) -> list[memoryview]:
        """A frame's ``declared`` data bytes, as views of one page-placed buffer cut at
        ``sizes`` (which must add up to ``declared``)."""
        if sum(sizes) != declared:
            raise FrameError(f"the frame holds {declared} data bytes, but its bulk tensors "
                             f"declare {sum(sizes)}")
        view = memoryview(page_buffer(declared).data)
        self.read_into(view, until)
        out, start = [], 0
        for size in sizes:
            out.append(view[start:start + size])
            start += size
        return out

    def drain(self, nbytes: int, until: float) -> None:
        """Read and drop the next ``nbytes`` (the rest of a refused call's frame, which
        its client is still sending), until ``until`` at the latest: closed at once with
        unread data, the connection would be reset, and the reply with it."""
        left = nbytes - min(self._end - self._start, nbytes)
        self._start = self._end = 0
        with contextlib.suppress(OSError):
            while left > 0:
                left -= self._recv_into(self._view[:min(left, len(self._view))], until)

    def send_frame(self, first: int, second: int, message: bytes,
                   parts: Sequence[memoryview], until: float) -> None:
        """A frame: header, ``message``, then ``parts`` back to back."""
        total = sum(len(p) for p in parts)
        pending = [memoryview(FRAME.pack(MAGIC, first, second, len(message), total) + message),
                   *(memoryview(p).cast("B") for p in parts if len(p))]
        while pending:
            try:  # (no sendmsg on TLS sockets)
                sent = self.sock.send(pending[0]) if self.tls else self.sock.sendmsg(pending)
            except (BlockingIOError, TimeoutError):
                if time.monotonic() > until:
                    raise TimeoutError("the bulk connection took nothing in time") from None
                continue
            if time.monotonic() > until:
                raise TimeoutError("the bulk connection took nothing in time")
            while pending and sent >= len(pending[0]):
                sent -= len(pending[0])
                pending.pop(0)
            if pending and sent:
                pending[0] = pending[0][sent:]


# --- the server's end ------------------------------------------------------------------

@dataclass(frozen=True)
class BulkRequestFrame:
    """What the servicer gets for one call: the method, the request message, the time
    left, and ``data(sizes)`` which reads the frame's tensor bytes (once)."""

    method: int
    message: bytes
    timeout_s: float
    data: Callable[[Sequence[int]], list[memoryview]]
    peer: str


# (frame) -> (status code number, reply message or error text, reply tensor bytes)
Handler = Callable[[BulkRequestFrame], tuple[int, bytes, list[memoryview]]]


class BulkListener:
    """The server's bulk port: issues tickets, accepts connections, serves their calls.

    Args:
        host: The interface the gRPC server binds.
        port: 0 for any free port.
        max_sessions: Tickets and connections held at once (RESOURCE_EXHAUSTED beyond).
        max_message_bytes, max_data_bytes: The largest M and D of a request frame.
        tls: ``(cert_file, key_file)`` when the gRPC server serves TLS.
    """

    def __init__(self, host: str, port: int, max_sessions: int, max_message_bytes: int,
                 max_data_bytes: int, tls: tuple[str, str] | None = None) -> None:
        self.max_sessions = max_sessions
        self.max_message_bytes = max_message_bytes
        self.max_data_bytes = max_data_bytes
        self.handler: Handler | None = None  # set by the servicer before any connection
        self._lock = threading.Lock()
        self._tickets: dict[bytes, float] = {}   # issued, not yet connected: when issued
        self._connections: set[socket.socket] = set()
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._context: ssl.SSLContext | None = None
        if tls is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(*tls)
        bind = host.strip("[]")
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self._server = socket.socket(family, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._server.bind((bind, port))
        except OSError as exc:
            self._server.close()
            raise DnntuneError(f"--bulk-port {port}: cannot listen on {host} "
                               f"({exc.strerror})") from None
        self._server.listen(MAX_HANDSHAKES)
        self._server.settimeout(0.5)
        self.port: int = self._server.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="dnntune-bulk",
                                        daemon=True)
        self._thread.start()

    @property
    def tls(self) -> bool:
        return self._context is not None

    def issue(self) -> tuple[bytes, float]:
        """A fresh ticket and how long it stays valid unused."""
        with self._lock:
            self._expire()
            if len(self._tickets) + len(self._connections) >= self.max_sessions:
                raise DnntuneError(f"OpenBulk: {self.max_sessions} bulk connections are "
                                   "open, the most this server allows "
                                   "(--max-concurrent-rpcs)")
            ticket = secrets.token_bytes(TICKET_BYTES)
            self._tickets[ticket] = time.monotonic()
        return ticket, TICKET_TTL_S

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
        self._server.close()
        with self._lock:
            for sock in list(self._connections):
                _shut(sock)

    def _expire(self) -> None:
        now = time.monotonic()
        for ticket, issued in list(self._tickets.items()):
            if now - issued > TICKET_TTL_S:
                del self._tickets[ticket]

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if not self._handshakes.acquire(blocking=False):
                conn.close()  # too many connections presenting tickets at once
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True,
                             name="dnntune-bulk-connection").start()

    def _connection(self, conn: socket.socket) -> None:
        """Take the ticket, then serve the connection's calls until it closes."""
        try:
            accepted = self._handshake(conn)
        finally:
            self._handshakes.release()
        if accepted is None:
            return
        peer = _peer(accepted)
        frames = FrameSocket(accepted)
        try:
            while not self._closed.is_set():
                refused = self._serve_one(frames, peer)
                if refused is not None:
                    frames.drain(*refused)  # let its client read why, then close
                    break
        except (OSError, ValueError):
            pass  # FrameError, a timeout, a closed connection: it ends here
        except Exception:  # a bug of ours: logged, and the connection closed
            log.exception("internal error on a bulk connection from %s", peer)
        finally:
            with self._lock:
                self._connections.discard(accepted)
            _shut(accepted)

    def _handshake(self, conn: socket.socket) -> socket.socket | None:
        """The connection, TLS and ticket checked, counted among the server's
        connections; ``None`` (and closed) otherwise. The whole handshake has
        :data:`HANDSHAKE_S`, however slowly its bytes come."""
        until = time.monotonic() + HANDSHAKE_S
        sock = conn
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(HANDSHAKE_S)
            if self._context is not None:
                sock = self._context.wrap_socket(conn, server_side=True)
            ticket = bytearray(TICKET_BYTES)
            view, got = memoryview(ticket), 0
            while got < TICKET_BYTES:
                left = until - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise ConnectionError
                got += n
            with self._lock:
                issued = self._tickets.pop(bytes(ticket), None)
                if issued is None or time.monotonic() - issued > TICKET_TTL_S \
                        or self._closed.is_set():
                    raise ConnectionError  # not a live ticket: closed, nothing said
                self._connections.add(sock)  # its place is taken from here on
            try:
                sock.sendall(ACCEPTED)
            except BaseException:
                with self._lock:
                    self._connections.discard(sock)
                raise
        except (OSError, ValueError):
            _shut(sock)
            if sock is not conn:
                _shut(conn)
            return None
        return sock

    def _serve_one(self, conn: FrameSocket, peer: str) -> tuple[int, float] | None:
        """Serve one call. ``None`` when it succeeded; after a refusal, what is left of
        its frame to drain and by when (then the connection is closed)."""
        method, timeout_ms, m, d = conn.read_header(time.monotonic() + IDLE_S)
        if method not in METHOD_NAMES:
            raise FrameError(f"method {method} is not one of {sorted(METHOD_NAMES)}")
        timeout_s = min(timeout_ms or DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS) / 1e3
        until = time.monotonic() + timeout_s
        if m > self.max_message_bytes or d > self.max_data_bytes:
            what = (f"a message of {m} bytes is over the limit of {self.max_message_bytes} "
                    "(--max-message-mb)" if m > self.max_message_bytes else
                    f"tensors of {d} bytes are over the limit of {self.max_data_bytes} "
                    "(--max-call-mb)")
            conn.send_frame(_RESOURCE_EXHAUSTED, 0, f"bulk frame: {what}".encode(), [], until)
            return m + d, until
        message = conn.read_message(m, until)
        read: list[bool] = []

        def data(sizes: Sequence[int]) -> list[memoryview]:
            """The frame's tensor bytes; a failure is a status for the call (then the
            connection is closed)."""
            if read:
                raise WireError("the frame's data was read already", code="INTERNAL")
            read.append(True)
            try:
                return conn.read_data(sizes, d, until)
            except FrameError as exc:
                raise WireError(str(exc)) from None
            except TimeoutError:
                raise WireError("the frame's data did not arrive within the call's "
                                "deadline", code="DEADLINE_EXCEEDED") from None
            except OSError as exc:
                raise WireError(f"the bulk connection failed ({exc})",
                                code="UNAVAILABLE") from None
        assert self.handler is not None
        status, reply, parts = self.handler(BulkRequestFrame(method, message, timeout_s, data,
                                                             peer))
        if status == 0 and not read:
            raise FrameError("internal: a call answered without reading its data")
        conn.send_frame(status, 0, reply, parts if status == 0 else [],
                        max(until, time.monotonic() + 1.0))
        if status == 0:
            return None
        return (0 if read else d), until


_RESOURCE_EXHAUSTED = 8  # grpc.StatusCode.RESOURCE_EXHAUSTED's number (no grpc import here)


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "bulk:unknown"
    return f"bulk:{host}:{port}"


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# --- the client's end ------------------------------------------------------------------

class BulkConnection:
    """A client's bulk connection to one server, for one call at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = FrameSocket(sock)
        self.lock = threading.Lock()
        self.broken = False

    @classmethod
    def open(cls, host: str, port: int, ticket: bytes, timeout_s: float,
             tls_cert_pem: bytes | None = None, server_name: str | None = None
             ) -> BulkConnection:
        sock = socket.create_connection((host.strip("[]"), port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls_cert_pem is not None:
                context = ssl.create_default_context(cadata=tls_cert_pem.decode("ascii"))
                sock = context.wrap_socket(sock, server_hostname=server_name or host)
            sock.sendall(ticket)
            if sock.recv(1) != ACCEPTED:
                raise ConnectionError("the server did not accept the bulk ticket")
        except BaseException:
            _shut(sock)
            raise
        return cls(sock)

    def close(self) -> None:
        self.broken = True
        _shut(self.sock)

    def call(self, method: int, message: bytes, parts: Sequence[memoryview],
             timeout_s: float, max_message: int, max_data: int = MAX_REPLY_DATA
             ) -> tuple[int, bytes, np.ndarray]:
        """One call: ``(status, reply message or error text, reply data bytes)``; a
        reply whose message or data is over ``max_message`` or ``max_data`` is not read.

        Any failure on the connection marks it broken and raises ``OSError`` (or
        :class:`FrameError`)."""
        until = time.monotonic() + timeout_s
        try:
            self.frames.send_frame(method, min(int(timeout_s * 1e3), MAX_TIMEOUT_MS) or 1,
                                   message, parts, until)
            status, _, m, d = self.frames.read_header(until)
            if m > max_message or d > max_data:
                raise FrameError(f"the server's reply frame declares {m} message and {d} data "
                                 f"bytes, over this client's {max_message} and {max_data}")
            reply = self.frames.read_message(m, until)
            data = page_buffer(d)
            self.frames.read_into(memoryview(data.data), until)
        except BaseException:
            self.close()
            raise
        if status != 0:
            self.close()  # the server closes it after a refusal
        return status, reply, data
