"""A fabric link as a cable with ends of its own: `sA-ethP <veth> wire end a ==tc== wire end b <veth> sB-ethQ`.

Each wire end's tc ingress hands every frame to the other end's egress (an eBPF bpf_redirect:
these kernels have no matchall classifier), so the two switch ports see each other as over one
veth pair. A port failure then takes the wire end down: the switch port loses carrier and stays
administratively up, as a port whose cable is pulled does.

Why not `ip link set sA-ethP down` as for the softswitch: BMv2 (simple_switch_grpc 1.15.5)
receives on all its ports in one thread (BMI's select loop), and while one of its own interfaces
is administratively down that thread receives nothing on any port; frames queue in the kernel and
arrive in one burst when the interface comes back up. A carrier loss alone does not do that.
"""

from __future__ import annotations

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from controller.host import ebpf, vlan_emu

_HELPER_REDIRECT = 23  # bpf_redirect(ifindex, flags): to the egress of ifindex
_PRIO = 1


def wire_ends(index: int) -> tuple[str, str]:
    """The names of link `index`'s wire ends (short: a switch's own names take up to 15 characters)."""
    return f"p4w{index}a", f"p4w{index}b"


def _redirect_to(ifindex: int) -> bytes:
    return (ebpf.insn(ebpf.MOV64_IMM, 1, imm=ifindex) + ebpf.insn(ebpf.MOV64_IMM, 2, imm=0)
            + ebpf.insn(ebpf.CALL, imm=_HELPER_REDIRECT) + ebpf.insn(ebpf.EXIT))


def join(end_a: str, end_b: str) -> None:
    """Whatever arrives at one end leaves by the other (idempotent)."""
    with IPRoute() as ipr:
        ia, ib = ipr.link_lookup(ifname=end_a)[0], ipr.link_lookup(ifname=end_b)[0]
        for here, there, name in ((ia, ib, end_a), (ib, ia, end_b)):
            vlan_emu.ensure_clsact(ipr, here)
            try:
                vlan_emu.attach_filter(ipr, here, _PRIO, f"wire_{name}", _redirect_to(there))
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise


def set_end_up(end: str, up: bool) -> None:
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=end)[0], state="up" if up else "down")
