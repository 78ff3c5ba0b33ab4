"""Which registrations a Find query selects (docs/nsm_contract.md §9.3, §9.4) and which endpoints a
network service's `matches` give a request (MatchEndpoint, §10.2)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from controller.nsm.base import clock
from nsm_api import registry_pb2

_ACTION = re.compile(r"\{\{(.*?)\}\}")
_FIELD = re.compile(r"^\s*\.(\w+)\s*$")


def render(template: str, data: Mapping[str, str]) -> str:
    """The subset of Go text/template that selectors use: `{{.key}}` from the request labels.
    Anything else fails, and the caller then compares the raw string, as Go does."""

    def field(m: re.Match[str]) -> str:
        f = _FIELD.match(m.group(1))
        if not f:
            raise ValueError(f"unsupported template action {m.group(0)!r}")
        return data.get(f.group(1), "<no value>")

    return _ACTION.sub(field, template)


def is_subset(have: Mapping[str, str], want: Mapping[str, str], data: Mapping[str, str]) -> bool:
    if len(have) < len(want):
        return False
    for key, value in want.items():
        got = have.get(key, "")
        if got == value:
            continue
        try:
            if got == render(value, data):
                continue
        except ValueError:
            pass
        return False
    return True


def ns_matches(query: registry_pb2.NetworkService, ns: registry_pb2.NetworkService) -> bool:
    if query.name and query.name != ns.name:
        return False
    if query.payload and query.payload != ns.payload:
        return False
    return not query.matches or list(query.matches) == list(ns.matches)


def nse_matches(query: registry_pb2.NetworkServiceEndpoint, nse: registry_pb2.NetworkServiceEndpoint) -> bool:
    if query.name and query.name != nse.name:
        return False
    for service, labels in query.network_service_labels.items():
        if service not in nse.network_service_labels:
            return False
        stored = nse.network_service_labels[service].labels
        if any(stored.get(k) != v for k, v in labels.labels.items()):
            return False
    if clock.is_set(query.expiration_time) and query.expiration_time.seconds != nse.expiration_time.seconds:
        return False
    if any(name not in nse.network_service_names for name in query.network_service_names):
        return False
    return not query.url or query.url in nse.url


def match_endpoint(
    request_labels: Mapping[str, str],
    ns: registry_pb2.NetworkService,
    nses: Sequence[registry_pb2.NetworkServiceEndpoint],
) -> list[registry_pb2.NetworkServiceEndpoint]:
    if not ns.matches:
        return list(nses)
    for match in ns.matches:
        if not is_subset(request_labels, match.source_selector, request_labels):
            continue
        candidates = [
            nse
            for route in match.routes
            for nse in nses
            if is_subset(_labels(nse, ns.name), route.destination_selector, request_labels)
        ]
        if match.fallthrough and not candidates:
            continue
        if match.HasField("metadata") and not match.routes and not candidates:
            return list(nses)
        return candidates
    return []


def _labels(nse: registry_pb2.NetworkServiceEndpoint, service: str) -> Mapping[str, str]:
    entry = nse.network_service_labels.get(service)
    return entry.labels if entry is not None else {}
