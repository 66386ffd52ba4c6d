"""Piecewise-linear radio power curves: measured (Mbit/s, mW) points of one direction.

A links file may give ``power_up_curve`` / ``power_down_curve`` instead of a linear fit,
e.g. the per-rate means a power study measured. Between points the power is interpolated
linearly; outside the first and last point it is held at the end point (the curve's
range is its fit range, and the figure is labelled ``extrapolated`` there like a fit's).

Example:
    >>> curve = parse_curve([[1, 300], [50, 800], [200, 1000]], "links.yaml", "power_up_curve")
    >>> float(curve_power_mw(curve, 125.0)), float(curve_power_mw(curve, 1000.0))
    (900.0, 1000.0)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dnntune.errors import ConfigError

Curve = tuple[tuple[float, float], ...]
CURVE_KEYS = ("power_up_curve", "power_down_curve")
_MAX = 1e9


def parse_curve(value: Any, where: str, key: str) -> Curve:
    """``value`` as a curve: at least two ``[mbps, mW]`` pairs of finite numbers from 0
    to 1e9, throughputs strictly increasing.

    Raises:
        ConfigError: naming ``where`` and ``key`` and what was expected.
    """
    expected = f"key {key!r} must be a list of at least two [Mbit/s, mW] pairs"
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) < 2:
        raise ConfigError(where, f"{expected}, got {value!r}")
    points: list[tuple[float, float]] = []
    for point in value:
        ok = (isinstance(point, Sequence) and not isinstance(point, str) and len(point) == 2
              and all(isinstance(v, int | float) and not isinstance(v, bool)
                      and math.isfinite(v) and 0 <= v <= _MAX for v in point))
        if not ok:
            raise ConfigError(where, f"{expected} of numbers from 0 to 1e+09, got {point!r}")
        points.append((float(point[0]), float(point[1])))
    for (x0, _), (x1, _) in itertools.pairwise(points):
        if x1 <= x0:
            raise ConfigError(where, f"key {key!r} must have strictly increasing Mbit/s, "
                                     f"got {x1:g} after {x0:g}")
    return tuple(points)


def curve_power_mw(curve: Curve, rate_mbps: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Power at ``rate_mbps`` (any shape), interpolated, held at the end points."""
    xs = np.array([x for x, _ in curve])
    ys = np.array([y for _, y in curve])
    return np.interp(np.asarray(rate_mbps, dtype=np.float64), xs, ys)


def scaled_curve(curve: Curve, factor: float) -> Curve:
    """The same throughputs with every power times ``factor``."""
    return tuple((x, y * factor) for x, y in curve)
