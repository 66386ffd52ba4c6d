"""The instrumenter and the profiler on real (small) models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dnntune.errors import ConfigError, DnntuneError
from dnntune.profiling.instrument import InstrumentedModel, compile_plain
from dnntune.profiling.profile import Profile, load_profile, profile_to_dataframe, save_profile
from dnntune.profiling.profiler import ProfileSettings, profile_model
from dnntune.profiling.stats import summarize
from tests.conftest import assert_one_line_error, run_cli


@pytest.mark.parametrize("name", ["tiny_resnet", "shufflenet_v2_0.5x", "rnn_ptb_small"])
def test_instrumented_outputs_equal_uninstrumented(zoo_model, name):
    loaded = zoo_model(name)
    x = loaded.example_inputs()
    outputs, stamps = InstrumentedModel(loaded.model)(x)
    plain, seconds = compile_plain(loaded.model)(x)
    for got, want in zip(outputs, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert seconds > 0
    # one stamp before the first layer, one after each layer; never going back in time
    assert stamps.shape == (len(loaded.graph.layers) + 1,)
    assert np.all(np.diff(stamps) >= 0)


def test_profile_of_a_tiny_model(zoo_model):
    loaded = zoo_model("tiny_resnet")
    profile = profile_model(loaded, ProfileSettings(num_runs=30, warmup_runs=3,
                                                    energy="model:default"))
    assert profile.layer_names == loaded.graph.layer_names
    compute = [lp for lp in profile.layers if not lp.layer.is_input]
    assert all(lp.latency.n == 30 for lp in profile.layers)
    # tf.timestamp() ticks in microseconds: a sub-µs ReLU may read 0 in one run, never
    # on average
    assert all(lp.latency.mean_ms > 0 and lp.latency.min_ms >= 0 for lp in compute)
    assert all(lp.latency.min_ms <= lp.latency.p50_ms <= lp.latency.p99_ms
               <= lp.latency.max_ms for lp in compute)
    # layers run in sequence: their sum is close to the uninstrumented in-graph time (a
    # 0.15 ms model on a shared 2-core machine: loose bounds; benchmarks/ has the real check)
    assert 1 / 3 < profile.ratio < 3.0, profile.ratio
    assert profile.end_to_end_wall is not None
    assert profile.end_to_end_wall.mean_ms > profile.end_to_end.mean_ms
    assert profile.energy.label == "estimated:default"
    delta = profile.energy.active_power_mw - profile.energy.idle_power_mw
    for lp in compute:
        assert lp.energy_mj == pytest.approx(lp.latency.mean_ms * delta / 1000)
    assert profile.param_bytes == 4 * loaded.model.count_params()
    assert len(profile.meta.model_hash) == 64 and profile.meta.side == "device"


def test_profile_json_round_trip(zoo_model, tmp_path):
    profile = profile_model(zoo_model("tiny_mlp"),
                            ProfileSettings(num_runs=5, warmup_runs=1, energy="none"))
    path = save_profile(profile, tmp_path / "p.json")
    again = load_profile(path)
    assert again == profile
    assert again.energy.label == "none"
    frame = profile_to_dataframe(again)
    assert list(frame["name"]) == list(profile.layer_names)
    assert frame.attrs["side"] == "device"


def test_profile_file_with_missing_keys_names_the_key(zoo_model, tmp_path):
    profile = profile_model(zoo_model("tiny_mlp"),
                            ProfileSettings(num_runs=3, warmup_runs=0, energy="none"))
    doc = profile.to_dict()
    del doc["layers"][2]["latency"]["p90_ms"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"broken.json layers\[2\] 'fc2' latency: "
                                          r"missing key 'p90_ms'"):
        load_profile(path)
    doc = profile.to_dict()
    del doc["meta"]
    with pytest.raises(ConfigError, match="missing key 'meta'"):
        Profile.from_dict(doc, "x.json")
    (tmp_path / "notjson.json").write_text("{oops")
    with pytest.raises(DnntuneError, match="notjson.json: not JSON"):
        load_profile(tmp_path / "notjson.json")


def test_settings_validation():
    with pytest.raises(DnntuneError, match="--num_runs must be at least 1, got 0"):
        ProfileSettings(num_runs=0).validate()
    with pytest.raises(DnntuneError, match="--cpu_affinity: core"):
        ProfileSettings(cpu_affinity=(999,)).validate()
    notes = ProfileSettings(num_threads=512).validate()
    assert notes and "more than the" in notes[0]


def test_summarize_percentiles():
    stats = summarize(np.arange(1, 101, dtype=float))
    assert stats.mean_ms == 50.5 and stats.min_ms == 1 and stats.max_ms == 100
    assert stats.p50_ms == 50.5 and stats.p99_ms == pytest.approx(99.01)


def test_cli_profile_json_and_out_file(tmp_path):
    out = tmp_path / "device.json"
    result = run_cli(["profile", "--model", "tiny_mlp", "--num_runs", "5", "--warmup_runs",
                      "1", "--num_threads", "1", "--cpu_affinity", "0", "--energy",
                      "model:default", "--out", str(out), "--format", "json"])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["meta"]["num_threads"] == 1 and doc["meta"]["cpu_affinity"] == [0]
    assert load_profile(out).layer_names == ("input", "fc1", "fc2", "fc3")


def test_cli_profile_table_warns_about_too_many_threads():
    result = run_cli(["profile", "--model", "tiny_mlp", "--num_runs", "3", "--num_threads",
                      "64", "--energy", "none"])
    assert result.returncode == 0, result.stderr
    assert "more than the" in result.stderr
    assert "4 slowest of 4 layers" in " ".join(result.stdout.split())


@pytest.mark.parametrize(("args", "needles"), [
    (["--num_runs", "0"], ["--num_runs", "must be 1 to 100000"]),
    (["--cpu_affinity", "0,x"], ["--cpu_affinity '0,x'"]),
    (["--energy", "rapl"], ["/sys/class/powercap"]),
    (["--energy", "battery"], ["/sys/class/power_supply"]),
    (["--energy", "wattmeter"], ["--energy must be one of"]),
    (["--energy", "model:no_such_phone"], ["no_such_phone"]),
])
def test_cli_profile_bad_input(args, needles):
    assert_one_line_error(run_cli(["profile", "--model", "tiny_mlp", *args]), *needles)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v1", "inception_v3", "vgg16", "squeezenet_v11",
                                  "mnist_mlp", "resnet50"])
def test_every_zoo_model_instruments_to_the_same_outputs(name):
    """The instrumenter works on every zoo model (the benchmark checks the timings)."""
    from dnntune.model.loading import load_model

    loaded = load_model(name)
    x = loaded.example_inputs()
    outputs, stamps = InstrumentedModel(loaded.model)(x)
    plain, _ = compile_plain(loaded.model)(x)
    np.testing.assert_allclose(outputs[0], plain[0], rtol=1e-4, atol=1e-6)
    assert stamps.shape == (len(loaded.graph.layers) + 1,)
    assert np.all(np.diff(stamps) >= 0)
