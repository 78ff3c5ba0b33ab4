"""updatepath (docs/nsm_contract.md §5): find or make this hop's path segment; the connection id becomes that
segment's id. The answer goes back with the caller's index and id."""

from __future__ import annotations

import uuid

from controller.nsm.base.errors import invalid
from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request


def update_path(conn: Connection, name: str) -> int:
    """Move `conn` onto this hop's segment; returns the caller's ("return") index."""
    path = conn.path
    segments = path.path_segments
    if not segments:
        path.index = 0
        if not conn.id:
            conn.id = str(uuid.uuid4())
        segments.add(name=name, id=conn.id)
        return 0
    if path.index >= len(segments):
        raise invalid("connection.path.index",
                      f"Path.Index+1=={path.index + 1} should be less or equal len(Path.PathSegments)=={len(segments)}")
    if segments[path.index].name == name:
        conn.id = segments[path.index].id
        return path.index
    if segments[path.index].id != conn.id:
        raise invalid("connection.id",
                      f"Current PathSegment.Id=={segments[path.index].id} should be equal Connection.Id=={conn.id}")
    caller = path.index
    if caller + 1 < len(segments) and segments[caller + 1].name != name:
        # Another hop used to follow the caller (e.g. before a reselect): this hop's id is new.
        segments[caller + 1].name = name
        segments[caller + 1].id = str(uuid.uuid4())
    path.index += 1
    if path.index >= len(segments):
        segments.add(name=name, id=str(uuid.uuid4()))
    conn.id = segments[path.index].id
    return caller


class UpdatePath(Element):
    def __init__(self, name: str) -> None:
        self.name = name

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        caller = update_path(req.connection, self.name)
        resp = await nxt.request(req, ctx)
        resp.id = resp.path.path_segments[caller].id
        resp.path.index = caller
        return resp

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        update_path(conn, self.name)
        await nxt.close(conn, ctx)
