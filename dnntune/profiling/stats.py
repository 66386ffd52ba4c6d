"""Pure statistics over raw timing samples (the parser side of the profiler)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dnntune.profiling.profile import Stats


def summarize(samples_ms: Sequence[float] | np.ndarray) -> Stats:
    """Mean, std, min, max and p50/p90/p95/p99 of timings in milliseconds.

    Example:
        >>> summarize([1.0, 2.0, 3.0, 4.0]).p50_ms
        2.5
    """
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p95, p99 = np.percentile(x, [50, 90, 95, 99])
    return Stats(n=int(x.size), mean_ms=float(x.mean()),
                 std_ms=float(x.std(ddof=1)) if x.size > 1 else 0.0,
                 min_ms=float(x.min()), max_ms=float(x.max()), p50_ms=float(p50),
                 p90_ms=float(p90), p95_ms=float(p95), p99_ms=float(p99))


def layer_durations_ms(stamps_s: np.ndarray) -> np.ndarray:
    """Per-run, per-layer durations from in-graph timestamps.

    Args:
        stamps_s: ``(runs, layers, 2)`` array of start and end times in seconds.

    Returns:
        ``(runs, layers)`` durations in milliseconds (end − start).
    """
    stamps_s = np.asarray(stamps_s, dtype=np.float64)
    return (stamps_s[..., 1] - stamps_s[..., 0]) * 1e3


DISTURBED_SLACK = 1.15


def undisturbed(totals_ms: Sequence[float] | np.ndarray, slack: float = DISTURBED_SLACK
                ) -> np.ndarray:
    """Which runs the host left alone: a boolean mask of runs no slower than ``slack`` x
    the median run (always at least the faster half).

    A run that a neighbour on the host slowed down says nothing about an emulated phone
    (:mod:`dnntune.profiling.dilation`), so dilated profiles and their calibration keep
    only these.

    Example:
        >>> undisturbed([10.0, 10.2, 9.9, 14.0, 10.1]).tolist()
        [True, True, True, False, True]
    """
    x = np.asarray(totals_ms, dtype=np.float64)
    keep = x <= np.median(x) * slack
    if keep.sum() * 2 < x.size:
        keep = x <= np.sort(x)[(x.size - 1) // 2]
    return keep


def undisturbed_mean(values_ms: Sequence[float] | np.ndarray) -> float:
    """The mean of the :func:`undisturbed` runs.

    Example:
        >>> undisturbed_mean([10.0, 10.2, 9.9, 14.0, 10.1])
        10.05
    """
    x = np.asarray(values_ms, dtype=np.float64)
    return float(x[undisturbed(x)].mean())
