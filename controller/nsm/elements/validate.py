"""validate: refuse a malformed Request or Close before any element acts on it, with
INVALID_ARGUMENT and the field at fault. Path index and segment id are updatepath's checks."""

from __future__ import annotations

import ipaddress

from google.protobuf.timestamp_pb2 import Timestamp

from controller.nsm.base import kernel
from controller.nsm.base.checks import Limits, check_list, check_map, check_text
from controller.nsm.base.errors import invalid
from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request
from nsm_api import connection_pb2, connectioncontext_pb2

SUPPORTED_MECHANISMS = (kernel.KERNEL,)
PAYLOADS = ("", "IP", "ETHERNET")


def _timestamp(field: str, ts: Timestamp) -> None:
    if not 0 <= ts.nanos < 1_000_000_000 or ts.seconds < 0:
        raise invalid(field, f"{ts.seconds}s {ts.nanos}ns is not a valid time")


def _mechanism(field: str, mech: connection_pb2.Mechanism, limits: Limits) -> None:
    check_text(f"{field}.type", mech.type, limits.name)
    check_text(f"{field}.cls", mech.cls, limits.name)
    check_map(f"{field}.parameters", mech.parameters, limits)
    if mech.type == kernel.KERNEL:
        kernel.check_parameters(f"{field}.parameters", dict(mech.parameters))


def _ip_context(field: str, ip: connectioncontext_pb2.IPContext, limits: Limits) -> None:
    for name in ("src_ip_addrs", "dst_ip_addrs", "excluded_prefixes", "extra_prefixes"):
        items = getattr(ip, name)
        check_list(f"{field}.{name}", items, limits)
        for i, text in enumerate(items):
            try:
                if "/" not in text:
                    raise ValueError
                ipaddress.ip_interface(text)
            except ValueError:
                raise invalid(f"{field}.{name}[{i}]", f"{text!r} is not an address or prefix with a length") from None
    for name in ("src_routes", "dst_routes"):
        routes = getattr(ip, name)
        check_list(f"{field}.{name}", routes, limits)
        for i, route in enumerate(routes):
            try:
                ipaddress.ip_network(route.prefix, strict=False)
                if route.nextHop:
                    ipaddress.ip_address(route.nextHop)
            except ValueError as e:
                raise invalid(f"{field}.{name}[{i}]", f"{e}") from None


def check_connection(conn: Connection, limits: Limits, *, request: bool) -> None:
    check_text("connection.id", conn.id, limits.name)
    check_text("connection.network_service", conn.network_service, limits.name, required=request, spaces=False)
    check_text("connection.network_service_endpoint_name", conn.network_service_endpoint_name, limits.name, spaces=False)
    if conn.payload not in PAYLOADS:
        raise invalid("connection.payload", f"{conn.payload!r} is none of {', '.join(p for p in PAYLOADS if p)}")
    if conn.state not in connection_pb2.State.values():
        raise invalid("connection.state", f"{conn.state} is not a connection.State")
    check_map("connection.labels", conn.labels, limits)
    check_list("connection.path.path_segments", conn.path.path_segments, limits)
    for i, seg in enumerate(conn.path.path_segments):
        field = f"connection.path.path_segments[{i}]"
        check_text(f"{field}.name", seg.name, limits.name)
        check_text(f"{field}.id", seg.id, limits.name)
        check_text(f"{field}.token", seg.token, limits.value)
        _timestamp(f"{field}.expires", seg.expires)
        check_map(f"{field}.metrics", seg.metrics, limits)
    if conn.HasField("mechanism"):
        _mechanism("connection.mechanism", conn.mechanism, limits)
        if request and conn.mechanism.type not in SUPPORTED_MECHANISMS:
            raise invalid("connection.mechanism.type", f"unsupported mechanism {conn.mechanism.type!r}")
    ctx = conn.context
    _ip_context("connection.context.ip_context", ctx.ip_context, limits)
    check_map("connection.context.extra_context", ctx.extra_context, limits)
    if ctx.MTU and not 68 <= ctx.MTU <= 65535:
        raise invalid("connection.context.MTU", f"{ctx.MTU} is not an MTU (68..65535)")


class Validate(Element):
    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        if not req.HasField("connection"):
            raise invalid("connection", "is required")
        check_connection(req.connection, self.limits, request=True)
        check_list("mechanism_preferences", req.mechanism_preferences, self.limits)
        for i, mech in enumerate(req.mechanism_preferences):
            _mechanism(f"mechanism_preferences[{i}]", mech, self.limits)
        if not req.connection.HasField("mechanism"):
            offered = [m.type for m in req.mechanism_preferences]
            if not any(t in SUPPORTED_MECHANISMS for t in offered):
                raise invalid("mechanism_preferences", "cannot support any of the requested mechanism "
                              f"(offered: {', '.join(offered) or 'none'}; supported: {', '.join(SUPPORTED_MECHANISMS)})")
        return await nxt.request(req, ctx)

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        check_connection(conn, self.limits, request=False)
        await nxt.close(conn, ctx)
