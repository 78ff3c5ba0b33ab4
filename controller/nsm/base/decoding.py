"""Bytes that are not the message a method takes: refused with INVALID_ARGUMENT naming the
message, at the cost of a failed parse.

Left to grpc, a request that does not decode is answered UNKNOWN and logged at ERROR with a
traceback: formatting it costs the event loop several times what a refused Request does, so a
stream of garbage starves what shares the loop (the switches' keepalives) and floods the log.
`RefuseUndecodable` wraps each method's deserializer: a DecodeError becomes a marker the
wrapped handler refuses before the servicer sees it. Handlers are wrapped once per method."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


class _Undecodable:
    __slots__ = ()


UNDECODABLE = _Undecodable()


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request")


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return UNDECODABLE
    return decode


def _unary_unary(behavior: Callable[..., Awaitable[Any]], name: str) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is UNDECODABLE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {name} message")
        return await behavior(request, context)
    return handle


def _unary_stream(behavior: Callable[..., AsyncIterator[Any]], name: str) -> Callable[..., AsyncIterator[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if request is UNDECODABLE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {name} message")
        async for response in behavior(request, context):
            yield response
    return handle


class RefuseUndecodable(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped: dict[int, grpc.RpcMethodHandler] = {}  # id of grpc's handler -> ours
        self._kept: list[grpc.RpcMethodHandler] = []  # grpc's handlers, so that their ids stay theirs

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
                                handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        wrapped = self._wrapped.get(id(handler))
        if wrapped is None:
            name = _message_name(handler.request_deserializer)
            safe = _safe(handler.request_deserializer)
            if handler.response_streaming:
                wrapped = handler._replace(request_deserializer=safe, unary_stream=_unary_stream(handler.unary_stream, name))
            else:
                wrapped = handler._replace(request_deserializer=safe, unary_unary=_unary_unary(handler.unary_unary, name))
            self._wrapped[id(handler)] = wrapped
            self._kept.append(handler)
        return wrapped
