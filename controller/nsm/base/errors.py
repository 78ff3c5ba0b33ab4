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


class CandidateFailed(NsmError):
    """The chosen endpoint could not be given the connection for a reason that is not its own:
    no fabric path to its host, a switch or its host-side interface failed. Endpoint selection
    then tries the next candidate; outlier ejection does not count it against the endpoint, or
    a fabric fault would eject every endpoint behind it."""


class EndpointFailed(CandidateFailed):
    """The chosen endpoint itself failed: its call failed, was refused or timed out, its answer
    was invalid, or its registration places it on no fabric host. Selection tries the next
    candidate, and outlier ejection counts the failure against the endpoint."""
