"""Running a split for real: the head here, the tail on a cloud server, timed end to end."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnntune.model.loading import LoadedModel, compile_model

NATIVE_HEAD_WARMUP = 30


@dataclass(frozen=True)
class SplitTiming:
    total_ms: float
    head_ms: float
    transfer_ms: float
    tail_ms: float
    encode_ms: float = 0.0  # --wire: encoding on the device (in total_ms, not head_ms)
    decode_ms: float = 0.0  # --wire: decoding in the cloud (in transfer_ms)


@dataclass(frozen=True)
class SplitResult:
    runs: tuple[SplitTiming, ...]
    max_abs_error: float
    bytes_up: int
    bytes_down: int


def run_split(loaded: LoadedModel, split: Any, cloud: Any, spec: Any, num_runs: int,
              warmup_runs: int = 1, warmup_cloud: Any = None,
              reference: list[np.ndarray] | None = None,
              hold: Callable[[float, float], None] | None = None,
              pace: Callable[[], object] | None = None, wire: Any = None,
              dilate: Callable[[float, float], None] | None = None) -> SplitResult:
    """Run ``split`` ``warmup_runs + num_runs`` times; time the last ``num_runs``.

    ``cloud`` is a :class:`dnntune.rpc.client.ProfilerClient` of the cloud server. Warm-up
    runs go through ``warmup_cloud`` when given (e.g. an unshaped channel, so compiling
    the tail does not cost minutes on an emulated 3G link). The outputs of the last run
    are compared with ``reference``, the unsplit model's outputs on the same inputs
    (computed here when not given). ``hold(started, head_in_graph_s)``, on an emulated
    device (:meth:`dnntune.profiling.dilation.DilatedDevice.hold`), keeps the head's
    result until the phone would have finished it; ``pace()`` runs before each head
    (:meth:`~dnntune.profiling.dilation.DilatedDevice.pace_split`).

    ``wire`` (a :class:`dnntune.rpc.encoded.WireSender`) runs on its photograph and
    sends the crossing tensors encoded (:func:`_send_encoded`).
    """
    inputs = loaded.example_inputs() if wire is None else wire.inputs
    bytes_up = split.cut.bytes_up
    if reference is None:
        reference = compile_model(loaded.model)(inputs)
    if hold is not None and split.head is not None:
        # Natively, unheld and without the cloud: a freshly compiled head runs up to
        # 1.5x slower for its first ~20 calls, and dilation would multiply that.
        for _ in range(NATIVE_HEAD_WARMUP):
            split.run_head_timed(inputs)
    runs = []
    outputs: list[np.ndarray] = []
    for i in range(warmup_runs + num_runs):
        if hold is not None and split.head is not None:
            # The host's caches and clock go cold while the link and the cloud work, and
            # the next head ran 7-13 % slower than profiled (back to back); that is this
            # host, not the phone, whose time is k x the native time. One untimed native
            # run warms them, as profiling does. The reference then runs right after a
            # head, as it runs right after the model's runs in a paced profile, so the
            # factor is fitted on the host in the same state.
            split.run_head_timed(inputs)
            if pace is not None:
                pace()
        t0 = time.perf_counter()
        if hold is not None and split.head is not None:
            held, head_s = split.run_head_timed(inputs)
            hold(t0, head_s)
        else:
            held = split.run_head(inputs)
        t1 = time.perf_counter()
        tail_ms = encode_ms = decode_ms = 0.0
        if split.tail is not None:
            crossing = [(n, held[n]) for n in split.tail_inputs]
            through = warmup_cloud if (i < warmup_runs and warmup_cloud is not None) else cloud
            if wire is None:
                results, timing = through.run_tail(spec, split.cut.index, crossing)
            else:
                results, timing, encode_ms, bytes_up = _send_encoded(
                    wire, through, spec, split.cut.index, crossing, dilate)
                decode_ms = timing.decode_ms if timing is not None else 0.0
            held.update(results)
            tail_ms = timing.compute_ms if timing is not None else 0.0
        outputs = [held[n] for n in split.model_outputs]
        t2 = time.perf_counter()
        if i >= warmup_runs:
            runs.append(SplitTiming((t2 - t0) * 1e3, (t1 - t0) * 1e3,
                                    (t2 - t1) * 1e3 - encode_ms, tail_ms, encode_ms, decode_ms))
    error = max(float(np.max(np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64))))
                for o, r in zip(outputs, reference, strict=True))
    return SplitResult(tuple(runs), error, bytes_up, split.cut.bytes_down)


def _send_encoded(wire: Any, cloud: Any, spec: Any, cut: int,
                  crossing: list[tuple[str, np.ndarray]],
                  dilate: Callable[[float, float], None] | None
                  ) -> tuple[dict[str, np.ndarray], Any, float, int]:
    """Encode the crossing tensors on the device, send them, get the outputs back.

    Encoding is device compute: on an emulated device ``dilate(started, native_s)``
    holds until the phone would have finished it. Returns the outputs, the cloud's
    timing, the encode milliseconds (held) and the bytes sent.
    """
    start = time.perf_counter()
    requests, nbytes = wire.encode(cloud.pb2, crossing, cloud.chunk_bytes)
    if dilate is not None:
        dilate(start, time.perf_counter() - start)
    encode_ms = (time.perf_counter() - start) * 1e3
    results, timing = cloud.run_tail(spec, cut, [], encoded=requests)
    return results, timing, encode_ms, nbytes
