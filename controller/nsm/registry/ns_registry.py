"""registry.NetworkServiceRegistry in memory (docs/nsm_contract.md §9.3): by name, payload defaults to IP.

Upstream services never expire; here a service lives `Bounds.expiration` after its last
Register (and no longer than its caller's token), and for as long as an endpoint that offers it
is registered: the SDK registers a service only when it is absent, so endpoints keep theirs
alive by existing, and nothing a caller registers outlives both."""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.nsm.base import clock
from controller.nsm.base.access import Access
from controller.nsm.base.checks import Limits, check_list, check_map, check_text
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tasks import Tasks
from controller.nsm.base.tokens import TokenSource
from controller.nsm.registry.matching import ns_matches
from controller.nsm.registry.memory import Bounds, MemoryRegistry, require_name
from controller.nsm.registry.stored import Records
from nsm_api import registry_pb2, registry_pb2_grpc

log = logging.getLogger("p4nsm.registry")

NS = registry_pb2.NetworkService
Response = registry_pb2.NetworkServiceResponse
DEFAULT_PAYLOAD = "IP"


def check_ns(ns: NS, limits: Limits) -> None:
    require_name("NetworkService", ns.name)
    check_text("name", ns.name, limits.name, spaces=False)
    check_text("payload", ns.payload, limits.name)
    check_list("matches", ns.matches, limits)
    for i, match in enumerate(ns.matches):
        check_map(f"matches[{i}].source_selector", match.source_selector, limits)
        check_list(f"matches[{i}].routes", match.routes, limits)
        for j, route in enumerate(match.routes):
            check_map(f"matches[{i}].routes[{j}].destination_selector", route.destination_selector, limits)


class NsRegistry(MemoryRegistry[NS, Response], registry_pb2_grpc.NetworkServiceRegistryServicer):
    kind = "NetworkService"
    field = "network_service"
    response_type = Response
    message_type = NS
    record_kind = "ns"
    matches = staticmethod(ns_matches)
    log_key = "service"

    def __init__(self, tokens: TokenSource, limits: Limits, tasks: Tasks, bounds: Bounds = Bounds(),
                 access: Access = Access(), in_use: Callable[[str], bool] = lambda name: False,
                 records: Records | None = None) -> None:
        """`in_use(name)`: whether a registered endpoint offers the service."""
        super().__init__(tokens, limits, tasks, bounds, access, records)
        self.in_use = in_use

    def check(self, msg: NS) -> None:
        check_ns(msg, self.limits)

    async def expired(self, name: str) -> None:
        if self.in_use(name):
            self.keep(name, self.entries[name], clock.now() + self.bounds.expiration)
        else:
            await super().expired(name)

    def store(self, msg: NS, creds: Credentials = Credentials(), allowed: float = 0.0) -> NS:
        stored = NS()
        stored.CopyFrom(msg)
        stored.payload = stored.payload or DEFAULT_PAYLOAD
        expires = clock.now() + self.bounds.expiration
        if creds.expires is not None:
            expires = min(expires, creds.expires)
        self.keep(stored.name, stored, expires - allowed)
        log.info("service=%s event=registered payload=%s matches=%d", stored.name, stored.payload, len(stored.matches))
        self.watchers.publish(stored.name, self.response(stored))
        return stored
