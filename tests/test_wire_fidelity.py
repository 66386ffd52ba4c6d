"""Fidelity of wire encodings on a CNN trained here: int8 keeps the answers, a too-coarse
JPEG is refused. Random-weight zoo models would make agreement meaningless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.wire_shapes import draw_shapes, train_shape_cnn


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The CNN, its layer graph, and 50 held-out shapes saved as PNG files."""
    from PIL import Image

    from dnntune.model.keras_graph import build_layer_graph

    model, accuracy = train_shape_cnn(samples=2000, epochs=5)
    folder = tmp_path_factory.mktemp("shapes")
    images, _ = draw_shapes(50, seed=99)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"shape{i:02d}.png")
    return model, build_layer_graph(model, 1, "shape_cnn"), accuracy, folder


def test_the_cnn_is_accurate(trained):
    assert trained[2] >= 0.95


def test_int8_keeps_agreement_and_a_coarse_jpeg_is_refused(trained):
    from dnntune.analysis.encodings import encoded_inputs
    from dnntune.analysis.links import preset_links
    from dnntune.analysis.partition import Objective, analyze_inputs
    from dnntune.wire.codecs import parse_encodings
    from dnntune.wire.measure import measure_wire
    from dnntune.wire.samples import load_samples
    from tests.analyzer_fixtures import make_profiles

    model, graph, _, folder = trained
    samples = load_samples((32, 32, 3), "shape_cnn", str(folder))
    assert samples.pixels is not None and samples.pixels.shape == (50, 32, 32, 3)
    wire = measure_wire(model, graph, parse_encodings("fp32,png,jpeg3,fp16,int8,int8c+zstd"),
                        samples)
    names = list(wire.names)
    every_cut = np.isfinite(wire.bytes_up[names.index("int8")])
    int8 = wire.agreement[names.index("int8")][every_cut]
    assert int8.size >= 8 and int8.min() >= 0.99
    assert np.nanmin(wire.agreement[names.index("int8c+zstd")]) >= 0.99
    assert wire.agreement[names.index("png"), 0] == 1.0
    jpeg = wire.agreement[names.index("jpeg3"), 0]
    assert jpeg < 0.99
    # bytes are exact for the fixed-size codecs
    assert wire.bytes_up[names.index("fp32"), 0] == 32 * 32 * 3 * 4
    assert wire.bytes_up[names.index("int8"), 0] == 32 * 32 * 3 + 8

    device, cloud = make_profiles(graph, [1.0] * len(graph.layers), [0.1] * len(graph.layers))
    from dnntune.analysis.costs import cut_inputs, layer_costs

    inputs = cut_inputs(graph, layer_costs(device, cloud))
    flat, excluded = encoded_inputs(inputs, wire, 0.99)
    assert any(x.startswith("jpeg3: excluded") and "0.99" in x for x in excluded)
    assert "jpeg3" not in set(flat.row_fields["encoding"])  # type: ignore[index]
    assert "int8" in set(flat.row_fields["encoding"])  # type: ignore[index]
    analysis = analyze_inputs(inputs, [preset_links()["3g"]], Objective(), _options())
    assert analysis.links[0].best is not None


def _options():
    from dnntune.analysis.costs import CostOptions

    return CostOptions()


def test_samples_folder_reads_npy_tensors(trained, tmp_path: Path):
    from dnntune.wire.samples import load_samples

    np.save(tmp_path / "a.npy", np.zeros((1, 32, 32, 3), np.float32))
    samples = load_samples((32, 32, 3), "shape_cnn", str(tmp_path))
    assert samples.pixels is None and samples.inputs.shape == (1, 32, 32, 3)
