"""The endpoints' MonitorConnections, watched while connections use them (docs/nsm_contract.md §7.3,
passthrough propagation): a DOWN or DELETE for one of our connections, or the loss of the
endpoint's stream, turns our connection DOWN, so its client heals.

One stream per endpoint, selecting the connections that pass through this hop by its segment
name, rather than the SDK's one stream per connection: a thousand connections to one
endpoint are then one stream, not a thousand."""

from __future__ import annotations

import asyncio
import logging

import grpc

from controller.nsm.base.channels import Channels
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tasks import Tasks
from controller.nsm.base.tokens import TokenSource
from controller.nsm.elements.monitor import MonitorHub
from nsm_api import connection_pb2, connection_pb2_grpc

log = logging.getLogger("p4nsm.nsm")


class EndpointWatch:
    def __init__(self, own_name: str, channels: Channels, tokens: TokenSource, hub: MonitorHub, tasks: Tasks) -> None:
        self.own_name = own_name
        self.channels = channels
        self.tokens = tokens
        self.hub = hub
        self.tasks = tasks
        self._conns: dict[str, set[str]] = {}  # endpoint URL -> our connection ids through it
        self._streams: dict[str, asyncio.Task[None]] = {}

    def watch(self, url: str, conn_id: str) -> None:
        self._conns.setdefault(url, set()).add(conn_id)
        if url not in self._streams:
            self._streams[url] = self.tasks.spawn(self._stream(url), f"endpoint-monitor:{url}")

    def forget(self, url: str, conn_id: str) -> None:
        conns = self._conns.get(url, set())
        conns.discard(conn_id)
        if not conns:
            self._conns.pop(url, None)
            stream = self._streams.pop(url, None)
            if stream is not None:
                stream.cancel()

    def _ours(self, conn: connection_pb2.Connection) -> str:
        return next((seg.id for seg in conn.path.path_segments if seg.name == self.own_name), "")

    async def _stream(self, url: str) -> None:
        selector = connection_pb2.MonitorScopeSelector(path_segments=[connection_pb2.PathSegment(name=self.own_name)])
        stub = connection_pb2_grpc.MonitorConnectionStub(self.channels.get(url))
        reason = "endpoint ended its monitor stream"
        try:
            async for event in stub.MonitorConnections(selector, metadata=Credentials(*self.tokens.issue()).as_metadata()):
                if event.type == connection_pb2.INITIAL_STATE_TRANSFER:
                    continue
                for conn in event.connections.values():
                    ours = self._ours(conn)
                    if ours in self._conns.get(url, ()) and (event.type == connection_pb2.DELETE or conn.state == connection_pb2.DOWN):
                        self.hub.set_state(ours, connection_pb2.DOWN,
                                           f"endpoint reported {connection_pb2.ConnectionEventType.Name(event.type)}")
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            reason = f"endpoint monitor failed: {e.code().name}"
        finally:
            if self._streams.get(url) is asyncio.current_task():
                del self._streams[url]
        for conn_id in self._conns.get(url, set()):
            self.hub.set_state(conn_id, connection_pb2.DOWN, reason)
