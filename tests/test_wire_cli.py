"""Bad wire input on the command line and in configs: one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dnntune.config import parse_config
from dnntune.errors import ConfigError
from dnntune.profiling.profile import save_profile
from tests.analyzer_fixtures import chain_graph, make_profiles
from tests.test_analyze_cli import assert_one_line_error, run_here
from tests.test_costs import CHAIN_BYTES, CLOUD_MS, DEVICE_MJ, DEVICE_MS


@pytest.fixture
def chain(tmp_path: Path) -> tuple[str, str]:
    device, cloud = make_profiles(chain_graph(CHAIN_BYTES), DEVICE_MS, CLOUD_MS, DEVICE_MJ)
    return (str(save_profile(device, tmp_path / "device.json")),
            str(save_profile(cloud, tmp_path / "cloud.json")))


@pytest.mark.parametrize(("value", "needle"), [
    ("fp64", "unknown encoding 'fp64'"),
    ("int8,jpeg", "'jpeg': a JPEG quality"),
    ("fp16+lz4", "unknown encoding 'fp16+lz4'"),
])
def test_bad_wire_names(value, needle, chain, capsys):
    device, cloud = chain
    code, _, err = run_here(["--device", device, "--cloud", cloud, "--wire", value], capsys)
    assert_one_line_error(code, err, "--wire", needle)


def test_samples_folder_without_images(tmp_path: Path, chain, capsys):
    (tmp_path / "notes.txt").write_text("no images here")
    device, cloud = chain
    code, _, err = run_here(["--device", device, "--cloud", cloud, "--wire", "int8",
                             "--samples", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "--samples", str(tmp_path), "no .jpg")


def test_min_agreement_out_of_range(chain, capsys):
    device, cloud = chain
    code, _, err = run_here(["--device", device, "--cloud", cloud, "--min-agreement", "2"],
                            capsys)
    assert_one_line_error(code, err, "--min-agreement", "from 0 to 1")


def test_unreadable_and_misshaped_samples_name_the_file(tmp_path: Path):
    from dnntune.wire.samples import load_samples

    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"broken\.png: cannot read as an image"):
        load_samples((32, 32, 3), "m", str(tmp_path))
    (tmp_path / "broken.png").unlink()
    np.save(tmp_path / "wrong.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(ConfigError, match=r"wrong\.npy: array float32 \[8, 8\], expected"):
        load_samples((32, 32, 3), "m", str(tmp_path))


def test_config_key_wire():
    assert parse_config({"model": {"name": "x"}, "wire": ["FP16", "int8+zstd"]}, "r.yaml"
                        ).wire == ("fp16", "int8+zstd")
    assert parse_config({"model": {"name": "x"}}, "r.yaml").wire == ("fp32",)
    with pytest.raises(ConfigError, match=r"r\.yaml: key 'wire': unknown encoding 'gif'"):
        parse_config({"model": {"name": "x"}, "wire": ["gif"]}, "r.yaml")


def test_saved_profiles_with_wire_measure_the_zoo_model(tmp_path: Path, capsys):
    """Saved profiles of a zoo model: --wire loads its cached weights and measures."""
    import json

    from dnntune.model.loading import load_model

    graph = load_model("tiny_resnet", seed=0).graph
    device, cloud = make_profiles(graph, [2.0] * len(graph.layers), [0.2] * len(graph.layers))
    paths = [str(save_profile(p, tmp_path / f"{p.meta.side}.json")) for p in (device, cloud)]
    code, out, err = run_here(["--device", paths[0], "--cloud", paths[1], "--wire",
                               "fp32,uint8,jpeg90,int8+zstd", "--format", "json",
                               "--links", "3g"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["wire"]["encodings"] == ["fp32", "uint8", "jpeg90", "int8+zstd"]
    assert "3 photographs" in data["wire"]["samples"]
    cuts = data["links"][0]["cuts"]
    first = {c["encoding"]: c for c in cuts if c["index"] == 0}
    assert first["fp32"]["bytes_up"] == 32 * 32 * 3 * 4 and first["uint8"]["bytes_up"] == 3072
    assert first["jpeg90"]["bytes_up"] < 3072 and first["jpeg90"]["encode_ms"] > 0
    assert all(c["agreement"] is not None for c in cuts if c["encoding"] != "none")
