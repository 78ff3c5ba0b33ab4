"""networkservice.NetworkService over a chain: each call gets its CallContext, and runs to its
end even if the caller goes away, so no connection is ever left half made or half closed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

import grpc
from google.protobuf import empty_pb2
from nsm_api import connection_pb2, networkservice_pb2, networkservice_pb2_grpc

from controller.nsm.chain import CallContext, Chain
from controller.nsm.errors import NsmError, abort
from controller.nsm.metadata import credentials

log = logging.getLogger("p4nsm.nsm")

T = TypeVar("T")


class NetworkServiceServicer(networkservice_pb2_grpc.NetworkServiceServicer):
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._running: set[asyncio.Future[object]] = set()

    async def _run(self, call: Awaitable[T]) -> T:
        # shield: a caller that cancels or times out does not interrupt the chain midway.
        fut = asyncio.ensure_future(call)
        self._running.add(fut)
        fut.add_done_callback(self._settle)
        return await asyncio.shield(fut)

    def _settle(self, fut: asyncio.Future[object]) -> None:
        self._running.discard(fut)
        if not fut.cancelled() and fut.exception() is not None and not isinstance(fut.exception(), NsmError):
            log.error("event=chain_failed error=%r", fut.exception(), exc_info=fut.exception())

    async def wait_idle(self) -> None:
        await asyncio.gather(*list(self._running), return_exceptions=True)

    @staticmethod
    def _context(context: grpc.aio.ServicerContext) -> CallContext:
        return CallContext(credentials=credentials(context.invocation_metadata()),
                           time_remaining=context.time_remaining(), peer=context.peer())

    async def Request(self, request: networkservice_pb2.NetworkServiceRequest, context: grpc.aio.ServicerContext) -> connection_pb2.Connection:  # noqa: N802
        service = request.connection.network_service
        try:
            resp = await self._run(self.chain.request(request, self._context(context)))
        except Exception as e:
            log.info("service=%s event=request_refused error=%s", service, e)
            await abort(context, e)
        log.debug("connection=%s service=%s endpoint=%s event=request_served", resp.id, service,
                  resp.network_service_endpoint_name)
        return resp

    async def Close(self, request: connection_pb2.Connection, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:  # noqa: N802
        try:
            await self._run(self.chain.close(request, self._context(context)))
        except Exception as e:
            log.info("connection=%s event=close_failed error=%s", request.id, e)
            await abort(context, e)
        return empty_pb2.Empty()
