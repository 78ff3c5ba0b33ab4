"""Faults to inject into a running lab that Mininet has no verb for.

A silent link cut: every frame leaving either end of a link is dropped by a tc eBPF program on
the interfaces' egress hook, while carrier stays up; the kernels here have no netem, but clsact
and eBPF are there. Egress, not ingress: AF_PACKET taps see a received frame before tc ingress
runs, so only dropping at the sender hides it from the peer switch's raw socket.
"""

from __future__ import annotations

import errno
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from controller.host import vlan_emu

TC_EGRESS = 0xFFFFFFF3
_CUT_PRIO = 1
_DROP_ALL = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = TC_ACT_SHOT; exit


def cut(ifname: str) -> None:
    """Drop everything `ifname` sends (idempotent)."""
    with IPRoute() as ipr:
        index = _index(ipr, ifname)
        vlan_emu.ensure_clsact(ipr, index)
        try:
            vlan_emu.attach_filter(ipr, index, _CUT_PRIO, f"cut_{ifname}", _DROP_ALL, parent=TC_EGRESS)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


def mend(ifname: str) -> None:
    """Remove the cut (idempotent)."""
    with IPRoute() as ipr:
        vlan_emu.delete_filter(ipr, _index(ipr, ifname), _CUT_PRIO, parent=TC_EGRESS)


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname!r}")
    return found[0]
