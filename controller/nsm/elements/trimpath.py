"""trimpath (docs/nsm_contract.md §5): a terminal endpoint answers with the path up to its own segment, which
drops segments of hops that no longer follow it (e.g. after a reselect)."""

from __future__ import annotations

from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request


class TrimPath(Element):
    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        resp = await nxt.request(req, ctx)
        del resp.path.path_segments[resp.path.index + 1:]
        return resp
