"""Analysis of device profiles that hold head latencies at measured cuts only (pure)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dnntune.analysis.costs import cut_inputs, layer_costs
from dnntune.analysis.links import resolve_links
from dnntune.analysis.measured_cuts import measured_cut_inputs, segment_graph
from dnntune.analysis.partition import analyze_profiles
from dnntune.errors import ConfigError, DnntuneError
from dnntune.profiling.profile import CutLatency, MeasuredCuts, Profile
from tests.analyzer_fixtures import build_graph, make_profiles, stats

# in -> a -> b -> c -> d with a skip a -> d: cut 3 (after b) sends b's and a's outputs.
GRAPH = build_graph("skip", [("in", (), 400), ("a", ("in",), 1000), ("b", ("a",), 200),
                             ("c", ("b",), 100), ("d", ("c", "a"), 40)])
HEADS = {0: 0.0, 1: 0.0, 3: 7.0, 5: 6.5}  # the full model ran faster than a shorter head


def _profiles(heads: dict[int, float] = HEADS) -> tuple[Profile, Profile]:
    device, cloud = make_profiles(GRAPH, [0, 1, 2, 3, 4], [0, 0.5, 0.25, 0.125, 1.0])
    cuts = tuple(CutLatency(i, GRAPH.layers[i - 1].name if i else None, stats(t))
                 for i, t in sorted(heads.items()))
    device = dataclasses.replace(device, measured_cuts=MeasuredCuts("heads", "litert test",
                                                                    "synthetic", cuts))
    return device, cloud


def test_segments_keep_the_crossing_bytes_of_the_measured_cuts() -> None:
    merged = segment_graph(GRAPH, [0, 1, 3, 5])
    assert merged.layer_names == ("in", "b", "d")
    assert [layer.type for layer in merged.layers] == ["InputLayer", "Segment", "Segment"]
    full = cut_inputs(GRAPH, layer_costs(*make_profiles(GRAPH, [0] * 5, [0] * 5)))
    device, cloud = _profiles()
    inputs = measured_cut_inputs(device, cloud)
    assert inputs.after == (None, "in", "b", "d")
    np.testing.assert_array_equal(inputs.bytes_up, full.bytes_up[[0, 1, 3, 5]])
    np.testing.assert_array_equal(inputs.bytes_down, full.bytes_down[[0, 1, 3, 5]])
    assert inputs.bytes_up[2] == 1200  # a's output (skip) and b's output cross


def test_device_time_is_the_measured_head_and_cloud_time_the_tail_sum() -> None:
    inputs = measured_cut_inputs(*_profiles())
    np.testing.assert_allclose(inputs.tm_ms, [0.0, 0.0, 7.0, 6.5])  # not monotone: kept
    np.testing.assert_allclose(inputs.tc_ms, [1.875, 1.875, 1.125, 0.0])


def test_analyze_evaluates_exactly_the_measured_cuts_and_says_so() -> None:
    device, cloud = _profiles()
    analysis = analyze_profiles(device, cloud, resolve_links(["wifi"]))
    doc = json.loads(json.dumps(analysis.to_dict(), allow_nan=False))
    link = doc["links"][0]
    assert [c["after"] for c in link["cuts"]] == [None, "in", "b", "d"]
    assert "evaluated exactly the 4 cuts measured" in doc["measured_cuts"]
    assert "dag_optimal" not in link
    assert link["mobile_only"]["tm_ms"] == pytest.approx(6.5)


def test_plain_profiles_are_unchanged_and_have_no_note() -> None:
    device, cloud = make_profiles(GRAPH, [0, 1, 2, 3, 4], [0, 1, 1, 1, 1])
    doc = analyze_profiles(device, cloud, resolve_links(["wifi"])).to_dict()
    assert "measured_cuts" not in doc and len(doc["links"][0]["cuts"]) == 6


def test_profile_round_trips_and_says_schema_version_2() -> None:
    device, _ = _profiles()
    data = device.to_dict()
    assert data["schema_version"] == 2
    assert Profile.from_dict(json.loads(json.dumps(data))) == device
    data["measured_cuts"]["kind"] = "guess"
    with pytest.raises(ConfigError, match="'heads' or 'ops'"):
        Profile.from_dict(data)


def test_malformed_cuts_are_refused() -> None:
    device, cloud = _profiles({0: 0.0, 3: 7.0})
    with pytest.raises(DnntuneError, match="must include cut 0 .* and cut 5"):
        measured_cut_inputs(device, cloud)
    device, cloud = _profiles()
    wrong = dataclasses.replace(device.measured_cuts.cuts[2], after="c")
    cuts = dataclasses.replace(device.measured_cuts,
                               cuts=(*device.measured_cuts.cuts[:2], wrong,
                                     device.measured_cuts.cuts[3]))
    with pytest.raises(DnntuneError, match="measured cut 3 is after 'c'"):
        measured_cut_inputs(dataclasses.replace(device, measured_cuts=cuts), cloud)


def test_cut_analysis_and_op_profile_parsing_import_no_tensorflow_or_litert() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys\n"
            "import dnntune.analysis.measured_cuts, dnntune.litert.ops, dnntune.litert.importer\n"
            "import dnntune.cli.litert\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in\n"
            "               ('tensorflow', 'keras', 'grpc', 'ai_edge_litert'))\n"
            "print(heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_measured_crossing_bytes_replace_the_float32_sizes() -> None:
    """A LiteRT int8 head records what it really sends (its int8 tensors): the analysis
    uses those bytes at the cuts that have them, the graph's elsewhere, and the profile
    JSON keeps them."""
    device, cloud = _profiles()
    int8 = tuple(dataclasses.replace(c, bytes_up=308) if c.index == 3 else c
                 for c in device.measured_cuts.cuts)  # (1000 + 200) / 4 + 2 x 4 params
    device = dataclasses.replace(device, measured_cuts=dataclasses.replace(
        device.measured_cuts, cuts=int8))
    inputs = measured_cut_inputs(device, cloud)
    plain = measured_cut_inputs(*_profiles())
    assert inputs.bytes_up[2] == 308 and plain.bytes_up[2] == 1200
    np.testing.assert_array_equal(np.delete(inputs.bytes_up, 2), np.delete(plain.bytes_up, 2))
    data = json.loads(json.dumps(device.to_dict()))
    assert data["measured_cuts"]["cuts"][2]["bytes_up"] == 308
    assert "bytes_up" not in data["measured_cuts"]["cuts"][1]
    assert Profile.from_dict(data) == device
    data["measured_cuts"]["cuts"][2]["bytes_up"] = -1
    with pytest.raises(ConfigError, match="bytes_up"):
        Profile.from_dict(data)
