"""roundrobin (contract §10.2): candidates in turn, one counter per network service; an endpoint
that fails makes way for the next candidate. Outlier ejection plugs in as `ejected` (a name is
skipped while it returns True, unless that would skip every candidate) and `report` (told the
outcome of every attempt)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import grpc

from controller.nsm.chain import CallContext, Connection, Element, Next, Request
from controller.nsm.discover import CANDIDATES, SERVING
from controller.nsm.errors import EndpointFailed, NsmError

log = logging.getLogger("p4nsm.nsm")

ENDPOINT = "roundrobin.endpoint"

Ejected = Callable[[str], bool]
Report = Callable[[str, bool, list[str]], None]  # (endpoint, ok, the service's candidates)


def never(name: str) -> bool:
    return False


def ignore(name: str, ok: bool, population: list[str]) -> None:
    return None


class RoundRobin(Element):
    def __init__(self, ejected: Ejected = never, report: Report = ignore) -> None:
        self.ejected = ejected
        self.report = report
        self.counters: dict[str, int] = defaultdict(int)

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn = req.connection
        everyone = ctx.values[CANDIDATES]
        population = [c.name for c in everyone]
        candidates = [c for c in everyone if not self.ejected(c.name)] or everyone
        failures: list[tuple[str, EndpointFailed]] = []
        for _ in range(len(candidates)):
            nse = candidates[self.counters[conn.network_service] % len(candidates)]
            self.counters[conn.network_service] += 1
            conn.network_service_endpoint_name = nse.name
            ctx.values[ENDPOINT] = nse
            try:
                resp = await nxt.request(req, ctx)
            except EndpointFailed as e:
                log.warning("connection=%s endpoint=%s event=endpoint_failed error=%s", conn.id, nse.name, e)
                self.report(nse.name, False, population)
                failures.append((nse.name, e))
                continue
            self.report(nse.name, True, population)
            if ctx.state is not None:
                ctx.state.values[SERVING] = nse.name
            return resp
        codes = {f.code for _, f in failures}
        raise NsmError(codes.pop() if len(codes) == 1 else grpc.StatusCode.UNAVAILABLE,
                       "connection.network_service_endpoint_name",
                       "all candidates have failed: " + "; ".join(f"{name}: {f.detail}" for name, f in failures))
