"""Validation: run chosen splits for real over an emulated link and compare with predictions.

For each link, a :class:`~dnntune.netem.shaper.ShapingProxy` shapes the gRPC traffic between
this process (the device: it runs the head) and the cloud server (it runs the tail) to
the link's uplink, downlink and RTT. Each selected cut runs end to end; the measured
latency is set against the analyzer's prediction for that cut and link.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnntune.analysis.partition import LinkAnalysis
from dnntune.errors import DnntuneError
from dnntune.rpc.splitrun import run_split

CUT_CHOICES = "best|all|spread[:K]|top:K|N,M,..."


@dataclass(frozen=True)
class CutValidation:
    """One cut on one link: predicted against measured end-to-end latency (ms)."""

    index: int
    after: str | None
    bytes_up: int
    predicted_ms: float
    predicted_tm_ms: float
    predicted_tt_ms: float
    predicted_tc_ms: float
    measured_ms: float
    measured_p90_ms: float
    head_ms: float
    transfer_ms: float
    tail_ms: float
    error_pct: float
    max_abs_error: float
    # With --wire (docs/wire.md): the row's encoding ("" without --wire; "none" when
    # nothing crosses), its row in the analysis, the bytes measured on the wire per run
    # (bytes_up is the prediction's) and the codec times measured on each side.
    encoding: str = ""
    row: int | None = None
    measured_bytes_up: int | None = None
    encode_ms: float = 0.0
    decode_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LinkValidation:
    name: str
    up_mbps: float
    down_mbps: float
    rtt_ms: float
    shaping: dict[str, Any]
    cuts: tuple[CutValidation, ...]

    @property
    def median_abs_error_pct(self) -> float:
        return float(statistics.median(abs(c.error_pct) for c in self.cuts))

    @property
    def predicted_best(self) -> CutValidation:
        return min(self.cuts, key=lambda c: (c.predicted_ms, c.index))

    @property
    def measured_best(self) -> CutValidation:
        return min(self.cuts, key=lambda c: (c.measured_ms, c.index))

    @staticmethod
    def label(c: CutValidation) -> str:
        """``cut 63`` or, with --wire, ``cut 63 as int8``."""
        return f"cut {c.index}" + (f" as {c.encoding}" if c.encoding else "")

    @property
    def regret_pct(self) -> float:
        """How much slower the predicted-best cut ran than the best cut among those run."""
        return 100.0 * (self.predicted_best.measured_ms / self.measured_best.measured_ms - 1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "up_mbps": self.up_mbps, "down_mbps": self.down_mbps,
                "rtt_ms": self.rtt_ms, "shaping": self.shaping,
                "cuts": [c.to_dict() for c in self.cuts],
                "median_abs_error_pct": self.median_abs_error_pct,
                "regret_pct": self.regret_pct,
                "predicted_best": self.predicted_best.index,
                "measured_best": self.measured_best.index,
                "predicted_best_encoding": self.predicted_best.encoding,
                "measured_best_encoding": self.measured_best.encoding}


@dataclass(frozen=True)
class Validation:
    model: str
    num_runs: int
    links: tuple[LinkValidation, ...]
    device_label: str = "measured"  # emulated:<preset> when heads ran on an emulated agent
    device_note: str = ""
    # The device profile the predictions come from: "tf" (per-layer TensorFlow) or
    # "litert" (LiteRT head latencies at the validated cuts), and what it was.
    predicted_from: str = "tf"
    predicted_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "num_runs": self.num_runs,
                "device_label": self.device_label, "device_note": self.device_note,
                "predicted_from": self.predicted_from, "predicted_note": self.predicted_note,
                "links": [link.to_dict() for link in self.links]}


def at_measured_cuts(analyses: Sequence[LinkAnalysis], device: Any) -> list[LinkAnalysis]:
    """``analyses`` of a device profile measured at chosen cuts (LiteRT heads), each row
    labelled with the model's cut it stands for, so the cuts run are the cuts predicted
    (such an analysis counts its rows, not the model's cuts)."""
    import dataclasses

    from dnntune.analysis.measured_cuts import measured_cut_indices

    indices = np.asarray(measured_cut_indices(device), dtype=np.int64)
    return [dataclasses.replace(la, inputs=dataclasses.replace(la.inputs, cut_index=indices))
            for la in analyses]


def parse_cut_spec(spec: str) -> tuple[str, int, tuple[int, ...]]:
    """Check ``--cuts`` before anything runs: ``(kind, spread count, explicit indices)``."""
    if spec in ("best", "all"):
        return spec, 0, ()
    if spec.startswith("top:"):
        count = spec[4:]
        if not count.isdigit() or int(count) < 1:
            raise DnntuneError(f"--cuts {spec!r}: expected top:K with K >= 1")
        return "top", int(count), ()
    if spec.startswith("spread"):
        _, sep, count = spec.partition(":")
        if spec != "spread" and (not sep or not count.isdigit() or int(count) < 2):
            raise DnntuneError(f"--cuts {spec!r}: expected spread or spread:K with K >= 2")
        return "spread", int(count or 20), ()
    try:
        picks = tuple(sorted({int(x) for x in spec.split(",")}))
    except ValueError:
        raise DnntuneError(f"--cuts {spec!r}: expected {CUT_CHOICES}") from None
    if any(i < 0 for i in picks):
        raise DnntuneError(f"--cuts {spec!r}: cut indices start at 0")
    return "list", 0, picks


def select_cuts(spec: str, la: LinkAnalysis) -> list[int]:
    """Rows of ``la`` to run (its cuts; with --wire, its (cut, encoding) rows).

    Cuts: ``best`` (the predicted-fastest cut and both baselines), ``all``,
    ``spread[:K]`` (K evenly spaced cuts plus those three, K default 20), ``top:K`` (the K
    predicted-fastest cuts plus both baselines) or a comma-separated list. With --wire a
    cut's latency is its best row's, and every admitted row of a chosen cut runs."""
    kind, count, picks = parse_cut_spec(spec)
    cut_of = _cut_of(la)
    last = int(cut_of.max())
    latency = np.full(last + 1, np.inf)
    np.minimum.at(latency, cut_of, la.table.latency_ms)
    anchors = {0, last, int(np.argmin(latency))}
    if kind == "best":
        chosen = anchors
    elif kind == "all":
        chosen = set(range(last + 1))
    elif kind == "top":
        chosen = anchors | {int(i) for i in np.argsort(latency, kind="stable")[:count]}
    elif kind == "spread":
        chosen = anchors | set(np.linspace(0, last, count).round().astype(int).tolist())
    else:
        bad = [i for i in picks if i > last]
        if bad:
            raise DnntuneError(f"--cuts: cut(s) {bad} out of range 0 to {last}")
        chosen = set(picks)
    return [r for r in range(len(cut_of)) if int(cut_of[r]) in chosen]


def _cut_of(la: LinkAnalysis) -> np.ndarray:
    """The prefix cut of each row of ``la`` (rows are cuts without --wire)."""
    if la.inputs.cut_index is not None:
        return np.asarray(la.inputs.cut_index)
    return np.arange(len(la.inputs.after))


def row_encoding(la: LinkAnalysis, row: int) -> str:
    """The encoding of a row ("" without --wire; "none" where nothing crosses)."""
    fields = la.inputs.row_fields
    return "" if fields is None else str(fields["encoding"][row])


def validate_cut(la: LinkAnalysis, index: int, result: Any) -> CutValidation:
    """Set one row's measured runs (a :class:`~dnntune.rpc.splitrun.SplitResult`)
    against la (``index`` is a cut, or with --wire a (cut, encoding) row)."""
    totals = np.array([r.total_ms for r in result.runs])
    predicted = float(la.table.latency_ms[index])
    measured = float(totals.mean())
    wired = la.inputs.row_fields is not None
    return CutValidation(
        encoding=row_encoding(la, index), row=index if wired else None,
        measured_bytes_up=int(result.bytes_up) if wired else None,
        encode_ms=float(np.mean([getattr(r, "encode_ms", 0.0) for r in result.runs])),
        decode_ms=float(np.mean([getattr(r, "decode_ms", 0.0) for r in result.runs])),
        index=int(_cut_of(la)[index]), after=la.inputs.after[index],
        bytes_up=int(la.table.bytes_up[index]),
        predicted_ms=predicted, predicted_tm_ms=float(la.table.tm_ms[index]),
        predicted_tt_ms=float(la.table.tt_ms[index]),
        predicted_tc_ms=float(la.table.tc_ms[index]), measured_ms=measured,
        measured_p90_ms=float(np.percentile(totals, 90)),
        head_ms=float(np.mean([r.head_ms for r in result.runs])),
        transfer_ms=float(np.mean([r.transfer_ms for r in result.runs])),
        tail_ms=float(np.mean([r.tail_ms for r in result.runs])),
        error_pct=100.0 * (predicted / measured - 1.0), max_abs_error=result.max_abs_error)


def validate_links(loaded: Any, analyses: Sequence[LinkAnalysis], cloud_host: str,
                   cloud_port: int, cut_spec: str, num_runs: int, spec: Any,
                   connect: Callable[..., Any],
                   report: Callable[[str, int, int], None] | None = None,
                   shaper: str = "proxy", cloud_threads: int = 1,
                   model_file: str | Path | None = None) -> list[LinkValidation]:
    """Run the selected cuts of every link over an emulated link to a cloud server.

    Args:
        loaded: The model on the device side (this process runs the heads).
        analyses: The analyzer's per-link results (the predictions).
        cloud_host, cloud_port: The cloud server (``proxy`` shaping).
        cut_spec: Which cuts, see :func:`select_cuts`.
        num_runs: Timed runs per cut.
        spec: The ``ModelSpec`` the cloud server knows the model by.
        connect: ``connect(address)`` returns a client with ``run_tail`` and ``echo``.
        report: Progress callback ``(stage, done, total)``.
        shaper: ``proxy`` (user-space rate and delay, anywhere) or ``tbf`` (root: a cloud
            server in a network namespace behind tc tbf rates, delay from the proxy).
        cloud_threads: Threads of the cloud server started for ``tbf``.
        model_file: The file ``spec`` names by sha256: the server started for ``tbf``
            finds it in its store at start, instead of receiving it through the shaped
            link (minutes for ResNet50 at 3G rates).
    """
    from dnntune.model.loading import compile_model
    from dnntune.model.split import Splitter

    if shaper not in ("proxy", "tbf"):
        raise DnntuneError(f"--shaper must be proxy or tbf, got {shaper!r}")
    splitter = Splitter(loaded.model, loaded.graph)
    reference = compile_model(loaded.model)(loaded.example_inputs())
    runner: Callable[..., Any] = (
        _proxy_link if shaper == "proxy"
        else functools.partial(_tbf_link, seed=_seed(spec, model_file)))
    results = []
    for la in analyses:
        cuts = select_cuts(cut_spec, la)
        with runner(la, cloud_host, cloud_port, connect, cloud_threads) as (shaped, warm,
                                                                             shaping):
            validated = []
            for done, index in enumerate(cuts):
                if report:
                    report(f"{la.link.name}: cut {index}", done, len(cuts))
                result = run_split(loaded, splitter.split(index), shaped, spec, num_runs,
                                   warmup_runs=1, warmup_cloud=warm, reference=reference)
                validated.append(validate_cut(la, index, result))
        results.append(LinkValidation(la.link.name, la.link.up_mbps, la.link.down_mbps,
                                      la.link.rtt_ms, shaping, tuple(validated)))
    return results


def validate_on_agent(agent: Any, analyses: Sequence[LinkAnalysis], cloud_host: str,
                      cloud_port: int, listen: tuple[str, int], cut_spec: str, num_runs: int,
                      spec: Any, report: Callable[[str, int, int], None] | None = None,
                      framework: str = "tf") -> list[LinkValidation]:
    """Run the selected cuts of every link on a device agent, its traffic shaped.

    The agent runs each head (``RunSplit``) and sends the crossing tensors to the
    cloud server it was started with, which must be ``listen``: a shaping proxy
    opened there, one link at a time, in front of the cloud server.

    Args:
        agent: A :class:`~dnntune.rpc.client.ProfilerClient` of the device agent.
        analyses: The analyzer's per-link results (the predictions).
        cloud_host, cloud_port: The cloud server behind the proxy.
        listen: ``(host, port)`` where the proxy listens: the agent's ``--cloud``.
        cut_spec: Which cuts, see :func:`select_cuts`.
        num_runs: Timed runs per cut (after one warm-up run over the same link).
        spec: The ``ModelSpec`` both sides know the model by.
        report: Progress callback ``(stage, done, total)``.
        framework: The device runtime of the heads: ``tf`` or ``litert`` (a LiteRT
            model of each cut, converted on the agent before its runs).
    """
    from dnntune.netem.linkprobe import measure_emulated_link
    from dnntune.netem.shaper import LinkShape, ShapingProxy

    results = []
    for la in analyses:
        cuts = select_cuts(cut_spec, la)
        shape = LinkShape.from_link(la.link)
        shaping = measure_emulated_link(shape, up_bytes=_probe_bytes(shape.up_mbps),
                                        down_bytes=_probe_bytes(shape.down_mbps), pings=3)
        validated = []
        with ShapingProxy(cloud_host, cloud_port, shape, listen_host=listen[0],
                          listen_port=listen[1]):
            for done, row in enumerate(cuts):
                cut, encoding = int(_cut_of(la)[row]), row_encoding(la, row)
                # mobile-only sends nothing; it still runs on the photograph
                wire = "fp32" if encoding == "none" else encoding
                if report:
                    report(f"{la.link.name}: cut {cut}" + (f" as {wire}" if wire else ""),
                           done, len(cuts))
                result = run_split_on_agent(agent, spec, cut, num_runs, wire=wire,
                                            framework=framework)
                validated.append(validate_cut(la, row, result))
        results.append(LinkValidation(la.link.name, la.link.up_mbps, la.link.down_mbps,
                                      la.link.rtt_ms, {"method": "proxy", **shaping.to_dict()},
                                      tuple(validated)))
    return results


def run_split_on_agent(agent: Any, spec: Any, index: int, num_runs: int,
                       warmup_runs: int = 1, attempts: int = 5, wire: str = "",
                       framework: str = "tf") -> Any:
    """One ``RunSplit`` on the agent, as a :class:`~dnntune.rpc.splitrun.SplitResult`.

    ``wire``: the encoding the agent sends the crossing tensors in ("" = plain tensors).

    The agent's channel to the cloud reconnects when a new link's proxy replaces the
    last one, so a call refused as unavailable meanwhile is retried after a second.
    """
    import time

    from dnntune.rpc.splitrun import SplitResult, SplitTiming

    request = agent.pb2.SplitRequest(model=spec, cut_index=index, num_runs=num_runs,
                                     warmup_runs=warmup_runs, wire=wire,
                                     framework="" if framework == "tf" else framework)
    for attempt in range(attempts):
        try:
            # A LiteRT head is converted on the agent before its first runs: minutes
            # for a large model, once.
            reply = agent.call(agent.device.RunSplit, request,
                               timeout_s=600.0 if framework == "litert" else 60.0)
            break
        except DnntuneError as exc:
            if "unavailable" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(1.0)
    return SplitResult(tuple(SplitTiming(r.total_ms, r.head_ms, r.transfer_ms, r.tail_ms,
                                         r.encode_ms, r.decode_ms)
                             for r in reply.runs),
                       reply.max_abs_error, reply.bytes_up, reply.bytes_down)


@contextlib.contextmanager
def _proxy_link(la: LinkAnalysis, host: str, port: int, connect: Callable[..., Any],
                threads: int) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """A shaping proxy in front of the cloud server; warm-ups go around it."""
    from dnntune.netem.linkprobe import measure_emulated_link
    from dnntune.netem.shaper import LinkShape, ShapingProxy

    shape = LinkShape.from_link(la.link)
    shaping = measure_emulated_link(shape, up_bytes=_probe_bytes(shape.up_mbps),
                                    down_bytes=_probe_bytes(shape.down_mbps), pings=3)
    direct = connect(f"{host}:{port}")
    with ShapingProxy(host, port, shape) as proxy:
        shaped = connect(f"127.0.0.1:{proxy.port}")
        shaped.echo([("warm", np.zeros(1, np.float32))])  # HTTP/2 set-up off the clock
        try:
            yield shaped, direct, {"method": "proxy", **shaping.to_dict()}
        finally:
            shaped.close()
            direct.close()


@contextlib.contextmanager
def _tbf_link(la: LinkAnalysis, host: str, port: int, connect: Callable[..., Any],
              threads: int, seed: tuple[str, Path] | None = None
              ) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """A cloud server in a network namespace behind tbf; the proxy adds only the delay.

    ``seed`` (the model's sha256 and file) is put in the server's store before it starts.
    """
    from dnntune.netem.linkprobe import measure_link
    from dnntune.netem.netns import NamespaceLink, entered_netns
    from dnntune.netem.shaper import LinkShape, ShapingProxy

    if la.link.trace is not None:
        raise DnntuneError(f"--shaper tbf: link {la.link.name!r} follows a trace, which tbf "
                           "(a constant rate) cannot; use --shaper proxy")
    with contextlib.ExitStack() as stack:
        # The store outlives the namespace (and the server in it): made first, gone last.
        store = stack.enter_context(tempfile.TemporaryDirectory(prefix="dnntune-tbf-"))
        if seed is not None:
            shutil.copyfile(seed[1], Path(store) / f"{seed[0]}{seed[1].suffix}")
        veth = stack.enter_context(NamespaceLink(la.link.up_mbps, la.link.down_mbps))
        probe_port = veth.start_measurement_server()
        with entered_netns(veth.client_ns):
            shaping = measure_link((veth.server_addr, probe_port),
                                   LinkShape(la.link.up_mbps, la.link.down_mbps, 0.0),
                                   up_bytes=_probe_bytes(la.link.up_mbps),
                                   down_bytes=_probe_bytes(la.link.down_mbps), pings=3)
        veth.popen(veth.server_ns, [sys.executable, "-m", "cloud_server", "--host",
                                    veth.server_addr, "--port", "50051", "--num_threads",
                                    str(threads), "--upload-dir", store],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with ShapingProxy(veth.server_addr, 50051, LinkShape.delay_only(la.link.rtt_ms),
                          upstream_netns=veth.client_ns) as proxy:
            # Refused connections are expected while the server starts in its namespace.
            shaper_log = logging.getLogger("dnntune.netem.shaper")
            level = shaper_log.level
            shaper_log.setLevel(logging.ERROR)
            try:
                shaped = connect(f"127.0.0.1:{proxy.port}", connect_timeout_s=120)
            finally:
                shaper_log.setLevel(level)
            shaped.echo([("warm", np.zeros(1, np.float32))])
            try:
                yield shaped, None, {"method": "tbf+proxy delay", **shaping.to_dict()}
            finally:
                shaped.close()


def _seed(spec: Any, model_file: str | Path | None) -> tuple[str, Path] | None:
    """``(sha256, file)`` when ``spec`` names an uploaded model held in ``model_file``."""
    if model_file is None or spec.WhichOneof("source") != "sha256":
        return None
    return spec.sha256, Path(str(model_file).split("?", 1)[0])  # a graph: FILE.pb?input=..


def _probe_bytes(mbps: float) -> int:
    """About 0.3 s of traffic, between 64 kB and 4 MB (timed three times each way)."""
    return int(min(max(mbps * 1e6 / 8 * 0.3, 64_000), 4_000_000))
