"""Server-sent events to every open page, without letting one client cost the others or the loop.

Each client has its own queue, bounded in bytes. A client that does not read fills its socket,
then its queue; the next message that does not fit drops it: its connection is aborted (the
buffers go with it) and its page's EventSource reconnects and starts again from a snapshot. A
message is never skipped for a client that stays, because updates are diffs. A write that makes
no progress for WRITE_TIMEOUT_S drops the client too, and beyond MAX_CLIENTS new streams are
refused (503) rather than queued.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from aiohttp import web

log = logging.getLogger("p4nsm.operators.web")

MAX_CLIENTS = 32
MAX_QUEUE_BYTES = 4 * 1024 * 1024
WRITE_TIMEOUT_S = 10.0
HEARTBEAT_S = 15.0  # a comment line: keeps proxies from closing an idle stream, finds dead clients
RETRY_MS = 1000


def event(name: str, data: bytes) -> bytes:
    """One SSE message. `data` is JSON without raw newlines (json.dumps escapes them), so one
    data line carries it whole and nothing in it can start a field of its own."""
    assert b"\n" not in data and b"\r" not in data
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


class Client:
    def __init__(self, request: web.Request, max_bytes: int) -> None:
        self.peer = request.remote
        self.transport = request.transport
        self.max_bytes = max_bytes
        self.queued = 0
        self.dropped = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._more = asyncio.Event()

    def offer(self, chunk: bytes) -> bool:
        """Queue a message; False when it does not fit (the first always does: a snapshot may be
        larger than the bound, and a client that cannot take one cannot be served at all)."""
        if self._chunks and self.queued + len(chunk) > self.max_bytes:
            return False
        self._chunks.append(chunk)
        self.queued += len(chunk)
        self._more.set()
        return True

    async def next(self, timeout: float) -> bytes | None:
        if not self._chunks:
            self._more.clear()
            try:
                await asyncio.wait_for(self._more.wait(), timeout)
            except TimeoutError:
                return None
        chunk = self._chunks.popleft()
        self.queued -= len(chunk)
        return chunk

    def drop(self, reason: str) -> None:
        if self.dropped:
            return
        self.dropped = True
        (log.info if reason == "shutdown" else log.warning)(
            "event=sse_client_dropped peer=%s reason=%s queued_bytes=%d", self.peer, reason, self.queued)
        self._chunks.clear()
        self.queued = 0
        if self.transport is not None:
            self.transport.abort()  # the handler is cancelled with the connection (handler_cancellation)


class EventStream:
    def __init__(self, max_clients: int = MAX_CLIENTS, max_queue_bytes: int = MAX_QUEUE_BYTES,
                 write_timeout: float = WRITE_TIMEOUT_S, heartbeat: float = HEARTBEAT_S) -> None:
        self.clients: set[Client] = set()
        self.max_clients = max_clients
        self.max_queue_bytes = max_queue_bytes
        self.write_timeout = write_timeout
        self.heartbeat = heartbeat
        self.dropped = 0

    def publish(self, chunk: bytes) -> None:
        for client in list(self.clients):
            if not client.offer(chunk):
                self.dropped += 1
                client.drop("slow")
                self.clients.discard(client)

    def close(self) -> None:
        """End every stream: their handlers would otherwise keep the server's shutdown waiting
        for as long as the pages stay open."""
        for client in list(self.clients):
            client.drop("shutdown")
        self.clients.clear()

    async def serve(self, request: web.Request, first: bytes) -> web.StreamResponse:
        if len(self.clients) >= self.max_clients:
            raise web.HTTPServiceUnavailable(text=f"at most {self.max_clients} live views at once\n", headers={"Retry-After": "5"})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff"})
        await resp.prepare(request)
        client = Client(request, self.max_queue_bytes)
        client.offer(b"retry: %d\n\n" % RETRY_MS + first)
        self.clients.add(client)
        try:
            while not client.dropped:
                chunk = await client.next(self.heartbeat)
                try:
                    await asyncio.wait_for(resp.write(chunk if chunk is not None else b": keepalive\n\n"), self.write_timeout)
                except TimeoutError:
                    self.dropped += 1
                    client.drop("write_timeout")
        except ConnectionResetError:
            pass  # the client went away: nothing more to send
        finally:
            self.clients.discard(client)
        return resp
