"""An independent client of the dnntune protocol, built only from proto/ at test time.

protoc (in a subprocess) compiles ``proto/dnntune/v1/dnntune.proto`` into a descriptor
set; message classes come from a private descriptor pool and stubs from the service
descriptors, as any other language's generated client would. Nothing of dnntune's own
Python (its generated modules, client or tensors) is used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

REPO = Path(__file__).resolve().parents[1]
PROTO = REPO / "proto" / "dnntune" / "v1" / "dnntune.proto"


class Protocol:
    """Message classes by name (``proto.ModelSpec``) and stubs by service name."""

    def __init__(self, workdir: Path, root: Path = REPO / "proto") -> None:
        """Compile ``<root>/dnntune/v1/dnntune.proto`` (proto/, or an earlier version's
        copy to play a client written against it)."""
        out = workdir / "dnntune.desc"
        proto = root / PROTO.relative_to(REPO / "proto")
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{root}",
                        f"--descriptor_set_out={out}", "--include_imports", str(proto)],
                       check=True, capture_output=True, timeout=120)
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
        self.pool = descriptor_pool.DescriptorPool()
        for f in files.file:
            self.pool.Add(f)
        self.file = self.pool.FindFileByName("dnntune/v1/dnntune.proto")

    def __getattr__(self, name: str) -> Any:
        return message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName(f"dnntune.v1.{name}"))

    def stub(self, channel: grpc.Channel, service: str) -> Any:
        return Stub(self, channel, self.file.services_by_name[service])


class Stub:
    """``stub.Method(request_or_iterator, timeout=..., metadata=...)`` for every method."""

    def __init__(self, proto: Protocol, channel: grpc.Channel, service: Any) -> None:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            reply = message_factory.GetMessageClass(method.output_type)
            kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                    (True, False): channel.stream_unary, (True, True): channel.stream_stream
                    }[(method.client_streaming, method.server_streaming)]
            setattr(self, method.name, kind(path, request_serializer=_serialize,
                                            response_deserializer=reply.FromString))


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def raw_method(channel: grpc.Channel, path: str, client_streaming: bool,
               server_streaming: bool) -> Any:
    """A method that sends raw bytes and returns raw bytes (for malformed payloads)."""
    kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream
            }[(client_streaming, server_streaming)]
    return kind(path, request_serializer=None, response_deserializer=None)
