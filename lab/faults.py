"""Faults to inject into a running lab that Mininet has no verb for.

A silent link cut: every frame leaving either end of a link is dropped by a tc eBPF program on
the interfaces' egress hook, while carrier stays up; the kernels here have no netem, but clsact
and eBPF are there. Egress, not ingress: AF_PACKET taps see a received frame before tc ingress
runs, so only dropping at the sender hides it from the peer switch's raw socket.

`SilentCut` cuts several interfaces at one instant: cutting them one by one takes a few ms each
(tens on a loaded machine), and meanwhile the switches see some of the links fail before others,
which is a different failure from the one a test means to make.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from controller.host import ebpf, vlan_emu

TC_EGRESS = 0xFFFFFFF3
_CUT_PRIO, _GROUP_PRIO = 1, 2
_DROP_ALL = ebpf.insn(ebpf.MOV64_IMM, 0, imm=ebpf.TC_ACT_SHOT) + ebpf.insn(ebpf.EXIT)


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


class SilentCut:
    """A silent cut of `ifnames` that starts and ends everywhere at once. `install` puts a filter
    on each interface that drops what it sends while a shared flag is set (it starts clear);
    `set` flips the flag with one syscall; `remove` takes the filters away."""

    def __init__(self, ifnames: Iterable[str]) -> None:
        self.ifnames = list(ifnames)
        self._flag: int | None = None

    def install(self) -> None:
        """All filters or none: a failure takes back what was installed."""
        self._flag = ebpf.create_flag_map()
        try:
            with IPRoute() as ipr:
                for ifname in self.ifnames:
                    index = _index(ipr, ifname)
                    vlan_emu.ensure_clsact(ipr, index)
                    vlan_emu.attach_filter(ipr, index, _GROUP_PRIO, f"cutgroup_{ifname}", _flagged_drop(self._flag),
                                           parent=TC_EGRESS)
        except BaseException:
            self.remove()
            raise

    def set(self, on: bool) -> None:
        if self._flag is None:
            raise RuntimeError("SilentCut.set before install")
        ebpf.set_flag(self._flag, int(on))

    def remove(self) -> None:
        with IPRoute() as ipr:
            for ifname in self.ifnames:
                if found := ipr.link_lookup(ifname=ifname):
                    vlan_emu.delete_filter(ipr, found[0], _GROUP_PRIO, parent=TC_EGRESS)
        if self._flag is not None:
            os.close(self._flag)  # the filters held the map through their programs; they are gone
            self._flag = None

    def __enter__(self) -> SilentCut:
        self.install()
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()


def _flagged_drop(flag_fd: int) -> bytes:
    """Drop while slot 0 of the flag map is non-zero; otherwise let the next filter decide."""
    return b"".join([
        ebpf.load_map_fd(1, flag_fd),                       # r1 = the map (two slots)
        ebpf.insn(ebpf.ST_W, ebpf.R10, off=-4, imm=0),      # key 0, on the stack
        ebpf.insn(ebpf.MOV64_REG, 2, ebpf.R10),
        ebpf.insn(ebpf.ADD64_IMM, 2, imm=-4),               # r2 = &key
        ebpf.insn(ebpf.CALL, imm=ebpf.HELPER_MAP_LOOKUP_ELEM),
        ebpf.insn(ebpf.JEQ_IMM, 0, off=4, imm=0),           # no slot: pass
        ebpf.insn(ebpf.LDX_W, 0, 0),
        ebpf.insn(ebpf.JEQ_IMM, 0, off=2, imm=0),           # flag clear: pass
        ebpf.insn(ebpf.MOV64_IMM, 0, imm=ebpf.TC_ACT_SHOT),
        ebpf.insn(ebpf.EXIT),
        ebpf.insn(ebpf.MOV64_IMM, 0, imm=ebpf.TC_ACT_UNSPEC),
        ebpf.insn(ebpf.EXIT),
    ])


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname!r}")
    return found[0]
