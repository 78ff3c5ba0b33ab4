"""forward: the Request goes on to the selected endpoint, which answers with the IP context; the
endpoint's own KERNEL interface lives in its host's netns. While the connection lives, the
endpoint is watched (endpoint_watch)."""

from __future__ import annotations

import logging
from collections.abc import Collection

import grpc
from nsm_api import networkservice_pb2, networkservice_pb2_grpc

from controller.nsm import clock, kernel
from controller.nsm.channels import Channels
from controller.nsm.chain import CallContext, Connection, Element, Next, Request
from controller.nsm.errors import EndpointFailed
from controller.nsm.endpoint_watch import EndpointWatch
from controller.nsm.metadata import Credentials
from controller.nsm.placement import endpoint_host
from controller.nsm.roundrobin import ENDPOINT

log = logging.getLogger("p4nsm.nsm")

ENDPOINT_HOST = "forward.endpoint_host"
ENDPOINT_CONN = "forward.endpoint_conn"  # per call and per connection: the endpoint's answer
_URL = "forward.url"


def _own_credentials(conn: Connection) -> Credentials:
    seg = conn.path.path_segments[conn.path.index]
    return Credentials(seg.token, clock.to_seconds(seg.expires) if clock.is_set(seg.expires) else None)


class Forward(Element):
    def __init__(self, channels: Channels, hosts: Collection[str], watch: EndpointWatch, timeout: float) -> None:
        self.channels = channels
        self.hosts = hosts
        self.watch = watch
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
            self.watch.watch(nse.url, conn.id)
        return resp

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        st = ctx.state
        try:
            await nxt.close(conn, ctx)
        finally:
            if st is not None:
                answer, url = st.values.pop(ENDPOINT_CONN, None), st.values.pop(_URL, None)
                if answer is not None and url is not None:
                    self.watch.forget(url, conn.id)
                    await self._close_endpoint(url, answer, conn.id)

    async def _close_endpoint(self, url: str, answer: Connection, conn_id: str) -> None:
        """Best effort: a dead endpoint cannot be told, and its own expiry frees what it holds."""
        stub = networkservice_pb2_grpc.NetworkServiceStub(self.channels.get(url))
        try:
            await stub.Close(answer, timeout=self.timeout, metadata=_own_credentials(answer).as_metadata())
        except grpc.aio.AioRpcError as e:
            log.warning("connection=%s endpoint_url=%s event=endpoint_close_failed code=%s error=%s",
                        conn_id, url, e.code().name, e.details())
