"""Cut inputs for a device profile measured at chosen cuts only (heads, not layers).

A LiteRT device profile holds ``Tm(p)``, the device time of the head ending at cut
``p``, for a set of measured cuts (see :class:`dnntune.profiling.profile.MeasuredCuts`). The
analyzer evaluates exactly those cuts: :func:`measured_cut_inputs` merges the layers
between consecutive measured cuts into one *segment* node, so the prefix cuts of the
merged graph are the measured cuts, with the same crossing tensors and bytes. ``Tm`` is
the measured head time itself (not a sum of layer times); ``Tc`` still sums the cloud
profile's layer times, which exist for every layer. Pure: no TensorFlow.

Example:
    >>> # inputs = measured_cut_inputs(load_profile("device.json"), load_profile("cloud.json"))
    >>> # [name for name in inputs.after]  # None, then the last layer before each cut
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from dnntune.analysis.costs import CutInputs, LayerCosts, cut_inputs
from dnntune.errors import DnntuneError
from dnntune.model.graph import LayerGraph, LayerNode, TensorSpec
from dnntune.profiling.profile import MeasuredCuts, Profile, check_same_model


def leading_inputs(graph: LayerGraph) -> int:
    """How many input layers open the layer order (the cut after them runs nothing)."""
    count = 0
    for layer in graph.layers:
        if not layer.is_input:
            break
        count += 1
    if any(layer.is_input for layer in graph.layers[count:]):
        raise DnntuneError(f"{graph.model_name}: an input layer after a computing layer; "
                           "per-cut profiles need every input layer first")
    return count


def check_measured(graph: LayerGraph, cuts: MeasuredCuts, where: str = "device profile"
                   ) -> None:
    """Raise unless the cuts are in range, name their layers and include both ends."""
    last = len(graph.layers)
    indices = cuts.indices
    if not indices or indices[0] != 0 or indices[-1] != last:
        raise DnntuneError(f"{where}: measured_cuts must include cut 0 (cloud-only) and "
                           f"cut {last} (mobile-only), got {list(indices)[:6]}")
    for c in cuts.cuts:
        expected = graph.layers[c.index - 1].name if c.index else None
        if c.after != expected:
            raise DnntuneError(f"{where}: measured cut {c.index} is after {c.after!r}, but "
                               f"the model's layer {c.index} is {expected!r}")


def segment_graph(graph: LayerGraph, indices: Sequence[int]) -> LayerGraph:
    """``graph`` with the layers between consecutive cuts merged into one node each.

    Node ``k`` holds layers ``indices[k-1] .. indices[k]-1``, is named after its last
    layer, and outputs the tensors its layers make that later nodes read (or that are
    model outputs), renamed ``<node>:<i>`` with their shapes and bytes. Input layers stay
    ``InputLayer`` nodes, so the raw input is still produced on the phone.
    """
    layers = graph.layers
    segments = [layers[a:b] for a, b in itertools.pairwise(indices) if b > a]
    readers: dict[str, set[int]] = {}
    for k, seg in enumerate(segments):
        for layer in seg:
            for tname in layer.inputs:
                readers.setdefault(tname, set()).add(k)
    outputs = set(graph.model_outputs)
    rename: dict[str, str] = {}
    nodes = []
    for k, seg in enumerate(segments):
        name = seg[-1].name
        made = [t for layer in seg for t in layer.outputs
                if t.name in outputs or readers.get(t.name, set()) - {k}]
        specs = []
        for i, t in enumerate(made):
            rename[t.name] = f"{name}:{i}"
            specs.append(TensorSpec(rename[t.name], t.shape, t.dtype, t.bytes))
        inside = {t.name for layer in seg for t in layer.outputs}
        reads = dict.fromkeys(rename[t] for layer in seg for t in layer.inputs
                              if t not in inside)
        kind = "InputLayer" if all(layer.is_input for layer in seg) else "Segment"
        nodes.append(LayerNode(name, kind, tuple(reads), tuple(specs),
                               sum(layer.params for layer in seg),
                               sum(layer.flops for layer in seg)))
    return LayerGraph(graph.model_name, tuple(nodes),
                      tuple(rename[t] for t in graph.model_inputs),
                      tuple(rename[t] for t in graph.model_outputs))


def measured_cut_indices(device: Profile) -> tuple[int, ...]:
    """The cut of each row :func:`measured_cut_inputs` evaluates: the measured cuts and
    the cut after the inputs, in order (an analysis counts rows, not the model's cuts)."""
    cuts = device.measured_cuts
    if cuts is None:
        raise DnntuneError("device profile has no measured_cuts")
    return tuple(sorted({*cuts.indices, leading_inputs(device.graph)}))


def measured_cut_inputs(device: Profile, cloud: Profile) -> CutInputs:
    """Cut inputs over exactly the device profile's measured cuts.

    Device time at a cut is the measured head mean; device energy there is the head
    time times ``P_active - P_idle`` of the device profile. Segment "layer costs" are the
    differences between consecutive cuts (they may be negative: a longer head can run
    faster after fusion), so they feed the prefix-cut table only, not the DAG min-cut.

    Raises:
        DnntuneError: the profiles are of different models, or the cuts are malformed.
    """
    cuts = device.measured_cuts
    if cuts is None:
        raise DnntuneError("device profile has no measured_cuts")
    check_same_model(device, cloud)
    graph = device.graph
    check_measured(graph, cuts)
    n_in = leading_inputs(graph)
    kept = list(measured_cut_indices(device))
    head = {c.index: c.head.mean_ms for c in cuts.cuts}
    head[0] = 0.0
    head.setdefault(n_in, 0.0)  # after the inputs nothing has run
    merged = segment_graph(graph, kept)
    tm = np.array([head[i] for i in kept], dtype=np.float64)
    info = device.energy
    delta_mw = max(info.active_power_mw - info.idle_power_mw, 0.0)
    layer_cloud = np.array([lp.latency.mean_ms for lp in cloud.layers], dtype=np.float64)
    tc_all = np.concatenate([np.cumsum(layer_cloud[::-1])[::-1], [0.0]])
    tc = tc_all[kept]
    costs = LayerCosts(names=merged.layer_names, device_ms=np.diff(tm),
                       cloud_ms=-np.diff(tc), device_mj=np.diff(tm) * delta_mw / 1000.0,
                       idle_power_mw=info.idle_power_mw, energy_label=info.label,
                       estimated_layers=len(merged.layers))
    inputs = cut_inputs(merged, costs)
    # What the heads really send: a LiteRT int8 head's crossing tensors are int8 (one
    # byte per value, plus scale and zero point), measured from its interpreter; cuts
    # measured without sizes keep the layer graph's (float32 as profiled).
    sent = {c.index: c.bytes_up for c in cuts.cuts if c.bytes_up is not None}
    if not sent:
        return inputs
    bytes_up = inputs.bytes_up.copy()
    for k, index in enumerate(kept):
        if index in sent:
            bytes_up[k] = sent[index]
    return dataclasses.replace(inputs, bytes_up=bytes_up)
