"""The analyzer over (cut, encoding) pairs, on hand-made measurements (pure, no TF)."""

from __future__ import annotations

import numpy as np
import pytest

from dnntune.analysis.encodings import EncodedCuts, encoded_inputs
from dnntune.analysis.links import preset_links
from dnntune.analysis.partition import Objective, analyze_profiles
from dnntune.errors import ConfigError
from tests.analyzer_fixtures import chain_graph, make_profiles
from tests.test_costs import CHAIN_BYTES, CLOUD_MS, DEVICE_MJ, DEVICE_MS

NAN = np.nan
# chain: in (1 MB) -> l1 (250 kB) -> l2 (10 kB) -> l3 (4 kB output); 5 cuts (0..4).
# Cut 0 and 1 send the input, 2 l1's output, 3 l2's, 4 nothing (mobile-only).


def wire(agreement_int8: float = 1.0) -> EncodedCuts:
    fp32 = [1e6, 1e6, 250e3, 10e3, NAN]
    jpeg = [30e3, 30e3, NAN, NAN, NAN]
    int8 = [250e3, 250e3, 62.5e3, 2.5e3, NAN]
    names = ("fp32", "jpeg90", "int8")
    bytes_up = np.array([fp32, jpeg, int8])
    applies = np.isfinite(bytes_up)
    encode = np.where(applies, np.array([[0.1] * 5, [5.0] * 5, [2.0] * 5]), NAN)
    decode = np.where(applies, np.array([[0.1] * 5, [3.0] * 5, [1.0] * 5]), NAN)
    agree = np.where(applies, np.array([[1.0] * 5, [1.0] * 5, [agreement_int8] * 5]), NAN)
    zero = np.where(applies, 0.0, NAN)
    tensors = {"in:0": 1e6, "l1:0": 250e3, "l2:0": 10e3}
    return EncodedCuts(names, bytes_up, encode, decode, agree, zero, zero,
                       tensor_bytes=(tensors, {}, {k: v / 4 for k, v in tensors.items()}),
                       tensor_encode_ms=({k: 0.1 for k in tensors}, {},
                                         {k: 2.0 for k in tensors}),
                       tensor_decode_ms=({k: 0.1 for k in tensors}, {},
                                         {k: 1.0 for k in tensors}),
                       samples="hand-made")


def profiles():
    return make_profiles(chain_graph(CHAIN_BYTES), DEVICE_MS, CLOUD_MS, DEVICE_MJ)


def test_rows_are_every_admissible_pair_and_mobile_only_once():
    device, cloud = profiles()
    analysis = analyze_profiles(device, cloud, [preset_links()["3g"]], wire=wire())
    cuts = analysis.to_dict()["links"][0]["cuts"]
    assert [(c["index"], c["encoding"]) for c in cuts] == [
        (0, "fp32"), (0, "jpeg90"), (0, "int8"), (1, "fp32"), (1, "jpeg90"), (1, "int8"),
        (2, "fp32"), (2, "int8"), (3, "fp32"), (3, "int8"), (4, "none")]
    jpeg = cuts[1]
    assert jpeg["bytes_up"] == 30_000 and jpeg["encode_ms"] == 5.0
    assert jpeg["tm_ms"] == pytest.approx(5.0) and jpeg["tc_ms"] == pytest.approx(
        sum(CLOUD_MS) + 3.0, rel=0.01)


def test_best_pair_on_a_slow_link_sends_the_jpeg():
    device, cloud = profiles()
    slow = {"device_speedup": 0.1}  # a phone 10x slower than the profile
    analysis = analyze_profiles(device, cloud, [preset_links()["3g"]],
                                Objective("latency-first"), wire=wire(), **slow)
    best = analysis.to_dict()["links"][0]["best"]
    plain = analyze_profiles(device, cloud, [preset_links()["3g"]], Objective("latency-first"),
                             **slow)
    assert best["encoding"] == "jpeg90" and best["index"] == 0
    assert best["latency_ms"] < plain.to_dict()["links"][0]["best"]["latency_ms"]
    assert analysis.to_dict()["wire"]["excluded"] == []


def test_low_agreement_is_excluded_and_said():
    device, cloud = profiles()
    analysis = analyze_profiles(device, cloud, [preset_links()["4g"]], wire=wire(0.5))
    data = analysis.to_dict()
    assert all(c["encoding"] != "int8" for c in data["links"][0]["cuts"])
    assert data["wire"]["excluded"] == [
        "int8: excluded at every cut (top-1 agreement down to 0.5 < 0.99)"]
    assert "int8" not in {data["links"][0]["dag_optimal"].get("encoding")}


def test_dag_optimum_uses_encoded_bytes_and_codec_times():
    device, cloud = profiles()
    analysis = analyze_profiles(device, cloud, [preset_links()["3g"]],
                                Objective("latency-first"), wire=wire(), device_speedup=0.1)
    link = analysis.to_dict()["links"][0]
    rows = [c["latency_ms"] for c in link["cuts"]]
    assert link["dag_optimal"]["latency_ms"] == pytest.approx(min(rows))
    assert link["dag_optimal"]["encoding"] == "jpeg90"
    int8 = next(c for c in link["cuts"] if c["index"] == 2 and c["encoding"] == "int8")
    # on a chain the min-cut's sets are prefixes: int8 at cut 2 costs what its row says
    assert int8["bytes_up"] == 62_500


def test_min_agreement_range_and_no_row_at_cut_zero():
    device, cloud = profiles()
    inputs = analyze_profiles(device, cloud, []).inputs
    with pytest.raises(ConfigError, match="--min-agreement"):
        encoded_inputs(inputs, wire(), 1.5)
    with pytest.raises(ConfigError, match="no encoding reaches agreement"):
        encoded_inputs(inputs, _only_int8(wire(0.5)), 0.99)


def _only_int8(w: EncodedCuts) -> EncodedCuts:
    import dataclasses

    keep = [2]
    return dataclasses.replace(
        w, names=("int8",), bytes_up=w.bytes_up[keep], encode_ms=w.encode_ms[keep],
        decode_ms=w.decode_ms[keep], agreement=w.agreement[keep],
        max_abs_error=w.max_abs_error[keep], max_rel_error=w.max_rel_error[keep],
        tensor_bytes=(w.tensor_bytes[2],), tensor_encode_ms=(w.tensor_encode_ms[2],),
        tensor_decode_ms=(w.tensor_decode_ms[2],))


def test_sensitivity_names_cuts_and_encodings():
    from dnntune.analysis.sensitivity import add_sensitivity

    device, cloud = profiles()
    analysis = add_sensitivity(analyze_profiles(device, cloud, [preset_links()["3g"]],
                                                Objective("latency-first"), wire=wire(),
                                                device_speedup=0.1))
    info = analysis.sensitivity["3g"]  # type: ignore[index]
    first = info["uplink_segments"][0]
    assert first["index"] in range(5) and first["encoding"] in ("fp32", "jpeg90", "int8", "none")
    assert all(row["index"] in range(5) for row in info["what_if"])


def test_plots_show_one_bar_per_cut(tmp_path):
    from dnntune.report.plots import per_cut, plot_analysis

    device, cloud = profiles()
    analysis = analyze_profiles(device, cloud, [preset_links()["wifi"]],
                                Objective("latency-first"), wire=wire(), device_speedup=0.1)
    la = analysis.links[0]
    view = per_cut(la)
    assert len(view.inputs.after) == 5 and view.best == 0  # jpeg90 at cut 0 is best
    assert float(view.table.latency_ms[0]) == float(la.table.latency_ms[la.best])
    assert len(plot_analysis(analysis, tmp_path)) == 4


def test_min_cut_graph_carries_the_encoded_bytes():
    from dnntune.analysis.encodings import dag_candidates

    device, cloud = profiles()
    inputs = analyze_profiles(device, cloud, []).inputs
    w = wire()
    found = {name: cin for name, cin, _, _ in dag_candidates(inputs, w)}
    assert set(found) == {"fp32", "int8"}  # jpeg90 is an image codec: no tensor bytes
    for name, e in (("fp32", 0), ("int8", 2)):
        crossing = w.bytes_up[e][:4]
        assert np.allclose(found[name].bytes_up[:4], crossing)
        assert found[name].bytes_up[4] == 0
