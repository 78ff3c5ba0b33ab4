"""monitor (docs/nsm_contract.md §7.3): every connection this hop holds, as events to MonitorConnections
subscribers: INITIAL_STATE_TRANSFER at once, then UPDATE and DELETE filtered by each one's
scope selector. A stream never ends on the server's initiative.

A subscriber sees only the connections its caller may (`Access.monitor` over the caller and the
connection's owner, NSM's `monitor/service_connection`): by default its own, an operator's all.
Even an empty selector lists no one else's connections, nor their tokens."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import grpc

from controller.nsm.base.access import OPEN, Access, servicer_caller
from controller.nsm.base.errors import NsmError, abort
from controller.nsm.base.events import LatestBuffer
from controller.nsm.base.metadata import credentials
from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request
from controller.nsm.elements.ownership import owner_of
from nsm_api import connection_pb2, connection_pb2_grpc

log = logging.getLogger("p4nsm.nsm")

Selector = connection_pb2.MonitorScopeSelector
Event = connection_pb2.ConnectionEvent
Visible = Callable[[str, Connection], bool]  # (owner, connection) -> the subscriber may see it


def _everything(owner: str, conn: Connection) -> bool:
    return True


def _segment_matches(have: connection_pb2.PathSegment, want: connection_pb2.PathSegment) -> bool:
    return all(not getattr(want, f) or getattr(want, f) == getattr(have, f) for f in ("name", "id", "token"))


def selects(selector: Selector, conn: Connection) -> bool:
    """The API's MatchesMonitorScopeSelector: services by name, path segments as a contiguous run."""
    if selector.network_services and conn.network_service not in selector.network_services:
        return False
    want = selector.path_segments
    if not want:
        return True
    have = conn.path.path_segments
    for start in range(len(have)):
        for j, seg in enumerate(want):
            if start + j >= len(have) or not _segment_matches(have[start + j], seg):
                break
            if j == len(want) - 1:
                return True
    return False


def _copy(conn: Connection) -> Connection:
    out = Connection()
    out.CopyFrom(conn)
    return out


class _Subscriber:
    def __init__(self, selector: Selector, visible: Visible) -> None:
        self.selector = selector
        self.visible = visible
        self.buffer: LatestBuffer[str, Event] = LatestBuffer()
        # A selector naming segment ids can only match connections whose path has the first of
        # them: subscribers are found by that id instead of trying every one on every event.
        self.key = next((seg.id for seg in selector.path_segments if seg.id), "")


class MonitorHub:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.connections: dict[str, Connection] = {}
        self.owners: dict[str, str] = {}  # connection id -> who made it (ownership.owner_of)
        self._closing: set[str] = set()
        self._by_id: dict[str, set[_Subscriber]] = {}

    def _subscribers(self, conn: Connection) -> set[_Subscriber]:
        found = set(self._by_id.get("", ()))
        for seg in conn.path.path_segments:
            found |= self._by_id.get(seg.id, set())
        return found

    def _shows(self, sub: _Subscriber, conn: Connection) -> bool:
        return selects(sub.selector, conn) and sub.visible(self.owners.get(conn.id, ""), conn)

    def _publish(self, kind: connection_pb2.ConnectionEventType, conn: Connection) -> None:
        for sub in self._subscribers(conn):
            if self._shows(sub, conn):
                sub.buffer.put(conn.id, Event(type=kind, connections={conn.id: conn}))

    def update(self, conn: Connection, owner: str = "") -> None:
        self.connections[conn.id] = _copy(conn)
        self.owners[conn.id] = owner
        self._publish(connection_pb2.UPDATE, self.connections[conn.id])

    def delete(self, conn_id: str) -> None:
        conn = self.connections.pop(conn_id, None)
        if conn is not None:
            self._publish(connection_pb2.DELETE, conn)
            self.owners.pop(conn_id, None)

    def set_state(self, conn_id: str, state: connection_pb2.State, reason: str) -> None:
        """A change the data plane or a downstream hop reported, e.g. DOWN when no path is left."""
        conn = self.connections.get(conn_id)
        if conn is None or conn_id in self._closing or conn.state == state:
            return
        log.info("owner=%s connection=%s event=state state=%s reason=%s", self.owner, conn_id,
                 connection_pb2.State.Name(state), reason)
        conn.state = state
        self._publish(connection_pb2.UPDATE, conn)

    def closing(self, conn_id: str, yes: bool) -> None:
        (self._closing.add if yes else self._closing.discard)(conn_id)

    async def events(self, selector: Selector, visible: Visible = _everything) -> AsyncIterator[Event]:
        sub = _Subscriber(selector, visible)
        initial = {k: _copy(c) for k, c in self.connections.items() if self._shows(sub, c)}
        self._by_id.setdefault(sub.key, set()).add(sub)  # no await since the snapshot: no event falls in between
        try:
            yield Event(type=connection_pb2.INITIAL_STATE_TRANSFER, connections=initial)
            while True:
                yield await sub.buffer.get()
        finally:
            subs = self._by_id.get(sub.key, set())
            subs.discard(sub)
            if not subs:
                self._by_id.pop(sub.key, None)


class Monitor(Element):
    def __init__(self, hub: MonitorHub) -> None:
        self.hub = hub

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        resp = await nxt.request(req, ctx)
        stored = _copy(resp)
        stored.state = connection_pb2.UP
        self.hub.update(stored, owner_of(ctx))
        return resp

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        self.hub.closing(conn.id, True)
        try:
            await nxt.close(conn, ctx)
        finally:
            self.hub.closing(conn.id, False)
            self.hub.delete(conn.id)


class MonitorServicer(connection_pb2_grpc.MonitorConnectionServicer):
    """`access` decides what each caller sees; OPEN (everything) suits a server whose only
    caller is trusted, e.g. an SDK endpoint watched by its controller."""

    def __init__(self, hub: MonitorHub, access: Access = OPEN) -> None:
        self.hub = hub
        self.access = access

    def _caller(self, request: Selector, context: grpc.aio.ServicerContext) -> str:
        """Its per-RPC token (what NSM clients send, docs/nsm_contract.md §6.1), else the first
        segment's token of its selector; the mTLS peer wins over both."""
        token = credentials(context.invocation_metadata()).token
        if not token and request.path_segments:
            token = request.path_segments[0].token
        return servicer_caller(context, token)

    async def MonitorConnections(self, request: Selector, context: grpc.aio.ServicerContext) -> AsyncIterator[Event]:
        try:
            caller = self._caller(request, context)
        except NsmError as e:
            await abort(context, e)
            return
        rule = self.access.monitor

        def visible(owner: str, conn: Connection) -> bool:
            return rule(caller, owner, conn)

        async for event in self.hub.events(request, visible):
            yield event
