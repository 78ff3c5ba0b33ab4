"""The live web view: the fabric drawn with each element's state, every connection's paths and the
last heal events, served from the controller's own event loop on `web_address`.

    /                  the page (controller.operators.web_page)
    /events            server-sent events: a snapshot on connect, then an update per change
    /api/topology      switches, hosts and links with their states and positions
    /api/connections   every connection: ends, state, active path, backup, labels
    /api/events        the heal log (controller.operators.web_events)
    /topology.svg      the picture alone

Changes are coalesced: whatever happened, at most one update every PUSH_INTERVAL_S, so a heal of
1,000 connections is one or two pushes, not 1,000. Nothing is computed for pushes while no page
is open.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from controller.aio import cancel_and_wait
from controller.fabric.connections import Fabric
from controller.fabric.model import ConnectionPlan
from controller.heal.link_monitor import LinkMonitor
from controller.heal.reroute import Rerouter
from controller.operators.drawing import Picture
from controller.operators.http_server import HttpServer
from controller.operators.web_events import HealLog
from controller.operators.web_page import PAGE, SCRIPT
from controller.operators.web_state import WebState
from controller.operators.web_stream import EventStream, event
from controller.topology import Topology

log = logging.getLogger("p4nsm.operators.web")

PUSH_INTERVAL_S = 0.25
_NOSNIFF = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
# The page runs only its own script and talks only to its own origin.
_PAGE_HEADERS = {**_NOSNIFF, "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                 "style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'"}


class WebView:
    def __init__(self, topo: Topology, fabric: Fabric, rerouter: Rerouter, links: LinkMonitor | None, address: str,
                 stream: EventStream | None = None, push_interval: float = PUSH_INTERVAL_S, tls: ssl.SSLContext | None = None) -> None:
        self.fabric = fabric
        self._dirty = asyncio.Event()
        self.heal_log = HealLog(fabric, rerouter, links, self.changed)
        self.state = WebState(Picture(topo), fabric, self.heal_log)
        self.stream = stream or EventStream()
        self.push_interval = push_interval
        self.pushes = 0
        fabric.listeners.append(self._on_plan)
        fabric.graph_listeners.append(self.changed)
        self.server = HttpServer("web", address, [
            web.get("/", self._page), web.get("/app.js", self._script), web.get("/events", self._events),
            web.get("/topology.svg", self._svg),
            *(web.get(f"/api/{what}", self._api(what)) for what in ("topology", "connections", "events")),
        ], tls=tls)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        await self.server.start()
        self._task = asyncio.create_task(self._push_loop(), name="web:push")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self.stream.close()
        await self.server.stop()

    def changed(self) -> None:
        self.state.changed()
        self._dirty.set()

    def _on_plan(self, plan: ConnectionPlan, event_name: str) -> None:
        self.changed()

    async def _push_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.stream.clients:
                try:
                    self.stream.publish(event("update", self.state.update()))
                    self.pushes += 1
                except Exception:  # the view must outlive a bad push; the fabric never waits for it
                    log.exception("event=web_push_failed")
            # Whatever arrives meanwhile goes out together in the next push.
            await asyncio.sleep(self.push_interval)

    # --- handlers ---------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", headers=_PAGE_HEADERS)

    async def _script(self, request: web.Request) -> web.Response:
        return web.Response(text=SCRIPT, content_type="application/javascript", headers=_NOSNIFF)

    async def _svg(self, request: web.Request) -> web.Response:
        return web.Response(text=self.state.svg(), content_type="image/svg+xml", headers=_PAGE_HEADERS)

    def _api(self, what: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=self.state.body(what), content_type="application/json", headers=_NOSNIFF)

        return handler

    async def _events(self, request: web.Request) -> web.StreamResponse:
        return await self.stream.serve(request, event("snapshot", self.state.snapshot()))
