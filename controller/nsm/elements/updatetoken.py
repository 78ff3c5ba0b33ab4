"""updatetoken (docs/nsm_contract.md §6.2): the caller's segment takes the caller's per-RPC token and expiry;
this hop's segment takes a token of its own. Both on Request and on Close.

The caller's expiry is what the timeout element closes the connection at, so it is capped: never
after the `exp` of the caller's token (the signed claim, where the metadata and the segment's
`expires` field are not), nor more than `max_lifetime` from now (a caller asking for 9999-12-31
would otherwise hold its connection without ever refreshing)."""

from __future__ import annotations

from controller.nsm.base import clock
from controller.nsm.base.tokens import TokenError, TokenSource, decode
from controller.nsm.elements.chain import CallContext, Connection, Inspect


class UpdateToken(Inspect):
    def __init__(self, tokens: TokenSource, max_lifetime: float) -> None:
        self.tokens = tokens
        self.max_lifetime = max_lifetime

    def inspect(self, conn: Connection, ctx: CallContext) -> None:
        segments = conn.path.path_segments
        index = conn.path.index
        creds = ctx.credentials
        if 0 < index <= len(segments):
            prev = segments[index - 1]
            if creds.present:
                assert creds.expires is not None
                prev.token = creds.token
                prev.expires.CopyFrom(clock.timestamp(creds.expires))
            if clock.is_set(prev.expires):
                asked = clock.to_seconds(prev.expires)
                capped = self._capped(asked, prev.token)
                if capped < asked:
                    prev.expires.CopyFrom(clock.timestamp(capped))
        if index < len(segments):
            token, expires = self.tokens.issue()
            segments[index].token = token
            segments[index].expires.CopyFrom(clock.timestamp(expires))

    def _capped(self, expires: float, token: str) -> float:
        limit = clock.now() + self.max_lifetime
        try:
            limit = min(limit, decode(token).exp)
        except TokenError:
            pass  # authorize refuses it, naming the token
        return min(expires, limit)
