"""Trace parsing and trace-integrated transfer times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnntune.analysis.traces import MahimahiTrace, RateTrace, load_trace
from dnntune.errors import DnntuneError
from tests.analyzer_fixtures import constant_mahimahi, write_mahimahi

SHARED_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def test_constant_mahimahi_trace_matches_closed_form(tmp_path: Path) -> None:
    # 2 packets every ms = 24 Mbit/s = 3000 bytes/ms; 8 B / rate exactly for whole packets.
    trace = load_trace(constant_mahimahi(tmp_path / "c.up", packets_per_ms=2, period_ms=50))
    assert isinstance(trace, MahimahiTrace)
    assert trace.mean_mbps == pytest.approx(24.0)
    nbytes = np.array([3000, 30000, 300000, 3_000_000])  # up to 20 loops of the trace
    for start in (0.0, 7.0, 49.0, 1234.0):
        expected = 8 * nbytes / (24e6) * 1000  # ms
        np.testing.assert_allclose(trace.transfer_time_ms(nbytes, start), expected)
    p50, p95 = trace.transfer_time_percentiles(nbytes, n_starts=25)  # whole-ms starts
    np.testing.assert_allclose(p50, 8 * nbytes / 24e3)
    np.testing.assert_allclose(p95, 8 * nbytes / 24e3)


def test_partial_packet_uses_a_whole_opportunity(tmp_path: Path) -> None:
    trace = load_trace(constant_mahimahi(tmp_path / "c.up", packets_per_ms=1, period_ms=10))
    assert trace.transfer_time_ms([1, 1500, 1501, 0], 0.0).tolist() == [1.0, 1.0, 2.0, 0.0]


def test_uneven_mahimahi_trace_loops_at_its_last_timestamp(tmp_path: Path) -> None:
    # Opportunities at 5, 5 and 10 ms, repeating every 10 ms (10 wraps onto 0).
    trace = load_trace(write_mahimahi(tmp_path / "u.up", [5, 5, 10]))
    assert trace.period_ms == 10.0
    assert trace.mean_mbps == pytest.approx(3 * 1500 * 8 / 10 / 1000)
    # From t=0 (the opportunity at 0 is not after 0): 5, 5, 10, 15, 15, 20 ...
    np.testing.assert_array_equal(trace.transfer_time_ms(np.arange(1, 7) * 1500, 0.0),
                                  [5, 5, 10, 15, 15, 20])
    np.testing.assert_array_equal(trace.transfer_time_ms(3000, [4.0, 5.0, 9.5]),
                                  [1.0, 10.0, 5.5])


def _brute_force_ms(stamps: list[int], nbytes: int, start: float) -> float:
    """Walk the looping schedule packet by packet, as Mahimahi's link does (steady state)."""
    period = stamps[-1]
    offsets = sorted(s % period for s in stamps)
    packets = -(-nbytes // 1500)
    k = 0
    while packets:
        for off in offsets:
            t = k * period + off
            if t > start:
                packets -= 1
                if packets == 0:
                    return t - start
        k += 1
    return 0.0


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.integers(0, 7), min_size=1, max_size=12),
       nbytes=st.integers(0, 40_000), start=st.floats(0, 100, allow_nan=False))
def test_mahimahi_transfer_matches_packet_walk(gaps: list[int], nbytes: int,
                                               start: float) -> None:
    stamps = list(np.cumsum(gaps) + 1)
    trace = MahimahiTrace("h", "", np.sort(np.mod(np.array(stamps, float), stamps[-1])),
                          float(stamps[-1]))
    got = float(trace.transfer_time_ms(nbytes, start))
    assert got == pytest.approx(_brute_force_ms(stamps, nbytes, start))


def test_rate_trace_integrates_piecewise_constant_rates(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_text("# seconds Mbit/s\n0 8\n1, 0\n2\t8\n")
    trace = load_trace(path)
    assert isinstance(trace, RateTrace)
    assert trace.period_ms == 3000.0
    assert trace.mean_mbps == pytest.approx(16 / 3)
    one_mbit = 125_000  # bytes: 1/8 s at 8 Mbit/s
    np.testing.assert_allclose(trace.transfer_time_ms(8 * one_mbit, [0.0, 500.0, 1000.0]),
                               [1000.0, 2000.0, 1000.0 + 1000.0])
    # 60 Mbit from t=0: 3 periods of 16 Mbit, then 8 Mbit by 1 s and 4 more by 2.5 s.
    np.testing.assert_allclose(trace.transfer_time_ms(60 * one_mbit, 0.0), 3 * 3000 + 2500)


def test_single_rate_is_a_constant_link(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_text("0 10\n")
    trace = load_trace(path)
    nbytes = np.array([1.0, 1e3, 1e6, 1e8])
    np.testing.assert_allclose(trace.transfer_time_ms(nbytes, 123.4), 8 * nbytes / 1e4)


@pytest.mark.parametrize(("text", "fragment"), [
    ("0\n5\nabc\n", ":3: expected one non-negative integer"),
    ("0\n5\n3\n", ":3: timestamp 3 is earlier"),
    ("0\n-5\n", ":2: expected one non-negative integer"),
    ("0\n0\n", "must last more than 0 ms"),
    ("", "empty trace"),
    ("# only a comment\n", "empty trace"),
    ("0 1\n1 x\n", ":2: expected two numbers"),
    ("0 1\n1\n", ":2: expected two numbers"),
    ("0 1\n1 -2\n", ":2: expected a finite time and a rate >= 0"),
    ("0 1\n0 2\n", ":2: time 0 s is not after"),
    ("0 0\n1 0\n", "every rate is 0"),
])
def test_malformed_traces_name_file_and_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.up"
    path.write_text(text)
    with pytest.raises(DnntuneError, match="bad.up") as info:
        load_trace(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(DnntuneError, match="cannot read trace"):
        load_trace(tmp_path / "nope.up")


def test_recorded_trace_mean_rate(tmp_path: Path) -> None:
    """The shared Verizon LTE trace's mean is 5.95 Mbit/s; without ../shared, an
    equivalent generated trace (about 5.95 Mbit/s) stands in."""
    path = SHARED_TRACES / "Verizon-LTE-short.up"
    if not path.is_file():
        rng = np.random.default_rng(0)
        stamps = np.sort(rng.integers(1, 140_001, size=69_367))
        stamps[-1] = 140_000
        path = write_mahimahi(tmp_path / "Verizon-LTE-short.up", stamps.tolist())
    trace = load_trace(path)
    assert trace.mean_mbps == pytest.approx(5.95, abs=0.01)
    p50, p95 = trace.transfer_time_percentiles([100_000, 1_000_000])
    assert np.all(p95 >= p50)
    assert np.all(p50 > 0)
