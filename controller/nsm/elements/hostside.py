"""hostside: the KERNEL interfaces of both ends: a VLAN subinterface (the fabric's VLAN on that
host link) in the client's netns with the source addresses and routes, and one in the endpoint's
netns with the destination ones. A refresh that changes nothing touches nothing.

Each interface is marked as this connection's (kernel_iface.mark): a name that exists and is not
the connection's own is refused with ALREADY_EXISTS and left alone, and so is (FAILED_PRECONDITION)
an address or route overlapping another interface's in that netns. When one side fails, the
other is undone too: a new connection leaves nothing in either netns, a refresh puts back what
it had. Either side failing is the controller's failure, not the endpoint's (the endpoint's side
fails as CandidateFailed: another endpoint may be on a host where it works, the client's as
NsmError), except a name the endpoint answered that is taken on its host (EndpointFailed)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

import grpc

from controller.host.kernel_iface import (
    AddressConflict,
    HostIfaceError,
    IfaceExists,
    ensure_vlan_iface,
    host_parent_iface,
    marked_ifaces,
    remove_iface,
)
from controller.nsm.base import kernel
from controller.nsm.base.errors import CandidateFailed, EndpointFailed, NsmError
from controller.nsm.elements.adopt import adopted_of
from controller.nsm.elements.begin import state_of
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request
from controller.nsm.elements.fabric_connect import plan_of
from controller.nsm.elements.forward import answer_of
from controller.nsm.elements.host_pool import HostPool
from nsm_api import connectioncontext_pb2

log = logging.getLogger("p4nsm.nsm")

_APPLIED: Key[tuple[Iface, ...]] = Key("hostside.applied")  # per connection: the interfaces made


@dataclasses.dataclass(frozen=True, slots=True)
class Iface:
    owner: str  # the connection id its mark names
    netns: str
    name: str
    vlan: int
    addresses: tuple[str, ...]
    routes: tuple[tuple[str, str | None], ...]
    mtu: int | None


def routes(routes: Sequence[connectioncontext_pb2.Route], peers: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """A route without nextHop goes via the peer's address of its family (docs/nsm_contract.md §3.1), or is
    on-link when it leads to that very peer (a point-to-point /32 has no other way)."""
    out = []
    for route in routes:
        prefix = ipaddress.ip_network(route.prefix, strict=False)
        gateway: str | None = route.nextHop or None
        if gateway is None:
            peer = next((ipaddress.ip_interface(p).ip for p in peers if ipaddress.ip_interface(p).version == prefix.version), None)
            gateway = str(peer) if peer is not None and peer not in prefix else None
        out.append((str(prefix), gateway))
    return tuple(out)


class HostSide(Element):
    def __init__(self, pool: HostPool) -> None:
        self.pool = pool
        self._parents: dict[str, str] = {}

    async def _ensure(self, iface: Iface) -> None:
        parent = self._parents.get(iface.netns)
        if parent is None:
            parent = self._parents[iface.netns] = await self.pool.call(host_parent_iface, iface.netns)
        try:
            await self.pool.call(functools.partial(ensure_vlan_iface, owner=iface.owner, exclusive=True),
                                 iface.netns, parent, iface.vlan, iface.name,
                                 list(iface.addresses), list(iface.routes), iface.mtu)
        except (IfaceExists, AddressConflict):
            raise
        except HostIfaceError:
            self._parents.pop(iface.netns, None)
            raise

    async def _remove(self, iface: Iface, conn_id: str) -> None:
        try:
            await self.pool.call(functools.partial(remove_iface, owner=iface.owner), iface.netns, iface.name)
        except (HostIfaceError, ValueError) as e:
            log.error("connection=%s netns=%s iface=%s event=remove_failed error=%s", conn_id, iface.netns, iface.name, e)

    def _wanted(self, conn: Connection, ctx: CallContext) -> tuple[Iface, Iface]:
        plan = plan_of(ctx)
        answer = answer_of(ctx)
        ip = conn.context.ip_context
        mtu = conn.context.MTU or None
        return (
            Iface(conn.id, plan.a.host, conn.mechanism.parameters[kernel.NAME_KEY], plan.a.vlan, tuple(ip.src_ip_addrs),
                  routes(ip.src_routes, ip.dst_ip_addrs), mtu),
            Iface(conn.id, plan.b.host, answer.mechanism.parameters[kernel.NAME_KEY], plan.b.vlan, tuple(ip.dst_ip_addrs),
                  routes(ip.dst_routes, ip.src_ip_addrs), mtu),
        )

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn = req.connection
        st = state_of(ctx)
        assert st is not None, "hostside needs begin before it"
        have: tuple[Iface, ...] = st.values.get(_APPLIED, ())
        want = self._wanted(conn, ctx)
        # An adopted connection's interfaces were made by an earlier run: found by their marks,
        # converged (nothing changes when they are as wanted) and never removed by this call.
        found = await self._marked(want, conn.id) if not have and adopted_of(ctx) is not None else frozenset()
        if want != have:
            # Both sides at once: they are in different namespaces and independent.
            results = await asyncio.gather(*(self._ensure_side(side, iface) for side, iface in zip(("client", "endpoint"), want)),
                                           return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                # The side that failed has undone itself; the one that worked is undone here: a
                # new connection leaves nothing, a refresh gets back what it had.
                done = [i for i, r in zip(want, results) if r is None]
                if have:
                    await self._restore(done, have, conn.id)
                else:
                    await self._undo([i for i in done if (i.netns, i.name) not in found], conn.id, st.values)
                raise failures[0]
            for stale in {i for i in have if (i.netns, i.name) not in {(w.netns, w.name) for w in want}}:
                await self._remove(stale, conn.id)
            st.values[_APPLIED] = want
            adopted = all((i.netns, i.name) in found for i in want)
            log.info("connection=%s event=%s client=%s/%s vlan=%d endpoint=%s/%s vlan=%d", conn.id,
                     "host_side_adopted" if adopted else "host_side", want[0].netns, want[0].name, want[0].vlan,
                     want[1].netns, want[1].name, want[1].vlan)
        try:
            return await nxt.request(req, ctx)
        except BaseException:
            if not have:
                await self._undo([i for i in want if (i.netns, i.name) not in found], conn.id, st.values)
            raise

    async def _marked(self, want: Sequence[Iface], conn_id: str) -> frozenset[tuple[str, str]]:
        """(netns, name) of the interfaces the kernel holds with this connection's mark."""
        out: set[tuple[str, str]] = set()
        for netns in dict.fromkeys(i.netns for i in want):
            try:
                out.update((netns, name) for name in await self.pool.call(marked_ifaces, netns, conn_id))
            except (HostIfaceError, ValueError) as e:
                log.warning("connection=%s netns=%s event=marks_unreadable error=%s", conn_id, netns, e)
        return frozenset(out)

    async def _ensure_side(self, side: str, iface: Iface) -> None:
        try:
            await self._ensure(iface)
        except IfaceExists as e:
            message = f"{side} side: {e}"
            if side == "endpoint":
                raise EndpointFailed(grpc.StatusCode.ALREADY_EXISTS, f"mechanism.parameters[{kernel.NAME_KEY!r}]",
                                     f"the endpoint's answer names an interface that is not this connection's: {message}") from None
            raise NsmError(grpc.StatusCode.ALREADY_EXISTS, f"connection.mechanism.parameters[{kernel.NAME_KEY!r}]", message) from None
        except AddressConflict as e:
            # The endpoint answered the addresses; another endpoint's may fit this host.
            kind = "routes" if e.field.startswith("routes") else "ip_addrs"
            field = f"connection.context.ip_context.{'src' if side == 'client' else 'dst'}_{kind}{e.field[e.field.index('['):]}"
            raise CandidateFailed(grpc.StatusCode.FAILED_PRECONDITION, field,  # selection shows the message only
                                  f"{side} side in netns {iface.netns}: {field.rsplit('.', 1)[1]} {e.detail}") from None
        except (HostIfaceError, ValueError) as e:
            message = f"{side} interface {iface.name} in netns {iface.netns}: {e}"
            if side == "endpoint":
                raise CandidateFailed(grpc.StatusCode.FAILED_PRECONDITION, "connection.context.ip_context", message) from None
            raise NsmError(grpc.StatusCode.FAILED_PRECONDITION, f"connection.mechanism.parameters[{kernel.NAME_KEY!r}]", message) from None

    async def _restore(self, done: Sequence[Iface], have: Sequence[Iface], conn_id: str) -> None:
        """After a failed refresh: each side that changed goes back to what the connection had."""
        before = {(i.netns, i.name): i for i in have}
        for iface in done:
            old = before.get((iface.netns, iface.name))
            try:
                if old is None:
                    await self._remove(iface, conn_id)
                else:
                    await self._ensure(old)
            except (HostIfaceError, ValueError) as e:
                log.error("connection=%s netns=%s iface=%s event=restore_failed error=%s", conn_id, iface.netns, iface.name, e)

    async def _undo(self, ifaces: Sequence[Iface], conn_id: str, values: dict[Key[Any], Any]) -> None:
        await asyncio.gather(*(self._remove(iface, conn_id) for iface in ifaces))
        values.pop(_APPLIED, None)

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        st = state_of(ctx)
        applied: tuple[Iface, ...] = st.values.get(_APPLIED, ()) if st is not None else ()
        try:
            await nxt.close(conn, ctx)
        finally:
            if st is not None:
                await self._undo(applied, conn.id, st.values)
