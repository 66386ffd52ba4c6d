"""The whole job: profile both sides (locally or remotely, or reuse files), then analyze.

With nothing named, the device agent runs in this process (device threads from the
config) and the cloud server in a child process on a free loopback port (cloud threads),
and both are profiled through gRPC: the code paths of a real deployment. Each profile
is written to the output folder as soon as it is measured, so a later failure loses
nothing already measured.
"""

from __future__ import annotations

import contextlib
import re
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnntune.client import Endpoint, ProfilerClient, calibrate_rpc, model_spec, parse_address
from dnntune.config import RunConfig
from dnntune.errors import DnntuneError
from dnntune.profile import Profile, load_profile

Progress = Callable[[str, int, int], None]
ProgressFactory = Callable[[str], contextlib.AbstractContextManager[Progress]]


@dataclass(frozen=True)
class Source:
    """Where one side's profile comes from: ``local``, ``remote`` (HOST:PORT) or ``file``."""

    kind: str
    value: str = ""

    @classmethod
    def parse(cls, text: str | None, flag: str) -> Source:
        if not text:
            return cls("local")
        if text.endswith(".json"):
            return cls("file", text)
        return cls("remote", parse_address(text, flag))


@dataclass(frozen=True)
class Access:
    """Token and TLS certificate for one remote server."""

    token: str | None = None
    tls_cert: str | None = None

    def endpoint(self, address: str, **options: Any) -> Endpoint:
        return Endpoint(address, token=self.token, tls_cert=self.tls_cert, **options)


SIDES = ("device", "cloud")


def add_access_flags(parser: Any) -> None:
    """Credentials for the device agent and the cloud server, separately or for both."""
    parser.add_argument("--token-file", metavar="F",
                        help="bearer token for both servers (see the per-side flags)")
    parser.add_argument("--tls-cert", metavar="F",
                        help="trust this PEM certificate and talk TLS to both servers")
    for side, server in (("device", "device agent"), ("cloud", "cloud server")):
        parser.add_argument(f"--{side}-token-file", metavar="F",
                            help=f"bearer token for the {server} (overrides --token-file)")
        parser.add_argument(f"--{side}-tls-cert", metavar="F",
                            help=f"talk TLS to the {server}, trusting this PEM certificate "
                                 f"(overrides --tls-cert)")


def side_access(args: Any) -> dict[str, Access]:
    """Each side's :class:`Access` from :func:`add_access_flags`' flags, files checked now."""
    from dnntune.serving import read_token

    access = {}
    for side in SIDES:
        token_flag = f"--{side}-token-file" if getattr(args, f"{side}_token_file") else \
            "--token-file"
        cert_flag = f"--{side}-tls-cert" if getattr(args, f"{side}_tls_cert") else "--tls-cert"
        token_file = getattr(args, token_flag[2:].replace("-", "_"))
        cert = getattr(args, cert_flag[2:].replace("-", "_"))
        if cert:
            check_pem_certificate(cert, cert_flag)
        access[side] = Access(read_token(token_file), cert)
    return access


def check_pem_certificate(path: str, flag: str) -> None:
    """A readable PEM certificate, said before any connection is tried."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise DnntuneError(f"{flag} {path}: cannot read TLS certificate "
                           f"({exc.strerror})") from None
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise DnntuneError(f"{flag} {path}: not a PEM certificate (expected a "
                           f"'-----BEGIN CERTIFICATE-----' block)")


@contextlib.contextmanager
def local_cloud_server(threads: int, startup_timeout_s: float = 120.0) -> Iterator[str]:
    """A ``python -m cloud_server`` child on a free loopback port; yields its address."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "cloud_server", "--port", "0",
                                 "--num_threads", str(threads), "--grace-s", "5"],
                                stdout=subprocess.PIPE, stderr=errors, text=True)
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], startup_timeout_s)
            line = proc.stdout.readline() if ready else ""
            match = re.search(r"listening on (\S+)", line)
            if not match:
                proc.kill()
                proc.wait()
                errors.seek(0)
                last = (errors.read().strip().splitlines() or ["no output"])[-1]
                raise DnntuneError(f"the local cloud server did not start: {last}")
            yield match.group(1)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextlib.contextmanager
def local_device_agent(threads: int, affinity: tuple[int, ...]) -> Iterator[str]:
    """The device agent in this process on a free loopback port; yields its address."""
    from device_agent import create_server
    from dnntune.instrument import configure_runtime
    from dnntune.serving import ServerOptions

    configure_runtime(threads, affinity)  # before TensorFlow runs anything here
    running = create_server(ServerOptions(port=0, num_threads=threads), cloud=None)
    try:
        yield running.address
    finally:
        running.stop(0)


def model_file(config: RunConfig) -> tuple[str, str | None, tuple[int, ...] | None]:
    """The file that defines ``config.model`` on every side: ``(path, name, input_shape)``.

    A zoo model is built and calibrated once, here, and cached
    (:mod:`dnntune.modelcache`); the cached file already has the requested input shape.
    A user's file is itself, rebuilt by each side at ``input_shape`` (a deterministic
    clone with the same weights).
    """
    from dnntune.zoo import ZOO

    entry = ZOO.get(config.model)
    if entry is None:
        if not Path(config.model).is_file():
            raise DnntuneError(f"--model {config.model}: no such model file (and not a zoo "
                               f"model)")
        return config.model, None, config.input_shape
    from dnntune.modelcache import zoo_model_file

    path = zoo_model_file(config.model, config.input_shape or entry.input_shape, config.seed)
    return str(path), config.model, None


def upload_model(client: ProfilerClient, config: RunConfig) -> Any:
    """Send the model's defining file to ``client``'s server; returns its ``ModelSpec``.

    Both sides then load the same bytes (by sha256), so their model hashes agree
    whatever their thread counts or CPUs.
    """
    path, name, shape = model_file(config)
    spec = model_spec(client.pb2, path, shape, config.batch_size, config.seed, name=name)
    client.upload_file(path)
    return spec


def profile_side(side: str, address: str, config: RunConfig, access: Access,
                 progress: ProgressFactory,
                 on_rpc: Callable[[tuple[float, float]], Any] | None = None) -> Profile:
    """Profile one side through the server at ``address`` (and calibrate the RPC cost)."""
    settings = getattr(config, side)
    client = ProfilerClient(access.endpoint(address))
    try:
        spec = upload_model(client, config)
        with progress(f"profiling {side} ({address})") as update:
            profile = client.profile(spec, config.num_runs, config.warmup_runs,
                                     settings.energy, progress=update)
        if on_rpc is not None:
            on_rpc(calibrate_rpc(client))
        return profile
    finally:
        client.close()


def collect_profiles(config: RunConfig, device: Source, cloud: Source,
                     access: Mapping[str, Access],
                     out_dir: Path, progress: ProgressFactory,
                     on_profile: Callable[[str, Profile], Any],
                     on_rpc: Callable[[tuple[float, float]], Any] | None = None
                     ) -> tuple[Profile, Profile]:
    """Device first (with the cloud idle), then cloud; each saved as soon as measured."""
    profiles: dict[str, Profile] = {}
    with contextlib.ExitStack() as stack:
        addresses: dict[str, str] = {}
        if cloud.kind == "local":  # start early: its start-up overlaps the device's
            addresses["cloud"] = stack.enter_context(local_cloud_server(config.cloud.threads))
        for side, source in (("device", device), ("cloud", cloud)):
            if source.kind == "file":
                profiles[side] = load_profile(source.value)
                continue
            if source.kind == "remote":
                addresses[side] = source.value
            elif side == "device":
                addresses[side] = stack.enter_context(
                    local_device_agent(config.device.threads, config.device.cpu_affinity))
            # A server this process started itself needs no credentials.
            creds = access.get(side, Access()) if source.kind == "remote" else Access()
            profiles[side] = profile_side(side, addresses[side], config, creds, progress,
                                          on_rpc if side == "cloud" else None)
            on_profile(side, profiles[side])
    return profiles["device"], profiles["cloud"]
