"""The element protocol of the NSM chain, the SDK's way: every element does one job and hands
the request on to the next one; Close travels the same list.

An element that did work before handing a Request on undoes it when a later element fails, and
on Close it lets the later elements close first: a chain therefore builds front to back and
tears down back to front.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from controller.nsm.base.metadata import Credentials
from nsm_api import connection_pb2, networkservice_pb2

T = TypeVar("T")

Request = networkservice_pb2.NetworkServiceRequest
Connection = connection_pb2.Connection


class Key(Generic[T]):
    """The key of one value an element keeps in a CallContext (or in its connection's state).
    Each element makes its own, keeps it private and offers accessor functions (`plan_of(ctx)`,
    `set_plan(ctx, plan)`): no other element can read or overwrite the value by typing its
    name, and who publishes what is in the imports. Go's SDK keys context values by unexported
    types for the same reason."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name  # for reading logs and reprs only; keys compare by identity

    def __repr__(self) -> str:
        return f"Key({self.name!r})"


@dataclasses.dataclass(slots=True)
class CallContext:
    """What one call carries besides its message. `values` lets an element tell a later one
    what it found (Go keeps this in context.Context); only the element that owns a Key reads
    or writes it, through its accessor functions."""

    credentials: Credentials = dataclasses.field(default_factory=Credentials)
    time_remaining: float | None = None  # of the incoming call's deadline, when it entered
    peer: str = ""
    # The caller's SPIFFE id from its mTLS certificate ("" over plaintext) and that certificate
    # (PEM, b"" over plaintext): what the token and ownership checks bind a caller to.
    peer_identity: str = ""
    peer_cert: bytes = b""
    internal: str = ""  # why the server itself runs this call (e.g. "expired"), "" for a client's
    values: dict[Key[Any], Any] = dataclasses.field(default_factory=dict)


class Element:
    """Passes everything on; subclasses override what their one job needs."""

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        return await nxt.request(req, ctx)

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        await nxt.close(conn, ctx)


class Inspect(Element):
    """An element whose one job is the same on Request and on Close: look at (or stamp) the
    connection, then hand it on."""

    def inspect(self, conn: Connection, ctx: CallContext) -> None:
        raise NotImplementedError

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        self.inspect(req.connection, ctx)
        return await nxt.request(req, ctx)

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        self.inspect(conn, ctx)
        await nxt.close(conn, ctx)


class Next:
    """The rest of the chain after one element."""

    __slots__ = ("_elements", "_at")

    def __init__(self, elements: Sequence[Element], at: int) -> None:
        self._elements = elements
        self._at = at

    async def request(self, req: Request, ctx: CallContext) -> Connection:
        if self._at == len(self._elements):
            out = Connection()
            out.CopyFrom(req.connection)
            return out
        return await self._elements[self._at].request(req, ctx, Next(self._elements, self._at + 1))

    async def close(self, conn: Connection, ctx: CallContext) -> None:
        if self._at < len(self._elements):
            await self._elements[self._at].close(conn, ctx, Next(self._elements, self._at + 1))


class Chain:
    def __init__(self, elements: Sequence[Element]) -> None:
        self.elements = tuple(elements)

    async def request(self, req: Request, ctx: CallContext) -> Connection:
        return await Next(self.elements, 0).request(req, ctx)

    async def close(self, conn: Connection, ctx: CallContext) -> None:
        await Next(self.elements, 0).close(conn, ctx)
