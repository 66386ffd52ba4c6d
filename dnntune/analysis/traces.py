"""Recorded uplink traces: how long a transfer takes when the capacity swings.

Two formats are read:

* **Mahimahi** packet-delivery traces (Netravali et al., USENIX ATC 2015; the cellular
  traces of Winstein et al., NSDI 2013): one integer per line, a time in milliseconds;
  each line is an opportunity for one 1500-byte packet, a repeated time passes several
  packets, and the trace loops with a period equal to its last timestamp.
* **Rate** traces: two numbers per line, ``seconds Mbit/s`` (whitespace or comma
  separated, ``#`` comments allowed). Each rate holds until the next line's time; the
  last rate holds for the median sample spacing, then the trace loops.

A transfer of ``B`` bytes starting at ``t0`` ends when the link has delivered ``B``
bytes after ``t0``: for Mahimahi traces at the ``ceil(B / 1500)``-th opportunity
strictly after ``t0`` (an opportunity at time ``t`` carries the capacity of the
millisecond ending at ``t``, so a constant trace gives exactly ``8 B / rate``); for rate
traces where the integral of the rate reaches ``B``. Both are vectorised over bytes and
start times with a cumulative array and :func:`numpy.searchsorted`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dnntune.errors import DnntuneError

PACKET_BYTES = 1500
BYTES_PER_MS_PER_MBPS = 125.0  # 1 Mbit/s = 1e6 / 8 bytes per s = 125 bytes per ms
_SPLIT = re.compile(r"[\s,]+")

FloatArray = npt.NDArray[np.float64]


class Trace(ABC):
    """A looping uplink capacity trace (see the module docstring for the semantics)."""

    name: str
    path: str
    period_ms: float

    @property
    @abstractmethod
    def bytes_per_period(self) -> float:
        """Bytes the link can deliver in one period of the trace."""

    @abstractmethod
    def delivered_bytes(self, t_ms: npt.ArrayLike) -> FloatArray:
        """Bytes the link can deliver from time 0 up to ``t_ms`` (looping)."""

    @abstractmethod
    def finish_time_ms(self, total_bytes: npt.ArrayLike) -> FloatArray:
        """Earliest time by which ``total_bytes`` (> 0) can have been delivered since 0."""

    @property
    def mean_mbps(self) -> float:
        """Mean capacity over one period, Mbit/s."""
        return self.bytes_per_period / self.period_ms / BYTES_PER_MS_PER_MBPS

    def transfer_time_ms(self, nbytes: npt.ArrayLike, start_ms: npt.ArrayLike) -> FloatArray:
        """Time to send ``nbytes`` starting at ``start_ms`` (broadcast against each other).

        Example:
            >>> trace = MahimahiTrace("const", "", np.arange(0.0, 10.0), 10.0)  # 12 Mbit/s
            >>> float(trace.transfer_time_ms(15000, 3.0))  # 10 packets, one per ms
            10.0
        """
        b = np.asarray(nbytes, dtype=np.float64)
        t0 = np.asarray(start_ms, dtype=np.float64)
        b, t0 = np.broadcast_arrays(b, t0)
        out = np.zeros(b.shape)
        sending = b > 0
        if np.any(sending):
            target = self.delivered_bytes(t0[sending]) + self._round_bytes(b[sending])
            out[sending] = self.finish_time_ms(target) - t0[sending]
        return out

    def _round_bytes(self, nbytes: FloatArray) -> FloatArray:
        return nbytes

    def transfer_time_percentiles(self, nbytes: npt.ArrayLike, n_starts: int = 200,
                                  percentiles: Sequence[float] = (50.0, 95.0)) -> FloatArray:
        """Percentiles of the transfer time over ``n_starts`` start times spread evenly
        over one period; returns shape ``(len(percentiles),) + shape(nbytes)``, in ms."""
        b = np.asarray(nbytes, dtype=np.float64)
        starts = np.arange(n_starts, dtype=np.float64) * (self.period_ms / n_starts)
        times = self.transfer_time_ms(b[np.newaxis, ...], starts.reshape((-1,) + (1,) * b.ndim))
        return np.asarray(np.percentile(times, list(percentiles), axis=0))


@dataclass(frozen=True, eq=False)
class MahimahiTrace(Trace):
    """Delivery opportunities of one 1500-byte packet each, looping every ``period_ms``.

    Attributes:
        offsets_ms: Opportunity times within one period, sorted, in ``[0, period_ms)``
            (a timestamp equal to the period wraps to 0: the loop's steady state).
        period_ms: The trace's last timestamp, as Mahimahi loops.
    """

    name: str
    path: str
    offsets_ms: FloatArray
    period_ms: float

    @property
    def bytes_per_period(self) -> float:
        return float(len(self.offsets_ms) * PACKET_BYTES)

    def _opportunities_up_to(self, t_ms: FloatArray) -> FloatArray:
        periods = np.floor(t_ms / self.period_ms)
        rest = t_ms - periods * self.period_ms
        within = np.searchsorted(self.offsets_ms, rest, side="right")
        return np.asarray(periods * len(self.offsets_ms) + within, dtype=np.float64)

    def delivered_bytes(self, t_ms: npt.ArrayLike) -> FloatArray:
        return self._opportunities_up_to(np.asarray(t_ms, dtype=np.float64)) * PACKET_BYTES

    def finish_time_ms(self, total_bytes: npt.ArrayLike) -> FloatArray:
        packets = np.ceil(np.asarray(total_bytes, dtype=np.float64) / PACKET_BYTES)
        last = (packets - 1).astype(np.int64)  # 0-based index of the last opportunity used
        n = len(self.offsets_ms)
        return np.asarray((last // n) * self.period_ms + self.offsets_ms[last % n],
                          dtype=np.float64)

    def _round_bytes(self, nbytes: FloatArray) -> FloatArray:
        return np.ceil(nbytes / PACKET_BYTES) * PACKET_BYTES


@dataclass(frozen=True, eq=False)
class RateTrace(Trace):
    """Piecewise-constant capacity: ``rates_mbps[i]`` from ``times_ms[i]`` to ``times_ms[i+1]``.

    Attributes:
        times_ms: Segment starts, ``times_ms[0] == 0``, increasing, plus the period end.
        rates_mbps: One rate per segment (``len(times_ms) - 1`` values, >= 0).
    """

    name: str
    path: str
    times_ms: FloatArray
    rates_mbps: FloatArray
    period_ms: float = field(init=False)
    _cum: FloatArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        seg_bytes = np.diff(self.times_ms) * self.rates_mbps * BYTES_PER_MS_PER_MBPS
        object.__setattr__(self, "_cum", np.concatenate([[0.0], np.cumsum(seg_bytes)]))
        object.__setattr__(self, "period_ms", float(self.times_ms[-1]))

    @property
    def bytes_per_period(self) -> float:
        return float(self._cum[-1])

    def delivered_bytes(self, t_ms: npt.ArrayLike) -> FloatArray:
        t = np.asarray(t_ms, dtype=np.float64)
        periods = np.floor(t / self.period_ms)
        rest = t - periods * self.period_ms
        return np.asarray(periods * self.bytes_per_period
                          + np.interp(rest, self.times_ms, self._cum), dtype=np.float64)

    def finish_time_ms(self, total_bytes: npt.ArrayLike) -> FloatArray:
        x = np.asarray(total_bytes, dtype=np.float64)
        # Whole periods first, leaving a remainder in (0, bytes_per_period].
        periods = np.ceil(x / self.bytes_per_period) - 1
        rest = x - periods * self.bytes_per_period
        j = np.clip(np.searchsorted(self._cum, rest, side="left"), 1, len(self._cum) - 1)
        rate = self.rates_mbps[j - 1] * BYTES_PER_MS_PER_MBPS
        within = self.times_ms[j - 1] + (rest - self._cum[j - 1]) / rate
        return np.asarray(periods * self.period_ms + within, dtype=np.float64)


def load_trace(path: str | Path) -> Trace:
    """Read a Mahimahi or two-column ``seconds Mbit/s`` trace, detecting the format.

    Raises:
        DnntuneError: naming the file and line of the first malformed line, or why the
            trace cannot be used (empty, all zero, times going backwards).

    Example:
        >>> # trace = load_trace("../shared/traces/Verizon-LTE-short.up")
        >>> # round(trace.mean_mbps, 2)  -> 5.95
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DnntuneError(f"{path}: cannot read trace ({exc})") from None
    rows = [(i, _SPLIT.split(s)) for i, line in enumerate(lines, 1)
            if (s := line.split("#", 1)[0].strip())]
    if not rows:
        raise DnntuneError(f"{path}: empty trace (expected one ms timestamp per line, "
                           "or 'seconds Mbit/s' pairs)")
    if len(rows[0][1]) == 1:
        return _parse_mahimahi(path, rows)
    return _parse_rates(path, rows)


def _parse_mahimahi(path: Path, rows: list[tuple[int, list[str]]]) -> MahimahiTrace:
    stamps = np.empty(len(rows))
    previous = 0
    for k, (lineno, fields) in enumerate(rows):
        if len(fields) != 1 or not fields[0].isdigit():
            raise DnntuneError(f"{path}:{lineno}: expected one non-negative integer "
                               f"(ms timestamp of a 1500-byte delivery), got {' '.join(fields)!r}")
        value = int(fields[0])
        if value < previous:
            raise DnntuneError(f"{path}:{lineno}: timestamp {value} is earlier than the "
                               f"previous line's {previous}; timestamps must not decrease")
        stamps[k] = previous = value
    period = float(stamps[-1])
    if period <= 0:
        raise DnntuneError(f"{path}: the trace must last more than 0 ms "
                           "(its last timestamp is the loop period)")
    offsets = np.sort(np.mod(stamps, period))
    return MahimahiTrace(path.name, str(path), offsets, period)


def _parse_rates(path: Path, rows: list[tuple[int, list[str]]]) -> RateTrace:
    times = np.empty(len(rows))
    rates = np.empty(len(rows))
    for k, (lineno, fields) in enumerate(rows):
        try:
            if len(fields) != 2:
                raise ValueError
            times[k], rates[k] = float(fields[0]), float(fields[1])
        except ValueError:
            raise DnntuneError(f"{path}:{lineno}: expected two numbers 'seconds Mbit/s', "
                               f"got {' '.join(fields)!r}") from None
        if not (np.isfinite(times[k]) and np.isfinite(rates[k])) or rates[k] < 0:
            raise DnntuneError(f"{path}:{lineno}: expected a finite time and a rate >= 0 "
                               f"Mbit/s, got {' '.join(fields)!r}")
        if k and times[k] <= times[k - 1]:
            raise DnntuneError(f"{path}:{lineno}: time {fields[0]} s is not after the "
                               "previous line's; times must increase")
    if not np.any(rates > 0):
        raise DnntuneError(f"{path}: every rate is 0 Mbit/s; nothing could ever be sent")
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    edges_ms = (np.append(times, times[-1] + step) - times[0]) * 1000.0
    return RateTrace(path.name, str(path), edges_ms, rates)
