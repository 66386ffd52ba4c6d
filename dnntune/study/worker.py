"""One deployment configuration, run in a fresh process: ``python -m dnntune.study.worker``.

A fresh process per configuration is what makes affinity and thread count real: the CPU
affinity is set before the framework is imported, so every thread TensorFlow or LiteRT
starts inherits it, and TensorFlow's thread pools are created with the requested size
(a process that already ran an op cannot change them). The request is one JSON object
on stdin; the answer is one JSON object on stdout. Nothing here decides correctness.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np


def run_request(req: dict[str, Any]) -> dict[str, Any]:
    """Run ``req`` (framework, file, threads, cpus, warmup, runs[, meter, energy_seconds])."""
    from dnntune.profiling.rss import PeakWindow, peak_rss_bytes, rss_bytes

    started = time.perf_counter()
    os.sched_setaffinity(0, set(req["cpus"]))
    baseline = rss_bytes()
    threads = int(req["threads"])
    if req["framework"] == "tf":
        from dnntune.model.loading import compile_model, load_model
        from dnntune.profiling.instrument import configure_runtime

        runtime = configure_runtime(threads, tuple(req["cpus"]))
        loaded = load_model(req["file"])
        inputs = loaded.example_inputs()
        run = compile_model(loaded.model)

        def call() -> object:
            return run(inputs)
        applied = {"intra_op": runtime["intra_op"], "inter_op": runtime["inter_op"]}
    else:
        from dnntune.litert.convert import interpreter

        with open(req["file"], "rb") as f:
            it = interpreter(f.read(), threads)
        rng = np.random.default_rng(0)
        for d in it.get_input_details():
            it.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(d["dtype"]))
        call = it.invoke
        applied = {"num_threads": threads}
    loaded_rss, load_peak = rss_bytes(), peak_rss_bytes()
    ready_s = time.perf_counter() - started
    window = PeakWindow.start()
    for _ in range(int(req["warmup"])):
        call()
    times = np.empty(int(req["runs"]))
    for i in range(len(times)):
        t0 = time.perf_counter()
        call()
        times[i] = (time.perf_counter() - t0) * 1e3
    inference_growth = window.growth_bytes()
    active_mw = None
    if req.get("meter"):
        from dnntune.profiling.energy import get_meter, measure_active_power

        meter = get_meter(req["meter"], req.get("meter_root", "/")).meter
        if meter is not None:
            active_mw = measure_active_power(meter, call, float(req["energy_seconds"])).power_mw
    return {"times_ms": times.tolist(), "ready_s": ready_s, "baseline_rss_bytes": baseline,
            "load_rss_growth_bytes": loaded_rss - baseline,
            "inference_rss_growth_bytes": inference_growth,
            "peak_rss_bytes": peak_rss_bytes(), "load_peak_rss_bytes": load_peak,
            "peak_note": window.note,
            "active_power_mw": active_mw, "cpus": sorted(os.sched_getaffinity(0)),
            "runtime": applied}


def main() -> int:
    try:
        answer = run_request(json.loads(sys.stdin.read()))
    except Exception as exc:  # noqa: BLE001 - the parent reports it in one line
        answer = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    sys.stdout.flush()
    os.write(1, (json.dumps(answer) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
