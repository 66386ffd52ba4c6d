"""Run inferences the way an app would: the head on the phone, the tail on the server.

:class:`SplitRunner` loads a bundle (:mod:`dnntune.deploy.bundle`), runs each cut's head
in LiteRT, sends the crossing tensors to the cloud server (``RunTail``) and takes the
model outputs back. It picks the cut from the bundle's policy with the uplink and RTT it
estimates from its own traffic:

* RTT: a one-element ``Echo``, at start and on every probe (the smallest seen recently);
* uplink: every tail call's bytes over its network time (wall time minus the cloud's
  reported compute, minus the RTT), smoothed in log space (a sample over 2x off is a
  new link and is taken as it is); while nothing is
  sent (mobile-only, or the server down) a probe ``Echo`` of :data:`PROBE_BYTES` every
  ``probe_every_s`` seconds measures it (its way back at the policy link's downlink).

It falls back to the whole model on the phone (``device/model.tflite``) when the server
is unreachable, refuses, or would miss the deadline: a tail call gets as its own deadline
what is left of ``deadline_ms`` after the phone's mobile-only time is set aside, so a
fallback still finishes in time when it can. A server that failed is probed again after
a backoff (1 s, doubling to 30 s) on a new channel. Every input gets exactly one result,
numbered in order; an abandoned call is cancelled by its deadline, never answered twice.

On an emulated phone (``emulate_ms``) the LiteRT heads are time-dilated: each head is
held until ``k`` times its median native time (measured at start) has passed, with ``k``
chosen so that the whole model takes ``emulate_ms`` (the device profile's mobile-only
time); serialising, the link and the cloud run at real speed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dnntune.deploy.bundle import Bundle, BundleCut
from dnntune.deploy.policy import CutChooser
from dnntune.errors import DnntuneError

PROBE_BYTES = 64_000
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
EWMA = 0.5          # weight of a new uplink sample (log space)
JUMP = 2.0          # a sample this many times off the estimate is a new link: taken as is
MIN_SAMPLE_BYTES = 8_000  # smaller transfers say more about the RTT than the uplink
HEAD_TIMING_RUNS = 5


@dataclass
class InferenceResult:
    """One inference: what it ran, how long it took, and its outputs."""

    seq: int
    cut: int
    after: str | None
    latency_ms: float
    fell_back: bool
    reason: str
    up_mbps: float
    rtt_ms: float
    bytes_up: int = 0
    head_ms: float = 0.0
    network_ms: float = 0.0
    cloud_ms: float = 0.0
    predicted_ms: float = math.nan
    outputs: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("outputs")
        d["outputs"] = [{"shape": list(o.shape), "argmax": int(np.argmax(o))}
                        for o in self.outputs]
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in d.items()}


class SplitRunner:
    """See module docstring.

    Args:
        bundle: A loaded bundle.
        cloud: The server's endpoint (:class:`dnntune.rpc.client.Endpoint`), or ``None``
            to run everything on the phone.
        objective: ``latency-first`` or ``energy-first`` (the policy's table to use).
        deadline_ms: Per-inference deadline, or ``None``.
        threads: LiteRT threads.
        emulate_ms: Emulate a phone whose whole model takes this long (see above).
        probe_every_s: Probe interval while nothing crosses.
        initial_up_mbps: The uplink assumed before anything was measured.
        fixed_cut: Always this cut (a baseline: always cloud-only, always mobile-only);
            the fallbacks still apply.
    """

    def __init__(self, bundle: Bundle, cloud: Any = None, objective: str = "latency-first",
                 deadline_ms: float | None = None, threads: int = 1,
                 emulate_ms: float | None = None, probe_every_s: float = 2.0,
                 initial_up_mbps: float = 1.0, fixed_cut: int | None = None) -> None:
        from dnntune.analysis.links import preset_links

        if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
            raise DnntuneError(f"--deadline-ms must be a positive number, got {deadline_ms!r}")
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.fixed_cut = fixed_cut
        if fixed_cut is not None:
            self.manifest.cut(fixed_cut)  # one line if the bundle does not ship it
        self.chooser = CutChooser(bundle.policy, objective)
        self.deadline_ms = deadline_ms
        self.threads = threads
        self.endpoint = cloud
        self.probe_every_s = probe_every_s
        link = preset_links().get(bundle.policy.link)
        self.down_mbps = link.down_mbps if link is not None else 50.0
        self.up_mbps = initial_up_mbps
        self.rtt_ms = link.rtt_ms if link is not None else 50.0
        self._rtts: list[float] = []
        self._client: Any = None
        self._spec: Any = None
        self._down_until = 0.0
        self._failures = 0
        self._last_sample = -math.inf
        self._seq = 0
        self._interpreters: dict[int, Any] = {}
        self._native_ms: dict[int, float] = {}
        self.factor = 1.0
        self.mobile_ms = 0.0
        self._prepare(emulate_ms)
        if cloud is not None:
            self._reconnect()

    # --- the phone ------------------------------------------------------------------

    def _prepare(self, emulate_ms: float | None) -> None:
        """Load every head (before serving: nothing is converted at run time) and time it."""
        from dnntune.litert.convert import interpreter
        from dnntune.model.loading import generate_inputs

        model = self.manifest.model
        self._inputs_spec = [(tuple(i["shape"]), str(i["dtype"])) for i in model["inputs"]]
        sample = generate_inputs([s for s, _ in self._inputs_spec],
                                 [d for _, d in self._inputs_spec], 0)
        for cut in self.manifest.cuts:
            if cut.head is None:
                continue
            it = interpreter(self.bundle.read(cut.head), self.threads)
            self._interpreters[cut.index] = it
            self._native_ms[cut.index] = self._median_ms(it, sample)
        full = self.manifest.mobile_only.index
        if emulate_ms is not None:
            if not (math.isfinite(emulate_ms) and emulate_ms > 0):
                raise DnntuneError(f"--emulate-ms must be a positive number, got {emulate_ms!r}")
            self.factor = max(emulate_ms / self._native_ms[full], 1.0)
        self.mobile_ms = self.factor * self._native_ms[full]

    def _median_ms(self, it: Any, sample: list[np.ndarray]) -> float:
        from dnntune.litert.profile import run_litert

        run_litert(it, sample)
        times = []
        for _ in range(HEAD_TIMING_RUNS):
            start = time.perf_counter()
            run_litert(it, sample)
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))

    def _run_head(self, cut: BundleCut, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The head's outputs, held to its emulated time (when emulating)."""
        from dnntune.litert.profile import run_litert

        start = time.perf_counter()
        outs = run_litert(self._interpreters[cut.index], inputs)
        if self.factor > 1.0:
            until = start + self.factor * self._native_ms[cut.index] / 1e3
            while (left := until - time.perf_counter()) > 0:
                time.sleep(left)
        return [np.array(o) for o in outs]

    # --- the server -----------------------------------------------------------------

    def _reconnect(self) -> bool:
        """A new channel to the server; ensures it has the bundle's model. False if down."""
        from dnntune.rpc.client import ProfilerClient, connect

        if self._client is not None:
            self._client.close()
            self._client = None
        try:
            client = ProfilerClient(self.endpoint, connect(self.endpoint))
            client.upload_file(self.bundle.path(self.manifest.model_file))
            self._spec = client.pb2.ModelSpec(sha256=self.manifest.model_sha256)
            self._client = client
            self._probe()
        except DnntuneError:
            self._mark_down()
            return False
        self._failures = 0
        self._down_until = 0.0
        return True

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
        self._failures += 1

    def _probe(self) -> None:
        """Measure RTT (one element) and uplink (:data:`PROBE_BYTES`) with ``Echo``."""
        assert self._client is not None
        tiny = [("probe", np.zeros(1, np.uint8))]
        start = time.perf_counter()
        self._client.echo(tiny, timeout_s=5.0)
        rtt = (time.perf_counter() - start) * 1e3
        self._rtts = [*self._rtts, rtt][-5:]
        self.rtt_ms = min(self._rtts)
        big = [("probe", np.zeros(PROBE_BYTES, np.uint8))]
        start = time.perf_counter()
        self._client.echo(big, timeout_s=30.0)
        took = (time.perf_counter() - start) * 1e3
        down_ms = PROBE_BYTES * 8 / (self.down_mbps * 1e3)
        self._sample(PROBE_BYTES, took - self.rtt_ms - down_ms)

    def _sample(self, nbytes: int, up_ms: float) -> None:
        if nbytes < MIN_SAMPLE_BYTES:
            return
        mbps = nbytes * 8 / (max(up_ms, 0.05) * 1e3)
        self._last_sample = time.monotonic()
        if abs(math.log(mbps / self.up_mbps)) > math.log(JUMP):  # a handover: follow it
            self.up_mbps = mbps
        else:
            self.up_mbps = math.exp((1 - EWMA) * math.log(self.up_mbps)
                                    + EWMA * math.log(mbps))

    def _server_ready(self) -> bool:
        return self._client is not None and self._down_until == 0.0

    def _between(self) -> None:
        """After an inference, off its clock (an app does this on another thread): probe a
        link that carried nothing lately, or try a server that failed once its backoff
        has passed."""
        if self.endpoint is None:
            return
        if self._server_ready():
            if time.monotonic() - self._last_sample > self.probe_every_s:
                try:
                    self._probe()
                except DnntuneError:
                    self._mark_down()
        elif time.monotonic() >= self._down_until:
            self._reconnect()

    # --- one inference --------------------------------------------------------------

    def infer(self, inputs: Sequence[np.ndarray]) -> InferenceResult:
        """Run one inference; never raises for a server problem (it falls back)."""
        try:
            return self._infer(inputs)
        finally:
            self._between()

    def _infer(self, inputs: Sequence[np.ndarray]) -> InferenceResult:
        seq = self._seq
        self._seq += 1
        start = time.perf_counter()
        full = self.manifest.mobile_only
        if not self._server_ready():
            reason = "no server" if self.endpoint is None else "server down"
            return self._local(seq, start, inputs, reason, fell_back=self.endpoint is not None)
        index = (self.chooser.choose(self.up_mbps, self.rtt_ms) if self.fixed_cut is None
                 else self.fixed_cut)
        predicted, _ = self.bundle.policy.predicted(self.chooser.metric, self.up_mbps,
                                                    self.rtt_ms)
        if index == full.index:
            result = self._local(seq, start, inputs, "policy", fell_back=False)
            result.predicted_ms = predicted
            return result
        cut = self.manifest.cut(index)
        budget_s = None
        if self.deadline_ms is not None and predicted > self.deadline_ms:
            return self._local(seq, start, inputs, "deadline (predicted "
                               f"{predicted:.0f} ms > {self.deadline_ms:g} ms)", True)
        held = dict(zip([i["name"] for i in self.manifest.model["inputs"]], inputs,
                        strict=True))
        head_ms = 0.0
        if cut.head is not None:
            t0 = time.perf_counter()
            held.update(zip(cut.head_outputs, self._run_head(cut, inputs), strict=True))
            head_ms = (time.perf_counter() - t0) * 1e3
        if self.deadline_ms is not None:
            spent = (time.perf_counter() - start) * 1e3
            budget_s = (self.deadline_ms - spent - self.mobile_ms) / 1e3
            if budget_s <= 0:
                return self._local(seq, start, inputs, "deadline (no time left for the "
                                   "server)", True, head_ms)
        tensors = [(t.name, np.ascontiguousarray(held[t.name])) for t in cut.crossing]
        nbytes = sum(a.nbytes for _, a in tensors)
        sent = time.perf_counter()
        try:
            assert self._client is not None
            outputs, timing = self._client.run_tail(self._spec, index, tensors,
                                                    timeout_s=budget_s)
        except DnntuneError as exc:
            if "DEADLINE_EXCEEDED" in str(exc) and budget_s is not None:
                self._sample(nbytes, budget_s * 1e3)  # it took at least that long
                reason = (f"deadline (no answer from the server within the "
                          f"{budget_s * 1e3:.0f} ms left)")
            else:
                self._mark_down()
                reason = _short(str(exc))
            return self._local(seq, start, inputs, reason, True, head_ms)
        wall_ms = (time.perf_counter() - sent) * 1e3
        cloud_ms = (timing.compute_ms + timing.load_ms) if timing else 0.0  # receive: link
        network_ms = max(wall_ms - cloud_ms, 0.0)
        self._sample(nbytes, network_ms - self.rtt_ms)
        held.update(outputs)
        result = InferenceResult(seq, index, cut.after, (time.perf_counter() - start) * 1e3,
                                 False, "policy", self.up_mbps, self.rtt_ms, nbytes, head_ms,
                                 network_ms, cloud_ms, predicted,
                                 [held[n] for n in self.manifest.model["outputs"]])
        return result

    def _local(self, seq: int, start: float, inputs: Sequence[np.ndarray], reason: str,
               fell_back: bool, head_ms: float = 0.0) -> InferenceResult:
        full = self.manifest.mobile_only
        t0 = time.perf_counter()
        outs = self._run_head(full, inputs)
        local_ms = (time.perf_counter() - t0) * 1e3
        return InferenceResult(seq, full.index, full.after, (time.perf_counter() - start) * 1e3,
                               fell_back, reason, self.up_mbps, self.rtt_ms, 0,
                               head_ms + local_ms, 0.0, 0.0, self.mobile_ms, outs)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _short(text: str) -> str:
    return text if len(text) <= 160 else text[:157] + "..."
