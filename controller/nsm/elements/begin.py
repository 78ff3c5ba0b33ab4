"""begin (docs/nsm_contract.md §7.1): one connection id, one operation at a time; a repeated
Request is a refresh; a reselect first closes what exists; Close uses the last good connection.
It also gives later elements the way to close a connection on their own (expiry, reselect).

Later elements reach what begin knows through `state_of(ctx)` and `is_refresh(ctx)` (Go:
`begin.FromContext(ctx)`); the connection's `ConnState.values` is where each of them keeps,
under a Key of its own, what it needs between the calls of one connection (Go: `metadata.Map`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import grpc

from controller.nsm.base.errors import NsmError, invalid
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request
from nsm_api import connection_pb2

log = logging.getLogger("p4nsm.nsm")


class ConnState:
    """One connection at this hop; `values` holds what elements keep between its calls, each
    under a Key private to that element."""

    def __init__(self, conn_id: str, begin: Begin) -> None:
        self.id = conn_id
        self.lock = asyncio.Lock()
        self.established = False
        self.connection: Connection | None = None  # the last good answer, at this hop's index
        self.request: Request | None = None
        self.tail: Next | None = None  # the chain after begin, for closes of the server's own
        self.values: dict[Key[Any], Any] = {}
        self._begin = begin

    async def close(self, reason: str, still_due: Callable[[], bool] = lambda: True) -> None:
        """Close on the server's own initiative; a no-op when it is already gone, or when
        `still_due()` (asked once this call holds the connection) says a newer call superseded it."""
        await self._begin.close_internal(self, reason, still_due)


_STATE: Key[ConnState] = Key("begin.state")
_REFRESH: Key[bool] = Key("begin.refresh")


def state_of(ctx: CallContext) -> ConnState | None:
    """The connection this call is about; None in a chain without begin."""
    return ctx.values.get(_STATE)


def is_refresh(ctx: CallContext) -> bool:
    """Whether this Request is for a connection that was already established when it came."""
    return bool(ctx.values.get(_REFRESH, False))


def _enter(ctx: CallContext, st: ConnState, *, refresh: bool = False) -> CallContext:
    ctx.values[_STATE] = st
    ctx.values[_REFRESH] = refresh
    return ctx


def _refused(e: BaseException) -> bool:
    """A later element refused the call as not the caller's to make (authorize, ownership)."""
    return isinstance(e, NsmError) and e.code == grpc.StatusCode.PERMISSION_DENIED


def _copy(msg: Any) -> Any:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


class Begin(Element):
    def __init__(self) -> None:
        self.states: dict[str, ConnState] = {}

    def connections(self) -> list[Connection]:
        return [st.connection for st in self.states.values() if st.established and st.connection is not None]

    async def _locked(self, conn_id: str) -> ConnState:
        while True:
            st = self.states.setdefault(conn_id, ConnState(conn_id, self))
            await st.lock.acquire()
            if self.states.get(conn_id) is st:
                return st
            st.lock.release()  # dropped while we waited: start over with a fresh one

    def _drop(self, st: ConnState) -> None:
        if self.states.get(st.id) is st:
            del self.states[st.id]
        st.established = False
        st.values.clear()

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn_id = req.connection.id
        if not conn_id:
            raise invalid("connection.id", "Id must not be zero valued")
        st = await self._locked(conn_id)
        try:
            if st.established and req.connection.state == connection_pb2.RESELECT_REQUESTED:
                log.info("connection=%s event=reselect", st.id)
                try:
                    # The caller's own Close, checked as one: only who may close it may reselect it.
                    await self._close_stored(st, _enter(dataclasses.replace(ctx, values={}), st))
                except Exception as e:  # the old endpoint may be what failed; the new one matters
                    if _refused(e):
                        raise
                    log.warning("connection=%s event=reselect_close_failed error=%s", st.id, e)
                st.values.clear()
                st.established = False
            _enter(ctx, st, refresh=st.established)
            try:
                resp = await nxt.request(req, ctx)
            except BaseException:
                if not st.established:
                    self._drop(st)
                raise
            resp.state = connection_pb2.UP
            st.established = True
            st.request = _copy(req)
            st.connection = _copy(resp)
            st.tail = nxt
            return resp
        finally:
            st.lock.release()

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        if conn.id not in self.states:
            return
        st = await self._locked(conn.id)
        try:
            if not st.established:
                self._drop(st)
                return
            _enter(ctx, st)
            refused = False
            try:
                await nxt.close(_copy(st.connection), ctx)
            except Exception as e:
                refused = _refused(e)  # before anything was closed: the connection stays as it is
                raise
            finally:
                if not refused:
                    self._drop(st)
        finally:
            st.lock.release()

    async def close_internal(self, st: ConnState, reason: str, still_due: Callable[[], bool]) -> None:
        async with st.lock:
            if self.states.get(st.id) is not st or not st.established or not still_due():
                return
            log.info("connection=%s event=closing reason=%s", st.id, reason)
            try:
                await self._close_stored(st, _enter(CallContext(internal=reason), st))
            finally:
                self._drop(st)

    @staticmethod
    async def _close_stored(st: ConnState, ctx: CallContext) -> None:
        assert st.tail is not None and st.connection is not None
        await st.tail.close(_copy(st.connection), ctx)
