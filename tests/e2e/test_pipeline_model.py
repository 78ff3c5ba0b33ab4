"""The pipeline's semantics on frames, against nsm_fabric.p4's apply block (no root needed).

Each test drives `Pipeline.receive` with a frame as a port hands it over and looks at what
the fake port sockets were given.

Softswitch only: `Pipeline` is the softswitch's own model of the program; BMv2 runs p4c's build
of the same program in the fabric, heal and NSM suites.
"""

from __future__ import annotations

import pytest
from scapy.contrib.mpls import MPLS
from scapy.layers.l2 import Dot1Q, Ether

from softswitch.model import (
    ActionCall,
    DataplaneState,
    Entry,
    Member,
    RuntimeProfile,
    RuntimeTable,
)
from softswitch.pipeline import Pipeline
from softswitch.ports import Port, Ports

P = "FabricIngress."
CPU_PORT = 255
HOST_A, HOST_B, FABRIC_1, FABRIC_2 = 1, 2, 3, 4
SRC, DST = "02:00:00:00:00:01", "02:00:00:00:00:02"
PAYLOAD = b"p4nsm-model-" + bytes(range(40))


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> int:
        self.sent.append(bytes(frame))
        return len(frame)


def call(name: str, *args: int) -> ActionCall:
    return ActionCall(P + name, tuple(args))


def make_state() -> DataplaneState:
    def table(name: str, default: str) -> RuntimeTable:
        return RuntimeTable(P + name, True, ActionCall(default if default == "NoAction" else P + default))

    tables = {
        P + "fabric_ports": table("fabric_ports", "NoAction"),
        P + "edge_classify": table("edge_classify", "drop"),
        P + "label_group": table("label_group", "NoAction"),
        P + "label_fwd": table("label_fwd", "drop"),
    }
    return DataplaneState(
        tables=tables,
        profiles={P + "next_hop_selector": RuntimeProfile(P + "next_hop_selector")},
        table_profile={P + "label_group": P + "next_hop_selector"},
        packet_metadata={"packet_in": [("ingress_port", 9), ("_pad", 7)], "packet_out": [("egress_port", 9), ("_pad", 7)]},
    )


class Rig:
    def __init__(self) -> None:
        self.ports = Ports(1, [(HOST_A, "a"), (HOST_B, "b"), (FABRIC_1, "f1"), (FABRIC_2, "f2")])
        self.sockets: dict[int, FakeSocket] = {}
        for number, port in self.ports.by_number.items():
            port.sock = self.sockets[number] = FakeSocket()  # type: ignore[assignment]
            port.up = True
        self.punted: list[tuple[bytes, dict[str, int]]] = []
        self.pipeline = Pipeline(1, CPU_PORT, self.ports, lambda p, m: self.punted.append((p, m)))
        self.state = make_state()
        self.pipeline.load(self.state, "nsm_fabric")

    def table(self, name: str) -> RuntimeTable:
        return self.state.tables[P + name]

    def add(self, name: str, key: tuple[int, ...], action: ActionCall) -> Entry:
        entry = self.table(name).exact[key] = Entry(action=action)
        return entry

    def port(self, number: int) -> Port:
        return self.ports.by_number[number]

    def rx(self, number: int, frame: bytes, stripped: bool = True) -> None:
        """Deliver a frame as the kernel does: an outer 802.1Q tag set aside when stripped."""
        tci = -1
        if stripped and len(frame) >= 18 and frame[12:14] == b"\x81\x00":
            tci = int.from_bytes(frame[14:16], "big")
            frame = frame[:12] + frame[16:]
        self.pipeline.receive(self.port(number), frame, tci)

    def sent(self) -> dict[int, list[bytes]]:
        out = {n: s.sent[:] for n, s in self.sockets.items() if s.sent}
        for s in self.sockets.values():
            s.sent.clear()
        return out


def host_frame(vid: int, pcp: int = 0) -> bytes:
    return bytes(Ether(src=SRC, dst=DST) / Dot1Q(vlan=vid, prio=pcp) / PAYLOAD)


def fabric_frame(label: int, vid: int, ttl: int = 64, tc: int = 0) -> bytes:
    return bytes(Ether(src=SRC, dst=DST, type=0x8847) / MPLS(label=label, ttl=ttl, s=1, cos=tc) / Dot1Q(vlan=vid) / PAYLOAD)


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.mark.parametrize("stripped", [True, False])
def test_head_end_pushes_label_keeps_tag_and_counts(rig: Rig, stripped: bool) -> None:
    entry = rig.add("edge_classify", (HOST_A, 100), call("push_label", 5000))
    rig.add("label_fwd", (5000,), call("forward", FABRIC_1))
    frame = host_frame(100, pcp=5)
    rig.rx(HOST_A, frame, stripped)
    out = rig.sent()
    assert list(out) == [FABRIC_1]
    pkt = Ether(out[FABRIC_1][0])
    assert pkt.type == 0x8847
    assert (pkt[MPLS].label, pkt[MPLS].cos, pkt[MPLS].s, pkt[MPLS].ttl) == (5000, 5, 1, 63)
    assert bytes(pkt[MPLS].payload) == frame[14:]
    assert (entry.packets, entry.bytes) == (1, len(frame))


def test_push_then_pop_on_one_switch(rig: Rig) -> None:
    rig.add("edge_classify", (HOST_A, 100), call("push_label", 5000))
    rig.add("label_fwd", (5000,), call("pop_to_edge", HOST_B, 200))
    rig.rx(HOST_A, host_frame(100, pcp=3))
    out = rig.sent()
    assert out == {HOST_B: [host_frame(200, pcp=3)]}


def test_transit_swap_and_tail_pop(rig: Rig) -> None:
    rig.add("fabric_ports", (FABRIC_1,), call("mark_fabric"))
    rig.add("label_fwd", (5000,), call("swap_forward", 6000, FABRIC_2))
    rig.add("label_fwd", (7000,), call("pop_to_edge", HOST_B, 300))
    rig.rx(FABRIC_1, fabric_frame(5000, 100, ttl=10, tc=2))
    rig.rx(FABRIC_1, fabric_frame(7000, 100, ttl=10))
    out = rig.sent()
    assert out[FABRIC_2] == [fabric_frame(6000, 100, ttl=9, tc=2)]
    assert out[HOST_B] == [host_frame(300)]


def test_mpls_dropped_from_host_port_and_when_ttl_expires(rig: Rig) -> None:
    rig.add("fabric_ports", (FABRIC_1,), call("mark_fabric"))
    rig.add("label_fwd", (5000,), call("forward", FABRIC_2))
    rig.rx(HOST_A, fabric_frame(5000, 100))          # not a fabric port
    rig.rx(FABRIC_1, fabric_frame(5000, 100, ttl=0))  # expired on arrival
    rig.rx(FABRIC_1, fabric_frame(5000, 100, ttl=1))  # expires in forward
    assert rig.sent() == {}
    rig.rx(FABRIC_1, fabric_frame(5000, 100, ttl=2))
    assert list(rig.sent()) == [FABRIC_2]
    assert rig.port(HOST_A).drops == 1 and rig.port(FABRIC_1).drops == 2


def test_unmatched_and_malformed_frames_are_dropped(rig: Rig) -> None:
    rig.add("fabric_ports", (FABRIC_1,), call("mark_fabric"))
    rig.add("edge_classify", (HOST_A, 100), call("push_label", 5000))
    rig.add("label_fwd", (5000,), call("forward", FABRIC_1))
    rig.rx(HOST_A, host_frame(101))                                   # unknown VLAN
    rig.rx(HOST_B, host_frame(100))                                   # VLAN known on another port
    rig.rx(HOST_A, bytes(Ether(src=SRC, dst=DST, type=0x0800) / PAYLOAD))  # untagged
    rig.rx(HOST_A, bytes(Ether(src=SRC, dst=DST, type=0x88A8) / Dot1Q(vlan=100) / PAYLOAD))  # 802.1ad
    rig.rx(FABRIC_1, fabric_frame(5000, 100)[:20])                    # MPLS without its 802.1Q
    rig.rx(HOST_A, host_frame(100)[:17], stripped=False)              # 802.1Q cut short
    rig.rx(HOST_A, b"\x01\x02\x03")                                   # not even Ethernet
    rig.rx(HOST_A, bytes(Ether(src=SRC, dst=DST, type=0x8847) / MPLS(label=5000)), stripped=False)
    rig.rx(FABRIC_1, fabric_frame(9999, 100))                         # no label entry
    assert rig.sent() == {}
    rig.rx(HOST_A, host_frame(100))
    assert list(rig.sent()) == [FABRIC_1]


def test_edge_drop_action_and_label_drop_action(rig: Rig) -> None:
    rig.add("edge_classify", (HOST_A, 100), call("drop"))
    rig.add("edge_classify", (HOST_A, 101), call("push_label", 5001))
    rig.add("label_fwd", (5001,), call("drop"))
    rig.rx(HOST_A, host_frame(100))
    rig.rx(HOST_A, host_frame(101))
    assert rig.sent() == {}


def test_probe_is_punted_never_forwarded(rig: Rig) -> None:
    probe = bytes(Ether(src=SRC, dst=DST, type=0x88B5) / PAYLOAD)
    rig.rx(FABRIC_2, probe)
    assert rig.sent() == {}
    assert rig.punted == [(probe, {"ingress_port": FABRIC_2, "_pad": 0})]


def test_group_follows_watch_ports(rig: Rig) -> None:
    rig.add("edge_classify", (HOST_A, 100), call("push_label", 5000))
    rig.add("label_fwd", (5000,), call("forward", HOST_B))  # must be shadowed by the group
    profile = rig.state.profiles[P + "next_hop_selector"]
    profile.members[1] = Member(call("swap_forward", 6001, FABRIC_1), watch_port=FABRIC_1)
    profile.members[2] = Member(call("swap_forward", 6002, FABRIC_2), watch_port=FABRIC_2)
    profile.groups[10] = [(1, 1), (2, 1)]
    rig.table("label_group").exact[(5000,)] = Entry(group_id=10)
    rig.rx(HOST_A, host_frame(100))
    chosen = next(iter(rig.sent()))
    other = FABRIC_2 if chosen == FABRIC_1 else FABRIC_1
    rig.port(chosen).up = False
    rig.rx(HOST_A, host_frame(100))
    out = rig.sent()
    assert list(out) == [other]
    assert MPLS in Ether(out[other][0]) and Ether(out[other][0])[MPLS].label == 6000 + other - 2
    rig.port(other).up = False
    rig.rx(HOST_A, host_frame(100))
    assert rig.sent() == {}  # the group hit: label_fwd is not consulted


def test_packet_out_goes_to_its_port_unchanged(rig: Rig) -> None:
    frame = bytes(Ether(src=SRC, dst=DST, type=0x88B5) / PAYLOAD)
    rig.pipeline.packet_out(frame, {"egress_port": FABRIC_2, "_pad": 0})
    rig.pipeline.packet_out(frame, {"egress_port": CPU_PORT, "_pad": 0})
    rig.pipeline.packet_out(frame, {"egress_port": 77, "_pad": 0})
    rig.pipeline.packet_out(frame[:10], {"egress_port": FABRIC_2, "_pad": 0})
    assert rig.sent() == {FABRIC_2: [frame]}


def test_no_program_drops_everything(rig: Rig) -> None:
    rig.pipeline.load(None, "generic")
    rig.rx(HOST_A, host_frame(100))
    rig.rx(HOST_A, bytes(Ether(src=SRC, dst=DST, type=0x88B5) / PAYLOAD))
    assert rig.sent() == {} and rig.punted == []
