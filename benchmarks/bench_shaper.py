"""Link emulation accuracy: achieved vs target throughput and RTT for the link presets.

Run from the repository root (kernel rows need root, ``ip`` and ``tc``)::

    .venv/bin/python benchmarks/bench_shaper.py [--seconds 1.0] [--pings 5] [--json]

For each preset (3g, 4g, wifi) a bulk upload and a bulk download, each sized to last
about ``--seconds`` at the target rate, plus ``--pings`` round trips, go through:

* ``proxy``: the user-space :class:`dnntune.netem.shaper.ShapingProxy` (rate and delay);
* ``tbf``: ``tc`` tbf on a veth pair between two network namespaces (rate only);
* ``tbf+proxy``: tbf for the rate, a delay-only proxy for the RTT (kernel shaping as
  :mod:`dnntune.netem.netns` documents it).

Each figure is shown as achieved/target and as achieved/baseline, where the baseline is
the same transfer unshaped on loopback, measured in the same run (how far below the
machine's own speed the shaping holds the link). RTT is the median ping and the fastest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnntune.analysis.links import preset_links
from dnntune.netem.linkprobe import (
    LinkMeasurement,
    MeasurementServer,
    measure_emulated_link,
    measure_link,
)
from dnntune.netem.netns import NamespaceLink, entered_netns, kernel_shaping_available
from dnntune.netem.shaper import LinkShape, ShapingProxy

BASELINE_BYTES = 20_000_000


def sizes(shape: LinkShape, seconds: float) -> dict[str, int]:
    """Transfer sizes lasting ``seconds`` at the target rates (at least 64 kB)."""
    return {"up_bytes": max(65_536, round(shape.up_mbps * 125_000 * seconds)),
            "down_bytes": max(65_536, round(shape.down_mbps * 125_000 * seconds))}


def baseline(pings: int, through_proxy: bool = False) -> LinkMeasurement:
    """Unshaped loopback: the machine's own speed, or the proxy's ceiling."""
    kw: dict[str, Any] = {"up_bytes": BASELINE_BYTES, "down_bytes": BASELINE_BYTES,
                          "pings": pings}
    if through_proxy:
        return measure_emulated_link(LinkShape(math.inf, math.inf, 0.0), **kw)
    with MeasurementServer() as sink:
        return measure_link(sink.port, **kw)


@contextlib.contextmanager
def kernel_link(shape: LinkShape) -> Iterator[tuple[NamespaceLink, int]]:
    with NamespaceLink(shape.up_mbps, shape.down_mbps) as veth:
        yield veth, veth.start_measurement_server(max_s=120)


def measure_kernel(shape: LinkShape, pings: int, seconds: float,
                   ) -> list[tuple[str, LinkMeasurement, dict[str, int]]]:
    rows = []
    kw: dict[str, Any] = {**sizes(shape, seconds), "pings": pings}
    with kernel_link(shape) as (veth, port):
        rate_only = LinkShape(shape.up_mbps, shape.down_mbps, 0.0)
        with entered_netns(veth.client_ns):
            m = measure_link((veth.server_addr, port), rate_only, **kw)
        rows.append(("tbf", m, veth.dropped_packets()))
        with ShapingProxy(veth.server_addr, port, LinkShape.delay_only(shape.rtt_ms),
                          upstream_netns=veth.client_ns) as proxy:
            m = measure_link(proxy, shape, **kw)
        rows.append(("tbf+proxy", m, veth.dropped_packets()))
    return rows


def sig3(x: float | None) -> str:
    """Three significant figures, trailing zeros kept (1.00, 0.0296, 151, 22190)."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:#.3g}".rstrip(".") if abs(x) < 1000 else f"{x:.0f}"


def ratio(a: float, b: float | None) -> float | None:
    return None if b is None or not math.isfinite(b) or b == 0 else a / b


HEADER = ("link", "method", "up Mbit/s", "target", "ratio", "/base", "down Mbit/s",
          "target", "ratio", "/base", "RTT ms", "min", "target", "drops")


def table_row(link: str, method: str, m: LinkMeasurement, base: LinkMeasurement,
              drops: dict[str, int] | None) -> list[str]:
    return [link, method,
            sig3(m.achieved_up_mbps), sig3(m.target_up_mbps),
            sig3(ratio(m.achieved_up_mbps, m.target_up_mbps)),
            sig3(ratio(m.achieved_up_mbps, base.achieved_up_mbps)),
            sig3(m.achieved_down_mbps), sig3(m.target_down_mbps),
            sig3(ratio(m.achieved_down_mbps, m.target_down_mbps)),
            sig3(ratio(m.achieved_down_mbps, base.achieved_down_mbps)),
            sig3(m.achieved_rtt_ms), sig3(m.min_rtt_ms), sig3(m.target_rtt_ms),
            "-" if drops is None else str(sum(drops.values()))]


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [list(HEADER), *rows]) for i in range(len(HEADER))]
    for r in [list(HEADER), *rows]:
        print("  ".join(c.rjust(w) if i > 1 else c.ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="length of each bulk transfer at the target rate")
    parser.add_argument("--pings", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print raw results as JSON")
    args = parser.parse_args()
    kernel_ok, why = kernel_shaping_available()
    base = baseline(args.pings)
    results: list[tuple[str, str, LinkMeasurement, dict[str, int] | None]] = []
    for name, link in preset_links().items():
        shape = LinkShape.from_link(link)
        kw: dict[str, Any] = {**sizes(shape, args.seconds), "pings": args.pings}
        results.append((name, "proxy", measure_emulated_link(shape, **kw), None))
        if kernel_ok:
            results += [(name, method, m, drops)
                        for method, m, drops in measure_kernel(shape, args.pings,
                                                               args.seconds)]
    if args.json:
        print(json.dumps({"baseline": base.to_dict(), "kernel_shaping": why,
                          "rows": [{"link": n, "method": k, **m.to_dict(), "drops": d}
                                   for n, k, m, d in results]}, indent=1))
        return 0
    ceiling = baseline(args.pings, through_proxy=True)
    for label, m in (("baseline (unshaped loopback)", base),
                     ("unshaped proxy (its ceiling)", ceiling)):
        print(f"{label}: up {sig3(m.achieved_up_mbps)} Mbit/s, down "
              f"{sig3(m.achieved_down_mbps)} Mbit/s, RTT {sig3(m.achieved_rtt_ms)} ms")
    print(f"kernel shaping: {why}\n")
    print_table([table_row(n, k, m, base, d) for n, k, m, d in results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
