"""timeout (docs/nsm_contract.md §7.2): a connection lives until its caller's segment expires, minus the time
its Request was allowed to take; every successful Request re-arms the timer, and a connection
that is not refreshed is closed by the server itself.

With `records` (the store), each connection's deadline is also a record of kind `nsm_expiry`,
written before the Request is answered and removed when it closes: a restarted controller's
orphan reaper (nsm/orphans.py) closes a connection whose client went away while it was down at
that deadline, NSM's own schedule, instead of guessing."""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel, ConfigDict

from controller.nsm.base import clock
from controller.nsm.base.errors import invalid
from controller.nsm.base.tasks import Tasks
from controller.nsm.elements.begin import state_of
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request
from controller.nsm.registry.stored import Records

log = logging.getLogger("p4nsm.nsm")

_TIMER: Key[asyncio.TimerHandle] = Key("timeout.timer")  # per connection: its expiry
EXPIRY_KIND = "nsm_expiry"


class StoredExpiry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    expires: float  # epoch seconds: when the server closes the connection unless it is refreshed


class Timeout(Element):
    def __init__(self, tasks: Tasks, records: Records | None = None) -> None:
        self.tasks = tasks
        self.records = records

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn = req.connection
        index = conn.path.index
        field = f"connection.path.path_segments[{index - 1}].expires" if index > 0 else "connection.path"
        # Checked before the rest of the chain, not after as in Go: a Request that would fail
        # here must not have made anything first.
        if index == 0 or not clock.is_set(conn.path.path_segments[index - 1].expires):
            raise invalid(field, "expiration for the previous path segment cannot be nil "
                                 "(send nsm-client-token-expires metadata or set the caller segment's expires)")
        expires = clock.to_seconds(conn.path.path_segments[index - 1].expires)
        if expires <= clock.now():
            raise invalid(field, f"the caller's segment expired at {clock.format_rfc3339(expires)}")
        allowed = ctx.time_remaining or 0.0
        resp = await nxt.request(req, ctx)
        st = state_of(ctx)
        assert st is not None, "timeout needs begin before it"
        self.tasks.cancel(st.values.get(_TIMER))
        handle: asyncio.TimerHandle | None = None

        def due() -> bool:
            return st.values.get(_TIMER) is handle

        if expires - allowed <= clock.now():
            # Go's rule, kept for wire compatibility; a client whose call deadline outlasts its
            # token loses the connection at once, which is worth a line in the log.
            log.warning("connection=%s event=expires_at_once token_left=%.1fs call_deadline=%.1fs",
                        st.id, expires - clock.now(), allowed)
        handle = self.tasks.later(expires - allowed - clock.now(), lambda: st.close("expired", due), f"expire:{st.id}")
        st.values[_TIMER] = handle
        if self.records is not None:
            self.records.put_record(EXPIRY_KIND, st.id, StoredExpiry(expires=expires - allowed).model_dump_json())
            await self.records.durable()
        return resp

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        st = state_of(ctx)
        if st is not None:
            self.tasks.cancel(st.values.pop(_TIMER, None))
        try:
            await nxt.close(conn, ctx)
        finally:
            if self.records is not None and st is not None:
                self.records.delete_record(EXPIRY_KIND, st.id)
