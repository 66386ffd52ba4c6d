"""LiteRT profiles through a device agent: ``profile --framework litert --device`` and the
profiles ``validate --framework litert`` predicts from. Wiring only: the agent measures
(``ProfileRequest.framework = "litert"``), the library chooses the cuts."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dnntune.errors import DnntuneError

if TYPE_CHECKING:
    from dnntune.cli.pipeline import Access, ProgressFactory
    from dnntune.config import RunConfig
    from dnntune.profiling.profile import Profile

DEFAULT_CUTS = "spread:8"  # the agent's own default: sent as an empty ProfileRequest.cuts
BEST_CUTS = "spread:8"     # validate --cuts best|top:K: the cuts the best is chosen among


def litert_cuts(config: RunConfig, spec: str, precision: str = "fp32",
                field: str = "--cuts") -> tuple[int, ...]:
    """The cuts to ask the agent for: ``()`` for the default spread (the agent chooses),
    else the cuts of ``spec`` over the model's layer map, converted here once (the cuts a
    list names are checked here too, naming ``field``)."""
    if spec == DEFAULT_CUTS:
        return ()
    from dnntune.cli.pipeline import model_file
    from dnntune.litert.convert import build_layer_map, convert_keras
    from dnntune.litert.profile import choose_cuts
    from dnntune.model.loading import load_model

    # The bytes the agent loads (a zoo model's calibrated file): which cuts survive
    # fusion depends on the weights (an uncalibrated MobileNetV2 kept cut 88, the
    # agent's model fuses it into a CONV_2D).
    path, name, shape = model_file(config)
    loaded = load_model(path, [shape] if shape else None, batch_size=config.batch_size,
                        seed=config.seed, name=name)
    tflite = convert_keras(loaded.model, loaded.input_shapes, loaded.input_dtypes, precision,
                           loaded.seed, loaded.name)
    return choose_cuts(spec, build_layer_map(tflite, loaded.graph, precision), loaded.graph,
                       field)


def profile_litert_on_agent(address: str, config: RunConfig, access: Access,
                            cuts: tuple[int, ...], precision: str,
                            progress: ProgressFactory) -> Profile:
    """The LiteRT per-cut profile of ``config.model`` measured on the agent at
    ``address`` (dilated there when it emulates a phone)."""
    from dnntune.cli.pipeline import upload_model
    from dnntune.rpc.client import ProfilerClient

    client = ProfilerClient(access.endpoint(address))
    try:
        spec = upload_model(client, config)
        with progress(f"LiteRT heads on the device ({address})") as update:
            return client.profile(spec, config.num_runs, config.warmup_runs,
                                  config.device.energy, progress=update, framework="litert",
                                  cuts=cuts, precision=precision)
    finally:
        client.close()


def run_remote_litert_profile(args: argparse.Namespace, config: RunConfig,
                              settings: Any) -> Profile:
    """``dnntune profile --framework litert --device HOST:PORT``."""
    import dataclasses

    from dnntune.cli.pipeline import Access, check_model_file, check_pem_certificate
    from dnntune.report.tables import progress_bar
    from dnntune.rpc.client import parse_address
    from dnntune.rpc.serving import read_token

    address = parse_address(args.device, "--device")
    if args.tls_cert:
        check_pem_certificate(args.tls_cert, "--tls-cert")
    check_model_file(config.model)
    config = dataclasses.replace(
        config, num_runs=settings.num_runs, warmup_runs=settings.warmup_runs,
        device=dataclasses.replace(config.device, energy=settings.energy))
    cuts = litert_cuts(config, args.cuts, args.precision)
    return profile_litert_on_agent(address, config, Access(read_token(args.token_file),
                                                           args.tls_cert),
                                   cuts, args.precision, progress_bar)


def validation_cuts(config: RunConfig, cut_spec: str) -> tuple[str, tuple[int, ...]]:
    """``validate --cuts`` with LiteRT heads: ``(spec to run, cuts to profile)``.

    The heads are profiled at the validated cuts: ``spread:K`` is K cuts spread over
    those LiteRT keeps (both ends included), a list is checked against the layer map,
    ``all`` is every cut LiteRT keeps; ``best`` and ``top:K`` choose among
    :data:`BEST_CUTS`. Then every profiled cut runs, or the best (top K) of them.
    """
    from dnntune.validation.validate import parse_cut_spec

    kind, count, picks = parse_cut_spec(cut_spec)
    if kind == "spread":
        cuts = litert_cuts(config, f"spread:{max(count - 2, 1)}")
    elif kind == "list":
        cuts = litert_cuts(config, ",".join(map(str, picks)))
    elif kind == "all":
        cuts = litert_cuts(config, "all")
    else:
        return cut_spec, litert_cuts(config, BEST_CUTS)
    return "all", cuts


def litert_validation_profiles(config: RunConfig, agent: str, cloud: str,
                               access: dict[str, Access], cut_spec: str,
                               progress: ProgressFactory,
                               on_rpc: Callable[[tuple[float, float]], Any]
                               ) -> tuple[Profile, Profile, str]:
    """The device's LiteRT profile at the validated cuts (through the agent), the cloud's
    TensorFlow profile, and the ``--cuts`` spec that runs them."""
    from dnntune.cli.pipeline import profile_side

    run_spec, cuts = validation_cuts(config, cut_spec)
    device = profile_litert_on_agent(agent, config, access["device"], cuts, "fp32",
                                     progress)
    if device.measured_cuts is None:
        raise DnntuneError(f"the agent at {agent} answered a LiteRT profile without "
                           "measured cuts")
    cloud_profile = profile_side("cloud", cloud, config, access["cloud"], progress, on_rpc)
    return device, cloud_profile, run_spec
