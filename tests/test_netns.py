"""Kernel link shaping with tc tbf between network namespaces.

The command construction is pure and always tested. The real-namespace tests need
root, ``ip`` and ``tc`` (this project's machines and CI have them); where they are
missing, the same tests check that kernel shaping refuses in one clear line and
creates nothing.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

import dnntune.netem.netns as netns
from dnntune.errors import DnntuneError
from dnntune.netem.linkprobe import measure_link
from dnntune.netem.netns import (
    NamespaceLink,
    entered_netns,
    kernel_shaping_available,
    list_namespaces,
    parse_dropped,
    plan_veth_link,
    remove_stale_namespaces,
    setup_commands,
    tbf_burst_bytes,
    tbf_command,
    teardown_commands,
    wire_rate_mbps,
)
from dnntune.netem.shaper import LinkShape, ShapingProxy

RATE_TOLERANCE_PCT = 10.0


# --- pure: what would be run ---------------------------------------------------------

def test_tbf_command_uses_exact_bits_per_second() -> None:
    assert tbf_command("ns", "dnt-c", 2.0275, burst_bytes=4000, limit_bytes=50_000) == [
        "tc", "-n", "ns", "qdisc", "add", "dev", "dnt-c", "root", "tbf",
        "rate", "2027500bit", "burst", "4000", "limit", "50000"]


def test_burst_is_two_frames_or_two_ms_of_traffic() -> None:
    assert tbf_burst_bytes(1.1) == 2 * 1514
    assert tbf_burst_bytes(54.97) == math.ceil(54.97 * 125 * 2)  # 13.7 kB


def test_wire_rate_pays_for_frame_headers() -> None:
    # A 1514-byte frame carries 1448 bytes of TCP payload.
    assert wire_rate_mbps(1448.0) == pytest.approx(1514.0)


def test_plans_are_unique_per_process_and_recognisable() -> None:
    a, b = plan_veth_link(5.85, 13.76), plan_veth_link(5.85, 13.76)
    assert len({a.client_ns, a.server_ns, b.client_ns, b.server_ns}) == 4
    for name in (a.client_ns, a.server_ns):
        match = re.match(r"^dnt-(\d+)-[0-9a-f]+-[cs]$", name)
        assert match and int(match.group(1)) == os.getpid()
    net = ipaddress.ip_network(f"{a.client_addr}/{a.prefix_len}", strict=False)
    assert ipaddress.ip_address(a.server_addr) in net and net.is_private
    assert max(len(a.client_dev), len(a.server_dev)) <= 15  # IFNAMSIZ - 1


def test_setup_never_touches_the_host_namespace() -> None:
    plan = plan_veth_link(5.85, 13.76, tag="t", pid=1)
    commands = setup_commands(plan)
    for argv in commands:
        # Either creates a namespace, or names one with -n: nothing runs on the host.
        assert argv[1:3] == ["netns", "add"] or argv[1] == "-n", argv
    veth = next(a for a in commands if "veth" in a)
    assert veth[-2:] == ["netns", plan.server_ns]  # the peer is born in the server ns
    tbfs = [a for a in commands if a[0] == "tc"]
    assert [(a[2], a[6], a[10]) for a in tbfs] == [
        (plan.client_ns, plan.client_dev, f"{round(wire_rate_mbps(5.85) * 1e6)}bit"),
        (plan.server_ns, plan.server_dev, f"{round(wire_rate_mbps(13.76) * 1e6)}bit")]
    assert teardown_commands(plan) == [["ip", "netns", "del", plan.client_ns],
                                       ["ip", "netns", "del", plan.server_ns]]


def test_dropped_packets_are_read_from_tc_statistics() -> None:
    stats = ("qdisc tbf 8095: root refcnt 3 rate 8364Kbit burst 3027b lat 1e+03ms\n"
             " Sent 6444130 bytes 6703 pkt (dropped 12, overlimits 8739 requeues 0)\n"
             " backlog 0b 0p requeues 0\n")
    assert parse_dropped(stats) == 12 and parse_dropped("") == 0


def test_unlimited_direction_gets_no_qdisc() -> None:
    commands = setup_commands(plan_veth_link(math.inf, 20.0, tag="t", pid=1))
    assert [a[2] for a in commands if a[0] == "tc"] == ["dnt-1-t-s"]


@pytest.mark.parametrize("rate", [0.0, -5.0, math.nan, "20", None])
def test_bad_rates_are_one_clear_error(rate: object) -> None:
    with pytest.raises(DnntuneError, match=r"^kernel shaping: up_mbps must be a positive"):
        plan_veth_link(rate, 10.0)  # type: ignore[arg-type]
    with pytest.raises(DnntuneError, match="rate_mbps"):
        tbf_command("ns", "dev", rate)  # type: ignore[arg-type]


def test_without_root_kernel_shaping_refuses_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    ok, reason = kernel_shaping_available()
    assert not ok and "needs root" in reason and "uid 1000" in reason
    link = NamespaceLink(20.0, 40.0)
    with pytest.raises(DnntuneError, match="needs root"):
        link.open()
    link.close()  # nothing to undo


def test_unknown_namespace_is_a_clear_error() -> None:
    with pytest.raises(DnntuneError, match="network namespace 'dnt-nope' not found"), \
            entered_netns("dnt-nope"):
        pass
    with pytest.raises(DnntuneError, match="shaping proxy: network namespace 'dnt-nope'"):
        ShapingProxy("10.201.0.2", 1, LinkShape.delay_only(10.0),
                     upstream_netns="dnt-nope").start()


# --- real namespaces (root) ----------------------------------------------------------

def kernel_shaping_or_refusal() -> bool:
    """True when real namespaces can be tested; otherwise check the refusal and say so."""
    ok, reason = kernel_shaping_available()
    assert reason and "\n" not in reason
    if not ok:
        with pytest.raises(DnntuneError):
            NamespaceLink(20.0, 40.0).open()
    return ok


def test_tbf_shapes_a_bulk_transfer_between_namespaces() -> None:
    if not kernel_shaping_or_refusal():
        return
    with NamespaceLink(up_mbps=20.0, down_mbps=40.0) as veth:
        names = {veth.client_ns, veth.server_ns}
        assert names <= set(list_namespaces())
        port = veth.start_measurement_server(max_s=60)
        with entered_netns(veth.client_ns):
            m = measure_link((veth.server_addr, port), LinkShape(20.0, 40.0, 0.0),
                             up_bytes=2_000_000, down_bytes=2_000_000, timeout_s=20)
        assert veth.dropped_packets() == {"up": 0, "down": 0}  # no loss: no TCP timeouts
    assert m.up_error_pct is not None and abs(m.up_error_pct) < RATE_TOLERANCE_PCT, m
    assert m.down_error_pct is not None and abs(m.down_error_pct) < RATE_TOLERANCE_PCT, m
    assert not names & set(list_namespaces())


def test_proxy_delay_on_top_of_tbf_rate() -> None:
    if not kernel_shaping_or_refusal():
        return
    target = LinkShape(up_mbps=8.0, down_mbps=20.0, rtt_ms=40.0)
    with NamespaceLink(target.up_mbps, target.down_mbps) as veth:
        port = veth.start_measurement_server(max_s=60)
        with ShapingProxy(veth.server_addr, port, LinkShape.delay_only(target.rtt_ms),
                          upstream_netns=veth.client_ns) as proxy:
            m = measure_link(proxy, target, up_bytes=1_000_000, down_bytes=1_000_000,
                             pings=10)
    assert m.up_error_pct is not None and abs(m.up_error_pct) < RATE_TOLERANCE_PCT, m
    assert m.down_error_pct is not None and abs(m.down_error_pct) < RATE_TOLERANCE_PCT, m
    assert m.min_rtt_error_ms is not None and abs(m.min_rtt_error_ms) < 3.0, m


def test_entering_a_namespace_is_per_thread_and_undone() -> None:
    if not kernel_shaping_or_refusal():
        return

    def own_netns() -> int:
        return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino

    host = own_netns()
    with NamespaceLink(math.inf, math.inf) as veth:
        with entered_netns(veth.client_ns):
            assert own_netns() != host
            inside = socket.create_server((veth.client_addr, 0))  # exists only there
        assert own_netns() == host
        with inside:
            assert inside.getsockname()[0] == veth.client_addr  # still usable
            with pytest.raises(OSError):
                socket.create_server((veth.client_addr, 0))  # not an address of the host


def test_everything_is_removed_when_the_body_fails() -> None:
    if not kernel_shaping_or_refusal():
        return
    with pytest.raises(RuntimeError), NamespaceLink(10.0, 10.0) as veth:
        names = {veth.client_ns, veth.server_ns}
        sleeper = veth.popen(veth.server_ns, [sys.executable, "-c",
                                              "import time; time.sleep(30)"])
        raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert not names & set(list_namespaces())


def test_everything_is_removed_when_setup_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    if not kernel_shaping_or_refusal():
        return
    real = netns.setup_commands
    monkeypatch.setattr(netns, "setup_commands", lambda plan: [
        *real(plan), ["ip", "-n", plan.client_ns, "link", "set", "dnt-missing", "up"]])
    link = NamespaceLink(10.0, 10.0)
    with pytest.raises(DnntuneError, match=r"^kernel shaping: 'ip -n dnt-.*' failed: "):
        link.open()
    assert not {link.client_ns, link.server_ns} & set(list_namespaces())


def test_namespaces_of_dead_processes_are_removed() -> None:
    if not kernel_shaping_or_refusal():
        return
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=30)
    name = f"dnt-{int(dead.stdout)}-dead-c"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        remove_stale_namespaces()
        # Gone, whoever removed it: a NamespaceLink opened by a test on the other worker
        # removes stale namespaces too, and may have come first.
        assert name not in list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
