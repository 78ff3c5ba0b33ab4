"""802.1Q subinterfaces on kernels built without the VLAN driver (CONFIG_VLAN_8021Q unset, as on
some microVM kernels), where `ip link add ... type vlan` fails with EOPNOTSUPP.

The subinterface is one end of a veth pair inside the host's netns; two tc eBPF programs do what
the VLAN driver would:
  - on the parent's ingress (one filter per VLAN, prio = VLAN id): a frame tagged with the VLAN
    loses its tag and is redirected to the pair's inner end, so it arrives on the subinterface;
  - on the inner end's ingress: what the subinterface sends gets the tag and leaves by the parent.
The kernel moves a received 802.1Q tag into skb metadata whether or not the driver is built, so
the programs read it from `__sk_buff.vlan_tci`, and raw sockets (scapy, the softswitch) still see
it through PACKET_AUXDATA.

The programs are a few hand-assembled instructions (see controller.host.ebpf).
"""

from __future__ import annotations

import errno
import os
import re
import zlib
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETTFILTER
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from controller.host.ebpf import (
    AND64_IMM,
    CALL,
    EXIT,
    JEQ_IMM,
    JNE_IMM,
    LDX_W,
    MOV64_IMM,
    MOV64_REG,
    TC_ACT_SHOT,
    TC_ACT_UNSPEC,
    insn,
    load_program,
)

ALIAS_PREFIX = "p4nsm-vlan"
FILTER_PREFIX = "p4nsm:"
TC_INGRESS = 0xFFFFFFF2  # clsact/ingress qdisc, ingress hook
INNER_PRIO = 1
IN6_ADDR_GEN_MODE_NONE = 1

_SKB_VLAN_PRESENT, _SKB_VLAN_TCI = 20, 24  # offsets in struct __sk_buff
_HELPER_VLAN_PUSH, _HELPER_VLAN_POP, _HELPER_REDIRECT = 18, 19, 23
_ETH_P_8021Q_BE = 0x0081  # htons(0x8100) on a little-endian host, as bpf_skb_vlan_push wants


_INNER_RE = re.compile(r"nsv[0-9a-f]{8}")


def inner_name(name: str) -> str:
    """The veth end that carries the subinterface's traffic to and from the programs."""
    return f"nsv{zlib.crc32(name.encode()):08x}"


def is_inner_name(name: str) -> bool:
    return _INNER_RE.fullmatch(name) is not None


def alias(parent: str, vlan_id: int, mark: str) -> str:
    """The subinterface's alias: what remove() needs to find its filter, then its owner's mark."""
    return f"{ALIAS_PREFIX} parent={parent} vid={vlan_id} {mark}"


def _inner_alias(name: str) -> str:
    return f"{ALIAS_PREFIX}-inner of={name}"


def is_emulation_link(link: Any) -> bool:
    return (link.get("ifalias") or "").startswith(ALIAS_PREFIX)


def mark_in(alias_text: str) -> str | None:
    """The owner's mark in an emulated subinterface's alias; None for any other alias."""
    match = _ALIAS_RE.fullmatch(alias_text)
    return match.group(3) if match is not None else None


def create(ipr: IPRoute, name: str, parent: str, parent_index: int, vlan_id: int, mark: str,
           step: Callable[[str], None] = lambda _: None) -> int:
    """Create the subinterface `name` (down, no addresses), marked `mark`, and its programs;
    returns its index. A failure part-way removes what was made."""
    inner = inner_name(name)
    _drop_stale_parent_filter(ipr, parent_index, vlan_id, name)
    ipr.link("add", ifname=name, kind="veth", peer=inner)
    try:
        index = ipr.link_lookup(ifname=name)[0]
        inner_index = ipr.link_lookup(ifname=inner)[0]
        step("mark")
        ipr.link("set", index=index, ifalias=alias(parent, vlan_id, mark))
        ipr.link("set", index=inner_index, ifalias=_inner_alias(name))
        quiet_ipv6(ipr, index)
        quiet_ipv6(ipr, inner_index)
        ipr.link("set", index=inner_index, state="up")
        ensure_clsact(ipr, parent_index)
        ensure_clsact(ipr, inner_index)
        step("filters")
        attach_filter(ipr, inner_index, INNER_PRIO, name, _push_program(vlan_id, parent_index))
        attach_filter(ipr, parent_index, vlan_id, name, _pop_program(vlan_id, inner_index))
    except BaseException:
        if _filter_name_at(ipr, parent_index, vlan_id) == FILTER_PREFIX + name:
            delete_filter(ipr, parent_index, vlan_id)
        for ifname in (name, inner):
            _delete_link(ipr, ifname)
        raise
    return index


def quiet_ipv6(ipr: IPRoute, index: int) -> None:
    """No IPv6 link-local address on a new link, set before it goes up: no DAD, router
    solicitations or MLD reports of our own into the fabric, where they would count on the
    connection's counters. Explicitly assigned IPv6 addresses still work."""
    try:
        ipr.link("set", index=index, IFLA_AF_SPEC={"attrs": [["AF_INET6", {"attrs": [
            ["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}]]})
    except NetlinkError as exc:
        if exc.code not in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):  # IPv6 disabled in this netns
            raise


def matches(ipr: IPRoute, link: Any, parent: str, parent_index: int, vlan_id: int) -> bool:
    found = _ALIAS_RE.fullmatch(link.get("ifalias") or "")
    if found is None or (found.group(1), int(found.group(2))) != (parent, vlan_id):
        return False
    return _filter_name_at(ipr, parent_index, vlan_id) == FILTER_PREFIX + link.get("ifname")


_ALIAS_RE = re.compile(re.escape(ALIAS_PREFIX) + r" parent=(\S+) vid=(\d+)(?: (.*))?", re.DOTALL)


def remove(ipr: IPRoute, name: str) -> bool:
    """Remove the subinterface's parent filter and its veth pair; True if anything was there.

    The link's alias names the parent and the VLAN, so this touches one filter and two links
    whatever the number of subinterfaces (a scan of every link's filters made Close O(n)). A
    filter whose link is already gone is left to the next create of its VLAN, which replaces it."""
    found = False
    try:
        links = ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        links = ()
    match = _ALIAS_RE.fullmatch(links[0].get("ifalias") or "") if links else None
    if match is not None:
        parent_index = ipr.link_lookup(ifname=match.group(1))
        vlan_id = int(match.group(2))
        if parent_index and _filter_name_at(ipr, parent_index[0], vlan_id) == FILTER_PREFIX + name:
            delete_filter(ipr, parent_index[0], vlan_id)
            found = True
    found = _delete_link(ipr, name) or found
    # The inner end only when it is this subinterface's: a link of that name and another alias
    # is someone else's.
    inner = ipr.link_lookup(ifname=inner_name(name))
    if inner and (ipr.link("get", index=inner[0])[0].get("ifalias") or "") == _inner_alias(name):
        found = _delete_link(ipr, inner_name(name)) or found
    return found


def _drop_stale_parent_filter(ipr: IPRoute, parent_index: int, vlan_id: int, name: str) -> None:
    owner = _filter_name_at(ipr, parent_index, vlan_id)
    if owner is None:
        return
    if not owner.startswith(FILTER_PREFIX):
        raise FileExistsError(f"vlan {vlan_id} on this parent has a filter p4nsm did not attach ({owner!r})")
    owner_iface = owner.removeprefix(FILTER_PREFIX)
    if owner_iface != name and ipr.link_lookup(ifname=owner_iface):
        raise FileExistsError(f"vlan {vlan_id} on this parent is already used by {owner_iface}")
    delete_filter(ipr, parent_index, vlan_id)


def _filter_name_at(ipr: IPRoute, index: int, prio: int) -> str | None:
    """The program name of the bpf filter at `prio` on the ingress hook of `index`, or None. The
    kernel narrows the dump to that prio, so the cost does not grow with the number of VLANs."""
    msg = tcmsg()
    msg["family"] = 0
    msg["index"] = index
    msg["parent"] = TC_INGRESS
    msg["info"] = prio << 16
    try:
        # pyroute2 0.9's tc() cannot set tcm_info and its sync nlm_request() fails
        # (KeyError 'nlm_generator'), so the dump goes through the async core it wraps.
        replies = ipr._run_force_sync(ipr.asyncore.nlm_request, msg, RTM_GETTFILTER)
    except NetlinkError as exc:
        if exc.code in (errno.EINVAL, errno.ENOENT, errno.ENODEV):
            return None
        raise
    for reply in replies:
        options = reply.get_attr("TCA_OPTIONS")
        if reply.get_attr("TCA_KIND") == "bpf" and reply["info"] >> 16 == prio and options is not None:
            return options.get_attr("TCA_BPF_NAME") or ""
    return None


def ensure_clsact(ipr: IPRoute, index: int) -> None:
    try:
        ipr.tc("add", "clsact", index=index)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def attach_filter(ipr: IPRoute, index: int, prio: int, name: str, program: bytes, parent: int = TC_INGRESS) -> None:
    fd = load_program(program, name)
    try:
        ipr.tc("add-filter", "bpf", index=index, handle=1, fd=fd, name=FILTER_PREFIX + name,
               parent=parent, prio=prio, direct_action=True)
    finally:
        os.close(fd)  # the filter holds its own reference to the program


def delete_filter(ipr: IPRoute, index: int, prio: int, parent: int = TC_INGRESS) -> None:
    try:
        ipr.tc("del-filter", "bpf", index=index, parent=parent, prio=prio)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            raise


def _delete_link(ipr: IPRoute, ifname: str) -> bool:
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        return False
    try:
        ipr.link("del", index=indexes[0])
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:  # the veth peer went with its pair
            raise
    return True


# --- the programs -----------------------------------------------------------------------------

def _pop_program(vlan_id: int, inner_index: int) -> bytes:
    return b"".join([
        insn(MOV64_REG, 6, 1),                           # r6 = skb
        insn(LDX_W, 2, 6, _SKB_VLAN_PRESENT),
        insn(JEQ_IMM, 2, 0, 9, 0),                       # untagged: not ours
        insn(LDX_W, 2, 6, _SKB_VLAN_TCI),
        insn(AND64_IMM, 2, imm=0xFFF),
        insn(JNE_IMM, 2, 0, 6, vlan_id),                 # another VLAN: not ours
        insn(MOV64_REG, 1, 6),
        insn(CALL, imm=_HELPER_VLAN_POP),
        insn(MOV64_IMM, 1, imm=inner_index),
        insn(MOV64_IMM, 2, imm=0),
        insn(CALL, imm=_HELPER_REDIRECT),                # out of the inner end, into the subinterface
        insn(EXIT),
        insn(MOV64_IMM, 0, imm=TC_ACT_UNSPEC),           # not ours: the next filter decides
        insn(EXIT),
    ])


def _push_program(vlan_id: int, parent_index: int) -> bytes:
    return b"".join([
        insn(MOV64_IMM, 2, imm=_ETH_P_8021Q_BE),         # r1 is still skb
        insn(MOV64_IMM, 3, imm=vlan_id),
        insn(CALL, imm=_HELPER_VLAN_PUSH),
        insn(JNE_IMM, 0, 0, 4, 0),                       # push failed: drop
        insn(MOV64_IMM, 1, imm=parent_index),
        insn(MOV64_IMM, 2, imm=0),
        insn(CALL, imm=_HELPER_REDIRECT),                # out of the parent, tagged
        insn(EXIT),
        insn(MOV64_IMM, 0, imm=TC_ACT_SHOT),
        insn(EXIT),
    ])
