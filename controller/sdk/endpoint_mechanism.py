"""The endpoint's side of the KERNEL mechanism: it accepts the one its caller offers (the caller
creates the interface), naming it when the caller did not."""

from __future__ import annotations

from controller.nsm.base import kernel
from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request


class AcceptKernel(Element):
    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn = req.connection
        if not conn.HasField("mechanism"):
            conn.mechanism.CopyFrom(next(m for m in req.mechanism_preferences if m.type == kernel.KERNEL))
        if not conn.mechanism.parameters.get(kernel.NAME_KEY):
            conn.mechanism.parameters[kernel.NAME_KEY] = kernel.default_ifname(conn.network_service)
        return await nxt.request(req, ctx)
