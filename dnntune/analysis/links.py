"""Network links between the phone and the cloud: bandwidth, RTT and radio power.

A :class:`Link` is plain frozen data. The presets (``3g``, ``4g``, ``wifi``, ``wifi-2022``,
``lte-2021``, ``5g-low``, ``5g-mmwave``) are built in (:func:`preset_links`) and identical
to ``configs/links.yaml``, which carries the source of every number and of every fit's
throughput range. More links come from YAML files with the same schema
(:func:`load_links_file`) or from recorded uplink traces (:func:`trace_link`);
:func:`resolve_links` turns the items of ``--links`` into links.

Radio power follows Huang et al. (MobiSys 2012): while sending at ``u`` Mbit/s the radio
draws ``alpha_up * u + beta_up`` mW, while receiving ``alpha_down * d + beta_down`` mW
(``beta_up_mw`` / ``beta_down_mw``; a link without them uses one ``beta_mw`` for both, as
Huang et al.'s fits do, while Narayanan et al.'s 2021 fits have one per direction). While
connected but not transferring (waiting for the cloud, and in the *tail* of ``tail_ms``
after the last packet) it draws ``tail_mw``; waking it from idle costs a *promotion* of
``promotion_ms`` at ``promotion_mw``. :func:`scaled_radio` scales every radio power, for
the robustness check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from dnntune.analysis.curves import CURVE_KEYS, Curve, curve_power_mw, parse_curve, scaled_curve
from dnntune.analysis.traces import Trace, load_trace
from dnntune.errors import ConfigError, DnntuneError

POSITIVE = ("up_mbps", "down_mbps")
FIT_RANGE_KEYS = ("fit_up_min_mbps", "fit_up_max_mbps", "fit_down_min_mbps",
                  "fit_down_max_mbps")
DIRECTION_BETAS = ("beta_up_mw", "beta_down_mw")
NON_NEGATIVE = ("rtt_ms", "alpha_up_mw_per_mbps", "alpha_down_mw_per_mbps", "beta_mw",
                *DIRECTION_BETAS, "promotion_ms", "promotion_mw", "tail_ms", "tail_mw",
                *FIT_RANGE_KEYS)
REQUIRED = ("up_mbps", "down_mbps", "rtt_ms", "alpha_up_mw_per_mbps",
            "alpha_down_mw_per_mbps")  # and beta_mw, or both DIRECTION_BETAS
RADIO_POWER_KEYS = ("alpha_up_mw_per_mbps", "alpha_down_mw_per_mbps", "beta_mw",
                    *DIRECTION_BETAS, "promotion_mw", "tail_mw")
DEFAULT_LINKS = ("3g", "4g", "wifi")  # what --links means when not given
OPTIONAL_KEYS = ("base", "trace", "description", "power_source", "power_borrowed",
                 *CURVE_KEYS)
DEFAULT_TRACE_BASE = "4g"
MIN_RATE_MBPS = 1e-3  # 1 kbit/s
MAX_VALUE = 1e9
UNBOUNDED_MBPS = MAX_VALUE  # default fit range end: the power model's range is not stated


@dataclass(frozen=True)
class Link:
    """One phone-to-cloud link.

    Attributes:
        name: Name shown in reports, unique among the links analysed together.
        up_mbps: Mean uplink throughput, Mbit/s (for a trace link: the trace's mean).
        down_mbps: Downlink throughput, Mbit/s.
        rtt_ms: Round-trip time, paid once per inference when anything crosses.
        alpha_up_mw_per_mbps, alpha_down_mw_per_mbps, beta_mw: Huang et al. power model.
        beta_up_mw, beta_down_mw: Per-direction intercepts, mW; ``None`` takes ``beta_mw``.
        power_up_curve, power_down_curve: Piecewise-linear ``(Mbit/s, mW)`` points used
            instead of the direction's fit; their first and last points set its fit range.
        fit_up_min_mbps, fit_up_max_mbps, fit_down_min_mbps, fit_down_max_mbps: The
            throughputs the power fit was measured over; outside them the power is held at
            the range's end (see :meth:`up_extrapolation`). Defaults: not stated, unbounded.
        power_source: Citation of the power fit, shown in extrapolation labels.
        power_borrowed: Non-empty when the power fit was measured on another network than
            this link's (which, and why): then every power figure of the link is labelled
            ``borrowed (...)`` in both directions, whatever the rate.
        promotion_ms, promotion_mw: Idle-to-connected promotion.
        tail_ms, tail_mw: High-power tail after the last packet.
        source: Where the values come from (``"preset"``, a file, a trace).
        trace: Recorded uplink capacity, or ``None`` for a constant uplink.

    Example:
        >>> link = preset_links()["4g"]
        >>> round(link.up_power_mw(), 1)  # 438.39 * 5.85 + 1288.04
        3852.6
    """

    name: str
    up_mbps: float
    down_mbps: float
    rtt_ms: float
    alpha_up_mw_per_mbps: float
    alpha_down_mw_per_mbps: float
    beta_mw: float = 0.0
    promotion_ms: float = 0.0
    promotion_mw: float = 0.0
    tail_ms: float = 0.0
    tail_mw: float = 0.0
    beta_up_mw: float | None = None
    beta_down_mw: float | None = None
    power_up_curve: Curve | None = None
    power_down_curve: Curve | None = None
    fit_up_min_mbps: float = 0.0
    fit_up_max_mbps: float = UNBOUNDED_MBPS
    fit_down_min_mbps: float = 0.0
    fit_down_max_mbps: float = UNBOUNDED_MBPS
    power_source: str = ""
    power_borrowed: str = ""
    source: str = "preset"
    trace: Trace | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f"link {self.name!r}"
        for direction in ("up", "down"):
            key = f"power_{direction}_curve"
            if getattr(self, key) is not None:  # the curve's ends are its range
                curve = parse_curve(getattr(self, key), where, key)
                object.__setattr__(self, key, curve)
                object.__setattr__(self, f"fit_{direction}_min_mbps", curve[0][0])
                object.__setattr__(self, f"fit_{direction}_max_mbps", curve[-1][0])
        check_link_values(asdict_numbers(self), where)

    @property
    def up_beta_mw(self) -> float:
        """Uplink intercept, mW: ``beta_up_mw`` if given, else ``beta_mw``."""
        return self.beta_mw if self.beta_up_mw is None else self.beta_up_mw

    @property
    def down_beta_mw(self) -> float:
        """Downlink intercept, mW: ``beta_down_mw`` if given, else ``beta_mw``."""
        return self.beta_mw if self.beta_down_mw is None else self.beta_down_mw

    def up_power_mw(self, up_mbps: float | None = None) -> float:
        """Radio power while sending at ``up_mbps`` (default: the link's uplink), mW.

        The rate is held inside the fit range, so power is bounded at any throughput.
        """
        return float(self.power_mw_at("up", self.up_mbps if up_mbps is None else up_mbps))

    def down_power_mw(self, down_mbps: float | None = None) -> float:
        """Radio power while receiving at ``down_mbps`` (default: the link's), mW; held
        inside the fit range like :meth:`up_power_mw`."""
        rate = self.down_mbps if down_mbps is None else down_mbps
        return float(self.power_mw_at("down", rate))

    def power_mw_at(self, direction: str, rate_mbps: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Radio power of ``direction`` (``"up"``/``"down"``) at any array of rates, mW:
        the curve if the link has one, else the linear fit, held inside the fit range."""
        curve: Curve | None = getattr(self, f"power_{direction}_curve")
        if curve is not None:
            return curve_power_mw(curve, rate_mbps)
        held = np.clip(np.asarray(rate_mbps, dtype=np.float64),
                       getattr(self, f"fit_{direction}_min_mbps"),
                       getattr(self, f"fit_{direction}_max_mbps"))
        alpha = getattr(self, f"alpha_{direction}_mw_per_mbps")
        return np.asarray(alpha * held + getattr(self, f"{direction}_beta_mw"))

    def up_extrapolation(self, up_mbps: float | None = None) -> str:
        """``""`` if the uplink rate is inside the fit range, else the label to print."""
        rate = self.up_mbps if up_mbps is None else up_mbps
        return _extrapolation(rate, self.fit_up_min_mbps, self.fit_up_max_mbps,
                              self.power_source)

    def down_extrapolation(self, down_mbps: float | None = None) -> str:
        """``""`` if the downlink rate is inside the fit range, else the label to print."""
        rate = self.down_mbps if down_mbps is None else down_mbps
        return _extrapolation(rate, self.fit_down_min_mbps, self.fit_down_max_mbps,
                              self.power_source)

    def up_power_label(self, up_mbps: float | None = None) -> str:
        """Every caveat on the uplink's power figure: borrowed fit, extrapolation; ``""``
        if there is none."""
        return _joined(self._borrowed(), self.up_extrapolation(up_mbps))

    def down_power_label(self, down_mbps: float | None = None) -> str:
        """Every caveat on the downlink's power figure (see :meth:`up_power_label`)."""
        return _joined(self._borrowed(), self.down_extrapolation(down_mbps))

    def _borrowed(self) -> str:
        return f"borrowed ({self.power_borrowed})" if self.power_borrowed else ""

    def with_uplink(self, up_mbps: float) -> Link:
        """The same link with a constant uplink of ``up_mbps`` (any trace dropped)."""
        return replace(self, up_mbps=up_mbps, trace=None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict_numbers(self)
        d["name"] = self.name
        d["source"] = self.source
        d["power_source"] = self.power_source
        d["power_borrowed"] = self.power_borrowed
        d["beta_up_mw"], d["beta_down_mw"] = self.up_beta_mw, self.down_beta_mw
        for key in CURVE_KEYS:
            curve = getattr(self, key)
            d[key] = None if curve is None else [list(point) for point in curve]
        d["up_power_label"] = self.up_power_label()
        d["down_power_label"] = self.down_power_label()
        if self.trace is not None:
            d["trace"] = {"file": self.trace.path, "mean_mbps": self.trace.mean_mbps,
                          "period_ms": self.trace.period_ms}
        return d


def _joined(*labels: str) -> str:
    return "; ".join(label for label in labels if label)


def _extrapolation(rate_mbps: float, low: float, high: float, source: str) -> str:
    if low <= rate_mbps <= high:
        return ""
    where = f", {source}" if source else ""
    return f"extrapolated (fit holds for {low:g}-{high:g} Mbit/s{where})"


class RangeError(DnntuneError):
    """A throughput lies outside its power fit's range and ``--strict-ranges`` is set."""


def check_in_range(link: Link) -> None:
    """Raise :class:`RangeError` (one line naming the link) if either direction's rate
    lies outside its power fit's range: the ``--strict-ranges`` behaviour."""
    for direction, label in (("up", link.up_extrapolation()),
                             ("down", link.down_extrapolation())):
        if label:
            raise RangeError(f"link {link.name!r}: {direction}link power is {label}; "
                             f"drop --strict-ranges to hold it at the range end")


def asdict_numbers(link: Link) -> dict[str, Any]:
    """The numeric fields of ``link`` as a dict (no name, source or trace; a direction's
    intercept only if it has its own)."""
    return {k: v for k, v in asdict(link).items()
            if k not in ("name", "source", "trace", "power_source", "power_borrowed")
            and v is not None and k not in CURVE_KEYS}


def scaled_radio(link: Link, factor: float) -> Link:
    """``link`` with every radio power (transfer fit, connected/tail, promotion) times
    ``factor``: the "radio power halved / doubled" what-if of the robustness check."""
    values: dict[str, Any] = {k: getattr(link, k) * factor for k in RADIO_POWER_KEYS
                              if getattr(link, k) is not None}
    values.update({k: scaled_curve(getattr(link, k), factor) for k in CURVE_KEYS
                   if getattr(link, k) is not None})
    return replace(link, name=f"{link.name} (radio x{factor:g})", **values)


def check_link_values(values: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` and the key for any bad value."""
    for key in (*POSITIVE, *NON_NEGATIVE):
        if key not in values:
            continue
        value = values[key]
        positive = key in POSITIVE
        # Rates under 1 kbit/s or values past 1e9 only make sums overflow to inf/NaN.
        low = MIN_RATE_MBPS if positive else 0.0
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value) and low <= value <= MAX_VALUE)
        if not ok:
            expected = (f"a rate from {MIN_RATE_MBPS:g} to {MAX_VALUE:g} Mbit/s" if positive
                        else f"a number from 0 to {MAX_VALUE:g}")
            raise ConfigError(where, f"key {key!r} must be {expected}, got {value!r}")
    for low_key, high_key in (("fit_up_min_mbps", "fit_up_max_mbps"),
                              ("fit_down_min_mbps", "fit_down_max_mbps")):
        if low_key in values and high_key in values and values[low_key] >= values[high_key]:
            raise ConfigError(where, f"key {high_key!r} must be above {low_key!r} "
                                     f"({values[low_key]!r}), got {values[high_key]!r}")


# Huang et al. (MobiSys 2012) do not state their fits' ranges in any source readable here:
# assumed up to the LTE medians the same study measured (13 Mbit/s down, 6 up), labelled
# "range assumed" in the source; configs/links.yaml says why.
_H12_RANGE = {"fit_up_min_mbps": 0.0, "fit_up_max_mbps": 6.0, "fit_down_min_mbps": 0.0,
              "fit_down_max_mbps": 13.0}
_PRESETS: dict[str, dict[str, Any]] = {
    # Identical to configs/links.yaml, which gives the source of every value.
    "3g": {"up_mbps": 1.1, "down_mbps": 2.0275, "rtt_ms": 150.0,
           "alpha_up_mw_per_mbps": 868.98, "alpha_down_mw_per_mbps": 122.12,
           "beta_mw": 817.88, "promotion_ms": 582.1, "promotion_mw": 659.4,
           "tail_ms": 8912.4, "tail_mw": 785.2, **_H12_RANGE},
    "4g": {"up_mbps": 5.85, "down_mbps": 13.76, "rtt_ms": 64.0,
           "alpha_up_mw_per_mbps": 438.39, "alpha_down_mw_per_mbps": 51.97,
           "beta_mw": 1288.04, "promotion_ms": 260.1, "promotion_mw": 1210.7,
           "tail_ms": 11576.0, "tail_mw": 1060.0, **_H12_RANGE},
    "wifi": {"up_mbps": 18.88, "down_mbps": 54.97, "rtt_ms": 30.0,
             "alpha_up_mw_per_mbps": 283.17, "alpha_down_mw_per_mbps": 137.01,
             "beta_mw": 132.86, "promotion_ms": 79.1, "promotion_mw": 124.4,
             "tail_ms": 238.1, "tail_mw": 119.3, **_H12_RANGE},
    # Today's home Wi-Fi speeds (Ookla, U.S. fixed median, June 2022); no Wi-Fi 5/6 phone
    # power model was found, so the 2012 Wi-Fi fit, held at its range end and labelled.
    "wifi-2022": {"up_mbps": 21.6, "down_mbps": 153.8, "rtt_ms": 14.0,
                  "alpha_up_mw_per_mbps": 283.17, "alpha_down_mw_per_mbps": 137.01,
                  "beta_mw": 132.86, "promotion_ms": 79.1, "promotion_mw": 124.4,
                  "tail_ms": 238.1, "tail_mw": 119.3, **_H12_RANGE},
    # Narayanan et al. (SIGCOMM 2021): whole-phone fits minus the 2357 mW idle baseline
    # (the mean of the artifact's per-run baselines, configs/links.yaml [N21-IDLE]).
    "lte-2021": {"up_mbps": 34.4, "down_mbps": 167.3, "rtt_ms": 74.5,
                 "alpha_up_mw_per_mbps": 80.21, "alpha_down_mw_per_mbps": 14.55,
                 "beta_up_mw": 442.0, "beta_down_mw": 397.0, "promotion_ms": 260.1,
                 "promotion_mw": 1210.7, "tail_ms": 11576.0, "tail_mw": 397.0,
                 "fit_up_min_mbps": 1.02, "fit_up_max_mbps": 24.85,
                 "fit_down_min_mbps": 1.05, "fit_down_max_mbps": 50.08},
    "5g-low": {"up_mbps": 75.2, "down_mbps": 174.4, "rtt_ms": 62.0,
               "alpha_up_mw_per_mbps": 29.15, "alpha_down_mw_per_mbps": 13.52,
               "beta_up_mw": 847.0, "beta_down_mw": 568.0, "promotion_ms": 260.1,
               "promotion_mw": 1210.7, "tail_ms": 11576.0, "tail_mw": 568.0,
               "fit_up_min_mbps": 1.02, "fit_up_max_mbps": 39.91,
               "fit_down_min_mbps": 1.04, "fit_down_max_mbps": 100.45},
    "5g-mmwave": {"up_mbps": 168.9, "down_mbps": 2759.5, "rtt_ms": 63.0,
                  "alpha_up_mw_per_mbps": 9.42, "alpha_down_mw_per_mbps": 1.81,
                  "beta_up_mw": 3267.0, "beta_down_mw": 2779.0, "promotion_ms": 260.1,
                  "promotion_mw": 1210.7, "tail_ms": 11576.0, "tail_mw": 2779.0,
                  "fit_up_min_mbps": 1.02, "fit_up_max_mbps": 190.09,
                  "fit_down_min_mbps": 1.03, "fit_down_max_mbps": 2195.8},
}
# 5G as U.S. users saw it in 2024, with the NSA low-band power fit borrowed (_BORROWED)
_PRESETS["5g-2024"] = {**_PRESETS["5g-low"], "up_mbps": 14.56, "down_mbps": 265.8,
                       "rtt_ms": 47.0}
_H12 = "Huang et al., MobiSys 2012; range assumed, see configs/links.yaml"
_H12_TODAY = ("Huang et al., MobiSys 2012 Wi-Fi fit; no Wi-Fi 5/6 phone power model found; "
              "range assumed, see configs/links.yaml")
_N21 = "Narayanan et al., SIGCOMM 2021 (Verizon, MN)"
_POWER_SOURCES = {"3g": _H12, "4g": _H12, "wifi": _H12, "wifi-2022": _H12_TODAY,
                  "lte-2021": _N21, "5g-low": _N21, "5g-mmwave": _N21, "5g-2024": _N21}
_BORROWED = {"5g-2024": "the NSA low-band fit; no phone power fit of today's multi-band "
                        "5G was found, see configs/links.yaml"}


def preset_links() -> dict[str, Link]:
    """The built-in presets (a fresh dict on every call): ``3g``, ``4g``, ``wifi`` (the
    2012 references), ``wifi-2022`` (today's home Wi-Fi speeds, the 2012 Wi-Fi fit held),
    ``lte-2021``, ``5g-low``, ``5g-mmwave`` (2021 fits), ``5g-2024`` (U.S. nationwide
    5G medians of 2024 with a borrowed fit, labelled)."""
    return {name: Link(name=name, power_source=_POWER_SOURCES[name],
                       power_borrowed=_BORROWED.get(name, ""), **values)
            for name, values in _PRESETS.items()}


def load_links_file(path: str | Path, presets: Mapping[str, Link] | None = None
                    ) -> dict[str, Link]:
    """Read links from YAML: ``links: {name: {up_mbps: ..., ...}}``.

    A link may name a ``base`` preset whose values fill the keys it leaves out, and a
    ``trace`` file (relative to the YAML file) that supplies its uplink.

    Raises:
        ConfigError: naming the file, the key and the expected value.

    Example:
        >>> # links = load_links_file("configs/links.yaml")
    """
    path = Path(path)
    presets = preset_links() if presets is None else dict(presets)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DnntuneError(f"{path}: cannot read links file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(str(path), f"not valid YAML{line}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("links"), Mapping):
        raise ConfigError(str(path), "expected a mapping with key 'links' holding "
                                     "{name: {up_mbps: ..., ...}}")
    return {str(name): _link_from_yaml(str(name), spec, path, presets)
            for name, spec in data["links"].items()}


def links_to_yaml(links: Iterable[Link]) -> str:
    """A links file holding ``links``, which :func:`load_links_file` reads back to equal
    links (every number, curve and ``power_source``): e.g. the presets, to edit.

    Raises:
        DnntuneError: for a trace link (its uplink is a file, not a number).

    Example:
        >>> text = links_to_yaml([preset_links()["4g"]])
        >>> text.splitlines()[:3]
        ['schema_version: 1', 'links:', '  4g:']
    """
    entries: dict[str, dict[str, Any]] = {}
    for link in links:
        if link.trace is not None:
            raise DnntuneError(f"link {link.name!r}: a trace link cannot be written as "
                               "numbers (its uplink is the trace file)")
        spec: dict[str, Any] = asdict_numbers(link)
        for key in CURVE_KEYS:
            curve = getattr(link, key)
            if curve is not None:  # a curve's range is its first and last point
                direction = key.split("_")[1]
                del spec[f"fit_{direction}_min_mbps"], spec[f"fit_{direction}_max_mbps"]
                spec[key] = [list(point) for point in curve]
        if link.power_source:
            spec["power_source"] = link.power_source
        if link.power_borrowed:
            spec["power_borrowed"] = link.power_borrowed
        entries[link.name] = spec
    return yaml.safe_dump({"schema_version": 1, "links": entries}, sort_keys=False)


def _link_from_yaml(name: str, spec: Any, path: Path, presets: Mapping[str, Link]) -> Link:
    where = f"{path}: links.{name}"
    if not isinstance(spec, Mapping):
        raise ConfigError(where, "expected a mapping of link keys")
    allowed = (*REQUIRED, *NON_NEGATIVE, *OPTIONAL_KEYS)
    unknown = sorted(set(map(str, spec)) - set(allowed))
    if unknown:
        raise ConfigError(where, f"unknown key {unknown[0]!r}; expected one of "
                                 f"{', '.join(dict.fromkeys(allowed))}")
    values: dict[str, Any] = {}
    if "base" in spec:
        if spec["base"] not in presets:
            raise ConfigError(where, f"key 'base' must be one of {', '.join(presets)}, "
                                     f"got {spec['base']!r}")
        values.update(asdict_numbers(presets[spec["base"]]))
    values.update({k: v for k, v in spec.items() if k not in OPTIONAL_KEYS})
    curves = _curves(spec, presets[spec["base"]] if "base" in spec else None, where)
    base_source = presets[spec["base"]].power_source if "base" in spec else ""
    power_source = str(spec.get("power_source", base_source))
    base_borrowed = presets[spec["base"]].power_borrowed if "base" in spec else ""
    power_borrowed = str(spec.get("power_borrowed", base_borrowed))
    trace = None
    if "trace" in spec:
        if "up_mbps" in spec:
            raise ConfigError(where, "give 'trace' or 'up_mbps', not both: the uplink "
                                     "comes from the trace")
        trace = load_trace(path.parent / str(spec["trace"]))
        values["up_mbps"] = trace.mean_mbps
    missing = [k for k in ("up_mbps", "down_mbps", "rtt_ms") if k not in values]
    for direction in ("up", "down"):  # a direction needs a curve, or a slope and intercept
        if curves.get(f"power_{direction}_curve") is None:
            missing += [k for k in (f"alpha_{direction}_mw_per_mbps",) if k not in values]
            if "beta_mw" not in values and f"beta_{direction}_mw" not in values:
                missing.append("beta_mw")
    if missing:
        raise ConfigError(where, f"missing key {missing[0]!r} (give it, or a 'base' preset)")
    check_link_values(values, where)
    numbers: dict[str, Any] = {k: float(v) for k, v in values.items()}
    numbers.setdefault("alpha_up_mw_per_mbps", 0.0)  # unused beside a curve
    numbers.setdefault("alpha_down_mw_per_mbps", 0.0)
    return Link(name=name, source=str(spec.get("description", path)), trace=trace,
                power_source=power_source, power_borrowed=power_borrowed,
                power_up_curve=curves["power_up_curve"],
                power_down_curve=curves["power_down_curve"], **numbers)


def _curves(spec: Mapping[str, Any], base: Link | None, where: str) -> dict[str, Curve | None]:
    """The curves of a links-file entry (its own, else its base's), checked."""
    out: dict[str, Curve | None] = {}
    for direction in ("up", "down"):
        key = f"power_{direction}_curve"
        if key in spec:
            ranged = [k for k in (f"fit_{direction}_min_mbps", f"fit_{direction}_max_mbps")
                      if k in spec]
            if ranged:
                raise ConfigError(where, f"key {ranged[0]!r}: a curve's range is its first "
                                         f"and last point; give {key!r} or a fit range")
            out[key] = parse_curve(spec[key], where, key)
        else:
            out[key] = getattr(base, key) if base is not None else None
    return out


def trace_link(trace: Trace, base: Link, name: str | None = None) -> Link:
    """A link whose uplink is ``trace``; downlink, RTT and radio power come from ``base``."""
    return replace(base, name=name or trace.name, up_mbps=trace.mean_mbps, trace=trace,
                   source=f"uplink trace {trace.path}; downlink, RTT and radio power "
                          f"from preset {base.name}")


def resolve_links(items: Iterable[str] | None, presets: Mapping[str, Link] | None = None
                  ) -> list[Link]:
    """Turn ``--links`` items into links, in order.

    Each item (comma-separated items are split) is a preset name, a YAML links file
    (``.yaml``/``.yml``: all its links), or a trace file, optionally suffixed
    ``@<preset>`` to take downlink, RTT and radio power from that preset (default 4g).
    ``None`` or nothing means :data:`DEFAULT_LINKS` (the 2012 presets; the 2021 ones
    are named explicitly, e.g. ``--links lte-2021,5g-low,5g-mmwave``).

    Raises:
        DnntuneError: for an unknown name (listing the known ones), an unreadable or
            malformed file, or a name given twice.

    Example:
        >>> [link.name for link in resolve_links(["wifi,4g"])]
        ['wifi', '4g']
    """
    presets = preset_links() if presets is None else dict(presets)
    names = [s.strip() for item in (items or ()) for s in item.split(",") if s.strip()]
    if not names:
        return [presets[n] for n in DEFAULT_LINKS if n in presets] or list(presets.values())
    links: list[Link] = []
    for item in names:
        links.extend(_resolve_one(item, presets))
    seen: set[str] = set()
    for link in links:
        if link.name in seen:
            raise DnntuneError(f"link {link.name!r} is given twice in --links")
        seen.add(link.name)
    return links


def _resolve_one(item: str, presets: Mapping[str, Link]) -> list[Link]:
    if item in presets:
        return [presets[item]]
    file, base = item, DEFAULT_TRACE_BASE
    head, sep, tail = item.rpartition("@")
    if sep and tail in presets:
        file, base = head, tail
    path = Path(file)
    if not path.is_file():
        raise DnntuneError(f"unknown link {item!r}: expected a preset "
                           f"({', '.join(presets)}), a YAML links file or a trace file")
    if path.suffix.lower() in (".yaml", ".yml"):
        return list(load_links_file(path, presets).values())
    return [trace_link(load_trace(path), presets[base])]
