"""updatetoken (contract §6.2): the caller's segment takes the caller's per-RPC token and expiry;
this hop's segment takes a token of its own. Both on Request and on Close."""

from __future__ import annotations

from controller.nsm import clock
from controller.nsm.chain import CallContext, Connection, Element, Next, Request
from controller.nsm.tokens import TokenSource


class UpdateToken(Element):
    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    def _apply(self, conn: Connection, ctx: CallContext) -> None:
        segments = conn.path.path_segments
        index = conn.path.index
        creds = ctx.credentials
        if index > 0 and creds.present:
            assert creds.expires is not None
            prev = segments[index - 1]
            prev.token = creds.token
            prev.expires.CopyFrom(clock.timestamp(creds.expires))
        if index < len(segments):
            token, expires = self.tokens.issue()
            segments[index].token = token
            segments[index].expires.CopyFrom(clock.timestamp(expires))

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        self._apply(req.connection, ctx)
        return await nxt.request(req, ctx)

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        self._apply(conn, ctx)
        await nxt.close(conn, ctx)
