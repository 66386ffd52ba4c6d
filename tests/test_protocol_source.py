"""The committed generated code matches proto/ exactly, and importing it compiles nothing."""

from __future__ import annotations

import subprocess
import sys

from google.protobuf import descriptor_pb2

from dnntune.protocol import OUT_DIR, PROTO_FILE, PROTO_ROOT, load_protocol


def _compiled_from_source(tmp_path) -> descriptor_pb2.FileDescriptorProto:
    """The .proto as protoc sees it now, compiled in a fresh interpreter."""
    out = tmp_path / "set.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
                    f"--descriptor_set_out={out}", str(PROTO_FILE)], check=True)
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    assert [f.name for f in files] == ["dnntune/v1/dnntune.proto"]
    compiled = files[0]
    for message in _all_messages(compiled.message_type):  # generated code omits these
        for field in message.field:
            field.ClearField("json_name")
    return compiled


def _all_messages(messages):
    for message in messages:
        yield message
        yield from _all_messages(message.nested_type)


def test_generated_messages_match_the_proto(tmp_path):
    pb2, _ = load_protocol()
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb2.DESCRIPTOR.serialized_pb)
    assert committed == _compiled_from_source(tmp_path), (
        "dnntune/v1 is stale: run `make proto` and commit the result")


def test_generated_services_cover_every_rpc(tmp_path):
    _, services = load_protocol()
    for service in _compiled_from_source(tmp_path).service:
        stub = getattr(services, f"{service.name}Stub")
        servicer = getattr(services, f"{service.name}Servicer")
        adder = getattr(services, f"add_{service.name}Servicer_to_server")
        assert callable(adder)
        for method in service.method:
            assert hasattr(servicer, method.name), (service.name, method.name)
            source = (*stub.__init__.__code__.co_consts, stub.__init__.__doc__ or "")
            assert any(f"/{method.name}" in str(c) for c in source), (service.name,
                                                                      method.name)


def test_loading_the_protocol_runs_no_protoc(tmp_path):
    """A fresh interpreter imports the protocol without loading protoc."""
    code = ("import sys; from dnntune.protocol import load_protocol; load_protocol(); "
            "assert 'grpc_tools.protoc' not in sys.modules, 'protoc loaded at run time'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert (OUT_DIR / "dnntune_pb2.py").is_file()
