"""registry.NetworkServiceRegistry in memory (contract §9.3): by name, payload defaults to IP, no
expiry."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2
from nsm_api import registry_pb2, registry_pb2_grpc

from controller.nsm.errors import NsmError, abort, invalid
from controller.nsm.tokens import TokenSource
from controller.nsm.validate import Limits, check_list, check_map, check_text
from controller.registry.call import registry_call
from controller.registry.matching import ns_matches
from controller.registry.watch import Watchers

log = logging.getLogger("p4nsm.registry")

NS = registry_pb2.NetworkService
Response = registry_pb2.NetworkServiceResponse
DEFAULT_PAYLOAD = "IP"


def check_ns(ns: NS, limits: Limits) -> None:
    if not ns.name:
        raise invalid("name", "NetworkService.Name can not be zero valued")
    check_text("name", ns.name, limits.name, spaces=False)
    check_text("payload", ns.payload, limits.name)
    check_list("matches", ns.matches, limits)
    for i, match in enumerate(ns.matches):
        check_map(f"matches[{i}].source_selector", match.source_selector, limits)
        check_list(f"matches[{i}].routes", match.routes, limits)
        for j, route in enumerate(match.routes):
            check_map(f"matches[{i}].routes[{j}].destination_selector", route.destination_selector, limits)


class NsRegistry(registry_pb2_grpc.NetworkServiceRegistryServicer):
    def __init__(self, tokens: TokenSource, limits: Limits) -> None:
        self.tokens = tokens
        self.limits = limits
        self.services: dict[str, NS] = {}
        self.watchers: Watchers[Response] = Watchers()

    def get(self, name: str) -> NS | None:
        return self.services.get(name)

    def register(self, ns: NS) -> NS:
        stored = NS()
        stored.CopyFrom(ns)
        stored.payload = stored.payload or DEFAULT_PAYLOAD
        self.services[stored.name] = stored
        log.info("service=%s event=registered payload=%s matches=%d", stored.name, stored.payload, len(stored.matches))
        self.watchers.publish(stored.name, Response(network_service=stored))
        return stored

    def unregister(self, name: str) -> None:
        ns = self.services.pop(name, None)
        if ns is not None:
            log.info("service=%s event=unregistered", name)
            self.watchers.publish(name, Response(network_service=ns, deleted=True))

    async def Register(self, request: NS, context: grpc.aio.ServicerContext) -> NS:  # noqa: N802
        try:
            check_ns(request, self.limits)
            _, ids = await registry_call(context, self.tokens, request.path_ids)
        except NsmError as e:
            await abort(context, e)
        request.path_ids[:] = ids
        return self.register(request)

    async def Unregister(self, request: NS, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:  # noqa: N802
        try:
            if not request.name:
                raise invalid("name", "NetworkService.Name can not be zero valued")
            await registry_call(context, self.tokens, request.path_ids)
        except NsmError as e:
            await abort(context, e)
        self.unregister(request.name)
        return empty_pb2.Empty()

    async def Find(self, request: registry_pb2.NetworkServiceQuery, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:  # noqa: N802
        query = request.network_service
        current = [Response(network_service=ns) for ns in self.services.values()]
        async for response in self.watchers.stream(current, lambda r: ns_matches(query, r.network_service), request.watch):
            yield response
