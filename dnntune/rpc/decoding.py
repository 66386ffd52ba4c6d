"""Bytes that are not the request message: INVALID_ARGUMENT, as the .proto's contract says.

gRPC's Python server answers a request it cannot deserialize with INTERNAL and logs a
traceback, but INTERNAL is reserved for the server's own bugs: garbage from a client is the
client's mistake. :class:`RequestDecoding` swaps each handler's deserializer for one that
returns an :class:`Undecodable` marker instead of raising, and refuses the call (or, in a
request stream, the message) with INVALID_ARGUMENT naming the message type expected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from dnntune.rpc.gate import wrap_handler
from dnntune.rpc.tensors import WireError


@dataclass(frozen=True)
class Undecodable:
    """Stands for a request message whose bytes did not parse."""

    message_type: str

    def refusal(self) -> str:
        return f"the request is not a valid {self.message_type} message (protobuf wire format)"


def tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserialize`` that returns :class:`Undecodable` for malformed bytes."""
    owner = getattr(deserialize, "__self__", None)
    message_type = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def run(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return Undecodable(message_type)
    return run


def _checked_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Undecodable):
            raise WireError(request.refusal())  # the servicers' rpc_errors answer it
        yield request


def _refusing(behavior: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        if streaming:
            return behavior(_checked_stream(request), context)
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.refusal())
        return behavior(request, context)
    return run


class RequestDecoding(grpc.ServerInterceptor):
    """Malformed request bytes get INVALID_ARGUMENT, not INTERNAL and a logged traceback."""

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return wrap_handler(handler,
                            lambda behavior: _refusing(behavior, handler.request_streaming),
                            request_deserializer=tolerant(handler.request_deserializer))
