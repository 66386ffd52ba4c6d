"""Memory in profiles and in the frameworks study: what was loaded, the peak resident
growth of the inferences; profiles written before the field still load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dnntune.errors import ConfigError
from dnntune.profiling.profile import Profile, load_profile, save_profile
from dnntune.profiling.profiler import ProfileSettings, profile_model
from dnntune.profiling.rss import PeakWindow, rss_bytes


def test_peak_window_sees_a_freed_allocation() -> None:
    window = PeakWindow.start()
    assert window.reset  # Linux with /proc/self/clear_refs, as on this host
    block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, every page touched
    del block
    assert window.growth_bytes() >= 60 << 20
    assert rss_bytes() < window.start_rss_bytes + (32 << 20)  # it is gone, its peak is not
    assert PeakWindow.start().growth_bytes() < 32 << 20


def test_profile_has_memory_and_old_profiles_load(zoo_model, tmp_path: Path) -> None:
    loaded = zoo_model("tiny_resnet")
    profile = profile_model(loaded, ProfileSettings(num_runs=3, warmup_runs=1, energy="none"))
    memory = profile.memory
    assert memory is not None and memory.framework == "tensorflow"
    assert loaded.file is not None  # the zoo's cached, calibrated .keras file
    assert memory.loaded_bytes == os.path.getsize(loaded.file)
    assert memory.loaded_what.startswith("Keras file")
    assert memory.inference_rss_growth_bytes >= 0 and memory.setup_rss_growth_bytes > 0
    assert memory.peak_rss_bytes > memory.inference_rss_growth_bytes
    path = save_profile(profile, tmp_path / "p.json")
    assert load_profile(path) == profile
    doc = json.loads(path.read_text())
    assert doc["memory"]["loaded_bytes"] == memory.loaded_bytes
    del doc["memory"]  # a profile written before memory was recorded
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert load_profile(tmp_path / "old.json").memory is None
    doc = profile.to_dict()
    doc["memory"]["loaded_bytes"] = "big"
    with pytest.raises(ConfigError, match=r"x.json memory: key 'loaded_bytes' must be int"):
        Profile.from_dict(doc, "x.json")


def test_frameworks_study_rows_carry_memory_and_energy() -> None:
    from dnntune.litert.study import power_function, run_study
    from dnntune.profiling.energy import get_meter

    meter = get_meter("model:pixel3", threads=1).meter
    delta = meter.active_power_mw - meter.idle_power_mw  # type: ignore[union-attr]
    rows = run_study(["tiny_resnet"], ("tf", "litert"), ("fp32", "int8"), runs=3, warmup=1,
                     power=power_function("model:pixel3", 1))
    by = {(r.framework, r.precision): r for r in rows}
    assert by["litert", "int8"].loaded_bytes < by["litert", "fp32"].loaded_bytes
    assert by["litert", "fp32"].loaded_bytes == by["litert", "fp32"].model_bytes
    assert by["tf", "fp32"].loaded_bytes > 0
    for r in rows:
        assert r.energy_label == "estimated:pixel3"
        assert r.energy_mj == pytest.approx(r.mean_ms * delta / 1e3)
        assert r.inference_rss_growth_bytes >= 0 and r.peak_rss_bytes > 0
        assert json.dumps(r.to_dict(), allow_nan=False)


def test_litert_profile_has_the_tflite_memory(zoo_model, tmp_path: Path) -> None:
    from dnntune.litert.convert import convert_model
    from dnntune.litert.profile import LiteRTSettings, profile_litert

    loaded = zoo_model("tiny_resnet")
    profile = profile_litert(loaded, LiteRTSettings(precision="int8", cuts="spread:2",
                                                    num_runs=2, warmup_runs=1, energy="none"))
    memory = profile.memory
    assert memory is not None and memory.framework == "litert"
    assert memory.loaded_what == ".tflite int8"
    assert memory.loaded_bytes == len(convert_model(loaded, "int8").tflite) \
        == profile.param_bytes
    assert memory.inference_rss_growth_bytes >= 0 and memory.peak_rss_bytes > 0
    assert load_profile(save_profile(profile, tmp_path / "lite.json")) == profile


def test_a_remote_profile_carries_memory(tmp_path: Path) -> None:
    """Through a real gRPC server on loopback: the profile JSON keeps ``memory``."""
    import keras

    from cloud_server import create_server
    from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec
    from dnntune.rpc.serving import ServerOptions

    inp = keras.Input(shape=(8,), name="features")
    path = tmp_path / "mine.keras"
    keras.Model(inp, keras.layers.Dense(4, name="dense")(inp)).save(path)
    running = create_server(ServerOptions(port=0))
    client = ProfilerClient(Endpoint(f"127.0.0.1:{running.port}"))
    try:
        client.upload_file(path)
        profile = client.profile(model_spec(client.pb2, str(path)), num_runs=3,
                                 warmup_runs=1, energy="none")
    finally:
        client.close()
        running.stop(0)
    assert profile.memory is not None and profile.memory.framework == "tensorflow"
    assert profile.memory.loaded_what.startswith("Keras file")
    assert profile.memory.loaded_bytes == path.stat().st_size  # the bytes uploaded
    assert profile.memory.peak_rss_bytes > 0
