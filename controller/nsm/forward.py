"""forward: the Request goes on to the selected endpoint, which answers with the IP context; the
endpoint's own KERNEL interface lives in its host's netns. While the connection lives, the
endpoint's MonitorConnections is watched, and its loss or a DOWN/DELETE from it turns this
connection DOWN, so the client heals (contract §7.3, passthrough propagation)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

import grpc
from nsm_api import connection_pb2, networkservice_pb2, networkservice_pb2_grpc
from nsm_api import connection_pb2_grpc

from controller.nsm import clock, kernel
from controller.nsm.begin import ConnState
from controller.nsm.channels import Channels
from controller.nsm.chain import CallContext, Connection, Element, Next, Request
from controller.nsm.errors import EndpointFailed
from controller.nsm.metadata import Credentials
from controller.nsm.monitor import MonitorHub
from controller.nsm.placement import endpoint_host
from controller.nsm.roundrobin import ENDPOINT
from controller.nsm.tasks import Tasks

log = logging.getLogger("p4nsm.nsm")

ENDPOINT_HOST = "forward.endpoint_host"
ENDPOINT_CONN = "forward.endpoint_conn"  # per call and per connection: the endpoint's answer
_URL = "forward.url"
_WATCH = "forward.watch"


def _own_credentials(conn: Connection) -> Credentials:
    seg = conn.path.path_segments[conn.path.index]
    return Credentials(seg.token, clock.to_seconds(seg.expires) if clock.is_set(seg.expires) else None)


class Forward(Element):
    def __init__(self, channels: Channels, hosts: Collection[str], hub: MonitorHub, tasks: Tasks, timeout: float) -> None:
        self.channels = channels
        self.hosts = hosts
        self.hub = hub
        self.tasks = tasks
        self.timeout = timeout

    def _outgoing(self, req: Request, ctx: CallContext, host: str) -> networkservice_pb2.NetworkServiceRequest:
        out = networkservice_pb2.NetworkServiceRequest()
        out.connection.CopyFrom(req.connection)
        out.connection.ClearField("mechanism")
        previous = ctx.state.values.get(ENDPOINT_CONN) if ctx.state is not None and ctx.refresh else None
        if previous is not None:
            out.connection.mechanism.CopyFrom(previous.mechanism)
        else:
            out.mechanism_preferences.append(kernel.mechanism(host, kernel.default_ifname(req.connection.network_service)))
        return out

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn = req.connection
        nse = ctx.values[ENDPOINT]
        host = endpoint_host(nse, conn.network_service, self.hosts)
        ctx.values[ENDPOINT_HOST] = host
        stub = networkservice_pb2_grpc.NetworkServiceStub(self.channels.get(nse.url))
        try:
            answer: Connection = await stub.Request(self._outgoing(req, ctx, host), timeout=self.timeout,
                                                    metadata=_own_credentials(conn).as_metadata())
        except grpc.aio.AioRpcError as e:
            raise EndpointFailed(e.code(), "connection.network_service_endpoint_name",
                                 f"endpoint {nse.name} at {nse.url}: {e.code().name}: {e.details()}") from None
        index = conn.path.index
        if len(answer.path.path_segments) <= index or answer.path.path_segments[index].id != conn.id \
                or answer.mechanism.type != kernel.KERNEL or not answer.mechanism.parameters.get(kernel.NAME_KEY):
            raise EndpointFailed(grpc.StatusCode.INTERNAL, "connection.network_service_endpoint_name",
                                 f"endpoint {nse.name} answered with a foreign path or without a KERNEL interface")
        conn.path.CopyFrom(answer.path)
        conn.path.index = index
        conn.context.CopyFrom(answer.context)
        ctx.values[ENDPOINT_CONN] = answer
        try:
            resp = await nxt.request(req, ctx)
        except BaseException:
            if not ctx.refresh:
                await self._close_endpoint(nse.url, answer, conn.id)
            raise
        st = ctx.state
        if st is not None:
            st.values[ENDPOINT_CONN] = answer
            st.values[_URL] = nse.url
            watch = st.values.get(_WATCH)
            if watch is None or watch.done():
                st.values[_WATCH] = self.tasks.spawn(self._watch(st, nse.url, conn), f"endpoint-monitor:{conn.id}")
        return resp

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        st = ctx.state
        try:
            await nxt.close(conn, ctx)
        finally:
            if st is not None:
                watch = st.values.pop(_WATCH, None)
                if watch is not None:
                    watch.cancel()
                answer, url = st.values.pop(ENDPOINT_CONN, None), st.values.pop(_URL, None)
                if answer is not None and url is not None:
                    await self._close_endpoint(url, answer, conn.id)

    async def _close_endpoint(self, url: str, answer: Connection, conn_id: str) -> None:
        """Best effort: a dead endpoint cannot be told, and its own expiry frees what it holds."""
        stub = networkservice_pb2_grpc.NetworkServiceStub(self.channels.get(url))
        try:
            await asyncio.shield(stub.Close(answer, timeout=self.timeout, metadata=_own_credentials(answer).as_metadata()))
        except grpc.aio.AioRpcError as e:
            log.warning("connection=%s endpoint_url=%s event=endpoint_close_failed code=%s error=%s",
                        conn_id, url, e.code().name, e.details())

    async def _watch(self, st: ConnState, url: str, conn: Connection) -> None:
        own = conn.path.path_segments[conn.path.index]
        selector = connection_pb2.MonitorScopeSelector(path_segments=[connection_pb2.PathSegment(id=own.id, name=own.name)])
        stub = connection_pb2_grpc.MonitorConnectionStub(self.channels.get(url))
        reason = "endpoint ended its monitor stream"
        try:
            async for event in stub.MonitorConnections(selector, metadata=_own_credentials(conn).as_metadata()):
                if event.type == connection_pb2.INITIAL_STATE_TRANSFER:
                    continue
                if any(event.type == connection_pb2.DELETE or c.state == connection_pb2.DOWN
                       for c in event.connections.values()):
                    reason = f"endpoint reported {connection_pb2.ConnectionEventType.Name(event.type)}"
                    break
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            reason = f"endpoint monitor failed: {e.code().name}"
        self.hub.set_state(st.id, connection_pb2.DOWN, reason)
