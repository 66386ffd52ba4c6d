"""LiteRT: conversion, the layer map, head latencies per cut, and the CLI around them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dnntune.errors import DnntuneError
from tests.conftest import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def tiny(zoo_model):
    from dnntune.litert.convert import convert_model

    loaded = zoo_model("tiny_resnet")
    return loaded, convert_model(loaded, "fp32")


def test_tiny_resnet_layer_map_fuses_conv_bn_relu_and_reports_lost_cuts(tiny) -> None:
    loaded, conversion = tiny
    layer_map = conversion.layer_map
    assert conversion.tflite[4:8] == b"TFL3"
    assert [op.op_type for op in layer_map.ops][:4] == ["CONV_2D", "CONV_2D", "CONV_2D", "ADD"]
    assert layer_map.ops[0].layers == ("stem_conv", "stem_bn", "stem_relu")
    assert layer_map.ops[-1].outputs == ("Identity",) and layer_map.ops[-1].layer == "fc"
    status = {c.after: c for c in layer_map.cuts}
    assert not status["stem_conv"].exists and not status["stem_bn"].exists
    assert "inside LiteRT op #0 CONV_2D (stem_conv + stem_bn + stem_relu)" in \
        status["stem_bn"].reason
    assert status["stem_relu"].exists and status["block1_out"].exists
    # Every Keras layer with weights is implemented by some op.
    covered = {name for op in layer_map.ops for name in op.layers}
    assert {layer.name for layer in loaded.graph.layers if layer.params} <= covered
    assert len(layer_map.cuts) == len(loaded.graph.layers) + 1


@pytest.mark.slow
def test_mobilenet_v2_layer_map(zoo_model) -> None:
    from dnntune.litert.convert import convert_model

    loaded = zoo_model("mobilenet_v2")
    for precision in ("fp32", "int8"):
        layer_map = convert_model(loaded, precision).layer_map
        types = [op.op_type for op in layer_map.ops]
        assert types.count("DEPTHWISE_CONV_2D") == 17
        block = next(op for op in layer_map.ops if "block_1_depthwise" in op.layers)
        assert block.layers[-3:] == ("block_1_depthwise", "block_1_depthwise_BN",
                                     "block_1_depthwise_relu")
        # Conv+BN+ReLU6 triples are fused: about a third of the 157 cuts survive.
        assert 40 < len(layer_map.surviving) < 80
        if precision == "int8":
            assert types[0] == "QUANTIZE" and types[-1] == "DEQUANTIZE"
            assert layer_map.ops[-1].layer == "predictions"


def test_lstm_model_converts_with_every_cut(zoo_model) -> None:
    from dnntune.litert.convert import convert_model

    loaded = zoo_model("rnn_ptb_small")
    layer_map = convert_model(loaded, "fp32").layer_map
    assert "WHILE" in [op.op_type for op in layer_map.ops]  # the LSTMs run as loops
    assert layer_map.surviving == tuple(range(len(loaded.graph.layers) + 1))
    with pytest.raises(DnntuneError, match="int8 is not supported for recurrent layers"):
        convert_model(loaded, "int8")


def test_heads_match_keras_at_a_spread_of_cuts(tiny) -> None:
    from dnntune.litert.convert import interpreter
    from dnntune.litert.profile import choose_cuts, head_tflite, run_litert
    from dnntune.model.split import Splitter

    loaded, conversion = tiny
    cuts = choose_cuts("spread:4", conversion.layer_map, loaded.graph)
    assert len(cuts) >= 5
    splitter = Splitter(loaded.model, loaded.graph)
    x = loaded.example_inputs()
    for index in cuts:
        split = splitter.split(index)
        if split.head is None:
            continue
        want = split.run_head(x)
        got = run_litert(interpreter(head_tflite(loaded, splitter, index, "fp32")), x)
        assert len(got) == len(split.head_outputs)
        for name, value in zip(split.head_outputs, got, strict=True):
            assert np.abs(want[name]).max() > 1e-3  # calibrated: not all zeros
            np.testing.assert_allclose(value, want[name], atol=1e-4, rtol=0)


def test_choose_cuts_refuses_fused_cuts_and_bad_specs(tiny) -> None:
    from dnntune.litert.profile import choose_cuts

    loaded, conversion = tiny
    layer_map = conversion.layer_map
    last = len(loaded.graph.layers)
    assert choose_cuts("all", layer_map, loaded.graph) == layer_map.surviving
    assert choose_cuts("4,11", layer_map, loaded.graph) == (0, 1, 4, 11, last)
    with pytest.raises(DnntuneError, match="cut 3 .after stem_bn. does not exist in LiteRT"):
        choose_cuts("3", layer_map, loaded.graph)
    for spec in ("spread:0", "some", "99"):
        with pytest.raises(DnntuneError, match="--cuts"):
            choose_cuts(spec, layer_map, loaded.graph)


def test_profile_litert_times_heads(tiny) -> None:
    from dnntune.litert.profile import LiteRTSettings, profile_litert

    loaded, _ = tiny
    profile = profile_litert(loaded, LiteRTSettings(cuts="spread:3", num_runs=5, warmup_runs=1,
                                                    energy="model:default"))
    measured = profile.measured_cuts
    assert measured.kind == "heads" and "ai-edge-litert" in measured.framework
    heads = {c.index: c.head for c in measured.cuts}
    assert heads[0].mean_ms == heads[1].mean_ms == 0.0
    assert all(h.n == 5 and h.mean_ms > 0 for i, h in heads.items() if i > 1)
    assert profile.end_to_end == heads[len(loaded.graph.layers)]
    assert profile.energy.label == "estimated:default"


def test_int8_heads_record_their_int8_crossing_bytes_and_fp16_float32(tiny) -> None:
    """An int8 head sends its int8 tensors (one byte per value and 8 bytes of scale and
    zero point each), read from its interpreter; an fp16 head computes in float32 on the
    CPU, so it sends the float32 sizes; the analysis uses these bytes."""
    from dnntune.analysis.measured_cuts import measured_cut_inputs
    from dnntune.litert.profile import LiteRTSettings, profile_litert
    from dnntune.model.cuts import enumerate_cuts
    from dnntune.profiling.profiler import ProfileSettings, profile_model

    loaded, _ = tiny
    cuts = {c.index: c for c in enumerate_cuts(loaded.graph)}
    sent = {}
    for precision in ("fp16", "int8"):
        profile = profile_litert(loaded, LiteRTSettings(
            cuts="4,9", num_runs=2, warmup_runs=0, energy="model:default",
            precision=precision))
        sent[precision] = {c.index: c.bytes_up for c in profile.measured_cuts.cuts}
    for index in (4, 9):
        tensors = cuts[index].tensors
        assert sent["fp16"][index] == cuts[index].bytes_up
        assert sent["int8"][index] == sum(t.bytes // 4 + 8 for t in tensors)
    assert len(cuts[9].tensors) == 2  # a skip connection: both tensors counted
    cloud = profile_model(loaded, ProfileSettings(side="cloud", num_runs=2, warmup_runs=0,
                                                 energy="none"))
    inputs = measured_cut_inputs(profile, cloud)
    assert list(inputs.bytes_up[2:4]) == [sent["int8"][4], sent["int8"][9]]


def test_convert_cli_writes_model_map_and_phone_commands(tmp_path) -> None:
    result = run_cli(["convert", "--model", "tiny_resnet", "--precision", "int8",
                      "--out", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "tiny_resnet_int8.tflite").stat().st_size > 1000
    layer_map = json.loads((tmp_path / "layer_map.json").read_text())
    assert layer_map["precision"] == "int8" and layer_map["surviving_cuts"][0] == 0
    assert "adb push tiny_resnet_int8.tflite /data/local/tmp/" in result.stdout
    assert "--enable_op_profiling=true --op_profiling_output_mode=csv" in result.stdout
    assert "adb pull /data/local/tmp/op_profile.csv" in result.stdout


def test_unconvertible_model_and_bad_flags_are_one_line_errors(tmp_path) -> None:
    import keras

    from dnntune.model.loading import import_keras

    import_keras()
    inp = keras.Input((4, 4), name="input")
    out = keras.ops.erfinv(keras.ops.tanh(keras.layers.Dense(4, name="fc")(inp)))
    path = tmp_path / "erfinv.keras"
    keras.Model(inp, out).save(path)
    assert_one_line_error(run_cli(["convert", "--model", str(path), "--out", str(tmp_path)]),
                          "LiteRT cannot convert", "unsupported op Erfinv")
    assert_one_line_error(run_cli(["convert", "--model", "tiny_mlp", "--precision", "int4",
                                   "--out", str(tmp_path)]), "--precision", "fp32, fp16, int8")
    assert_one_line_error(run_cli(["profile", "--model", "tiny_mlp", "--framework", "litert",
                                   "--side", "cloud"]), "--framework litert")
