"""One small HTTP server in the controller's event loop (aiohttp), shared by the metrics and the
web view, with the limits that keep a slow or hostile client from costing the loop anything.

Only the routes given are served: anything else is 404, a wrong method 405. Bodies are refused
beyond `max_body_bytes` before they are read (nothing served here takes a body), idle keep-alive
connections are dropped, and at most `max_connections` are open at once. Beyond that new ones
are closed as they are accepted, by the socket alone (no transport, no task: a few µs each), and
accepting then pauses, from REFUSE_PAUSE_S doubling to REFUSE_PAUSE_MAX_S while the cap stays
full, so a client that reconnects in a tight loop costs one batch of refusals per pause however
fast it tries (and the kernel, which every connection made and closed costs too, little more);
meanwhile the kernel holds the newcomers in the listen backlog. Requests are paced to `max_requests_per_s` across all
connections (a burst may go faster): a flood waits for its answers instead of taking the loop,
and since an HTTP/1.1 client waits for an answer before its next request on a connection, the
work it can cause is bounded. Handlers are cancelled when their client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Iterable
from typing import Any

from aiohttp import web

log = logging.getLogger("p4nsm.operators.http")

MAX_BODY_BYTES = 64 * 1024
KEEPALIVE_TIMEOUT_S = 15.0
MAX_CONNECTIONS = 256
MAX_REQUESTS_PER_S = 200.0  # a page is three requests and a stream, a scrape one
REQUEST_BURST = 50
ACCEPT_BATCH = 128  # as asyncio's own accept loop: the listen backlog's worth per wake-up
REFUSE_PAUSE_S = 0.05
REFUSE_PAUSE_MAX_S = 1.0


class AddressError(ValueError):
    pass


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`; port 0 picks a free one (tests)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise AddressError(f"{address!r}: expected host:port")
    return host.strip("[]"), int(port)


class _Pace:
    """A token bucket for requests: beyond its rate each request waits for its turn."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = 0.0

    async def turn(self) -> None:
        now = asyncio.get_running_loop().time()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1  # below zero: the requests queued before this one
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)


def _paced(pace: _Pace) -> Any:
    @web.middleware
    async def paced(request: web.Request, handler: Any) -> web.StreamResponse:
        await pace.turn()
        return await handler(request)

    return paced


def _refuse_bodies_over(limit: int) -> Any:
    """413 for a declared body over `limit` or one of unknown length (chunked), before any of it
    is read. The connection is closed after the answer (lingering_time=0 below): aiohttp would
    otherwise drain what a handler left unread for up to ten seconds, 10 MB of it as readily."""

    @web.middleware
    async def refuse(request: web.Request, handler: Any) -> web.StreamResponse:
        length = request.content_length
        if (length is not None and length > limit) or (length is None and request.body_exists):
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=length or 0, headers={"Connection": "close"})
        return await handler(request)

    return refuse


class HttpServer:
    """Serves `routes` on `address` (loopback by default in the settings) until stopped."""

    def __init__(self, name: str, address: str, routes: Iterable[web.AbstractRouteDef], *,
                 max_body_bytes: int = MAX_BODY_BYTES, max_connections: int = MAX_CONNECTIONS,
                 max_requests_per_s: float = MAX_REQUESTS_PER_S, tls: ssl.SSLContext | None = None) -> None:
        """With `tls`, HTTPS only: a plaintext request fails its handshake and is answered nothing."""
        self.name = name
        self.tls = tls
        self.host, self.port = parse_address(address)
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[
            _refuse_bodies_over(max_body_bytes), _paced(_Pace(max_requests_per_s, REQUEST_BURST))])
        self.app.add_routes(list(routes))
        self.max_connections = max_connections
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                     keepalive_timeout=KEEPALIVE_TIMEOUT_S, handler_cancellation=True,
                                     lingering_time=0)
        self._sock: socket.socket | None = None
        self.refused = 0  # connections closed on accept, in all

    @property
    def address(self) -> str:
        """Where it listens, with the port resolved (port 0 in the settings picks one)."""
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    async def start(self) -> None:
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = self._sock = socket.create_server((self.host, self.port), family=family, backlog=ACCEPT_BATCH)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        admitting = 0  # accepted, not yet counted in server.connections
        refused = 0  # since the last log line: a flood of refusals must not become a flood of logs
        last_logged = float("-inf")
        pause = REFUSE_PAUSE_S

        def admitted(task: asyncio.Future[Any]) -> None:
            nonlocal admitting
            admitting -= 1
            if not task.cancelled() and task.exception() is not None:
                log.info("server=%s event=connection_failed error=%s", self.name, task.exception())

        def resume() -> None:
            if self._sock is sock:
                loop.add_reader(sock.fileno(), accept)

        def accept() -> None:
            nonlocal admitting, refused, last_logged, pause
            refused_now = False
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break  # the backlog is empty
                except OSError as e:  # out of file descriptors, say: try again after a pause
                    log.warning("server=%s event=accept_failed error=%s", self.name, e)
                    loop.remove_reader(sock.fileno())
                    loop.call_later(REFUSE_PAUSE_S, resume)
                    return
                # aiohttp has no connection cap of its own (its TCPSite takes none)
                open_now = len(server.connections) + admitting
                if open_now >= self.max_connections:
                    conn.close()
                    refused_now = True
                    refused += 1
                    self.refused += 1
                    continue
                conn.setblocking(False)
                admitting += 1
                # the handshake runs in the transport, bounded like an idle connection
                loop.create_task(loop.connect_accepted_socket(
                    server, sock=conn, ssl=self.tls, ssl_handshake_timeout=KEEPALIVE_TIMEOUT_S if self.tls else None,
                )).add_done_callback(admitted)
            if not refused_now:
                pause = REFUSE_PAUSE_S
            else:
                now = loop.time()
                if now - last_logged >= 1.0:
                    log.warning("server=%s event=connection_refused reason=too_many open=%d refused=%d",
                                self.name, len(server.connections) + admitting, refused)
                    refused, last_logged = 0, now
                # At the cap: the next ones wait in the backlog for a while, costing nothing.
                loop.remove_reader(sock.fileno())
                loop.call_later(pause, resume)
                pause = min(pause * 2, REFUSE_PAUSE_MAX_S)

        loop.add_reader(sock.fileno(), accept)
        log.info("server=%s event=listening url=%s", self.name, self.url)

    async def stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        await self._runner.cleanup()
