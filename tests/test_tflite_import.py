"""Importing on-phone LiteRT op profiles: the three formats, the layer mapping, refusals."""

from __future__ import annotations

import dataclasses

import pytest

from dnntune.errors import DnntuneError
from dnntune.litert.importer import match_rows, op_profile_to_profile
from dnntune.litert.ops import parse_csv, parse_op_profile, parse_stdout, split_name
from tests.conftest import assert_one_line_error, run_cli
from tests.litert_fixtures import (
    FakeOp,
    csv_report,
    ops_from_layer_map,
    proto_report,
    stdout_report,
)


@pytest.fixture(scope="module")
def converted():
    from dnntune.litert.convert import convert_model
    from dnntune.model.loading import load_model

    loaded = load_model("tiny_resnet")
    return loaded, convert_model(loaded, "fp32").layer_map


def test_split_name_reads_tensor_names_and_node_index() -> None:
    assert split_name("[model/conv;model/bn/add]:3") == ("model/conv;model/bn/add", 3)
    assert split_name("[Identity]:10") == ("Identity", 10)
    assert split_name("AllocateTensors/0") == ("AllocateTensors/0", None)


@pytest.mark.parametrize("start", [False, True], ids=["new-layout", "old-layout-with-start"])
def test_text_and_csv_layouts_give_the_same_rows(start: bool) -> None:
    ops = [FakeOp("CONV_2D", "[a/conv;a/relu]:0", 0.25), FakeOp("ADD", "[a/add]:1", 0.125),
           FakeOp("SOFTMAX", "[Identity]:2", 0.5)]
    for rows in (parse_stdout(stdout_report(ops, start), "f.txt"),
                 parse_csv(csv_report(ops, start), "f.csv")):
        assert [(r.op_type, r.names, r.node_index, r.avg_ms) for r in rows] == [
            ("CONV_2D", "a/conv;a/relu", 0, 0.25), ("ADD", "a/add", 1, 0.125),
            ("SOFTMAX", "Identity", 2, 0.5)]  # init rows and later tables are skipped


def test_proto_carries_per_op_statistics() -> None:
    ops = [FakeOp("CONV_2D", "[x]:0", 0.25), FakeOp("SOFTMAX", "[Identity]:1", 0.5)]
    rows = parse_op_profile(proto_report(ops), "tflite-proto", "f.pb")
    assert [(r.op_type, r.node_index, r.avg_ms, r.min_ms, r.max_ms, r.count) for r in rows] == [
        ("CONV_2D", 0, 0.25, 0.247, 0.257, 50), ("SOFTMAX", 1, 0.5, 0.497, 0.507, 50)]
    assert rows[0].std_ms == pytest.approx(0.002)


@pytest.mark.parametrize("fmt", ["tflite-stdout", "tflite-csv", "tflite-proto"])
def test_each_format_maps_ops_to_layers_and_cuts(converted, fmt: str) -> None:
    loaded, layer_map = converted
    ops = ops_from_layer_map(layer_map)
    assert ops[-1].name.startswith("[Identity]:")  # the converter names the last op so
    data = {"tflite-stdout": stdout_report(ops).encode(), "tflite-csv": csv_report(ops).encode(),
            "tflite-proto": proto_report(ops)}[fmt]
    rows = parse_op_profile(data, fmt, "f")
    profile = op_profile_to_profile(rows, loaded, layer_map, "f", fmt)
    measured = profile.measured_cuts
    assert measured is not None and measured.kind == "ops"
    assert "matched by name" in measured.source
    assert measured.indices == tuple(sorted(set(layer_map.surviving)))
    total = sum(op.avg_ms for op in ops)
    assert measured.cuts[-1].head.mean_ms == pytest.approx(total, abs=1e-9)
    by_layer = {lp.layer.name: lp.latency.mean_ms for lp in profile.layers}
    # The fused conv+BN+ReLU op's time sits on the ReLU; the conv and BN get none.
    assert by_layer["stem_relu"] == pytest.approx(ops[0].avg_ms)
    assert by_layer["stem_conv"] == by_layer["stem_bn"] == 0.0
    # 'Identity' (the softmax of Dense 'fc') belongs to fc with the matmul.
    assert by_layer["fc"] == pytest.approx(ops[-1].avg_ms + ops[-2].avg_ms)
    head = {c.index: c.head.mean_ms for c in measured.cuts}
    position = {layer.name: i for i, layer in enumerate(loaded.graph.layers)}
    for index, value in head.items():
        expected = sum(op.avg_ms for op, m in zip(ops, layer_map.ops, strict=True)
                       if position[m.layer] < index)
        assert value == pytest.approx(expected, abs=1e-9)


def test_rewritten_names_are_matched_by_node_order_and_said_so(converted) -> None:
    loaded, layer_map = converted
    ops = [dataclasses.replace(op, name=f"[node_{i}]:{i}")
           for i, op in enumerate(ops_from_layer_map(layer_map))]
    rows = parse_op_profile(csv_report(ops).encode(), "tflite-csv", "f")
    profile = op_profile_to_profile(rows, loaded, layer_map, "f", "tflite-csv")
    assert f"node order ({len(ops)} names rewritten" in profile.measured_cuts.source


def test_collapsed_delegate_is_refused(converted) -> None:
    _, layer_map = converted
    ops = [FakeOp("TfLiteXNNPackDelegate", "[Identity]:11", 0.9)]
    rows = parse_op_profile(stdout_report(ops).encode(), "tflite-stdout", "f.txt")
    with pytest.raises(DnntuneError, match="TfLiteXNNPackDelegate row that collapses"):
        match_rows(rows, layer_map, "f.txt")
    hexagon = [FakeOp("TfLiteHexagonDelegate", "[Identity]:0", 9000.0)]
    with pytest.raises(DnntuneError, match="cycles"):
        match_rows(parse_csv(csv_report(hexagon), "f"), layer_map, "f")


def test_a_different_models_profile_is_refused(converted) -> None:
    _, layer_map = converted
    ops = ops_from_layer_map(layer_map)
    with pytest.raises(DnntuneError, match="11 LiteRT ops: a profile of a different model"):
        match_rows(parse_csv(csv_report(ops[:-1]), "f"), layer_map, "f")
    other = [dataclasses.replace(ops[0], op_type="MEAN"), *ops[1:]]  # same count, other ops
    with pytest.raises(DnntuneError, match="node 0 is MEAN in the profile but CONV_2D"):
        match_rows(parse_csv(csv_report(other), "f"), layer_map, "f")


@pytest.mark.parametrize(("fmt", "data", "needle"), [
    ("tflite-csv", b"", "empty file"),
    ("tflite-csv", b"node type, first, avg_ms, %, cdf%, mem KB, times called, name\n"
                   b"CONV_2D, 0.1, 0.1", "expected 8 comma-separated fields"),
    ("tflite-stdout", b"some log\nno table here\n", "no 'Run Order' table"),
    ("tflite-proto", b"\x0a\xff\xff", "not a tflite.profiling.BenchmarkProfilingData"),
])
def test_bad_files_name_the_problem(fmt: str, data: bytes, needle: str) -> None:
    with pytest.raises(DnntuneError, match=needle):
        parse_op_profile(data, fmt, "f")


def test_truncated_text_table_is_refused() -> None:
    text = stdout_report([FakeOp("CONV_2D", "[a]:0", 0.1), FakeOp("ADD", "[b]:1", 0.1)])
    cut = text[:text.index("[b]:1") - 12]
    with pytest.raises(DnntuneError, match="truncated"):
        parse_stdout(cut, "f.txt")


@pytest.mark.slow
def test_import_profile_cli_and_its_bad_inputs(converted, tmp_path) -> None:
    _, layer_map = converted
    good = tmp_path / "op_profile.csv"
    good.write_text(csv_report(ops_from_layer_map(layer_map), start=True))
    out = tmp_path / "device.json"
    result = run_cli(["import-profile", str(good), "--format", "tflite-csv", "--model",
                      "tiny_resnet", "--energy", "model:default", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "11 ops mapped" in result.stdout
    from dnntune.profiling.profile import load_profile

    profile = load_profile(out)
    assert profile.energy.label == "estimated:default"
    assert profile.measured_cuts.indices == layer_map.surviving
    other = tmp_path / "other.csv"
    other.write_text(csv_report(ops_from_layer_map(layer_map)[:5]))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for args, needles in (
            ([str(other), "--format", "tflite-csv"], ("other.csv", "different model")),
            ([str(empty), "--format", "tflite-csv"], ("empty.csv", "empty file")),
            ([str(good), "--format", "tflite-json"], ("--format", "tflite-proto"))):
        assert_one_line_error(run_cli(["import-profile", *args, "--model", "tiny_resnet",
                                       "--out", str(tmp_path / "x.json")]), *needles)
