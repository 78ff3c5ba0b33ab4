"""outcome: how each Request and Close ended (its gRPC status code) and how long the rest of
the chain took, told to one observer (the metrics). It sits at the front of the chain, so a
Request refused by admission or validation is counted as the caller sees it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from controller.nsm.base.errors import status_of
from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request

# ("request" or "close", the status the caller gets, seconds the chain took)
CallObserver = Callable[[str, grpc.StatusCode, float], None]


class Outcome(Element):
    def __init__(self, observe: CallObserver) -> None:
        self.observe = observe

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        started = time.perf_counter()
        try:
            conn = await nxt.request(req, ctx)
        except BaseException as e:
            self._failed("request", e, started)
            raise
        self.observe("request", grpc.StatusCode.OK, time.perf_counter() - started)
        return conn

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        started = time.perf_counter()
        try:
            await nxt.close(conn, ctx)
        except BaseException as e:
            self._failed("close", e, started)
            raise
        self.observe("close", grpc.StatusCode.OK, time.perf_counter() - started)

    def _failed(self, call: str, exc: BaseException, started: float) -> None:
        code = grpc.StatusCode.CANCELLED if isinstance(exc, asyncio.CancelledError) else status_of(exc)[0]
        self.observe(call, code, time.perf_counter() - started)
