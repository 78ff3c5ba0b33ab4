"""discover (docs/nsm_contract.md §10.2): the endpoints that may serve a Request: the one it names, or those
the network service's matches select among its live registrations. A refresh stays with the
endpoint that serves the connection."""

from __future__ import annotations

from controller.nsm.base import clock
from controller.nsm.base.errors import invalid, not_found
from controller.nsm.elements.begin import is_refresh, state_of
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request
from controller.nsm.registry.matching import match_endpoint
from controller.nsm.registry.ns_registry import NsRegistry
from controller.nsm.registry.nse_registry import NseRegistry
from nsm_api import connection_pb2, registry_pb2

_CANDIDATES: Key[list[registry_pb2.NetworkServiceEndpoint]] = Key("discover.candidates")
_SERVING: Key[str] = Key("discover.serving")  # per connection: the name of the endpoint that serves it


def candidates_of(ctx: CallContext) -> list[registry_pb2.NetworkServiceEndpoint]:
    """The endpoints that may serve this Request, in registration order."""
    return ctx.values[_CANDIDATES]


def set_candidates(ctx: CallContext, candidates: list[registry_pb2.NetworkServiceEndpoint]) -> None:
    ctx.values[_CANDIDATES] = candidates


def serving_of(ctx: CallContext) -> str | None:
    """The endpoint that serves this call's connection, if it is established."""
    st = state_of(ctx)
    return st.values.get(_SERVING) if st is not None and is_refresh(ctx) else None


def set_serving(ctx: CallContext, name: str) -> None:
    """Selection tells which endpoint now serves the connection: its refreshes stay with it."""
    st = state_of(ctx)
    if st is not None:
        st.values[_SERVING] = name


def _live(nse: registry_pb2.NetworkServiceEndpoint, now: float) -> bool:
    return not clock.is_set(nse.expiration_time) or clock.to_seconds(nse.expiration_time) > now


class Discover(Element):
    def __init__(self, services: NsRegistry, endpoints: NseRegistry) -> None:
        self.services = services
        self.endpoints = endpoints

    def _named(self, name: str) -> registry_pb2.NetworkServiceEndpoint:
        nse = self.endpoints.get(name)
        if nse is None:
            raise not_found("connection.network_service_endpoint_name", f"network service endpoint {name} not found")
        return nse

    def _matching(self, conn: Connection) -> list[registry_pb2.NetworkServiceEndpoint]:
        ns = self.services.get(conn.network_service)
        if ns is None or (conn.payload and conn.payload != ns.payload):
            raise not_found("connection.network_service", f"network service {conn.network_service} is not found")
        now = clock.now()
        offering = [nse for nse in self.endpoints.offering(ns.name) if _live(nse, now)]
        candidates = match_endpoint(conn.labels, ns, offering)
        conn.payload = ns.payload
        if not candidates:
            raise not_found("connection.network_service",
                            f"network service endpoint candidates not found for {ns.name} "
                            f"({len(offering)} registered, none matches labels {dict(conn.labels)})")
        return candidates

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn = req.connection
        serving = serving_of(ctx)
        if serving:
            asked = conn.network_service_endpoint_name
            if asked and asked != serving:
                raise invalid("connection.network_service_endpoint_name",
                              f"connection {conn.id} is served by {serving}, not {asked}; "
                              f"send state {connection_pb2.State.Name(connection_pb2.RESELECT_REQUESTED)} to move it")
            candidates = [self._named(serving)]
        elif conn.network_service_endpoint_name:
            candidates = [self._named(conn.network_service_endpoint_name)]
        else:
            candidates = self._matching(conn)
        set_candidates(ctx, candidates)
        return await nxt.request(req, ctx)
