"""The host side of a connection: a VLAN subinterface with its addresses and routes, in the
host's named netns.

Synchronous and short: callers run these through asyncio.to_thread, because every IPRoute bound
to a netns forks a helper to open its socket there. Each call converges to the requested state,
so calling it again after a partial failure or a restart is safe.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
from collections.abc import Iterator, Sequence
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


class HostIfaceError(RuntimeError):
    """The kernel refused a change to a host's interfaces; the message names netns and interface."""


def validate_ifname(field: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: an interface name is required")
    if len(value) > IFNAME_MAX:
        raise ValueError(f"{field}: interface name {value!r} has {len(value)} characters; Linux allows {IFNAME_MAX}")
    if value in (".", "..") or any(c in value for c in "/:") or any(c.isspace() for c in value):
        raise ValueError(f"{field}: {value!r} is not a valid interface name (no '/', ':' or spaces)")
    return value


def ensure_vlan_iface(
    netns: str,
    parent: str,
    vlan_id: int,
    name: str,
    addresses: Sequence[str],
    routes: Sequence[tuple[str, str | None]],
    mtu: int | None = None,
    *,
    mode: VlanMode = "auto",
) -> int:
    """Make `name` a VLAN `vlan_id` subinterface of `parent` in `netns`, up, with exactly these
    addresses and these static routes ((destination CIDR, gateway or None)); returns its index.

    mode "auto" uses the kernel's VLAN driver and falls back to the eBPF emulation (vlan_emu)
    where the kernel has none; "native" and "emulated" force one of them.
    """
    _check_netns_name(netns)
    validate_ifname("parent", parent)
    validate_ifname("name", name)
    if isinstance(vlan_id, bool) or not isinstance(vlan_id, int) or not 1 <= vlan_id <= 4094:
        raise ValueError(f"vlan_id: {vlan_id!r} is not a VLAN id (1..4094)")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535):
        raise ValueError(f"mtu: {mtu!r} is not an MTU (68..65535)")
    wanted_addrs = _parse_addresses(addresses)
    wanted_routes = _parse_routes(routes)

    with _netns_route(netns) as ipr:
        parent_index = _lookup(ipr, parent)
        if parent_index is None:
            raise HostIfaceError(f"netns {netns}: parent interface {parent!r} does not exist")
        where = f"netns {netns} iface {name}"
        try:
            index, created = _ensure_link(ipr, netns, parent, parent_index, vlan_id, name, mode)
            if mtu is not None:
                ipr.link("set", index=index, mtu=mtu)
            # A link made just now has nothing to compare with: the dumps would read every
            # address and route of the netns, which grows with its connections.
            _sync_addresses(ipr, index, wanted_addrs, fresh=created)
            ipr.link("set", index=parent_index, state="up")
            ipr.link("set", index=index, state="up")
            _sync_routes(ipr, index, wanted_routes, fresh=created)  # the kernel refuses routes through a down link
        except NetlinkError as exc:
            raise HostIfaceError(f"{where}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
        except FileExistsError as exc:
            raise HostIfaceError(f"{where}: {exc}") from exc
    log.info("vlan iface %s netns=%s iface=%s parent=%s vlan=%d addresses=%s routes=%d",
             "created" if created else "ensured", netns, name, parent, vlan_id,
             ",".join(map(str, wanted_addrs)) or "-", len(wanted_routes))
    return index


def remove_iface(netns: str, name: str) -> bool:
    """Remove interface `name` from `netns`, with what the VLAN emulation attached for it.
    Returns False when there was nothing to remove (no such interface, or no such netns)."""
    _check_netns_name(netns)
    validate_ifname("name", name)
    if netns not in _existing_netns():
        log.debug("remove iface: netns gone netns=%s iface=%s", netns, name)
        return False
    with _netns_route(netns) as ipr:
        try:
            removed = vlan_emu.remove(ipr, name)
        except NetlinkError as exc:
            raise HostIfaceError(f"netns {netns} iface {name}: {exc}") from exc
    log.info("iface %s netns=%s iface=%s", "removed" if removed else "already absent", netns, name)
    return removed


def host_parent_iface(netns: str) -> str:
    """The host's fabric-facing interface: its one interface that is neither loopback nor a
    VLAN subinterface (native or emulated)."""
    _check_netns_name(netns)
    with _netns_route(netns) as ipr:
        candidates = [
            link.get("ifname") for link in ipr.link("dump")
            if link.get("ifname") != "lo" and _link_kind(link) != "vlan" and not vlan_emu.is_emulation_link(link)
        ]
    if len(candidates) != 1:
        raise HostIfaceError(f"netns {netns}: expected one fabric-facing interface, found {candidates or 'none'}; "
                             "pass the parent explicitly")
    return candidates[0]


# --- the link itself ---------------------------------------------------------------------------

_native_vlan_supported: bool | None = None  # learnt from the first attempt, per process


def _ensure_link(ipr: IPRoute, netns: str, parent: str, parent_index: int, vlan_id: int, name: str,
                 mode: VlanMode) -> tuple[int, bool]:
    index = _lookup(ipr, name)
    if index is not None:
        link = ipr.link("get", index=index)[0]
        if _is_native_vlan(link, parent_index, vlan_id) or vlan_emu.matches(ipr, link, parent, parent_index, vlan_id):
            return index, False
        log.warning("iface replaced netns=%s iface=%s reason=not a VLAN %d of %s", netns, name, vlan_id, parent)
        vlan_emu.remove(ipr, name)
    if mode == "native" or (mode == "auto" and _native_vlan_supported is not False):
        index = _add_native(ipr, parent_index, vlan_id, name, required=mode == "native")
        if index is not None:
            return index, True
    return vlan_emu.create(ipr, name, parent, parent_index, vlan_id), True


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
    vlan_emu.quiet_ipv6(ipr, index)
    return index


def _is_native_vlan(link: Any, parent_index: int, vlan_id: int) -> bool:
    return (_link_kind(link) == "vlan" and link.get("link") == parent_index
            and link.get(("linkinfo", "data", "vlan_id")) == vlan_id)


def _link_kind(link: Any) -> str | None:
    return link.get(("linkinfo", "kind"))


# --- addresses and routes ----------------------------------------------------------------------

def _sync_addresses(ipr: IPRoute, index: int, wanted: list[IPInterface], fresh: bool) -> None:
    have: set[IPInterface] = set()
    for msg in () if fresh else ipr.addr("dump"):
        if msg["index"] != index:
            continue
        addr = ipaddress.ip_interface(f"{msg.get('address')}/{msg['prefixlen']}")
        if not (addr.version == 6 and addr.ip.is_link_local):
            have.add(addr)
    for addr in have - set(wanted):
        ipr.addr("del", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
    for addr in wanted:
        if addr not in have:
            flags = {"flags": IFA_F_NODAD} if addr.version == 6 else {}
            ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen, **flags)


def _sync_routes(ipr: IPRoute, index: int, wanted: list[Route], fresh: bool) -> None:
    have: set[Route] = set()
    for family, any_addr in () if fresh else ((AF_INET, "0.0.0.0"), (AF_INET6, "::")):
        for msg in ipr.route("dump", family=family):
            if msg.get("oif") != index or msg.get("proto") != RTPROT_STATIC or msg.get("table") != RT_TABLE_MAIN:
                continue
            gateway = msg.get("gateway")
            have.add((ipaddress.ip_network(f"{msg.get('dst') or any_addr}/{msg['dst_len']}"),
                      ipaddress.ip_address(gateway) if gateway else None))
    for dst, gateway in have - set(wanted):
        ipr.route("del", dst=str(dst), oif=index, table=RT_TABLE_MAIN, proto=RTPROT_STATIC,
                  **({"gateway": str(gateway)} if gateway else {}))
    for dst, gateway in wanted:
        ipr.route("replace", dst=str(dst), oif=index, table=RT_TABLE_MAIN, proto=RTPROT_STATIC,
                  **({"gateway": str(gateway)} if gateway else {}))


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
