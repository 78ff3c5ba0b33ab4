"""ipcontext: the IP context an endpoint answered is installed in the hosts' namespaces only when it
keeps to what its service allows, and it is refused (PERMISSION_DENIED, as the endpoint's own
failure) otherwise, before the fabric or a host is touched:

- every address and route (and next hop) lies inside the service's prefixes: the setting
  `nsm_service_prefixes` (per service, "*" for the others), narrowed to the endpoint's own
  `p4nsm.io/cidr` label when its registration carries one (an endpoint may promise less than
  the service allows, never more);
- no default route (prefix length 0), whatever the prefixes.

That nothing overlaps what the hosts already have is checked where their state is read, on the
host side (kernel_iface's `exclusive`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

import grpc

from controller.nsm.base.errors import EndpointFailed
from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request
from controller.nsm.elements.select.roundrobin import endpoint_of
from nsm_api import registry_pb2

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CIDR_LABEL = "p4nsm.io/cidr"  # comma-separated prefixes the endpoint gives out
ANY_SERVICE = "*"
_FIELD = "connection.context.ip_context"


def _refuse(field: str, message: str) -> EndpointFailed:
    # The message names the field too: endpoint selection reports each candidate's message only.
    return EndpointFailed(grpc.StatusCode.PERMISSION_DENIED, f"{_FIELD}.{field}", f"{field}: {message}")


def _parse(field: str, nse: registry_pb2.NetworkServiceEndpoint, text: str, *, address: bool = False) -> IPNetwork:
    try:
        if address:
            if "/" not in text:
                raise ValueError("no prefix length")
            return ipaddress.ip_interface(text).network
        return ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise EndpointFailed(grpc.StatusCode.INTERNAL, f"{_FIELD}.{field}",
                             f"{field}: endpoint {nse.name} answered {text!r}, which is not an address or prefix: {e}") from None


def _inside(net: IPNetwork, allowed: Sequence[IPNetwork]) -> bool:
    return any(net.version == a.version and net.subnet_of(a) for a in allowed)  # type: ignore[arg-type]


def _narrowed(allowed: Sequence[IPNetwork], promised: Sequence[IPNetwork]) -> list[IPNetwork]:
    """The parts of `allowed` that `promised` covers (prefixes intersect only by nesting)."""
    out = [p for p in promised if _inside(p, allowed)]
    out += [a for a in allowed if _inside(a, promised) and a not in out]
    return out


class IpContextCheck(Element):
    def __init__(self, prefixes: Mapping[str, Sequence[IPNetwork]]) -> None:
        self.prefixes = prefixes

    def allowed(self, service: str, nse: registry_pb2.NetworkServiceEndpoint) -> tuple[list[IPNetwork], str]:
        """The prefixes this endpoint's answers for `service` must keep to, and where they come from."""
        allowed = list(self.prefixes.get(service, self.prefixes.get(ANY_SERVICE, ())))
        where = f"service {service}" if service in self.prefixes else "the services' default"
        label = nse.network_service_labels[service].labels.get(CIDR_LABEL, "") \
            if service in nse.network_service_labels else ""
        if not label:
            return allowed, where
        try:
            promised = [ipaddress.ip_network(p.strip(), strict=False) for p in label.split(",") if p.strip()]
        except ValueError as e:
            raise EndpointFailed(grpc.StatusCode.INVALID_ARGUMENT, f"network_service_labels[{service!r}].labels[{CIDR_LABEL!r}]",
                                 f"endpoint {nse.name}: {e}") from None
        return _narrowed(allowed, promised), f"{where} and endpoint {nse.name}'s {CIDR_LABEL} {label}"

    def check(self, conn: Connection, nse: registry_pb2.NetworkServiceEndpoint) -> None:
        allowed, where = self.allowed(conn.network_service, nse)
        shown = ", ".join(map(str, allowed)) or "nothing"
        ip = conn.context.ip_context
        for name in ("src_ip_addrs", "dst_ip_addrs"):
            for i, text in enumerate(getattr(ip, name)):
                net = _parse(f"{name}[{i}]", nse, text, address=True)
                if not _inside(net, allowed):
                    raise _refuse(f"{name}[{i}]", f"endpoint {nse.name} answered {text}, outside what {where} allows ({shown})")
        for name in ("src_routes", "dst_routes"):
            for i, route in enumerate(getattr(ip, name)):
                prefix = _parse(f"{name}[{i}].prefix", nse, route.prefix)
                if prefix.prefixlen == 0:
                    raise _refuse(f"{name}[{i}].prefix", f"endpoint {nse.name} answered a default route ({route.prefix}); "
                                                         "none is ever installed")
                if not _inside(prefix, allowed):
                    raise _refuse(f"{name}[{i}].prefix", f"endpoint {nse.name} answered a route to {route.prefix}, "
                                                         f"outside what {where} allows ({shown})")
                if route.nextHop and not _inside(_parse(f"{name}[{i}].nextHop", nse, route.nextHop), allowed):
                    raise _refuse(f"{name}[{i}].nextHop", f"endpoint {nse.name} answered next hop {route.nextHop}, "
                                                          f"outside what {where} allows ({shown})")

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        self.check(req.connection, endpoint_of(ctx))
        return await nxt.request(req, ctx)
