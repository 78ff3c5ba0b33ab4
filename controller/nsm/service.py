"""networkservice.NetworkService over a chain: each call gets its CallContext, and runs to its
end even if the caller goes away, so no connection is ever left half made or half closed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from controller.identity import peer_certificate_pem, peer_spiffe_id
from controller.logs import Throttle
from controller.nsm.base.errors import NsmError, abort
from controller.nsm.base.metadata import credentials
from controller.nsm.elements.begin import is_refresh
from controller.nsm.elements.chain import CallContext, Chain
from nsm_api import connection_pb2, networkservice_pb2, networkservice_pb2_grpc

log = logging.getLogger("p4nsm.nsm")

T = TypeVar("T")


class NetworkServiceServicer(networkservice_pb2_grpc.NetworkServiceServicer):
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        # A client decides how many Requests are refused; the log (and the loop's time) must not follow.
        self.refusals = Throttle()
        # calls of every result type (Future is invariant, hence Any)
        self._running: set[asyncio.Future[Any]] = set()

    def _start(self, call: Awaitable[T]) -> asyncio.Future[T]:
        fut = asyncio.ensure_future(call)
        self._running.add(fut)
        fut.add_done_callback(self._settle)
        return fut

    async def _run(self, call: Awaitable[T]) -> T:
        # shield: a caller that cancels or times out does not interrupt the chain midway.
        return await asyncio.shield(self._start(call))

    def _settle(self, fut: asyncio.Future[Any]) -> None:
        self._running.discard(fut)
        if not fut.cancelled() and fut.exception() is not None and not isinstance(fut.exception(), NsmError):
            log.error("event=chain_failed error=%r", fut.exception(), exc_info=fut.exception())

    def _abandoned(self, fut: asyncio.Future[connection_pb2.Connection], ctx: CallContext) -> None:
        """The caller went away (cancelled, or its deadline passed) before its answer. A new
        connection made for it is closed again: nobody would ever refresh or Close it. A
        refresh is left alone: the connection was there before and its client still is."""
        if fut.cancelled() or fut.exception() is not None or is_refresh(ctx):
            return
        conn = fut.result()
        log.info("connection=%s event=caller_gone action=close", conn.path.path_segments[conn.path.index + 1].id
                 if len(conn.path.path_segments) > conn.path.index + 1 else conn.id)
        self._start(self.chain.close(conn, CallContext(internal="caller gone")))

    async def wait_idle(self, timeout: float) -> None:
        """Let running calls finish; after `timeout` the rest are cancelled (a call stuck on a
        switch that never answers must not keep the server from stopping)."""
        running = list(self._running)
        if not running:
            return
        _, stuck = await asyncio.wait(running, timeout=timeout)
        for fut in stuck:
            fut.cancel()
        if stuck:
            log.warning("event=calls_cancelled_at_stop count=%d", len(stuck))
            await asyncio.gather(*stuck, return_exceptions=True)

    @staticmethod
    def _context(context: grpc.aio.ServicerContext) -> CallContext:
        return CallContext(credentials=credentials(context.invocation_metadata()),
                           time_remaining=context.time_remaining(), peer=context.peer(),
                           peer_identity=peer_spiffe_id(context), peer_cert=peer_certificate_pem(context))

    async def Request(self, request: networkservice_pb2.NetworkServiceRequest, context: grpc.aio.ServicerContext) -> connection_pb2.Connection:
        service = request.connection.network_service
        try:
            ctx = self._context(context)
            fut = self._start(self.chain.request(request, ctx))
            resp = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(lambda done: self._abandoned(done, ctx))
            raise
        except Exception as e:
            if (left_out := self.refusals.admit()) is not None:
                log.info("service=%s event=request_refused error=%s left_out=%d", service, e, left_out)
            await abort(context, e)
        log.debug("connection=%s service=%s endpoint=%s event=request_served", resp.id, service,
                  resp.network_service_endpoint_name)
        return resp

    async def Close(self, request: connection_pb2.Connection, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        try:
            await self._run(self.chain.close(request, self._context(context)))
        except Exception as e:
            log.info("connection=%s event=close_failed error=%s", request.id, e)
            await abort(context, e)
        return empty_pb2.Empty()
