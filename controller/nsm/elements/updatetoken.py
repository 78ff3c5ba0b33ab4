"""updatetoken (docs/nsm_contract.md §6.2): the caller's segment takes the caller's per-RPC token and expiry;
this hop's segment takes a token of its own. Both on Request and on Close."""

from __future__ import annotations

from controller.nsm.base import clock
from controller.nsm.base.tokens import TokenSource
from controller.nsm.elements.chain import CallContext, Connection, Inspect


class UpdateToken(Inspect):
    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    def inspect(self, conn: Connection, ctx: CallContext) -> None:
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
