"""Registering a generated gRPC servicer so that its requests are parsed inside the handler.

grpc parses a request before the handler runs, and bytes that are not the message end the call
with UNKNOWN and a traceback at ERROR in the server's log. Registered through here, such bytes
answer INVALID_ARGUMENT with one log line; and a method may have a check that needs no request
(who the peer is), run before the request is parsed, so that a large request from a client that
may not make it costs nothing to refuse. Messages above the server's receive limit never get this
far: grpc refuses them with RESOURCE_EXHAUSTED before any parsing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

Guard = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


class MalformedRequest(Exception):
    """A streamed request that is not the method's message: the stream's reader ends the stream."""


class _Capture:
    """Stands in for the server while a generated add_*Servicer_to_server runs."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


def add_servicer(
    server: grpc.aio.Server,
    add: Callable[[Any, Any], None],
    servicer: Any,
    log: logging.Logger,
    guards: Mapping[str, Guard] | None = None,
) -> None:
    """`add(servicer, server)` (the generated function), with requests parsed in the handlers
    and `guards[method]` awaited before the parse."""
    capture = _Capture()
    add(servicer, capture)
    handlers = {name: _decoding(f"/{capture.service}/{name}", handler, log, (guards or {}).get(name))
                for name, handler in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)


def _decoding(method: str, handler: Any, log: logging.Logger, guard: Guard | None) -> Any:
    parse = handler.request_deserializer

    def refusal(context: grpc.aio.ServicerContext, err: Exception) -> str:
        reason = f"request is not a valid {method} message: {err}"
        log.info("event=malformed_request method=%s peer=%s reason=%r", method, context.peer(), reason)
        return reason

    async def parsed(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        if guard is not None:
            await guard(context)
        try:
            return parse(data)
        except (DecodeError, RecursionError, ValueError) as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(context, err))

    async def requests(iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for data in iterator:
            try:
                yield parse(data)
            except (DecodeError, RecursionError, ValueError) as err:
                raise MalformedRequest(refusal(context, err)) from None

    if not handler.request_streaming and not handler.response_streaming:
        inner_uu = handler.unary_unary

        async def unary_unary(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await inner_uu(await parsed(data, context), context)

        return handler._replace(request_deserializer=None, unary_unary=unary_unary)
    if not handler.request_streaming:
        inner_us = handler.unary_stream

        async def unary_stream(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in inner_us(await parsed(data, context), context):
                yield item

        return handler._replace(request_deserializer=None, unary_stream=unary_stream)
    if guard is not None:
        raise ValueError(f"{method}: a guard runs before a unary request is parsed; this method streams requests")
    if handler.response_streaming:
        inner_ss = handler.stream_stream

        async def stream_stream(iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in inner_ss(requests(iterator, context), context):
                yield item

        return handler._replace(request_deserializer=None, stream_stream=stream_stream)
    inner_su = handler.stream_unary

    async def stream_unary(iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        return await inner_su(requests(iterator, context), context)

    return handler._replace(request_deserializer=None, stream_unary=stream_unary)
