"""Run configuration files: every shipped config parses; bad ones name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnntune.config import load_config, parse_config
from dnntune.errors import ConfigError
from dnntune.model.zoo import ZOO
from tests.conftest import REPO, assert_one_line_error, run_cli


def test_every_shipped_config_parses_and_names_a_zoo_model():
    files = sorted(f for f in (REPO / "configs").glob("*.yaml") if f.name != "links.yaml")
    names = {load_config(f).model for f in files}
    assert names <= set(ZOO)
    assert load_config(REPO / "configs" / "default.yaml").model == "mobilenet_v2"
    assert {f.stem for f in files} >= {n for n in ZOO if not n.startswith("tiny")}


@pytest.mark.parametrize(("data", "message"), [
    ({"model": {}}, "'model.name' is required"),
    ({"model": {"name": "x", "batch_size": 0}},
     "'model.batch_size' must be an integer from 1 to 1024"),
    ({"model": {"name": "x", "input_shape": "224"}}, "'model.input_shape' must be a list"),
    ({"model": {"name": "x"}, "profiling": {"num_runs": "many"}}, "'profiling.num_runs'"),
    ({"model": {"name": "x"}, "processing": {"device": {"threads": -1}}},
     "'processing.device.threads'"),
    ({"model": {"name": "x"}, "processing": {"phone": {}}}, "unknown key 'processing.phone'"),
    ({"model": {"name": "x"}, "processing": {"cloud": {"cpu_affinity": "0"}}},
     "'processing.cloud.cpu_affinity' must be a list"),
    ([1, 2], "the top level must be a mapping"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "run.yaml")


def test_yaml_errors_name_the_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_profile_from_a_config_with_flags_winning(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: tiny_mlp}\nprofiling: {num_runs: 4, warmup_runs: 1}\n"
                      "processing:\n  cloud: {threads: 1, energy: none}\n")
    out = tmp_path / "cloud.json"
    result = run_cli(["profile", "--config", str(config), "--side", "cloud", "--num_runs", "3",
                      "--out", str(out), "--format", "json"])
    assert result.returncode == 0, result.stderr
    from dnntune.profiling.profile import load_profile

    profile = load_profile(out)
    assert profile.meta.num_runs == 3 and profile.meta.warmup_runs == 1
    assert profile.meta.side == "cloud" and profile.energy.label == "none"


def test_profile_with_a_bad_config_is_one_line(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: tiny_mlp, seed: -3}\n")
    assert_one_line_error(run_cli(["profile", "--config", str(config)]), "run.yaml",
                          "'model.seed' must be an integer from 0 to 2147483647")
    assert_one_line_error(run_cli(["profile"]), "--model NAME|PATH or --config FILE")


def test_built_in_default_equals_configs_default_yaml():
    import dataclasses

    from dnntune.config import REALISTIC_WIRE, RunConfig, SideConfig, default_config

    assert default_config().input_shape == (224, 224, 3)
    assert dataclasses.replace(default_config(), input_shape=None) == RunConfig(
        "mobilenet_v2", device=SideConfig(emulate="dnntune_phone"), wire=REALISTIC_WIRE)
    assert default_config().objective == "energy-first"
    assert default_config().links == ("3g", "4g", "wifi")


@pytest.mark.parametrize(("data", "message"), [
    ({"model": {"name": "x"}, "objective": "fastest"}, "'objective' must be one of"),
    ({"model": {"name": "x"}, "links": "3g"}, "'links' must be a list"),
])
def test_bad_objective_and_links(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "run.yaml")
