"""ownership: a connection belongs to the identity that made it (`caller_identity`: the mTLS
peer, else the `sub` of the first segment's token). A refresh, a reselect or a Close from
another identity is refused with PERMISSION_DENIED before any later element runs, so the
owner's connection stays as it was. The controller's own closes (`ctx.internal`: expiry, a
caller gone) pass.

The owner is kept in the connection's begin state; `owner_of` gives it to later elements (the
monitor scopes by it, fabric_connect stores it in the plan's labels). After a controller
restart begin knows nothing, but the stored plan still names its maker (`stored_owner`): a
Request that would re-adopt it from another identity is refused too.

On Close the connection handed on is the one begin kept, not the caller's message: its path
says who made it, not who is closing. Over plaintext a Close therefore proves who sends it
with its per-RPC token only (every NSM client sends one, docs/nsm_contract.md §6.1); one
without is anonymous."""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.nsm.base.access import Access, denied
from controller.nsm.base.caller import caller_identity
from controller.nsm.elements.begin import is_refresh, state_of
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request

log = logging.getLogger("p4nsm.nsm")

_OWNER: Key[str] = Key("ownership.owner")

StoredOwner = Callable[[str], "str | None"]  # connection id -> its owner in the store, None if unknown


def owner_of(ctx: CallContext) -> str:
    """Who made the connection this call is about ("" when anonymous or unknown)."""
    st = state_of(ctx)
    return st.values.get(_OWNER, "") if st is not None else ""


def _nothing_stored(conn_id: str) -> str | None:
    return None


class Ownership(Element):
    def __init__(self, access: Access, stored_owner: StoredOwner = _nothing_stored) -> None:
        self.access = access
        self.stored_owner = stored_owner

    def _check(self, caller: str, owner: str, conn: Connection, call: str) -> None:
        if not self.access.connection(caller, owner, conn):
            log.warning("connection=%s event=refused call=%s caller=%r owner=%r", conn.id, call, caller, owner)
            raise denied("connection.id", caller, owner)

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        st = state_of(ctx)
        if st is None:
            return await nxt.request(req, ctx)
        caller = caller_identity(req.connection.path, ctx.peer_identity)
        if is_refresh(ctx):
            self._check(caller, st.values.get(_OWNER, ""), req.connection, "refresh")
        else:
            stored = self.stored_owner(req.connection.id)
            if stored is not None:  # made before a restart: still its maker's
                self._check(caller, stored, req.connection, "adopt")
            st.values[_OWNER] = caller if stored is None else stored
        return await nxt.request(req, ctx)

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        st = state_of(ctx)
        if st is not None and not ctx.internal:
            present = bool(ctx.peer_identity) or ctx.credentials.present
            caller = caller_identity(conn.path, ctx.peer_identity) if present else ""
            self._check(caller, st.values.get(_OWNER, ""), conn, "close")
        await nxt.close(conn, ctx)
