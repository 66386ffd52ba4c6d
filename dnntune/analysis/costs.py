"""The cost model: latency and phone energy of a partition on a link, vectorised.

For a set ``M`` of layers on the device (a prefix cut, or any set closed under
predecessors) and a link:

* ``T = Tm + Tt + Tc``: ``Tm`` sums the device layer times in ``M``, ``Tc`` the cloud
  layer times outside ``M``, ``Tt = RTT + 8 bytes_up / up + 8 bytes_down / down`` when
  anything crosses (0 for mobile-only). ``bytes_down`` is the model output computed in
  the cloud, returned to the phone.
* Phone energy per inference, one definition for every cut (docs/energy.md)::

    E = em_mj + call_mj + up_mj + down_mj + wait_mj + tail_mj + idle_mj
        (et_mj = up_mj + down_mj + wait_mj + tail_mj, the radio's part)

  ``em_mj`` the device layers' energy; ``call_mj`` the head's framework call cost
  (``device_call_ms`` share) at the device's active-above-idle power; ``up_mj`` /
  ``down_mj`` the transfers at the link's throughput-dependent power (held at the fit's
  range end); ``wait_mj`` the radio connected but not transferring (``tail_mw``) while the
  phone waits for the RTT, the RPC and the cloud's compute; ``tail_mj`` promotion and
  tail by radio mode; ``idle_mj`` the rest of the phone (idle power) over the whole
  latency ``T``, for every cut when ``idle_wait`` is set, for none otherwise.

Radio modes (``CostOptions.radio``): ``warm`` (default: the radio is already connected
by other traffic; no promotion, its tail is that traffic's), ``cold`` (one inference
after idle: every cut that crosses pays the promotion, energy and ``promotion_ms`` of
latency, and the full tail), ``periodic`` (set by ``inference_rate_hz``): at ``rate``
inferences/s (gap ``1000 / rate`` ms), if the gap is shorter than the tail timer the radio
never demotes and draws ``tail_mw`` for the part of the gap not already counted
(transfers, wait); otherwise every inference pays the promotion and the full tail.
Units: mW x ms / 1000 = mJ.

Everything is linear in the bytes that cross, so the same coefficients drive both the
per-cut table here and the min-cut in :mod:`dnntune.analysis.dagcut` (:func:`linear_cost`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from dnntune.analysis.links import Link
from dnntune.analysis.traces import BYTES_PER_MS_PER_MBPS
from dnntune.errors import ConfigError, DnntuneError
from dnntune.model.cuts import crossing_tensors
from dnntune.model.graph import LayerGraph
from dnntune.profiling.profile import Profile, check_same_model

FloatArray = npt.NDArray[np.float64]
METRICS = ("latency", "energy")
RADIO_MODES = ("warm", "cold", "periodic")
ENERGY_TERMS = ("em_mj", "call_mj", "up_mj", "down_mj", "wait_mj", "tail_mj", "idle_mj")


@dataclass(frozen=True)
class CostOptions:
    """Optional parts of the energy model.

    Attributes:
        idle_wait: Count the rest of the phone (its idle power) over the whole inference,
            for every cut (``idle_mj``); off: for none.
        inference_rate_hz: Inferences per second, to amortise radio promotion and tail
            (the ``periodic`` radio mode); ``None``: the ``radio`` mode decides.
        radio: ``"warm"`` (default), ``"cold"`` or ``"periodic"`` (the mode an inference
            rate implies); see the module docstring.
        trace_starts: Start times sampled per trace period for trace-driven uplinks.
        device_call_ms, cloud_call_ms: Framework cost of one call of the head / tail
            outside its graph (dispatch, weight captures); ``None`` takes each profile's
            measured ``call_overhead_ms``.
        rpc_ms, rpc_ms_per_mb: Cost of one remote call and of serialising each MB sent
            or received, on top of the link (see :func:`dnntune.rpc.client.calibrate_rpc`).
    """

    idle_wait: bool = False
    inference_rate_hz: float | None = None
    trace_starts: int = 200
    device_call_ms: float | None = None
    cloud_call_ms: float | None = None
    rpc_ms: float = 0.0
    rpc_ms_per_mb: float = 0.0
    radio: str = "warm"

    def __post_init__(self) -> None:
        if self.radio not in RADIO_MODES:
            raise ConfigError("--radio", f"must be one of warm, cold, got {self.radio!r}")
        if self.inference_rate_hz is not None and self.radio == "cold":
            raise ConfigError("--radio", "cold is a single inference after idle; "
                                         "--inference-rate sets the periodic mode: give one")
        if self.inference_rate_hz is not None:
            object.__setattr__(self, "radio", "periodic")
        elif self.radio == "periodic":
            raise ConfigError("--radio", "the periodic mode needs --inference-rate")
        for name in ("device_call_ms", "cloud_call_ms", "rpc_ms", "rpc_ms_per_mb"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--{name.replace('_', '-')}",
                                  f"must be a number >= 0, got {value!r}")
        rate = self.inference_rate_hz
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ConfigError("--inference-rate", f"must be a positive number of "
                                                  f"inferences per second, got {rate!r}")
        if self.trace_starts < 1:
            raise ConfigError("trace_starts", f"must be >= 1, got {self.trace_starts}")


@dataclass(frozen=True, eq=False)
class LayerCosts:
    """Per-layer inputs of the cost model, in graph order."""

    names: tuple[str, ...]
    device_ms: FloatArray
    cloud_ms: FloatArray
    device_mj: FloatArray
    idle_power_mw: float
    energy_label: str
    call_power_mw: float = 0.0  # device power above idle while a call runs outside its graph
    estimated_layers: int = 0
    device_label: str = "measured"  # or emulated:<preset> / scaled:<preset>
    device_note: str = ""           # how it was emulated or scaled, one line

    def scaled(self, device_speedup: float = 1.0, cloud_speedup: float = 1.0) -> LayerCosts:
        """What-if: device/cloud compute ``speedup`` times faster (device energy scales
        with device time at unchanged power)."""
        for flag, value in (("device", device_speedup), ("cloud", cloud_speedup)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--{flag}-speedup", f"must be a positive factor, got {value!r}")
        return replace(self, device_ms=self.device_ms / device_speedup,
                       cloud_ms=self.cloud_ms / cloud_speedup,
                       device_mj=self.device_mj / device_speedup)


def layer_costs(device: Profile, cloud: Profile) -> LayerCosts:
    """Mean layer times from both profiles and device energies.

    A layer without a measured energy gets ``latency x (P_active - P_idle)`` from the
    device profile's :class:`~dnntune.profiling.profile.EnergyInfo` (counted in
    ``estimated_layers``).

    Raises:
        DnntuneError: if the profiles are of different models or list different layers.
    """
    check_same_model(device, cloud)
    device_ms = np.array([lp.latency.mean_ms for lp in device.layers], dtype=np.float64)
    cloud_ms = np.array([lp.latency.mean_ms for lp in cloud.layers], dtype=np.float64)
    info = device.energy
    delta_mw = max(info.active_power_mw - info.idle_power_mw, 0.0)
    energies = [lp.energy_mj for lp in device.layers]
    device_mj = np.array([e if e is not None else t * delta_mw / 1000.0
                          for e, t in zip(energies, device_ms, strict=True)], dtype=np.float64)
    for what, values in (("device latency mean_ms", device_ms),
                         ("cloud latency mean_ms", cloud_ms), ("device energy_mj", device_mj)):
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
        if bad.size:
            raise DnntuneError(f"layer {device.layer_names[bad[0]]!r}: {what} must be a "
                               f"finite number >= 0, got {float(values[bad[0]])!r}")
    return LayerCosts(names=device.layer_names, device_ms=device_ms, cloud_ms=cloud_ms,
                      device_mj=device_mj, idle_power_mw=info.idle_power_mw,
                      energy_label=info.label, call_power_mw=delta_mw,
                      estimated_layers=sum(e is None for e in energies),
                      device_label=device.meta.device_label,
                      device_note=device.device_note)


@dataclass(frozen=True, eq=False)
class CutInputs:
    """Link-independent arrays for the ``L + 1`` prefix cuts (index = layers on device)."""

    graph: LayerGraph
    costs: LayerCosts
    after: tuple[str | None, ...]
    bytes_up: FloatArray
    bytes_down: FloatArray
    tm_ms: FloatArray
    tc_ms: FloatArray
    em_mj: FloatArray
    call_share: FloatArray  # (L,) each layer's share of a whole-model call, see call_shares
    head_call_share: FloatArray  # (L + 1,) the head's share at each prefix cut
    # With wire encodings (dnntune.analysis.encodings) the arrays hold one row per
    # (cut, encoding): each row's prefix cut and its extra columns (encoding, codec ms...).
    cut_index: npt.NDArray[np.int64] | None = None
    row_fields: Mapping[str, tuple[Any, ...]] | None = None

    def scaled(self, device_speedup: float = 1.0, cloud_speedup: float = 1.0) -> CutInputs:
        """The same cuts with device/cloud compute scaled (see :meth:`LayerCosts.scaled`)."""
        if self.cut_index is not None:  # (cut, encoding) rows: codec times scale with
            return replace(self, costs=self.costs.scaled(device_speedup, cloud_speedup),
                           tm_ms=self.tm_ms / device_speedup, tc_ms=self.tc_ms / cloud_speedup,
                           em_mj=self.em_mj / device_speedup)  # the side that runs them
        return cut_inputs(self.graph, self.costs.scaled(device_speedup, cloud_speedup),
                          (self.bytes_up, self.bytes_down))


def cut_inputs(graph: LayerGraph, costs: LayerCosts,
               cut_bytes: tuple[FloatArray, FloatArray] | None = None) -> CutInputs:
    """Prefix sums of the layer costs and the bytes crossing every prefix cut."""
    if costs.names != graph.layer_names:
        raise ConfigError("layer costs", "layer names differ from the graph's")
    up, down = prefix_cut_bytes(graph) if cut_bytes is None else cut_bytes
    zero = np.zeros(1)
    tm = np.concatenate([zero, np.cumsum(costs.device_ms)])
    em = np.concatenate([zero, np.cumsum(costs.device_mj)])
    tc = np.concatenate([np.cumsum(costs.cloud_ms[::-1])[::-1], zero])
    after = (None, *graph.layer_names)
    share = call_shares(graph)
    head_share = np.minimum(np.concatenate([zero, np.cumsum(share)]), 1.0)
    return CutInputs(graph, costs, after, up, down, tm, tc, em, share, head_share)


def call_shares(graph: LayerGraph) -> FloatArray:
    """How the framework cost of calling the whole model splits over its layers.

    A compiled call's cost outside its graph (dispatch, and above all passing every
    captured weight) grows with the weights the program holds: validate measured a
    ResNet50 head of one padding layer at its layers' time (4.6 ms on the emulated
    phone, where the whole model's call costs 35 ms more than its graph), and MobileNetV2
    heads on this machine at 0.2 ms over their layers with 35 weights captured, 1.7 ms
    with all 262. So every layer holding weights carries an equal share; a model with
    no weights at all spreads it evenly over its non-input layers. The shares sum to 1.

    Example:
        >>> # a head with half the weighted layers pays half of ``call_overhead_ms``
    """
    weighted = np.array([layer.params > 0 for layer in graph.layers], dtype=np.float64)
    if not weighted.any():
        weighted = np.array([not layer.is_input for layer in graph.layers], dtype=np.float64)
    total = weighted.sum()
    return weighted / total if total else weighted


def prefix_cut_bytes(graph: LayerGraph) -> tuple[FloatArray, FloatArray]:
    """Bytes up and down at every prefix cut, in O(layers + tensors).

    Same semantics as :func:`dnntune.model.cuts.enumerate_cuts` (which also lists the
    tensors): a tensor made by layer ``i`` crosses cuts ``i+1 .. last reader``; a model
    input tensor is always produced on the phone, so it crosses cuts ``0 .. last reader``.
    """
    layers = graph.layers
    last_use: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for tname in layer.inputs:
            last_use[tname] = i
    up = np.zeros(len(layers) + 2)
    for i, layer in enumerate(layers):
        start = 0 if layer.is_input else i + 1
        for t in layer.outputs:
            end = last_use.get(t.name, -1)
            if end >= start:
                up[start] += t.bytes
                up[end + 1] -= t.bytes
    down = np.zeros(len(layers) + 2)
    position = {layer.name: i for i, layer in enumerate(layers)}
    for tname in dict.fromkeys(graph.model_outputs):
        producer = position[graph.tensor(tname).layer]
        if not layers[producer].is_input:
            down[0] += graph.tensor(tname).bytes
            down[producer + 1] -= graph.tensor(tname).bytes
    return np.cumsum(up)[:-1], np.cumsum(down)[:-1]


def partition_bytes(graph: LayerGraph, device_layers: Iterable[str]) -> tuple[float, float]:
    """Bytes up and down for any device set (closed under predecessors)."""
    on_device = set(device_layers)
    inputs = {layer.name for layer in graph.layers if layer.is_input}
    up = sum(t.bytes for t in crossing_tensors(graph, on_device))
    down = sum(graph.tensor(name).bytes for name in dict.fromkeys(graph.model_outputs)
               if graph.tensor(name).layer not in on_device | inputs)
    return float(up), float(down)


@dataclass(frozen=True, eq=False)
class CostTable:
    """Costs of one or more partitions on one link (arrays of equal shape)."""

    bytes_up: FloatArray
    bytes_down: FloatArray
    tm_ms: FloatArray
    tt_ms: FloatArray
    tc_ms: FloatArray
    latency_ms: FloatArray
    em_mj: FloatArray
    et_mj: FloatArray
    tail_mj: FloatArray
    idle_mj: FloatArray
    energy_mj: FloatArray
    call_mj: FloatArray
    up_mj: FloatArray
    down_mj: FloatArray
    wait_mj: FloatArray
    saturated: npt.NDArray[np.bool_] | None = None
    tt_p95_ms: FloatArray | None = None
    latency_p95_ms: FloatArray | None = None

    def row(self, i: int) -> dict[str, Any]:
        """Plain-Python values of partition ``i`` (no index/after: the caller knows them)."""
        keys = ["bytes_up", "tm_ms", "tt_ms", "tc_ms", "latency_ms", "em_mj", "et_mj",
                "energy_mj", "bytes_down", "call_mj", "up_mj", "down_mj", "wait_mj",
                "tail_mj", "idle_mj"]
        out: dict[str, Any] = {k: float(getattr(self, k)[i]) for k in keys}
        out["bytes_up"], out["bytes_down"] = int(out["bytes_up"]), int(out["bytes_down"])
        for k in ("tt_p95_ms", "latency_p95_ms"):
            value = getattr(self, k)
            if value is not None:
                out[k] = float(value[i])
        if self.saturated is not None:
            out["saturated"] = bool(self.saturated[i])
        return out


@dataclass(frozen=True)
class RadioState:
    """How the radio behaves per inference: derived from the link and inference rate."""

    promotion_delay_ms: float  # added to Tt whenever something crosses
    fixed_mj: float  # promotion + tail energy per inference that crosses
    connected_mw: float  # tail power already counted while transferring or waiting
    gap_ms: float  # time between inferences (inf without a rate)


def radio_state(link: Link, options: CostOptions) -> RadioState:
    """Promotion and tail of one inference that crosses, by ``options.radio``."""
    full = (link.promotion_mw * link.promotion_ms + link.tail_mw * link.tail_ms) / 1000.0
    if options.radio == "cold":
        return RadioState(link.promotion_ms, full, 0.0, math.inf)
    if options.inference_rate_hz is None:  # warm
        return RadioState(0.0, 0.0, 0.0, math.inf)
    gap_ms = 1000.0 / options.inference_rate_hz
    if gap_ms < link.tail_ms:
        return RadioState(0.0, link.tail_mw * gap_ms / 1000.0, link.tail_mw, gap_ms)
    return RadioState(link.promotion_ms, full, 0.0, gap_ms)


def cost_table(tm_ms: npt.ArrayLike, tc_ms: npt.ArrayLike, em_mj: npt.ArrayLike,
               bytes_up: npt.ArrayLike, bytes_down: npt.ArrayLike, link: Link,
               options: CostOptions, idle_power_mw: float,
               up_mbps: npt.ArrayLike | None = None, device_call_share: npt.ArrayLike = 1.0,
               cloud_call_share: npt.ArrayLike = 1.0, call_power_mw: float = 0.0
               ) -> CostTable:
    """The cost model over arrays of partitions (inputs broadcast together).

    ``device_call_share`` and ``cloud_call_share`` are the parts of a whole-model call's
    framework cost (``options.device_call_ms``, ``cloud_call_ms``) that the head and the
    tail pay (see :func:`call_shares`); 1 charges each side the whole call.
    ``call_power_mw`` is the device's power above idle while its call runs (``call_mj``).

    ``up_mbps`` overrides the uplink with constant rates (any array shape that
    broadcasts, e.g. ``(n, 1)`` against ``L + 1`` cuts for a bandwidth sweep). Without
    it, a trace link's upload time is the median over ``options.trace_starts`` start
    times, and the 95th percentile is reported too.
    """
    up_b = np.asarray(bytes_up, dtype=np.float64)
    down_b = np.asarray(bytes_down, dtype=np.float64)
    tm, tc, em = (np.asarray(a, dtype=np.float64) for a in (tm_ms, tc_ms, em_mj))
    t_up, t_up_p95 = _upload_ms(up_b, link, options, up_mbps)
    rate = link.up_mbps if up_mbps is None else np.asarray(up_mbps, dtype=np.float64)
    radio = radio_state(link, options)
    # Per-partition terms first, so a bandwidth sweep touches its big arrays few times.
    t_down = down_b / (link.down_mbps * BYTES_PER_MS_PER_MBPS)
    crosses = (up_b + down_b) > 0
    tt = np.where(crosses, link.rtt_ms + radio.promotion_delay_ms, 0.0) + t_down + t_up
    # Framework costs measured on the real path (validate showed them systematic): a
    # remote call and its serialisation, and one call of each side's compiled graph.
    rpc = np.where(crosses, options.rpc_ms + options.rpc_ms_per_mb * (up_b + down_b) / 1e6,
                   0.0)
    tt = tt + rpc
    call_ms = np.where(tm > 0, (options.device_call_ms or 0.0)
                       * np.asarray(device_call_share, dtype=np.float64), 0.0)
    tm = tm + call_ms
    tc = tc + np.where(tc > 0, (options.cloud_call_ms or 0.0)
                       * np.asarray(cloud_call_share, dtype=np.float64), 0.0)
    # Outside its fit's range the power is held at the range end (links.Link.power_mw_at).
    # In a bandwidth sweep only the upload terms are (rates x cuts): the rest is summed per
    # cut first, so the big arrays are touched as few times as before these terms existed.
    up = t_up * (link.power_mw_at("up", rate) / 1000.0)
    down = link.down_power_mw() * t_down / 1000.0
    # Connected, not transferring: the RTT, the RPC and the cloud's compute.
    wait_ms = np.where(crosses, link.rtt_ms + rpc + tc, 0.0)
    wait = link.tail_mw * wait_ms / 1000.0
    radio_rest = down + wait
    tail: FloatArray = np.broadcast_to(0.0, np.broadcast_shapes(np.shape(up), np.shape(wait)))
    saturated = None
    if options.inference_rate_hz is not None:
        busy = t_up + t_down
        tail = np.where(crosses, np.maximum(
            radio.fixed_mj - radio.connected_mw * (busy + wait_ms) / 1000.0, 0.0), 0.0)
        saturated = busy > radio.gap_ms
    elif radio.fixed_mj:  # cold
        tail = np.where(crosses, radio.fixed_mj, 0.0)
    if radio.fixed_mj:
        radio_rest = radio_rest + tail
    et = up + radio_rest
    latency = (tm + tc) + tt
    call = call_ms * call_power_mw / 1000.0
    energy = et + (em + call)
    idle: FloatArray = np.broadcast_to(0.0, energy.shape)
    if options.idle_wait:
        idle = idle_power_mw * latency / 1000.0
        energy = energy + idle
    p95 = None if t_up_p95 is None else tt - t_up + t_up_p95
    return CostTable(
        bytes_up=up_b, bytes_down=down_b, tm_ms=tm, tt_ms=tt, tc_ms=tc,
        latency_ms=latency, em_mj=em, et_mj=et, tail_mj=tail, idle_mj=idle,
        energy_mj=energy, call_mj=np.broadcast_to(call, et.shape),
        up_mj=np.broadcast_to(up, et.shape), down_mj=np.broadcast_to(down, et.shape),
        wait_mj=wait, saturated=saturated, tt_p95_ms=p95,
        latency_p95_ms=None if p95 is None else tm + p95 + tc)


def _upload_ms(up_b: FloatArray, link: Link, options: CostOptions,
               up_mbps: npt.ArrayLike | None) -> tuple[FloatArray, FloatArray | None]:
    if up_mbps is not None or link.trace is None:
        rate = link.up_mbps if up_mbps is None else np.asarray(up_mbps, dtype=np.float64)
        return up_b / (rate * BYTES_PER_MS_PER_MBPS), None
    p50, p95 = link.trace.transfer_time_percentiles(up_b, options.trace_starts, (50.0, 95.0))
    return p50, p95


def prefix_table(inputs: CutInputs, link: Link, options: CostOptions,
                 up_mbps: npt.ArrayLike | None = None) -> CostTable:
    """Costs of every prefix cut on ``link`` (arrays of length ``L + 1``)."""
    return cost_table(inputs.tm_ms, inputs.tc_ms, inputs.em_mj, inputs.bytes_up,
                      inputs.bytes_down, link, options, inputs.costs.idle_power_mw, up_mbps,
                      inputs.head_call_share, 1.0 - inputs.head_call_share,
                      inputs.costs.call_power_mw)


def partition_table(inputs: CutInputs, device_layers: Iterable[str], link: Link,
                    options: CostOptions) -> CostTable:
    """Costs of one device set (length-1 arrays), by the same model as the prefix cuts."""
    on_device = set(device_layers)
    mask = np.array([name in on_device for name in inputs.graph.layer_names], dtype=bool)
    costs = inputs.costs
    up, down = partition_bytes(inputs.graph, on_device)
    head_share = float(inputs.call_share[mask].sum())
    return cost_table([costs.device_ms[mask].sum()], [costs.cloud_ms[~mask].sum()],
                      [costs.device_mj[mask].sum()], [up], [down], link, options,
                      costs.idle_power_mw, device_call_share=head_share,
                      cloud_call_share=1.0 - head_share, call_power_mw=costs.call_power_mw)


@dataclass(frozen=True)
class LinearCost:
    """One metric as ``sum device[M] + sum cloud[not M] + per_byte_up * bytes_up
    + per_byte_down * bytes_down + fixed * [anything crosses]``."""

    device: FloatArray
    cloud: FloatArray
    per_byte_up: float
    per_byte_down: float
    fixed: float


def linear_cost(inputs: CutInputs, link: Link, options: CostOptions, metric: str) -> LinearCost:
    """Coefficients of ``metric`` ("latency" or "energy") on ``link``.

    Exact for the cost table, framework costs included (each side's share of a call,
    the RPC and its serialisation), except where it clamps: a trace uplink is taken at
    its mean rate, and a link too slow for the inference rate (``saturated``) is not.
    """
    costs = inputs.costs
    rpc_per_byte = options.rpc_ms_per_mb / 1e6
    ms_up = 1.0 / (link.up_mbps * BYTES_PER_MS_PER_MBPS)  # ms per byte
    ms_down = 1.0 / (link.down_mbps * BYTES_PER_MS_PER_MBPS)
    radio = radio_state(link, options)
    fixed_ms = link.rtt_ms + radio.promotion_delay_ms + options.rpc_ms
    cloud_ms = costs.cloud_ms + (options.cloud_call_ms or 0.0) * inputs.call_share
    if metric == "latency":
        return LinearCost(costs.device_ms + (options.device_call_ms or 0.0) * inputs.call_share,
                          cloud_ms, ms_up + rpc_per_byte, ms_down + rpc_per_byte, fixed_ms)
    if metric != "energy":
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    idle = costs.idle_power_mw if options.idle_wait else 0.0
    wait = link.tail_mw - radio.connected_mw  # connected, not transferring
    p_up = link.up_power_mw() - radio.connected_mw
    p_down = link.down_power_mw() - radio.connected_mw
    call_ms = (options.device_call_ms or 0.0) * inputs.call_share
    device = (costs.device_mj + (call_ms * (costs.call_power_mw + idle)
                                 + costs.device_ms * idle) / 1000.0)
    return LinearCost(device, cloud_ms * (idle + wait) / 1000.0,
                      ((p_up + idle) * ms_up + (idle + wait) * rpc_per_byte) / 1000.0,
                      ((p_down + idle) * ms_down + (idle + wait) * rpc_per_byte) / 1000.0,
                      radio.fixed_mj + ((idle + wait) * (link.rtt_ms + options.rpc_ms)
                                        + idle * radio.promotion_delay_ms) / 1000.0)


def describe_energy(options: CostOptions) -> str:
    """One line saying what the phone energy ``E`` counts under ``options``, for the
    report header (the same terms for every cut).

    Example:
        >>> describe_energy(CostOptions()).split(";")[0]
        'radio warm (already connected: no promotion, no tail)'
    """
    if options.radio == "periodic":
        mode = (f"radio periodic at {options.inference_rate_hz:g} inferences/s "
                "(promotion and tail amortised)")
    else:
        mode = {"warm": "radio warm (already connected: no promotion, no tail)",
                "cold": "radio cold (one inference after idle: full promotion and "
                        "tail)"}[options.radio]
    idle = ("the rest of the phone at idle power over T, for every cut" if options.idle_wait
            else "not the rest of the phone's idle power, for any cut (--idle-wait counts it)")
    return (f"{mode}; E = compute + call + upload + download + radio connected while "
            f"waiting (RTT, RPC, cloud) + promotion/tail; {idle}")
