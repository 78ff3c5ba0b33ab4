"""The host side of a connection: a VLAN subinterface with its addresses and routes, in the
host's named netns.

Synchronous and short: callers run these through asyncio.to_thread, because every IPRoute bound
to a netns forks a helper to open its socket there. Each call converges to the requested state,
so calling it again after a restart is safe.

Only what p4nsm made is ever changed or removed: every interface it makes carries its owner's
mark in its alias (`p4nsm:<owner>`, the connection id), and an existing interface of that name
without the mark of the same owner is refused (IfaceExists), never replaced. A call that fails
part-way undoes what it did: a link it made is removed with its addresses and routes, and on a
link that was there the addresses, routes and MTU are put back as they were.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from socket import AF_INET, AF_INET6
from typing import Any, Literal

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from controller.host import vlan_emu

log = logging.getLogger("p4nsm.host")

IFNAME_MAX = 15  # IFNAMSIZ minus the trailing NUL
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # our routes; kernel (connected) routes are left alone
IFA_F_NODAD = 0x02  # the address is usable at once instead of after ~1 s of duplicate detection

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Route = tuple[IPNetwork, IPAddress | None]
VlanMode = Literal["auto", "native", "emulated"]


# The names p4nsm makes interfaces under (controller/nsm/README.md, "Interfaces"): no leading
# '-' or '.', which tools would read as an option or a hidden file, nothing a shell or a log
# would split, and not the name of an emulated VLAN's inner end (vlan_emu.inner_name).
IFNAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}"
_IFNAME = re.compile(IFNAME_PATTERN)
MARK_PREFIX = "p4nsm:"
_MARK_MAX = 64  # an owner longer than this (or odd) is marked by its hash: IFALIASZ is 256


class HostIfaceError(RuntimeError):
    """The kernel refused a change to a host's interfaces; the message names netns and interface."""


class IfaceExists(HostIfaceError):
    """An interface of the requested name exists and is not the requester's: the host's own, or
    another connection's. It is left alone."""


class AddressConflict(HostIfaceError):
    """A wanted address or route overlaps what another interface of the netns has."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.detail = message

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


def validate_ifname(field: str, value: str) -> str:
    """A name p4nsm may make an interface under: IFNAME_PATTERN, and not an inner end's name."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: an interface name is required")
    if len(value) > IFNAME_MAX:
        raise ValueError(f"{field}: interface name {value!r} has {len(value)} characters; Linux allows {IFNAME_MAX}")
    if not _IFNAME.fullmatch(value):
        raise ValueError(f"{field}: {value!r} is not a valid interface name (it must match {IFNAME_PATTERN})")
    if vlan_emu.is_inner_name(value):
        raise ValueError(f"{field}: {value!r} is reserved for the VLAN emulation's inner ends (nsv + 8 hex digits)")
    return value


def _check_existing_ifname(field: str, value: str) -> None:
    """A name of an interface the host already has (a parent): Linux's rules only."""
    if not isinstance(value, str) or not value or len(value) > IFNAME_MAX or value in (".", "..") \
            or any(c in value for c in "/:") or any(c.isspace() for c in value):
        raise ValueError(f"{field}: {value!r} is not a valid interface name (no '/', ':' or spaces)")


def mark(owner: str) -> str:
    """The alias that says an interface is p4nsm's, made for `owner` (the connection's id, NSM
    and direct connections alike)."""
    if len(owner) <= _MARK_MAX and owner.isprintable() and not any(c.isspace() for c in owner):
        return MARK_PREFIX + owner
    return MARK_PREFIX + "#" + hashlib.sha256(owner.encode()).hexdigest()[:32]


def mark_of(link: Any) -> str | None:
    """The owner mark of a link as the kernel reports it; None when p4nsm did not make it."""
    alias = link.get("ifalias") or ""
    if alias.startswith(MARK_PREFIX):
        return alias
    return vlan_emu.mark_in(alias)


# Tests set this to a step's name to make that step fail as the kernel would (see _step); it is
# the one way to fail the steps the kernel has no natural refusal for. None in production.
fail_step: str | None = None


def _step(name: str) -> None:
    if fail_step == name:
        raise NetlinkError(errno.EIO, f"injected failure at {name}")


def ensure_vlan_iface(
    netns: str,
    parent: str,
    vlan_id: int,
    name: str,
    addresses: Sequence[str],
    routes: Sequence[tuple[str, str | None]],
    mtu: int | None = None,
    *,
    owner: str = "",
    exclusive: bool = False,
    mode: VlanMode = "auto",
) -> int:
    """Make `name` a VLAN `vlan_id` subinterface of `parent` in `netns`, up, with exactly these
    addresses and these static routes ((destination CIDR, gateway or None)); returns its index.

    `owner` marks the interface as that connection's; an existing `name` with another mark, or
    none, raises IfaceExists. With `exclusive`, an address or route that overlaps an address or
    route of another interface of the netns (default routes aside) raises AddressConflict.
    Nothing is changed when either is raised, and a failure part-way is undone.

    mode "auto" uses the kernel's VLAN driver and falls back to the eBPF emulation (vlan_emu)
    where the kernel has none; "native" and "emulated" force one of them.
    """
    _check_netns_name(netns)
    _check_existing_ifname("parent", parent)
    validate_ifname("name", name)
    if isinstance(vlan_id, bool) or not isinstance(vlan_id, int) or not 1 <= vlan_id <= 4094:
        raise ValueError(f"vlan_id: {vlan_id!r} is not a VLAN id (1..4094)")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535):
        raise ValueError(f"mtu: {mtu!r} is not an MTU (68..65535)")
    wanted_addrs = _parse_addresses(addresses)
    wanted_routes = _parse_routes(routes)
    own = mark(owner)

    with _netns_route(netns) as ipr:
        parent_index = _lookup(ipr, parent)
        if parent_index is None:
            raise HostIfaceError(f"netns {netns}: parent interface {parent!r} does not exist")
        where = f"netns {netns} iface {name}"
        undo = _Undo(where)
        made: int | None = None
        try:
            index = _lookup(ipr, name)
            link = ipr.link("get", index=index)[0] if index is not None else None
            if link is not None and mark_of(link) != own:
                found = mark_of(link)
                whose = "another connection's" if found else "the host's own (not made by p4nsm)"
                raise IfaceExists(f"interface {name!r} exists in netns {netns} and is {whose}; it is left alone")
            state = _State.read(ipr, index) if index is not None else _State()
            if exclusive:
                _check_exclusive(ipr, index, wanted_addrs, wanted_routes)
            if link is not None and not (_is_native_vlan(link, parent_index, vlan_id)
                                         or vlan_emu.matches(ipr, link, parent, parent_index, vlan_id)):
                log.info("iface replaced netns=%s iface=%s reason=not a VLAN %d of %s", netns, name, vlan_id, parent)
                vlan_emu.remove(ipr, name)
                index, link, state = None, None, _State()
            if index is None:
                index = made = _make_link(ipr, parent, parent_index, vlan_id, name, own, mode)
            if mtu is not None and (link is None or link.get("mtu") != mtu):
                _step("mtu")
                ipr.link("set", index=index, mtu=mtu)
                if link is not None:
                    undo.add(functools.partial(ipr.link, "set", index=index, mtu=link.get("mtu")))
            _sync_addresses(ipr, index, wanted_addrs, state.addrs, undo)
            _step("up")
            ipr.link("set", index=parent_index, state="up")
            ipr.link("set", index=index, state="up")
            if link is not None and link.get("state") != "up":
                undo.add(functools.partial(ipr.link, "set", index=index, state="down"))
            _sync_routes(ipr, index, wanted_routes, state.routes, undo)  # the kernel refuses routes through a down link
        except BaseException as exc:
            if made is not None:
                _remove_made(ipr, name, where)
            else:
                undo.run()
            if isinstance(exc, NetlinkError):
                raise HostIfaceError(f"{where}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
            if isinstance(exc, FileExistsError):
                raise HostIfaceError(f"{where}: {exc}") from exc
            raise
    log.info("vlan iface %s netns=%s iface=%s parent=%s vlan=%d owner=%r addresses=%s routes=%d",
             "created" if made is not None else "ensured", netns, name, parent, vlan_id, owner,
             ",".join(map(str, wanted_addrs)) or "-", len(wanted_routes))
    return index


def remove_iface(netns: str, name: str, *, owner: str = "") -> bool:
    """Remove interface `name` from `netns`, with what the VLAN emulation attached for it, when
    it carries `owner`'s mark. Returns False when there was nothing of `owner`'s to remove (no
    such interface or netns, or an interface that is not `owner`'s, which is left alone)."""
    _check_netns_name(netns)
    _check_existing_ifname("name", name)
    if netns not in _existing_netns():
        log.debug("remove iface: netns gone netns=%s iface=%s", netns, name)
        return False
    with _netns_route(netns) as ipr:
        try:
            links = _get_link(ipr, name)
            if links is not None and mark_of(links) != mark(owner):
                log.warning("iface kept netns=%s iface=%s owner=%r reason=not made by p4nsm for this owner",
                            netns, name, owner)
                return False
            removed = vlan_emu.remove(ipr, name)
        except NetlinkError as exc:
            raise HostIfaceError(f"netns {netns} iface {name}: {exc}") from exc
    log.info("iface %s netns=%s iface=%s owner=%r", "removed" if removed else "already absent", netns, name, owner)
    return removed


def marked_ifaces(netns: str, owner: str) -> list[str]:
    """The interfaces of `netns` that carry `owner`'s mark: what p4nsm made for that connection,
    found again by a controller that restarted. Empty when the netns is gone."""
    _check_netns_name(netns)
    if netns not in _existing_netns():
        return []
    own = mark(owner)
    with _netns_route(netns) as ipr:
        try:
            return sorted(link.get("ifname") for link in ipr.link("dump") if mark_of(link) == own)
        except NetlinkError as exc:
            raise HostIfaceError(f"netns {netns}: {exc}") from exc


def host_parent_iface(netns: str) -> str:
    """The host's fabric-facing interface: its one interface that is neither loopback nor a
    VLAN subinterface (native or emulated)."""
    _check_netns_name(netns)
    with _netns_route(netns) as ipr:
        candidates = [
            link.get("ifname") for link in ipr.link("dump")
            if link.get("ifname") != "lo" and _link_kind(link) != "vlan" and not vlan_emu.is_emulation_link(link)
            and mark_of(link) is None
        ]
    if len(candidates) != 1:
        raise HostIfaceError(f"netns {netns}: expected one fabric-facing interface, found {candidates or 'none'}; "
                             "pass the parent explicitly")
    return candidates[0]


# --- the link itself ---------------------------------------------------------------------------

_native_vlan_supported: bool | None = None  # learnt from the first attempt, per process


def _make_link(ipr: IPRoute, parent: str, parent_index: int, vlan_id: int, name: str, own: str,
               mode: VlanMode) -> int:
    """A new subinterface, marked `own`; a failure part-way leaves nothing of it."""
    _step("link")
    if mode == "native" or (mode == "auto" and _native_vlan_supported is not False):
        index = _add_native(ipr, parent_index, vlan_id, name, required=mode == "native")
        if index is not None:
            try:
                _step("mark")
                ipr.link("set", index=index, ifalias=own)
            except BaseException:
                _delete_index(ipr, index)
                raise
            return index
    return vlan_emu.create(ipr, name, parent, parent_index, vlan_id, own, _step)


def _remove_made(ipr: IPRoute, name: str, where: str) -> None:
    try:
        vlan_emu.remove(ipr, name)
    except NetlinkError as exc:
        log.error("undo failed %s step=remove error=%s", where, exc)


def _delete_index(ipr: IPRoute, index: int) -> None:
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def _get_link(ipr: IPRoute, name: str) -> Any | None:
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        return None


def _add_native(ipr: IPRoute, parent_index: int, vlan_id: int, name: str, required: bool) -> int | None:
    global _native_vlan_supported
    try:
        ipr.link("add", ifname=name, kind="vlan", link=parent_index, vlan_id=vlan_id)
    except NetlinkError as exc:
        if exc.code != errno.EOPNOTSUPP or required:
            raise
        _native_vlan_supported = False
        log.info("kernel has no 802.1Q driver; VLAN subinterfaces are emulated with tc eBPF programs")
        return None
    _native_vlan_supported = True
    index = _lookup(ipr, name)
    assert index is not None
    try:
        vlan_emu.quiet_ipv6(ipr, index)
    except BaseException:
        _delete_index(ipr, index)
        raise
    return index


def _is_native_vlan(link: Any, parent_index: int, vlan_id: int) -> bool:
    return (_link_kind(link) == "vlan" and link.get("link") == parent_index
            and link.get(("linkinfo", "data", "vlan_id")) == vlan_id)


def _link_kind(link: Any) -> str | None:
    return link.get(("linkinfo", "kind"))


# --- addresses and routes ----------------------------------------------------------------------

class _Undo:
    """The inverse of each change one call made to a link that was already there, run newest
    first when a later step fails. Best effort: what cannot be put back is logged."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._steps: list[Callable[[], object]] = []

    def add(self, inverse: Callable[[], object]) -> None:
        self._steps.append(inverse)

    def run(self) -> None:
        for inverse in reversed(self._steps):
            try:
                inverse()
            except NetlinkError as exc:
                log.error("undo failed %s error=%s", self.where, exc)
        self._steps.clear()


@dataclasses.dataclass
class _State:
    """The addresses and static routes the link has, to converge from."""

    addrs: set[IPInterface] = dataclasses.field(default_factory=set)
    routes: set[Route] = dataclasses.field(default_factory=set)

    @classmethod
    def read(cls, ipr: IPRoute, index: int) -> _State:
        state = cls()
        for msg in ipr.addr("dump"):
            addr = ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
            if msg["index"] == index and not addr.ip.is_link_local:
                state.addrs.add(addr)
        for family, any_addr in ((AF_INET, "0.0.0.0"), (AF_INET6, "::")):
            for msg in ipr.route("dump", family=family):
                if msg.get("oif") != index or msg.get("proto") != RTPROT_STATIC or msg.get("table") != RT_TABLE_MAIN:
                    continue
                gateway = msg.get("gateway")
                state.routes.add((ipaddress.ip_network(f"{msg.get('dst') or any_addr}/{msg['dst_len']}"),
                                  ipaddress.ip_address(gateway) if gateway else None))
        return state


RTM_F_FIB_MATCH = 0x2000  # route get: the FIB entry that matches, with its own prefix
RTN_LOCAL = 2


def _check_exclusive(ipr: IPRoute, index: int | None, addrs: Sequence[IPInterface], routes: Sequence[Route]) -> None:
    """Refuse a wanted address or route that overlaps an address or route of another link.

    The kernel's own lookup answers for one address (the most specific route or local address
    that holds it); only a wanted prefix wider than one address needs the dumps, to find what
    lies inside it. The SDK's point-to-point pairs are all single addresses, so the check costs
    a few lookups, not a read of every connection's addresses."""
    wanted = [(f"addresses[{i}]", a.network, str(a)) for i, a in enumerate(addrs)]
    wanted += [(f"routes[{i}]", dst, str(dst)) for i, (dst, _) in enumerate(routes)]
    others = _others(ipr, index) if any(p.prefixlen < p.max_prefixlen for _, p, _ in wanted) else []
    for field, prefix, text in wanted:
        found = _fib_match(ipr, prefix.network_address)
        hits = [found] if found is not None and found[1] != index else []
        if prefix.prefixlen < prefix.max_prefixlen:
            hits += [o for o in others if o[0].version == prefix.version and o[0].overlaps(prefix)]
        for _, ifindex, what in hits:
            raise AddressConflict(field, f"{text} overlaps {what} of {_ifname(ipr, ifindex)}, "
                                         "which p4nsm did not make for this connection")


def _fib_match(ipr: IPRoute, address: IPAddress) -> tuple[IPNetwork, int, str] | None:
    """(prefix, ifindex, what) of the route or local address the kernel would use for `address`;
    None for a default route or none at all."""
    try:
        msg = ipr.route("get", dst=str(address), flags=RTM_F_FIB_MATCH)[0]
    except NetlinkError as exc:
        if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESRCH):
            return None
        raise
    if msg["dst_len"] == 0:
        return None
    prefix = ipaddress.ip_network(f"{msg.get('dst')}/{msg['dst_len']}")
    if prefix.is_link_local or prefix.is_multicast:
        return None
    return prefix, msg.get("oif") or 0, f"address {address}" if msg["type"] == RTN_LOCAL else f"route {prefix}"


def _others(ipr: IPRoute, index: int | None) -> list[tuple[IPNetwork, int, str]]:
    """Every address network and main-table route (default routes aside) of the other links."""
    out: list[tuple[IPNetwork, int, str]] = []
    for msg in ipr.addr("dump"):
        addr = ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
        if msg["index"] != index and not addr.ip.is_link_local:
            out.append((addr.network, msg["index"], f"address {addr}"))
    for family, any_addr in ((AF_INET, "0.0.0.0"), (AF_INET6, "::")):
        for msg in ipr.route("dump", family=family):
            if msg.get("table") != RT_TABLE_MAIN or msg["dst_len"] == 0 or msg.get("oif") == index:
                continue
            dst = ipaddress.ip_network(f"{msg.get('dst') or any_addr}/{msg['dst_len']}")
            if not (dst.is_link_local or dst.is_multicast):
                out.append((dst, msg.get("oif") or 0, f"route {dst}"))
    return out


def _ifname(ipr: IPRoute, index: int) -> str:
    try:
        return str(ipr.link("get", index=index)[0].get("ifname"))
    except NetlinkError:
        return f"interface #{index}"


def _sync_addresses(ipr: IPRoute, index: int, wanted: list[IPInterface], have: set[IPInterface], undo: _Undo) -> None:
    # New ones first: the kernel flushes every route of a link that loses its last IPv4 address.
    for addr in wanted:
        if addr not in have:
            _step("address")
            _add_address(ipr, index, addr)
            undo.add(functools.partial(ipr.addr, "del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen))
    for addr in have - set(wanted):
        _step("address")
        ipr.addr("del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
        undo.add(functools.partial(_add_address, ipr, index, addr))


def _add_address(ipr: IPRoute, index: int, addr: IPInterface) -> None:
    flags = {"flags": IFA_F_NODAD} if addr.version == 6 else {}
    ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen, **flags)


def _sync_routes(ipr: IPRoute, index: int, wanted: list[Route], have: set[Route], undo: _Undo) -> None:
    def route(cmd: str, dst: IPNetwork, gateway: IPAddress | None) -> None:
        try:
            ipr.route(cmd, dst=str(dst), oif=index, table=RT_TABLE_MAIN, proto=RTPROT_STATIC,
                      **({"gateway": str(gateway)} if gateway else {}))
        except NetlinkError as exc:
            if cmd != "del" or exc.code != errno.ESRCH:  # a route the kernel took with its address is gone already
                raise

    for dst, gateway in have - set(wanted):
        _step("route")
        route("del", dst, gateway)
        undo.add(functools.partial(route, "add", dst, gateway))
    for dst, gateway in wanted:
        if (dst, gateway) not in have:
            _step("route")
            # "add", not "replace": a route another interface has to the same destination is
            # the kernel's refusal, not ours to take over.
            route("add", dst, gateway)
            undo.add(functools.partial(route, "del", dst, gateway))


def _parse_addresses(addresses: Sequence[str]) -> list[IPInterface]:
    parsed: list[IPInterface] = []
    for i, text in enumerate(addresses):
        if not isinstance(text, str) or "/" not in text:
            raise ValueError(f"addresses[{i}]: {text!r} is not an address with a prefix length, e.g. '172.16.0.2/30'")
        try:
            parsed.append(ipaddress.ip_interface(text))
        except ValueError as exc:
            raise ValueError(f"addresses[{i}]: {exc}") from None
    return parsed


def _parse_routes(routes: Sequence[tuple[str, str | None]]) -> list[Route]:
    parsed: list[Route] = []
    for i, route in enumerate(routes):
        try:
            dst_text, gateway_text = route
            dst = ipaddress.ip_network(dst_text)
            gateway = ipaddress.ip_address(gateway_text) if gateway_text is not None else None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"routes[{i}]: {route!r} is not (destination CIDR, gateway or None): {exc}") from None
        if gateway is not None and gateway.version != dst.version:
            raise ValueError(f"routes[{i}]: gateway {gateway} is not of the destination's family (IPv{dst.version})")
        parsed.append((dst, gateway))
    return parsed


# --- netns -------------------------------------------------------------------------------------

def _check_netns_name(name: str) -> None:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name:
        raise ValueError(f"netns: {name!r} is not a netns name")


def _existing_netns() -> list[str]:
    return netns.listnetns()


@contextmanager
def _netns_route(name: str) -> Iterator[IPRoute]:
    if name not in _existing_netns():
        raise HostIfaceError(f"netns {name!r} does not exist")
    # Not IPRoute(netns=...): pyroute2 forks a helper to open the socket there, and forking a
    # process whose gRPC threads are busy aborts the child. setns() moves only this thread.
    with _thread_in_netns(name):
        ipr = IPRoute()
    with ipr:
        yield ipr


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


@contextmanager
def _thread_in_netns(name: str) -> Iterator[None]:
    """Run the body in netns `name` on this thread only; sockets opened inside stay there."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    except FileNotFoundError:
        os.close(own)
        raise HostIfaceError(f"netns {name!r} does not exist") from None
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise HostIfaceError(f"netns {name}: setns failed: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:  # a thread stuck in a host's netns must not live on
                os._exit(70)
    finally:
        os.close(own)
        os.close(target)


def _lookup(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None
