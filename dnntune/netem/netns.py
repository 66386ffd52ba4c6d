"""Kernel link shaping: two network namespaces joined by a veth pair, rate-limited by tc tbf.

Needs Linux, root, iproute2 (``ip``, ``tc``) and the ``tbf`` qdisc; check with
:func:`kernel_shaping_available`. The host's own network namespace is never touched:
the veth pair is created directly inside the two fresh namespaces, and its addresses
(``10.201.0.1`` and ``10.201.0.2``, a /30) exist only there::

    client namespace dnt-<pid>-<tag>-c          server namespace dnt-<pid>-<tag>-s
    dnt-c 10.201.0.1/30  ── veth pair ──  dnt-s 10.201.0.2/30
    egress: tbf at up_mbps                egress: tbf at down_mbps

The rates are TCP goodput, as the analyzer's bytes are: tbf, which counts whole frames,
is set to :func:`wire_rate_mbps` of them.

``netem`` is missing on some kernels, so the delay comes from the user-space proxy:
run the cloud server in the server namespace, and put a delay-only
:class:`dnntune.netem.shaper.ShapingProxy` on the host's loopback whose upstream connections
are opened in the client namespace. The path is then agent (host) → proxy (delay) →
tbf uplink → server, and back through the downlink tbf and the proxy::

    with NamespaceLink(link.up_mbps, link.down_mbps) as veth:
        veth.popen(veth.server_ns, [sys.executable, "-m", "cloud_server",
                                    "--host", veth.server_addr, "--port", "50051"])
        with ShapingProxy(veth.server_addr, 50051, LinkShape.delay_only(link.rtt_ms),
                          upstream_netns=veth.client_ns) as proxy:
            ...  # the agent connects to 127.0.0.1:proxy.port

Any port is free inside a fresh namespace. Namespaces are named after the creating
process, so :func:`remove_stale_namespaces` can delete those whose creator has died.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import math
import os
import re
import secrets
import select
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnntune.errors import DnntuneError
from dnntune.procs import process_alive

__all__ = ["NamespaceLink", "VethPlan", "entered_netns", "join_netns",
           "kernel_shaping_available", "list_namespaces", "parse_dropped", "plan_veth_link",
           "remove_stale_namespaces", "setup_commands", "stale_namespaces", "tbf_burst_bytes",
           "tbf_command", "teardown_commands", "wire_rate_mbps"]

PREFIX = "dnt"
CLIENT_DEV, SERVER_DEV = "dnt-c", "dnt-s"
CLIENT_ADDR, SERVER_ADDR, PREFIX_LEN = "10.201.0.1", "10.201.0.2", 30
# A drop at the tbf queue can cost a TCP flow a 200 ms retransmission timeout, so the
# queue never drops: TCP Small Queues caps what one socket keeps queued below it
# (tcp_limit_output_bytes, per namespace; 4 MiB by default on recent kernels) at
# TSQ_BYTES, and the queue holds TBF_LIMIT_BYTES: eight bulk flows at once.
TSQ_BYTES = 128 * 1024
TBF_LIMIT_BYTES = 8 * TSQ_BYTES
TSQ_SYSCTL = Path("/proc/sys/net/ipv4/tcp_limit_output_bytes")
# tbf counts whole frames; the analyzer's bytes (and link presets' Mbit/s) are TCP payload.
# At MTU 1500 a frame of 1514 bytes (Ethernet 14, IPv4 20, TCP 20 + timestamps 12)
# carries 1448 payload bytes.
FRAME_BYTES, TCP_PAYLOAD_BYTES = 1514, 1448
MIN_BURST_BYTES = 2 * FRAME_BYTES  # a larger bucket sends its depth at line rate: error
BURST_MS = 2.0
COMMAND_TIMEOUT_S = 10.0
CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_NAME = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+-[csp]$")


def wire_rate_mbps(goodput_mbps: float) -> float:
    """The tbf rate that gives ``goodput_mbps`` of TCP payload over Ethernet-framed IPv4.

    Example:
        >>> round(wire_rate_mbps(10.0), 3)
        10.456
    """
    return goodput_mbps * FRAME_BYTES / TCP_PAYLOAD_BYTES


def tbf_burst_bytes(rate_mbps: float) -> int:
    """Token bucket depth: ``BURST_MS`` of traffic at the rate, at least two frames.

    The first ``burst`` bytes of a transfer leave at line rate, so the depth is an error
    on short transfers (16 KiB would be 8% of 200 kB); two frames keep the kernel's
    high-resolution timer able to sustain the rate.
    """
    return max(MIN_BURST_BYTES, math.ceil(rate_mbps * 125.0 * BURST_MS))


def tbf_command(ns: str, dev: str, rate_mbps: float, burst_bytes: int | None = None,
                limit_bytes: int = TBF_LIMIT_BYTES) -> list[str]:
    """``tc`` arguments that shape ``dev``'s egress in namespace ``ns`` to ``rate_mbps``.

    Example:
        >>> " ".join(tbf_command("ns1", "dnt-c", 5.85))
        'tc -n ns1 qdisc add dev dnt-c root tbf rate 5850000bit burst 3028 limit 1048576'
    """
    _check_rate("rate_mbps", rate_mbps, allow_inf=False)
    burst = tbf_burst_bytes(rate_mbps) if burst_bytes is None else burst_bytes
    return ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf",
            "rate", f"{round(rate_mbps * 1e6)}bit", "burst", str(burst),
            "limit", str(limit_bytes)]


def _check_rate(key: str, value: Any, allow_inf: bool = True) -> None:
    ok = (isinstance(value, int | float) and not isinstance(value, bool)
          and value > 0 and (allow_inf or math.isfinite(value)))
    if not ok:
        extra = " (math.inf for no limit)" if allow_inf else ""
        raise DnntuneError(f"kernel shaping: {key} must be a positive number of Mbit/s"
                           f"{extra}, got {value!r}")


@dataclass(frozen=True)
class VethPlan:
    """Names, addresses and rates of one namespace pair (pure data, nothing created).

    ``up_mbps``/``down_mbps`` are TCP goodput targets (tbf gets :func:`wire_rate_mbps`);
    ``math.inf`` leaves that direction unshaped.
    """

    client_ns: str
    server_ns: str
    up_mbps: float
    down_mbps: float
    client_dev: str = CLIENT_DEV
    server_dev: str = SERVER_DEV
    client_addr: str = CLIENT_ADDR
    server_addr: str = SERVER_ADDR
    prefix_len: int = PREFIX_LEN


def plan_veth_link(up_mbps: float, down_mbps: float, tag: str | None = None,
                   pid: int | None = None) -> VethPlan:
    """A :class:`VethPlan` with namespace names unique to this process and ``tag``.

    Example:
        >>> plan_veth_link(5.85, 13.76, tag="ab12", pid=42).client_ns
        'dnt-42-ab12-c'
    """
    _check_rate("up_mbps", up_mbps)
    _check_rate("down_mbps", down_mbps)
    tag = secrets.token_hex(3) if tag is None else tag
    base = f"{PREFIX}-{os.getpid() if pid is None else pid}-{tag}"
    return VethPlan(f"{base}-c", f"{base}-s", float(up_mbps), float(down_mbps))


def setup_commands(plan: VethPlan) -> list[list[str]]:
    """The ``ip``/``tc`` commands that build ``plan``, in order."""
    c, s = plan.client_ns, plan.server_ns
    commands = [
        ["ip", "netns", "add", c],
        ["ip", "netns", "add", s],
        ["ip", "-n", c, "link", "add", plan.client_dev, "type", "veth",
         "peer", "name", plan.server_dev, "netns", s],
        ["ip", "-n", c, "addr", "add", f"{plan.client_addr}/{plan.prefix_len}",
         "dev", plan.client_dev],
        ["ip", "-n", s, "addr", "add", f"{plan.server_addr}/{plan.prefix_len}",
         "dev", plan.server_dev],
    ]
    for ns, dev in ((c, plan.client_dev), (s, plan.server_dev)):
        commands += [["ip", "-n", ns, "link", "set", "lo", "up"],
                     ["ip", "-n", ns, "link", "set", dev, "up"]]
    for ns, dev, rate in ((c, plan.client_dev, plan.up_mbps),
                          (s, plan.server_dev, plan.down_mbps)):
        if math.isfinite(rate):
            commands.append(tbf_command(ns, dev, wire_rate_mbps(rate)))
    return commands


def teardown_commands(plan: VethPlan) -> list[list[str]]:
    """Deleting the namespaces deletes the veth pair and its qdiscs with them."""
    return [["ip", "netns", "del", plan.client_ns], ["ip", "netns", "del", plan.server_ns]]


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an ``ip``/``tc`` command; a failure raises one line naming it."""
    tool = _tool(argv[0])
    try:
        result = subprocess.run([tool, *argv[1:]], capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DnntuneError(f"kernel shaping: '{' '.join(argv)}' failed ({exc})") from None
    if check and result.returncode != 0:
        why = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[0]
        raise DnntuneError(f"kernel shaping: '{' '.join(argv)}' failed: {why}")
    return result


def _tool(name: str) -> str:
    """``ip``/``tc`` from PATH, or from the sbin directories a non-root PATH omits."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    return found or name


def _missing_prerequisite() -> str | None:
    """Why kernel shaping cannot work here (cheap checks only), or ``None``."""
    if not sys.platform.startswith("linux"):
        return f"kernel shaping needs Linux network namespaces (this is {sys.platform})"
    if os.geteuid() != 0:
        return (f"kernel shaping needs root (running as uid {os.geteuid()}); "
                "the user-space proxy works without it")
    missing = [t for t in ("ip", "tc") if shutil.which(_tool(t)) is None]
    if missing:
        return f"kernel shaping needs iproute2's {' and '.join(missing)}, not found"
    return None


def kernel_shaping_available() -> tuple[bool, str]:
    """Whether :class:`NamespaceLink` can work here, and why (one line).

    Checks for Linux, root, ``ip`` and ``tc``, then creates a probe namespace with a tbf
    qdisc and deletes it again.
    """
    missing = _missing_prerequisite()
    if missing is not None:
        return False, missing
    probe = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-p"
    try:
        _run(["ip", "netns", "add", probe])
        _run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "tbf", "rate",
              "1mbit", "burst", str(MIN_BURST_BYTES), "latency", "10ms"])
    except DnntuneError as exc:
        return False, str(exc)
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return True, "root, ip and tc found; a network namespace with a tbf qdisc works"


def list_namespaces() -> list[str]:
    """Names of the network namespaces ``ip netns`` knows."""
    result = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def stale_namespaces() -> list[str]:
    """dnntune namespaces whose creating process has exited (left behind)."""
    return [name for name in list_namespaces()
            if (match := _NAME.match(name)) and not process_alive(int(match.group(1)))]


def remove_stale_namespaces() -> list[str]:
    """Delete dnntune namespaces whose creating process has exited; return their names."""
    stale = stale_namespaces()
    for name in stale:
        _run(["ip", "netns", "del", name], check=False)
    return stale


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def join_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace ``name`` for good.

    Sockets the thread creates afterwards live in that namespace; other threads and
    sockets created before are unaffected.
    """
    try:
        fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    except OSError as exc:
        raise DnntuneError(f"network namespace {name!r} not found ({exc.strerror})") from None
    try:
        _setns(fd)
    except OSError as exc:
        raise DnntuneError(f"cannot enter network namespace {name!r} ({exc.strerror}); "
                           "this needs root") from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered_netns(name: str) -> Iterator[None]:
    """Run the body with the calling thread in namespace ``name``, then return to the
    thread's own namespace. Sockets created inside keep working afterwards.

    Example:
        >>> # with entered_netns(veth.client_ns):
        >>> #     m = measure_link((veth.server_addr, port))
    """
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        join_netns(name)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


class NamespaceLink:
    """Two network namespaces joined by a veth pair shaped with tbf (see the module doc).

    Args:
        up_mbps: Client-to-server TCP goodput, Mbit/s (``math.inf``: unshaped).
        down_mbps: Server-to-client TCP goodput, Mbit/s (``math.inf``: unshaped).

    Everything is removed by :meth:`close` (also on errors during :meth:`open`, and at
    interpreter exit): processes started with :meth:`popen` first, then both namespaces.

    Example:
        >>> # with NamespaceLink(20.0, 40.0) as veth:
        >>> #     port = veth.start_measurement_server()
        >>> #     with entered_netns(veth.client_ns):
        >>> #         print(measure_link((veth.server_addr, port)).achieved_up_mbps)
    """

    def __init__(self, up_mbps: float, down_mbps: float) -> None:
        self.plan = plan_veth_link(up_mbps, down_mbps)
        self.client_ns, self.server_ns = self.plan.client_ns, self.plan.server_ns
        self.client_addr, self.server_addr = self.plan.client_addr, self.plan.server_addr
        self._procs: list[subprocess.Popen[bytes]] = []
        self._opened = False

    def __enter__(self) -> NamespaceLink:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> NamespaceLink:
        """Create the namespaces, the veth pair and the qdiscs.

        Raises:
            DnntuneError: kernel shaping is unavailable here, or a command failed
                (naming it); whatever was created is removed first.
        """
        missing = _missing_prerequisite()
        if missing is not None:
            raise DnntuneError(missing)
        self._opened = True
        atexit.register(self.close)
        remove_stale_namespaces()
        try:
            for argv in setup_commands(self.plan):
                _run(argv)
            for ns in (self.client_ns, self.server_ns):
                _limit_tcp_queueing(ns)
        except DnntuneError:
            self.close()
            raise
        return self

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside namespace ``ns`` (``ip netns exec``); it is ended by
        :meth:`close`. Keyword arguments go to :class:`subprocess.Popen`."""
        if not self._opened:
            raise DnntuneError("kernel shaping: open the NamespaceLink before popen()")
        env = {**os.environ, **kwargs.pop("env", {})}
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen([_tool("ip"), "netns", "exec", ns, *argv], env=env, **kwargs)
        self._procs.append(proc)
        return proc

    def start_measurement_server(self, max_s: float = 120.0,
                                 timeout_s: float = 15.0) -> int:
        """Run a :class:`dnntune.netem.linkprobe.MeasurementServer` on ``server_addr`` in the
        server namespace for at most ``max_s``; returns its port."""
        code = ("from dnntune.netem.linkprobe import serve_measurement; "
                f"serve_measurement({self.server_addr!r}, 0, {max_s!r})")
        proc = self.popen(self.server_ns, [sys.executable, "-c", code], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if not line.isdigit():
            proc.kill()
            err = (proc.communicate(timeout=5)[1] or b"").decode().strip().splitlines()
            raise DnntuneError("kernel shaping: the measurement server in "
                               f"{self.server_ns} did not start ({(err or ['no output'])[-1]})")
        return int(line)

    def dropped_packets(self) -> dict[str, int]:
        """Packets each direction's tbf queue has dropped so far (``up``, ``down``)."""
        out = {}
        for key, ns, dev in (("up", self.client_ns, self.plan.client_dev),
                             ("down", self.server_ns, self.plan.server_dev)):
            text = _run(["tc", "-s", "-n", ns, "qdisc", "show", "dev", dev]).stdout
            out[key] = parse_dropped(text)
        return out

    def close(self, timeout_s: float = 3.0) -> None:
        """End the processes started here, then delete both namespaces. Idempotent."""
        if not self._opened:
            return
        self._opened = False
        atexit.unregister(self.close)
        for proc in self._procs:
            _end_process(proc, timeout_s)
        self._procs.clear()
        for argv in teardown_commands(self.plan):
            _run(argv, check=False)  # a namespace never created is not an error here


def parse_dropped(tc_stats: str) -> int:
    """Total ``dropped`` count in ``tc -s qdisc show`` output.

    Example:
        >>> parse_dropped(" Sent 6444130 bytes 6703 pkt (dropped 3, overlimits 8739)")
        3
    """
    return sum(int(n) for n in re.findall(r"\(dropped (\d+),", tc_stats))


def _limit_tcp_queueing(ns: str, limit_bytes: int = TSQ_BYTES) -> None:
    """Cap the bytes one TCP socket of namespace ``ns`` queues in the qdisc."""
    try:
        with entered_netns(ns):
            TSQ_SYSCTL.write_text(str(limit_bytes))
    except OSError as exc:
        raise DnntuneError(f"kernel shaping: cannot set {TSQ_SYSCTL} in {ns} "
                           f"({exc.strerror})") from None


def _end_process(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Close stdin (a polite stop), then SIGTERM, then SIGKILL; each bounded in time."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    for stop in (None, proc.terminate, proc.kill):
        if stop is not None:
            with contextlib.suppress(OSError):
                stop()
        try:
            proc.wait(timeout_s / 3)
            return
        except subprocess.TimeoutExpired:
            continue
