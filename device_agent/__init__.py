"""The dnntune device agent (gRPC): profiles the device side and runs model heads.

Thin wiring only: :func:`create_server` builds the shared servicers from
:mod:`dnntune.rpc.servicers`; the agent reaches its cloud server as a client.

Example:
    >>> # agent = create_server(ServerOptions(port=0), Endpoint("127.0.0.1:50051"))
"""

from __future__ import annotations

import threading
from typing import Any

from dnntune.rpc.client import Endpoint
from dnntune.rpc.serving import RunningServer, ServerOptions

__all__ = ["Endpoint", "RunningServer", "ServerOptions", "create_server"]


def create_server(options: ServerOptions, cloud: Endpoint | None,
                  upload_dir: str | None = None,
                  emulation: dict[str, Any] | None = None,
                  power_profile: str | None = None, device: Any = None) -> RunningServer:
    """Start a device agent (Profiler + Device services, health) and return it running.

    ``emulation`` (:meth:`dnntune.profiling.emulation.Emulation.to_dict`) is recorded in every
    profile this agent measures, when it runs as an emulated device. ``power_profile`` is
    the preset (name or file) its operator chose: a Profile request may name it (by that
    text or the preset's name) as ``energy = model:<...>``, beside the shipped profiles.
    ``device`` (a calibrated :class:`dnntune.profiling.dilation.DilatedDevice`) makes this
    agent that phone by time dilation: its profiles are dilated and drift-checked, and
    its split runs hold each head's result until the phone would have finished it.
    """
    from dnntune.errors import DnntuneError
    from dnntune.rpc.servicers import DeviceServicer, ProfilerServicer, make_state
    from dnntune.rpc.serving import build_server

    state, services = make_state("device", options, upload_dir)
    state.emulation = emulation
    state.power_profile = power_profile
    state.device = device
    if device is not None:
        state.emulation = device.emulation.to_dict()
    threads = device.threads if device else state.num_threads
    phone = litert_phone(device, threads)
    state.litert_heads = litert_heads(phone, threads)
    state.litert_profile = litert_profile(phone, threads)
    from dnntune.study.agent import DeploymentStudyService

    state.deployment_study = DeploymentStudyService(state)
    clients: dict[str, Any] = {}
    lock = threading.Lock()

    def cloud_client() -> Any:
        from dnntune.rpc.client import ProfilerClient

        if cloud is None:
            raise DnntuneError("this agent was started without --cloud HOST:PORT")
        with lock:
            if "cloud" not in clients:
                clients["cloud"] = ProfilerClient(cloud)
            return clients["cloud"]

    def register(server: object) -> list[str]:
        services.add_ProfilerServicer_to_server(ProfilerServicer(state), server)
        services.add_DeviceServicer_to_server(DeviceServicer(state, cloud_client), server)
        return ["dnntune.v1.Profiler", "dnntune.v1.Device"]

    def close() -> None:
        with lock:
            for client in clients.values():
                client.close()
        state.store.close()

    try:
        running = build_server(options, register)
    except BaseException:
        close()
        raise
    running.on_stop.append(close)  # a temporary upload folder goes with it
    return running


def litert_phone(device: Any, threads: int) -> Any:
    """The emulated phone's LiteRT pace (:class:`dnntune.litert.heads.LiteRTPhone`),
    shared by its LiteRT profiles and split runs; ``None`` without emulation."""
    if device is None:
        return None
    from dnntune.litert.heads import LiteRTPhone

    return LiteRTPhone(device, threads)


def litert_profile(phone: Any, threads: int) -> Any:
    """``(loaded, settings, ask, progress)`` -> the LiteRT per-cut profile a Profile
    request with framework litert asks for: each head converted and timed here, on an
    emulated phone dilated by ``phone`` as its split runs are held."""

    def profile(loaded: Any, settings: Any, ask: Any, progress: Any) -> Any:
        from dnntune.errors import DnntuneError
        from dnntune.litert.profile import LiteRTSettings, profile_litert

        last = len(loaded.graph.layers)
        beyond = [c for c in ask.cuts if c > last]
        if beyond:  # before any conversion
            raise DnntuneError(f"ProfileRequest.cuts: cut {beyond[0]} out of range 0..{last}")
        lite = LiteRTSettings(precision=ask.precision,
                              cuts=",".join(map(str, ask.cuts)) or "spread:8",
                              num_threads=threads, warmup_runs=settings.warmup_runs,
                              num_runs=settings.num_runs, energy=settings.energy or "none",
                              energy_seconds=settings.energy_seconds)
        if phone is None:
            return profile_litert(loaded, lite, progress, field="ProfileRequest.cuts")
        return phone.profile(loaded, lite, progress, field="ProfileRequest.cuts")
    return profile


def litert_heads(phone: Any, threads: int) -> Any:
    """``(key, entry, split)`` -> the split with its head as a LiteRT model of the cut.

    The model's layer map (as ``dnntune convert`` builds it) and each head are converted
    once, on the first RunSplit that asks for them, before any of its runs; both are
    kept. On an emulated phone the head is paced and held by the reference model in
    LiteRT (``phone``, a :class:`dnntune.litert.heads.LiteRTPhone`, its reference
    converted at the first such call, refitted before each batch of runs).
    """
    import dataclasses

    from dnntune.litert.heads import HeadCache, layer_map_of, prepare_litert_split

    maps, heads = HeadCache(4), HeadCache()

    def prepare(key: Any, entry: Any, split: Any) -> Any:
        layer_map = maps.get(key, lambda: layer_map_of(entry.loaded))
        lite = heads.get((key, split.cut.index), lambda: prepare_litert_split(
            entry.loaded, split, layer_map, threads))
        if phone is None:
            return lite
        phone.refresh()  # the phone's LiteRT speed, as this host runs now
        return dataclasses.replace(lite, hold=phone.hold, pace=phone.pace)
    return prepare
