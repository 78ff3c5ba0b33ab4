"""The NSM address of a follower replica: every call is refused UNAVAILABLE with a message that
names the leader, so that an SDK client given every replica's address moves on to the next one
(controller/sdk/client.py). Why not pass the call to the leader: a call's owner is the mTLS
identity of its caller (ownership), and a follower in between would be the leader's peer instead."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from controller.identity import Svid
from controller.nsm.base.serving import bind

log = logging.getLogger("p4nsm.nsm")

# () -> the text naming the leader, read at each call (it changes with the terms)
LeaderText = Callable[[], str]


class _RefuseAll(grpc.GenericRpcHandler):
    def __init__(self, replica_id: str, leader: LeaderText) -> None:
        self.replica_id = replica_id
        self.leader = leader

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        # Every NSM and health method takes one request message: a unary handler reads it, and
        # the refusal's status is the same on the wire whatever the method answers with.
        async def refuse(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            message = f"replica {self.replica_id} is a follower; the NSM API is served by the leader ({self.leader()})"
            log.debug("event=nsm_refused_follower method=%s", method)
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)
            return b""  # not reached: abort raises

        return grpc.unary_unary_rpc_method_handler(refuse)


class FollowerNsm:
    def __init__(self, replica_id: str, leader: LeaderText, svid: Svid | None) -> None:
        self.replica_id = replica_id
        self.leader = leader
        self.svid = svid
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def start(self, address: str) -> str:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_RefuseAll(self.replica_id, self.leader),))
        self.address = bind(server, address, self.svid)
        await server.start()
        self._server = server
        log.info("event=nsm_follower_listening address=%s replica=%s", self.address, self.replica_id)
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(None)
