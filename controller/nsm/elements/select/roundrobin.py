"""roundrobin (docs/nsm_contract.md §10.2): candidates in turn, one counter per network service;
a candidate that fails makes way for the next one. Outlier ejection plugs in as `ejected` (a
name is skipped while it returns True, unless that would skip every candidate) and `report`
(told the outcome of every attempt the endpoint answered for: a failure that is the fabric's or
the controller's, not the endpoint's, is reported neither way)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import grpc

from controller.nsm.base.errors import CandidateFailed, EndpointFailed, NsmError
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request
from controller.nsm.elements.select.discover import candidates_of, set_serving
from nsm_api import registry_pb2

log = logging.getLogger("p4nsm.nsm")

_ENDPOINT: Key[registry_pb2.NetworkServiceEndpoint] = Key("roundrobin.endpoint")


def endpoint_of(ctx: CallContext) -> registry_pb2.NetworkServiceEndpoint:
    """The endpoint this attempt goes to."""
    return ctx.values[_ENDPOINT]


def set_endpoint(ctx: CallContext, nse: registry_pb2.NetworkServiceEndpoint) -> None:
    ctx.values[_ENDPOINT] = nse

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
        everyone = candidates_of(ctx)
        population = [c.name for c in everyone]
        candidates = [c for c in everyone if not self.ejected(c.name)] or everyone
        failures: list[tuple[str, CandidateFailed]] = []
        for _ in range(len(candidates)):
            nse = candidates[self.counters[conn.network_service] % len(candidates)]
            self.counters[conn.network_service] += 1
            conn.network_service_endpoint_name = nse.name
            set_endpoint(ctx, nse)
            try:
                resp = await nxt.request(req, ctx)
            except CandidateFailed as e:
                own = isinstance(e, EndpointFailed)
                log.warning("connection=%s endpoint=%s event=%s error=%s", conn.id, nse.name,
                            "endpoint_failed" if own else "candidate_failed", e)
                if own:
                    self.report(nse.name, False, population)
                failures.append((nse.name, e))
                continue
            self.report(nse.name, True, population)
            set_serving(ctx, nse.name)
            return resp
        codes = {f.code for _, f in failures}
        raise NsmError(codes.pop() if len(codes) == 1 else grpc.StatusCode.UNAVAILABLE,
                       "connection.network_service_endpoint_name",
                       "all candidates have failed: " + "; ".join(f"{name}: {f.detail}" for name, f in failures))
