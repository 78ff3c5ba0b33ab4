"""Refusals that reach the caller as a gRPC status whose message starts with the field at fault."""

from __future__ import annotations

import grpc


class NsmError(Exception):
    def __init__(self, code: grpc.StatusCode, field: str, message: str) -> None:
        self.code = code
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}" if field else message)


def invalid(field: str, message: str) -> NsmError:
    return NsmError(grpc.StatusCode.INVALID_ARGUMENT, field, message)


def not_found(field: str, message: str) -> NsmError:
    return NsmError(grpc.StatusCode.NOT_FOUND, field, message)


def unavailable(field: str, message: str) -> NsmError:
    return NsmError(grpc.StatusCode.UNAVAILABLE, field, message)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """How any failure of a chain reads on the wire."""
    if isinstance(exc, NsmError):
        return exc.code, str(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code(), exc.details() or exc.code().name
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status `exc` reads as (raises grpc's AbortError)."""
    code, message = status_of(exc)
    await context.abort(code, message)


class EndpointFailed(NsmError):
    """The chosen endpoint could not serve the connection (unreachable, refused, no path to its
    host); endpoint selection then tries the next candidate."""
