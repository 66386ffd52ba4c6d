"""The whole job: profile both sides (locally or remotely, or reuse files), then analyze.

With nothing named, the device agent runs in this process (device threads from the
config) and the cloud server in a child process on a free loopback port (cloud threads),
and both are profiled through gRPC: the code paths of a real deployment. Each profile
is written to the output folder as soon as it is measured, so a later failure loses
nothing already measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dnntune.config import RunConfig
from dnntune.errors import DnntuneError
from dnntune.profiling.profile import Profile, load_profile
from dnntune.rpc.client import Endpoint, ProfilerClient, model_spec, parse_address
from dnntune.rpc.transfer import measure_loopback_rpc

AGENT_STARTUP_TIMEOUT_S = 900.0  # an emulated agent calibrates before it listens

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
    from dnntune.rpc.serving import read_token

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
    """A ``python -m cloud_server`` child on a free loopback port; yields its address.

    The child gets SIGTERM if this process dies, so it never outlives its orchestrator.
    """
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen([sys.executable, "-m", "cloud_server", "--port", "0",
                                 "--num_threads", str(threads), "--grace-s", "5"],
                                stdout=subprocess.PIPE, stderr=errors, text=True,
                                preexec_fn=_die_with_parent)
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
            _stop(proc)


@contextlib.contextmanager
def local_device_agent(threads: int, affinity: tuple[int, ...]) -> Iterator[str]:
    """The device agent in this process on a free loopback port; yields its address."""
    from device_agent import create_server
    from dnntune.profiling.instrument import configure_runtime
    from dnntune.rpc.serving import ServerOptions

    configure_runtime(threads, affinity)  # before TensorFlow runs anything here
    running = create_server(ServerOptions(port=0, num_threads=threads), cloud=None)
    try:
        yield running.address
    finally:
        running.stop(0)


def model_file(config: RunConfig) -> tuple[str, str | None, tuple[int, ...] | None]:
    """The file that defines ``config.model`` on every side: ``(path, name, input_shape)``.

    A zoo model is built and calibrated once, here, and cached
    (:mod:`dnntune.model.cache`); the cached file already has the requested input shape.
    A user's file is itself, rebuilt by each side at ``input_shape`` (a deterministic
    clone with the same weights). A TensorFlow graph is its frozen ``.pb`` (a SavedModel
    folder frozen once, :mod:`dnntune.model.graph_files`) with how to read it:
    ``FILE.pb?input=..&output=..``, which ``load_model`` and ``model_spec`` both take.
    """
    from dnntune.model.tf_graph import is_graph_spec
    from dnntune.model.zoo import ZOO

    entry = ZOO.get(config.model)
    if entry is None and is_graph_spec(config.model):
        from dnntune.model.graph_files import upload_spec

        spec, name = upload_spec(config.model)
        return spec, name, config.input_shape
    if entry is None:
        check_model_file(config.model)
        return config.model, None, config.input_shape
    from dnntune.model.cache import zoo_model_file

    path = zoo_model_file(config.model, config.input_shape or entry.input_shape, config.seed)
    return str(path), config.model, None


def check_model_file(model: str) -> None:
    """A model that is not a zoo name must be a file here (said before connecting); a
    TensorFlow graph must have the inputs and outputs its spec names."""
    from dnntune.model.tf_graph import is_graph_spec
    from dnntune.model.zoo import ZOO

    if model not in ZOO and is_graph_spec(model):
        from dnntune.model.graph_files import upload_spec

        upload_spec(model)
        return
    if model not in ZOO and not Path(model).is_file():
        raise DnntuneError(f"--model {model}: no such model file (and not a zoo model)")


def graph_wire_problem(model: str) -> str | None:
    """Why wire encodings cannot be measured on ``model`` (a TensorFlow graph), or None."""
    from dnntune.model.tf_graph import is_graph_spec
    from dnntune.model.zoo import ZOO

    if model not in ZOO and is_graph_spec(model):
        return ("wire encodings are measured on Keras models only, not yet on a "
                "TensorFlow graph (.pb/SavedModel)")
    return None


def upload_model(client: ProfilerClient, config: RunConfig) -> Any:
    """Send the model's defining file to ``client``'s server; returns its ``ModelSpec``.

    Both sides then load the same bytes (by sha256), so their model hashes agree
    whatever their thread counts or CPUs.
    """
    path, name, shape = model_file(config)
    spec = model_spec(client.pb2, path, shape, config.batch_size, config.seed, name=name)
    client.upload_file(path)
    return spec


def _die_with_parent() -> None:
    """In a child: get SIGTERM when the parent dies, so its cgroup is removed even then."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def local_emulated_agent(preset: str | None, cloud: str | None = None, threads: int = 1,
                         startup_timeout_s: float = AGENT_STARTUP_TIMEOUT_S
                         ) -> Iterator[tuple[str, str]]:
    """A ``python -m device_agent [--emulate <preset>]`` child on a free loopback port.

    With a preset the child confines itself in a cgroup and calibrates before it
    listens; it stops (and removes its cgroup) when this context exits or when this
    process dies. Without one it runs unconfined with ``threads``.

    Yields:
        ``(address, the agent's one-line description of its emulation, or "")``.
    """
    with local_emulated_agents([preset], cloud, threads, startup_timeout_s) as agents:
        yield agents[0]


@contextlib.contextmanager
def local_emulated_agents(presets: Sequence[str | None], cloud: str | None = None,
                          threads: int = 1,
                          startup_timeout_s: float = AGENT_STARTUP_TIMEOUT_S
                          ) -> Iterator[list[tuple[str, str]]]:
    """One :func:`local_emulated_agent` per preset, started together.

    Every child is started before any is waited for, so their start-up and calibration
    overlap (each calibrates inside its own cgroup). All stop when this context exits.

    Yields:
        ``(address, description)`` per preset, in the order of ``presets``.
    """
    with contextlib.ExitStack() as stack:
        children = []
        for preset in presets:
            argv = [sys.executable, "-m", "device_agent", "--port", "0", "--grace-s", "5",
                    "--num_threads", str(threads)]
            argv += ["--emulate", preset] if preset else []
            argv += ["--cloud", cloud] if cloud else []
            errors = stack.enter_context(tempfile.TemporaryFile("w+"))
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True,
                                    preexec_fn=_die_with_parent)
            stack.callback(_stop, proc)
            children.append((preset, proc, errors))
        yield [_await_agent(preset, proc, errors, startup_timeout_s)
               for preset, proc, errors in children]


def _await_agent(preset: str | None, proc: subprocess.Popen[str], errors: IO[str],
                 timeout_s: float) -> tuple[str, str]:
    """The started agent's ``(address, description)``, or why it did not start."""
    what = f"the emulated device agent ({preset})" if preset else "the device agent"
    lines = _read_until(proc, r"listening on (\S+)", timeout_s)
    match = re.search(r"listening on (\S+)", lines[-1]) if lines else None
    if not match:
        proc.kill()
        proc.wait()
        errors.seek(0)
        last = (errors.read().strip().splitlines() or ["no output"])[-1]
        raise DnntuneError(f"{what} did not start: {last.removeprefix('dnntune: error: ')}")
    described = next((x.split("emulates ", 1)[1] for x in lines if "emulates " in x), "")
    return match.group(1), described.strip()


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout_s: float) -> list[str]:
    """Lines of the child's stdout up to the one matching ``pattern`` (or EOF, timeout).

    A reader thread, because ``select`` on a buffered pipe misses lines already read
    into the buffer.
    """
    import queue
    import threading
    import time

    stream = proc.stdout
    assert stream is not None
    lines_q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines_q.put(line)
            if re.search(pattern, line):
                return
        lines_q.put("")
    threading.Thread(target=pump, name="dnntune-child-stdout", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines_q.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            break
        lines.append(line.strip())
        if re.search(pattern, line):
            break
    return lines


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def emulated_device_config(config: RunConfig) -> RunConfig:
    """With ``processing.device.emulate``: the preset's threads and power model (when
    the config's meter is ``auto``) for the device side."""
    preset_name = config.device.emulate
    if not preset_name:
        return config
    from dnntune.profiling.devices import load_emulation_preset
    from dnntune.profiling.emulation import usable_threads

    preset = load_emulation_preset(preset_name)
    energy = config.device.energy
    device = dataclasses.replace(config.device, threads=usable_threads(preset),
                                 energy=f"model:{preset.name}" if energy == "auto" else energy)
    return dataclasses.replace(config, device=device)


def cgroup_problem() -> str | None:
    """Why this process cannot confine a device agent in a cgroup, or ``None``."""
    from dnntune.profiling.cgroups import CgroupUnavailableError, find_backend

    try:
        find_backend()
    except CgroupUnavailableError as exc:
        return str(exc)
    return None


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
            # The cost model's RPC terms: gRPC's own cost of this tensor path, measured
            # in this process on loopback, never through the emulated phone (whose
            # harness is not the phone's) nor over a real network (the link model's).
            on_rpc(measure_loopback_rpc())
        return profile
    finally:
        client.close()


def _check_reachable(sources: Mapping[str, Source], access: Mapping[str, Access]) -> None:
    """Connect to every remote server before measuring anything: a wrong address or a
    TLS mistake is one line within seconds, not after the device's whole profile."""
    for side, source in sources.items():
        if source.kind == "remote":
            ProfilerClient(access.get(side, Access()).endpoint(source.value)).close()


def collect_profiles(config: RunConfig, device: Source, cloud: Source,
                     access: Mapping[str, Access],
                     out_dir: Path, progress: ProgressFactory,
                     on_profile: Callable[[str, Profile], Any],
                     on_rpc: Callable[[tuple[float, float]], Any] | None = None
                     ) -> tuple[Profile, Profile]:
    """Device first (with the cloud idle), then cloud; each saved as soon as measured.

    With ``processing.device.emulate`` and a local device, the device agent runs in a
    child process as the preset's phone (``emulated:<preset>``): by time dilation, or
    with ``<preset>:quota`` confined to a calibrated CPU share; there, where no cgroup can
    be written, in this process, its profile scaled to the preset (``scaled:<preset>``,
    with one line on stderr saying why).
    """
    from dnntune.profiling.devices import split_emulate

    profiles: dict[str, Profile] = {}
    emulate = config.device.emulate if device.kind == "local" else None
    config = emulated_device_config(config) if emulate else config
    problem = (cgroup_problem() if emulate and split_emulate(emulate)[1] == "quota"
               else None)
    if emulate and problem:
        print(f"dnntune: note: cannot confine the device agent ({problem}): device timings "
              f"are this machine's scaled to {emulate} (scaled:{emulate}), a what-if",
              file=sys.stderr)
    _check_reachable({"device": device, "cloud": cloud}, access)
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
            elif side == "device" and emulate and not problem:
                with progress(f"calibrating the emulated device ({emulate})") as update:
                    update("calibrating", 0, 1)
                    addresses[side] = stack.enter_context(local_emulated_agent(emulate))[0]
            elif side == "device":
                addresses[side] = stack.enter_context(
                    local_device_agent(config.device.threads, config.device.cpu_affinity))
            # A server this process started itself needs no credentials.
            creds = access.get(side, Access()) if source.kind == "remote" else Access()
            profiles[side] = profile_side(side, addresses[side], config, creds, progress,
                                          on_rpc if side == "cloud" else None)
            if side == "device" and emulate and problem:
                from dnntune.profiling.emulation import scale_profile, scaled_emulation

                profiles[side] = scale_profile(profiles[side],
                                               scaled_emulation(emulate, problem))
            on_profile(side, profiles[side])
    return profiles["device"], profiles["cloud"]
