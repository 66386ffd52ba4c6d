"""Nothing a request names reaches outside the server's store (issue 27), tried as an
attacker would: a real `dnntune serve` process, driven through stubs compiled from proto/
only, started in a folder that holds a loadable model, a secret YAML file and links."""

from __future__ import annotations

import hashlib
import os
import shutil

import grpc
import pytest

from dnntune.profiling.energy import check_served_energy
from tests.proto_stubs import Protocol, raw_method
from tests.test_protocol import serve, status

SECRET = "db_password: hunter2\nshared_key: 0xdeadbeef\n"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A server's working folder with things no request may reach, and an upload folder
    holding a symbolic link under a valid sha256 name."""
    import keras

    root = tmp_path_factory.mktemp("host")
    work, store, private = root / "work", root / "store", root / "private"
    for d in (work, store, private):
        d.mkdir()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(private / "victim.keras")
    shutil.copy(private / "victim.keras", work / "victim.keras")
    (private / "secret.yaml").write_text(SECRET)
    (work / "secret.yaml").write_text(SECRET)
    (work / "linked.keras").symlink_to(private / "victim.keras")
    digest = hashlib.sha256((private / "victim.keras").read_bytes()).hexdigest()
    (store / f"{digest}.keras").symlink_to(private / "victim.keras")
    return {"root": root, "work": work, "store": store, "private": private, "sha": digest}


@pytest.fixture(scope="module")
def channel(host, tmp_path_factory):
    with serve(tmp_path_factory.mktemp("tmp"), "--upload-dir", str(host["store"]),
               cwd=host["work"]) as (_, address), grpc.insecure_channel(address) as ch:
        yield ch


@pytest.fixture(scope="module")
def stubs(channel, tmp_path_factory):
    proto = Protocol(tmp_path_factory.mktemp("proto"))
    return proto, proto.stub(channel, "Profiler"), proto.stub(channel, "Cloud")


def model_calls(proto, profiler, cloud, spec):
    """Every RPC that names a model by ModelSpec."""
    head = proto.ModelIdentity(sha256=spec.sha256, zoo_name=spec.zoo_name)
    return {
        "Describe": (profiler.Describe, proto.DescribeRequest(model=spec)),
        "Profile": (profiler.Profile, proto.ProfileRequest(model=spec, num_runs=1)),
        "RunTail": (cloud.RunTail, iter([proto.TailRequest(
            header=proto.TailHeader(model=spec, cut_index=1, head=head))])),
    }


def test_zoo_name_is_never_a_path(host, stubs):
    _, profiler, cloud = stubs
    proto = stubs[0]
    names = {
        "absolute": str(host["private"] / "victim.keras"),
        "relative to the server's folder": "victim.keras",
        "dot-dot": "../private/victim.keras",
        "symlink": "linked.keras",
    }
    answers = {}
    for what, name in names.items():
        missing = name.replace("victim", "absent").replace("linked", "absent")
        for call_name, (call, request) in model_calls(
                proto, profiler, cloud, proto.ModelSpec(zoo_name=name)).items():
            code, details = status(call, request)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, call_name, code, details)
            assert "is not a zoo model" in details, (what, call_name, details)
            assert str(host["root"]) not in details.replace(name, "<name>")
            # The existence oracle: a file that exists and one that does not get the same
            # answer, but for the name the client sent itself.
            other = status(*model_calls(proto, profiler, cloud,
                                        proto.ModelSpec(zoo_name=missing))[call_name])
            assert other == (code, details.replace(repr(name), repr(missing))), (what, other)
            answers[what, call_name] = details.replace(repr(name), "<name>")
    assert len(set(answers.values())) == 1, answers


def test_a_symlink_in_the_store_is_not_followed(host, stubs):
    proto, profiler, cloud = stubs
    sha = host["sha"]
    assert not profiler.HasModel(proto.ModelRef(sha256=sha), timeout=30).cached
    absent = "0" * 64
    for call_name, (call, request) in model_calls(
            proto, profiler, cloud, proto.ModelSpec(sha256=sha)).items():
        code, details = status(call, request)
        assert code == grpc.StatusCode.NOT_FOUND, (call_name, code, details)
        # The same answer as for a model that was never uploaded.
        assert status(*model_calls(proto, profiler, cloud,
                                   proto.ModelSpec(sha256=absent))[call_name]) == (
            code, details.replace(sha, absent))


def test_energy_model_names_only_shipped_profiles(host, stubs):
    proto, profiler, _ = stubs
    tiny = proto.ModelSpec(zoo_name="tiny_mlp")
    specs = {
        "absolute yaml": f"model:{host['private'] / 'secret.yaml'}",
        "relative yaml": "model:secret.yaml",
        "dot-dot": "model:../private/secret",
        "plain name of a file in the server's folder": "model:secret",
        "unknown": "model:nosuchphone",
    }
    answers = set()
    for what, energy in specs.items():
        code, details = status(profiler.Profile, proto.ProfileRequest(
            model=tiny, num_runs=1, energy=energy))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, code, details)
        name = energy.partition(":")[2]
        generic = details.replace(repr(name), "<name>")
        assert "db_password" not in details and "shared_key" not in details, details
        assert str(host["root"]) not in generic and os.getcwd() not in generic, details
        assert "site-packages" not in generic and "/configs" not in generic, details
        answers.add(generic)
    assert len(answers) == 1, answers  # existing file, missing file, unknown: one answer
    assert "pixel3" in answers.pop()  # the message lists what may be named


def test_shipped_power_profiles_and_meters_are_accepted():
    for spec in ("", "none", "auto", "model:pixel3", "model:default", "rapl:dram",
                 "battery", "ina3221:VDD_IN"):
        assert check_served_energy(spec, "f") == (spec or "none")


def test_garbage_bytes_are_invalid_argument_not_internal(channel):
    """INTERNAL is the server's own bug (the .proto's contract); bytes that are no
    protobuf of the request's type are the client's mistake, unary or streamed."""
    for path, streaming, message in (
            ("/dnntune.v1.Profiler/HasModel", False, "dnntune.v1.ModelRef"),
            ("/dnntune.v1.Profiler/UploadModel", True, "dnntune.v1.ModelChunk"),
            ("/dnntune.v1.Cloud/RunTail", True, "dnntune.v1.TailRequest")):
        call = raw_method(channel, path, streaming, path.endswith("RunTail"))
        request = iter([b"\xff\xff\xff"]) if streaming else b"\xff\xff\xff"
        code, details = status(call, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, code, details)
        assert f"not a valid {message} message" in details, details


def test_an_upload_declaring_no_bytes_is_invalid_argument(stubs):
    proto, profiler, _ = stubs
    code, details = status(profiler.UploadModel, iter([proto.ModelChunk(
        sha256="a" * 64, suffix=".keras", total_bytes=0, data=b"x")]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "ModelChunk.total_bytes must be at least 1" in details


def test_a_bool_tensor_byte_other_than_0_or_1_is_refused(stubs):
    """The .proto says bool is one byte, 0 or 1: a 7 is INVALID_ARGUMENT, not a True."""
    proto, _, cloud = stubs
    for data, ok in ((b"\x00\x01\x01", True), (b"\x00\x07\x01", False)):
        chunk = proto.TensorChunk(name="x", dtype="bool", shape=[3], total_bytes=3, data=data)
        code, details = status(cloud.Echo, iter([chunk]))
        if ok:
            assert code == grpc.StatusCode.OK, details
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert "must be 0 or 1" in details, details
