"""registry.NetworkServiceEndpointRegistry in memory (docs/nsm_contract.md §9.4): by name, expiration clamped
and enforced, initial registration time kept across refreshes."""

from __future__ import annotations

import logging

from controller.nsm.base import clock
from controller.nsm.base.checks import Limits, check_list, check_map, check_text
from controller.nsm.base.errors import invalid
from controller.nsm.base.metadata import Credentials
from controller.nsm.registry.matching import nse_matches
from controller.nsm.registry.memory import MemoryRegistry, require_name
from nsm_api import registry_pb2, registry_pb2_grpc

log = logging.getLogger("p4nsm.registry")

NSE = registry_pb2.NetworkServiceEndpoint
Response = registry_pb2.NetworkServiceEndpointResponse


def check_nse(nse: NSE, limits: Limits) -> None:
    require_name("NetworkServiceEndpoint", nse.name)
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


class NseRegistry(MemoryRegistry[NSE, Response], registry_pb2_grpc.NetworkServiceEndpointRegistryServicer):
    kind = "NetworkServiceEndpoint"
    field = "network_service_endpoint"
    response_type = Response
    message_type = NSE
    record_kind = "nse"
    matches = staticmethod(nse_matches)
    log_key = "endpoint"

    def check(self, msg: NSE) -> None:
        check_nse(msg, self.limits)

    def offering(self, service: str) -> list[NSE]:
        """Endpoints that offer `service`, in registration order."""
        return [nse for nse in self.entries.values() if service in nse.network_service_names]

    def _expiration(self, nse: NSE, creds: Credentials) -> float:
        """The SDK's choice: the earliest of this registry's own token expiry, the caller's token
        expiry and now + the default, unless the caller asked for earlier still."""
        limits = [clock.now() + self.tokens.lifetime, clock.now() + self.bounds.expiration]
        if creds.expires is not None:
            limits.append(creds.expires)
        chosen = min(limits)
        if clock.is_set(nse.expiration_time):
            chosen = min(chosen, clock.to_seconds(nse.expiration_time))
        return chosen

    def store(self, msg: NSE, creds: Credentials = Credentials(), allowed: float = 0.0) -> NSE:
        stored = NSE()
        stored.CopyFrom(msg)
        expires = self._expiration(msg, creds)
        stored.expiration_time.CopyFrom(clock.timestamp(expires))
        previous = self.entries.get(msg.name)
        if previous is not None and clock.is_set(previous.initial_registration_time):
            stored.initial_registration_time.CopyFrom(previous.initial_registration_time)
        else:
            stored.initial_registration_time.CopyFrom(clock.timestamp(clock.now()))
        self.keep(stored.name, stored, expires - allowed)
        log.info("endpoint=%s event=%s services=%s url=%s expires_in=%.1fs", stored.name,
                 "refreshed" if previous is not None else "registered", ",".join(stored.network_service_names),
                 stored.url, expires - clock.now())
        self.watchers.publish(stored.name, self.response(stored))
        return stored

    def unregister(self, name: str) -> NSE | None:
        nse = super().unregister(name)
        if nse is not None:
            log.info("endpoint=%s event=unregistered", name)
        return nse
