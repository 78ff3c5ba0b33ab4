"""registry.NetworkServiceEndpointRegistry in memory (contract §9.4): by name, expiration clamped
and enforced, initial registration time kept across refreshes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2
from nsm_api import registry_pb2, registry_pb2_grpc

from controller.nsm import clock
from controller.nsm.errors import NsmError, abort, invalid
from controller.nsm.metadata import Credentials
from controller.nsm.tasks import Tasks
from controller.nsm.tokens import TokenSource
from controller.nsm.validate import Limits, check_list, check_map, check_text
from controller.registry.call import registry_call
from controller.registry.matching import nse_matches
from controller.registry.watch import Watchers

log = logging.getLogger("p4nsm.registry")

NSE = registry_pb2.NetworkServiceEndpoint
Response = registry_pb2.NetworkServiceEndpointResponse


def check_nse(nse: NSE, limits: Limits) -> None:
    if not nse.name:
        raise invalid("name", "NetworkServiceEndpoint.Name can not be zero valued")
    check_text("name", nse.name, limits.name, spaces=False)
    check_text("url", nse.url, limits.value, spaces=False)
    check_list("network_service_names", nse.network_service_names, limits)
    for i, name in enumerate(nse.network_service_names):
        check_text(f"network_service_names[{i}]", name, limits.name, required=True, spaces=False)
    check_list("network_service_labels", nse.network_service_labels, limits)
    for service, labels in nse.network_service_labels.items():
        check_map(f"network_service_labels[{service!r}].labels", labels.labels, limits)
    if clock.is_set(nse.expiration_time) and clock.to_seconds(nse.expiration_time) <= clock.now():
        raise invalid("expiration_time", f"{clock.format_rfc3339(clock.to_seconds(nse.expiration_time))} is in the past")


class NseRegistry(registry_pb2_grpc.NetworkServiceEndpointRegistryServicer):
    def __init__(self, tokens: TokenSource, limits: Limits, default_expiration: float, tasks: Tasks) -> None:
        self.tokens = tokens
        self.limits = limits
        self.default_expiration = default_expiration
        self.tasks = tasks
        self.endpoints: dict[str, NSE] = {}
        self.watchers: Watchers[Response] = Watchers()
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def get(self, name: str) -> NSE | None:
        return self.endpoints.get(name)

    def offering(self, service: str) -> list[NSE]:
        """Endpoints that offer `service`, in registration order."""
        return [nse for nse in self.endpoints.values() if service in nse.network_service_names]

    def _expiration(self, nse: NSE, creds: Credentials) -> float:
        """The SDK's choice: the earliest of this registry's own token expiry, the caller's token
        expiry and now + the default, unless the caller asked for earlier still."""
        limits = [clock.now() + self.tokens.lifetime, clock.now() + self.default_expiration]
        if creds.expires is not None:
            limits.append(creds.expires)
        chosen = min(limits)
        if clock.is_set(nse.expiration_time):
            chosen = min(chosen, clock.to_seconds(nse.expiration_time))
        return chosen

    def register(self, nse: NSE, creds: Credentials = Credentials(), allowed: float = 0.0) -> NSE:
        stored = NSE()
        stored.CopyFrom(nse)
        expires = self._expiration(nse, creds)
        stored.expiration_time.CopyFrom(clock.timestamp(expires))
        previous = self.endpoints.get(nse.name)
        if previous is not None and clock.is_set(previous.initial_registration_time):
            stored.initial_registration_time.CopyFrom(previous.initial_registration_time)
        else:
            stored.initial_registration_time.CopyFrom(clock.timestamp(clock.now()))
        self.endpoints[stored.name] = stored
        self._arm(stored.name, expires - allowed)
        log.info("endpoint=%s event=%s services=%s url=%s expires_in=%.1fs", stored.name,
                 "refreshed" if previous is not None else "registered", ",".join(stored.network_service_names),
                 stored.url, expires - clock.now())
        self.watchers.publish(stored.name, Response(network_service_endpoint=stored))
        return stored

    def _arm(self, name: str, at: float) -> None:
        self.tasks.cancel(self._timers.pop(name, None))

        async def expire() -> None:
            if self._timers.get(name) is handle:
                log.info("endpoint=%s event=expired", name)
                self.unregister(name)

        handle = self.tasks.later(at - clock.now(), expire, f"expire:{name}")
        self._timers[name] = handle

    def unregister(self, name: str) -> None:
        self.tasks.cancel(self._timers.pop(name, None))
        nse = self.endpoints.pop(name, None)
        if nse is not None:
            log.info("endpoint=%s event=unregistered", name)
            self.watchers.publish(name, Response(network_service_endpoint=nse, deleted=True))

    async def Register(self, request: NSE, context: grpc.aio.ServicerContext) -> NSE:  # noqa: N802
        try:
            check_nse(request, self.limits)
            creds, ids = await registry_call(context, self.tokens, request.path_ids)
        except NsmError as e:
            await abort(context, e)
        request.path_ids[:] = ids
        return self.register(request, creds, context.time_remaining() or 0.0)

    async def Unregister(self, request: NSE, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:  # noqa: N802
        try:
            if not request.name:
                raise invalid("name", "NetworkServiceEndpoint.Name can not be zero valued")
            await registry_call(context, self.tokens, request.path_ids)
        except NsmError as e:
            await abort(context, e)
        self.unregister(request.name)
        return empty_pb2.Empty()

    async def Find(self, request: registry_pb2.NetworkServiceEndpointQuery, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:  # noqa: N802
        query = request.network_service_endpoint
        current = [Response(network_service_endpoint=nse) for nse in self.endpoints.values()]
        async for response in self.watchers.stream(current, lambda r: nse_matches(query, r.network_service_endpoint), request.watch):
            yield response
