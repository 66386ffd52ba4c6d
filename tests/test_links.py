"""Link presets, YAML link files and --links resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnntune.analysis.links import (
    Link,
    asdict_numbers,
    load_links_file,
    preset_links,
    resolve_links,
)
from dnntune.errors import ConfigError, DnntuneError
from tests.analyzer_fixtures import constant_mahimahi

REPO = Path(__file__).resolve().parents[1]


def test_builtin_presets_equal_configs_links_yaml() -> None:
    from_file = load_links_file(REPO / "configs" / "links.yaml")
    builtin = preset_links()
    assert list(from_file) == list(builtin) == ["3g", "4g", "wifi", "wifi-2022", "lte-2021",
                                                "5g-low", "5g-mmwave", "5g-2024"]
    for name, link in builtin.items():
        assert asdict_numbers(from_file[name]) == asdict_numbers(link), name
        assert from_file[name].power_source == link.power_source, name
        assert from_file[name].power_borrowed == link.power_borrowed, name


def test_presets_carry_the_design_table() -> None:
    """DESIGN.md: OpenSignal 2017 bandwidths, Huang et al. 2012 power model, LTE radio."""
    table = {"3g": (1.1, 2.0275, 868.98, 122.12, 817.88),
             "4g": (5.85, 13.76, 438.39, 51.97, 1288.04),
             "wifi": (18.88, 54.97, 283.17, 137.01, 132.86)}
    links = preset_links()
    for name, values in table.items():
        link = links[name]
        assert (link.up_mbps, link.down_mbps, link.alpha_up_mw_per_mbps,
                link.alpha_down_mw_per_mbps, link.beta_mw) == values
    lte = links["4g"]
    assert (round(lte.promotion_ms), round(lte.promotion_mw)) == (260, 1211)
    assert lte.tail_mw == 1060.0
    assert 10_000 <= lte.tail_ms <= 11_600


def test_every_preset_number_has_a_source_comment() -> None:
    for line in (REPO / "configs" / "links.yaml").read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and key.startswith("    ") and value.strip()[:1].isdigit() and \
                key.strip() not in ("tail_ms", "tail_mw", "rtt_ms"):
            assert "#" in value, line  # 3G tail and Wi-Fi RTT are explained above them


def test_power_model_units() -> None:
    link = preset_links()["3g"]  # 1.1 up, 2.0275 down: inside the (assumed) range
    assert link.up_power_mw() == pytest.approx(868.98 * 1.1 + 817.88)
    assert link.down_power_mw() == pytest.approx(122.12 * 2.0275 + 817.88)
    assert link.up_extrapolation() == link.down_extrapolation() == ""


def test_the_2012_wifi_preset_is_held_and_labelled_not_5_watts() -> None:
    """Issue 21: Wi-Fi at 18.88 up / 54.97 down gave 5.48 W / 7.66 W unlabelled."""
    link = preset_links()["wifi"]
    assert link.up_power_mw() == pytest.approx(283.17 * 6.0 + 132.86)  # held at 6 Mbit/s
    assert link.down_power_mw() == pytest.approx(137.01 * 13.0 + 132.86)  # at 13
    for label, span in ((link.up_extrapolation(), "0-6"), (link.down_extrapolation(), "0-13")):
        assert label == (f"extrapolated (fit holds for {span} Mbit/s, Huang et al., "
                         "MobiSys 2012; range assumed, see configs/links.yaml)")


def test_user_links_file_with_base_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("links:\n  slow-lte:\n    base: 4g\n    up_mbps: 1\n    rtt_ms: 120\n"
                    "  lab:\n    up_mbps: 100\n    down_mbps: 100\n    rtt_ms: 1\n"
                    "    alpha_up_mw_per_mbps: 0\n    alpha_down_mw_per_mbps: 0\n"
                    "    beta_mw: 500\n")
    links = load_links_file(path)
    assert links["slow-lte"].up_mbps == 1.0
    assert links["slow-lte"].rtt_ms == 120.0
    assert links["slow-lte"].beta_mw == preset_links()["4g"].beta_mw
    assert links["lab"].tail_ms == 0.0



def test_a_borrowed_fit_is_labelled_in_both_directions_at_every_rate(
        tmp_path: Path) -> None:
    """5g-2024: nationwide 2024 medians with the low-band fit borrowed (issue 21)."""
    link, low = preset_links()["5g-2024"], preset_links()["5g-low"]
    assert (link.down_mbps, link.up_mbps, link.rtt_ms) == (265.8, 14.56, 47.0)
    assert link.down_power_mw() == pytest.approx(low.down_power_mw(100.45))  # held
    assert link.up_power_mw() == pytest.approx(low.up_power_mw(14.56))  # inside its range
    assert link.up_extrapolation() == ""  # inside the range: not extrapolated...
    assert link.up_power_label().startswith("borrowed (the NSA low-band fit")  # ...borrowed
    down = link.down_power_label()
    assert down.startswith("borrowed (") and "; extrapolated (fit holds for 1.04-100.45" in down
    assert link.to_dict()["up_power_label"] == link.up_power_label()
    assert "borrowed" not in low.up_power_label() + low.down_power_label()  # its own fit
    # A links file built on it inherits the label; its own key replaces it.
    path = tmp_path / "mine.yaml"
    path.write_text("links:\n  a:\n    base: 5g-2024\n    rtt_ms: 30\n"
                    "  b:\n    base: 5g-2024\n    power_borrowed: ''\n")
    mine = load_links_file(path)
    assert mine["a"].power_borrowed == link.power_borrowed and mine["b"].power_borrowed == ""


@pytest.mark.parametrize(("body", "fragments"), [
    ("links:\n  x:\n    base: 4g\n    up_mbps: 0\n",
     ["links.x", "'up_mbps'", "a rate from 0.001", "got 0"]),
    ("links:\n  x:\n    base: 4g\n    down_mbps: -3\n", ["links.x", "'down_mbps'", "got -3"]),
    ("links:\n  x:\n    base: 3g\n    up_mbps: 1.0e-320\n", ["'up_mbps'", "got 1e-320"]),
    ("links:\n  x:\n    base: 3g\n    rtt_ms: 1.0e+300\n", ["'rtt_ms'", "got 1e+300"]),
    ("links:\n  x:\n    base: 4g\n    rtt_ms: fast\n",
     ["'rtt_ms'", "a number from 0 to 1e+09", "'fast'"]),
    ("links:\n  x:\n    base: 4g\n    up_mbit: 3\n", ["unknown key 'up_mbit'", "up_mbps"]),
    ("links:\n  x:\n    up_mbps: 3\n", ["missing key 'down_mbps'"]),
    ("links:\n  x:\n    base: 5g\n", ["'base' must be one of 3g, 4g, wifi", "'5g'"]),
    ("links: [1, 2]\n", ["expected a mapping with key 'links'"]),
    ("links:\n  x: [\n", ["not valid YAML"]),
    ("links:\n  x:\n    base: 4g\n    up_mbps: 2\n    trace: t.up\n", ["'trace' or 'up_mbps'"]),
])
def test_bad_links_file_names_file_key_and_expectation(tmp_path: Path, body: str,
                                                       fragments: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_links_file(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_link_constructor_validates() -> None:
    with pytest.raises(ConfigError, match="'up_mbps' must be a rate from 0.001"):
        Link("x", up_mbps=0.0, down_mbps=1.0, rtt_ms=0.0, alpha_up_mw_per_mbps=0.0,
             alpha_down_mw_per_mbps=0.0, beta_mw=0.0)


def test_resolve_presets_and_default() -> None:
    assert [link.name for link in resolve_links(None)] == ["3g", "4g", "wifi"]
    assert [link.name for link in resolve_links(["wifi, 3g", "4g"])] == ["wifi", "3g", "4g"]


def test_resolve_unknown_link_lists_known_ones() -> None:
    with pytest.raises(DnntuneError, match=r"unknown link '5g'.*3g, 4g, wifi"):
        resolve_links(["4g,5g"])


def test_resolve_duplicate_names() -> None:
    with pytest.raises(DnntuneError, match="given twice"):
        resolve_links(["4g,4g"])


def test_resolve_yaml_and_trace_files(tmp_path: Path) -> None:
    yaml_path = tmp_path / "l.yml"
    yaml_path.write_text("links:\n  a:\n    base: wifi\n  b:\n    base: 3g\n")
    trace = constant_mahimahi(tmp_path / "flat.up", packets_per_ms=1, period_ms=100)
    links = resolve_links([f"{yaml_path},{trace}@3g"])
    assert [link.name for link in links] == ["a", "b", "flat.up"]
    traced = links[-1]
    assert traced.trace is not None
    assert traced.up_mbps == pytest.approx(12.0)
    assert traced.rtt_ms == preset_links()["3g"].rtt_ms
    assert "from preset 3g" in traced.source
    default_base = resolve_links([str(trace)])[0]
    assert default_base.beta_mw == preset_links()["4g"].beta_mw


def test_yaml_link_with_trace_relative_to_file(tmp_path: Path) -> None:
    constant_mahimahi(tmp_path / "t.up", packets_per_ms=1, period_ms=10)
    path = tmp_path / "links.yaml"
    path.write_text("links:\n  traced:\n    base: 4g\n    trace: t.up\n")
    link = load_links_file(path)["traced"]
    assert link.trace is not None
    assert link.up_mbps == pytest.approx(12.0)


def test_trace_link_with_malformed_trace_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.up"
    path.write_text("1\n2\nthree\n")
    with pytest.raises(DnntuneError, match=r"broken.up:3:"):
        resolve_links([str(path)])
