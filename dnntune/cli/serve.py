"""``dnntune serve`` (cloud server) and ``dnntune agent`` (device agent)."""

from __future__ import annotations

import argparse
import os
import sys

ABANDONED_EXIT_CODE = 3  # = dnntune.rpc.serving.ABANDONED_EXIT_CODE (not imported: no grpc here)


def _server_flags(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=default_port,
                   help=f"port (default: {default_port}; 0 picks a free one)")
    p.add_argument("--num_threads", type=int, default=1, metavar="N",
                   help="TensorFlow intra-op threads (default: 1)")
    p.add_argument("--token-file", metavar="F",
                   help="require 'authorization: Bearer <token>' with the token in F")
    p.add_argument("--tls-cert", metavar="F", help="PEM certificate (with --tls-key)")
    p.add_argument("--tls-key", metavar="F", help="PEM private key (with --tls-cert)")
    p.add_argument("--max-message-mb", type=int, default=16, metavar="N",
                   help="largest gRPC message either way (default: 16; bigger is chunked)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=16, metavar="N",
                   help="calls beyond this get RESOURCE_EXHAUSTED; health checks are not "
                        "counted (default: 16)")
    p.add_argument("--max-tensor-mb", type=int, default=256, metavar="N",
                   help="largest tensor a call may send (default: 256)")
    p.add_argument("--max-call-mb", type=int, default=256, metavar="N",
                   help="largest total of the tensors of one call (default: 256)")
    p.add_argument("--max-input-elements", type=int, default=1 << 21, metavar="N",
                   help="largest model input a request may ask for, elements x batch "
                        "(default: 2097152)")
    p.add_argument("--max-model-mb", type=int, default=1024, metavar="N",
                   help="largest uploaded model file (default: 1024)")
    p.add_argument("--max-models", type=int, default=4, metavar="N",
                   help="models kept built, least recently used dropped first (default: 4)")
    from dnntune.rpc.limits import default_request_memory_mb

    p.add_argument("--max-request-memory-mb", type=int, default=0, metavar="N",
                   help="largest estimated peak memory of one request's model, and of all "
                        "calls in progress together; refused before anything is built "
                        f"(default: 40%% of this machine's memory, "
                        f"{default_request_memory_mb():,} here)")
    p.add_argument("--upload-dir", metavar="DIR",
                   help="where uploaded models are kept (default: a temporary folder)")
    p.add_argument("--reflection", action="store_true", help="serve gRPC reflection")
    p.add_argument("--grace-s", type=float, default=30.0, metavar="S",
                   help="how long in-flight calls may finish after SIGTERM (default: 30; "
                        f"exit code {ABANDONED_EXIT_CODE} if some had to be abandoned)")


def add_client_flags(p: argparse.ArgumentParser) -> None:
    """How this process reaches a remote server: token and TLS."""
    p.add_argument("--token-file", metavar="F", help="send the bearer token in F")
    p.add_argument("--tls-cert", metavar="F",
                   help="trust this PEM certificate and talk TLS")


def add_server_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser("serve", help="run the cloud server (gRPC)",
                           description="Profile layers and run model tails for clients.")
    _server_flags(serve, 50051)
    serve.add_argument("--bulk-port", type=int, metavar="PORT",
                       help="also carry tensor bytes on this TCP port beside gRPC (0: any "
                            "free port; same host, token and TLS; clients use it when "
                            "offered): several times gRPC's throughput for multi-MB "
                            "tensors (docs/transport.md)")
    serve.add_argument("--bundle", action="append", default=[], metavar="DIR",
                       help="serve the tails of a bundle from 'dnntune export' (checked "
                            "against its manifest; repeatable)")
    serve.set_defaults(handler=run_serve)
    agent = sub.add_parser("agent", help="run the device agent (gRPC) on the device",
                           description="Profile the device side and run model heads, "
                                       "sending crossing tensors to the cloud server.")
    _server_flags(agent, 50052)
    agent.add_argument("--cloud", metavar="HOST:PORT",
                       help="the cloud server that runs the tails")
    agent.add_argument("--cloud-token-file", metavar="F", help="token for the cloud server")
    agent.add_argument("--cloud-tls-cert", metavar="F", help="the cloud server's certificate")
    agent.add_argument("--emulate", metavar="PRESET",
                       help="run as an emulated device: confine this process in a cgroup "
                            "and calibrate its CPU share to the preset's reference latency "
                            "(configs/devices; needs root or a delegated cgroup)")
    agent.set_defaults(handler=run_agent)


def _options(args: argparse.Namespace) -> object:
    from dnntune.rpc.serving import ServerOptions, read_token

    return ServerOptions(host=args.host, port=args.port, num_threads=args.num_threads,
                         token=read_token(args.token_file), tls_cert=args.tls_cert,
                         tls_key=args.tls_key, max_message_mb=args.max_message_mb,
                         max_concurrent_rpcs=args.max_concurrent_rpcs,
                         max_tensor_mb=args.max_tensor_mb, max_call_mb=args.max_call_mb,
                         max_input_elements=args.max_input_elements,
                         max_model_mb=args.max_model_mb, max_models=args.max_models,
                         max_request_memory_mb=args.max_request_memory_mb,
                         reflection=args.reflection, grace_s=args.grace_s,
                         bulk_port=getattr(args, "bulk_port", None))


def _check_early(args: argparse.Namespace, options: object) -> None:
    """Refuse bad flags before TensorFlow starts (seconds sooner, nothing half-built)."""
    from pathlib import Path

    from dnntune.errors import DnntuneError
    from dnntune.rpc.serving import check_tls_files

    options.validate()  # type: ignore[attr-defined]
    if args.upload_dir and Path(args.upload_dir).exists() and not Path(args.upload_dir).is_dir():
        raise DnntuneError(f"--upload-dir {args.upload_dir}: exists and is not a folder")
    if args.upload_dir:
        from dnntune.cli.outputs import check_output_dir

        check_output_dir(args.upload_dir, "--upload-dir")  # uploads must be writable there
    if args.tls_cert and args.tls_key:
        check_tls_files(args.tls_cert, args.tls_key)


def _announce(kind: str, running: object) -> None:
    bulk = getattr(running, "bulk_port", None)
    extra = f" (bulk channel on port {bulk})" if bulk is not None else ""
    print(f"dnntune {kind} listening on {running.address}{extra}",  # type: ignore[attr-defined]
          flush=True)


def _serve_until_signal(kind: str, running: object) -> int:
    """Serve until SIGTERM/SIGINT; exit 0, or :data:`ABANDONED_EXIT_CODE` at once if the
    grace period ran out with calls still running or gRPC did not stop within its bound
    (grpcio can leave threads that never return, e.g. after a request that failed to
    deserialize; the process must not wait for them)."""
    _announce(kind, running)
    if running.wait_for_signal():  # type: ignore[attr-defined]
        print(f"dnntune {kind} stopped", file=sys.stderr)
        return 0
    print(f"dnntune {kind} stopped; {running.stop_problem}",  # type: ignore[attr-defined]
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(ABANDONED_EXIT_CODE)


def run_serve(args: argparse.Namespace) -> int:
    from cloud_server import create_server
    from dnntune.deploy.bundle import load_bundle

    options = _options(args)
    _check_early(args, options)
    bundles = [load_bundle(d) for d in args.bundle]  # every hash checked before serving
    running = create_server(options, upload_dir=args.upload_dir,  # type: ignore[arg-type]
                            models=[(str(b.path(b.manifest.model_file)),
                                     [c.index for c in b.manifest.cuts]) for b in bundles])
    for b in bundles:
        m = b.manifest
        print(f"serving bundle {b.directory}: {m.model['name']} as ModelSpec.sha256 "
              f"{m.model_sha256}, cuts {', '.join(str(c.index) for c in m.cuts)}", flush=True)
    return _serve_until_signal("cloud server", running)


def run_agent(args: argparse.Namespace) -> int:
    from device_agent import create_server
    from dnntune.errors import DnntuneError
    from dnntune.rpc.client import Endpoint, parse_address
    from dnntune.rpc.serving import read_token
    from dnntune.rpc.tls_probe import read_certificate

    options = _options(args)
    _check_early(args, options)
    cloud = None
    if args.cloud:
        if args.cloud_tls_cert:
            read_certificate(args.cloud_tls_cert, "--cloud-tls-cert")  # now, not at first use
        # Split runs go through gRPC, the path a link emulation in front of --cloud
        # shapes (validate's proxy): the bulk channel would go around it.
        cloud = Endpoint(parse_address(args.cloud, "--cloud"),
                         token=read_token(args.cloud_token_file), tls_cert=args.cloud_tls_cert,
                         bulk=False)
    elif args.cloud_tls_cert or args.cloud_token_file:
        raise DnntuneError("--cloud-tls-cert and --cloud-token-file go with --cloud HOST:PORT")
    if args.emulate and args.emulate != "none":
        return _run_emulated_agent(args, cloud)
    running = create_server(options, cloud, upload_dir=args.upload_dir)  # type: ignore[arg-type]
    return _serve_until_signal("device agent", running)


def _run_emulated_agent(args: argparse.Namespace, cloud: object) -> int:
    """The agent as the preset's phone: by time dilation (the default), or confined in
    its own cgroup calibrated to the preset (``<preset>:quota``; the cgroup is removed
    when it stops: SIGTERM, SIGINT, an error, or its parent dying)."""
    import dataclasses
    import signal

    from device_agent import create_server
    from dnntune.errors import DnntuneError
    from dnntune.profiling.cgroups import CgroupUnavailableError
    from dnntune.profiling.devices import load_emulation_preset, split_emulate
    from dnntune.profiling.emulation import emulated_process, usable_threads
    from dnntune.profiling.instrument import configure_runtime

    options = _options(args)
    options.validate()  # type: ignore[attr-defined]
    threads = usable_threads(load_emulation_preset(args.emulate))
    preset, mechanism = split_emulate(args.emulate)
    if mechanism == "dilation":
        from dnntune.profiling.dilation import raise_priority

        raise_priority()  # before TensorFlow starts a thread: they inherit it
    configure_runtime(threads)  # before TensorFlow runs anything in this process
    if mechanism == "dilation":
        return _run_dilated_agent(args, cloud, dataclasses.replace(
            options, num_threads=threads))  # type: ignore[type-var]

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cgroup's clean-up
    signal.signal(signal.SIGTERM, leave)
    try:
        with emulated_process(args.emulate, "agent",
                              lambda m: print(f"dnntune: {m}", file=sys.stderr)) as emulation:
            options = dataclasses.replace(options, num_threads=threads)  # type: ignore[type-var]
            running = create_server(options, cloud, upload_dir=args.upload_dir,  # type: ignore[arg-type]
                                    emulation=emulation.to_dict(),
                                    power_profile=preset)
            print(f"dnntune device agent emulates {emulation.describe()}", flush=True)
            _announce("device agent", running)
            running.wait_for_signal()
    except CgroupUnavailableError as exc:
        raise DnntuneError(f"--emulate {args.emulate}: cannot confine this process in a "
                           f"cgroup ({exc})") from None
    print("dnntune device agent stopped", file=sys.stderr)
    return 0


def _run_dilated_agent(args: argparse.Namespace, cloud: object, options: object) -> int:
    """The agent as the preset's phone by time dilation (no cgroup needed)."""
    from device_agent import create_server
    from dnntune.profiling.devices import split_emulate
    from dnntune.profiling.dilation import DilatedDevice

    device = DilatedDevice(args.emulate, lambda m: print(f"dnntune: {m}", file=sys.stderr))
    emulation = device.calibrate()
    running = create_server(options, cloud, upload_dir=args.upload_dir,  # type: ignore[arg-type]
                            power_profile=split_emulate(args.emulate)[0], device=device)
    print(f"dnntune device agent emulates {emulation.describe()}", flush=True)
    return _serve_until_signal("device agent", running)
