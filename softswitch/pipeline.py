"""The nsm_fabric ingress (p4/nsm_fabric.p4) on raw Ethernet frames.

Every commit compiles the committed DataplaneState into one closure: tables are found by
name and actions mapped to small integer codes once, so that a frame costs a few dict lookups,
integer operations, one frame build and one send. Table contents are read live through the
RuntimeTable objects, which the P4Runtime server mutates between two frames.

Frame layouts (offsets in bytes):
  host link   dst(6) src(6) 0x8100 tci(2) type(2) payload
  fabric link dst(6) src(6) 0x8847 mpls(4) tci(2) type(2) payload
The kernel hands most VLAN frames over without their tag (see softswitch.ports); the pipeline
takes the TCI beside such a frame, so "rest" (from the inner type on) starts at offset 12
there, at 16 in a tagged frame and at 20 behind MPLS.
"""

from __future__ import annotations

import logging
import struct
import time
from binascii import crc_hqx
from collections.abc import Callable

from softswitch.model import (
    ActionCall,
    DataplaneState,
    Entry,
    RuntimeProfile,
    RuntimeTable,
)
from softswitch.ports import FrameHandler, Port, Ports

log = logging.getLogger("softswitch.pipeline")

ETHERTYPE_VLAN = 0x8100
ETHERTYPE_MPLS = 0x8847
ETHERTYPE_PROBE = 0x88B5
MPLS_INITIAL_TTL = 64
INGRESS_TS_BITS = 48

ETH_LEN = 14
VLAN_FRAME_LEN = ETH_LEN + 4
MPLS_FRAME_LEN = ETH_LEN + 4 + 4

# Action codes: what the compiled closure branches on.
NO_ACTION, DROP, MARK_FABRIC, PUSH_LABEL, FORWARD, SWAP_FORWARD, POP_TO_EDGE = range(7)
_ACTION_CODES = {
    "NoAction": NO_ACTION,
    "drop": DROP,
    "mark_fabric": MARK_FABRIC,
    "push_label": PUSH_LABEL,
    "forward": FORWARD,
    "swap_forward": SWAP_FORWARD,
    "pop_to_edge": POP_TO_EDGE,
}
TABLES = ("fabric_ports", "edge_classify", "label_group", "label_fwd")

_MPLS_OUT = struct.Struct("!HIH")   # 0x8847, label|tc|bos|ttl, tci
_VLAN_OUT = struct.Struct("!HH")    # 0x8100, tci
_MPLS_IN = struct.Struct("!IH")     # label|tc|bos|ttl, tci
_U16 = struct.Struct("!H")

PacketIn = Callable[[bytes, dict[str, int]], None]


def _bare(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def parses(frame: bytes) -> bool:
    """Whether FabricParser accepts the frame (its headers fit), for frames not from a port."""
    n = len(frame)
    if n < ETH_LEN:
        return False
    ether_type = _U16.unpack_from(frame, 12)[0]
    if ether_type == ETHERTYPE_MPLS:
        return n >= MPLS_FRAME_LEN
    if ether_type == ETHERTYPE_VLAN:
        return n >= VLAN_FRAME_LEN
    return True


class FabricTables:
    """The four fabric tables, the selector's profile and action codes of one committed program."""

    def __init__(self, state: DataplaneState) -> None:
        tables = {_bare(name): table for name, table in state.tables.items()}
        missing = [t for t in TABLES if t not in tables]
        if missing:
            raise LookupError(f"not the nsm_fabric program: no table {', '.join(missing)}")
        self.fabric_ports: RuntimeTable = tables["fabric_ports"]
        self.edge_classify: RuntimeTable = tables["edge_classify"]
        self.label_group: RuntimeTable = tables["label_group"]
        self.label_fwd: RuntimeTable = tables["label_fwd"]
        group_profile = state.table_profile.get(self.label_group.name)
        profile = state.profiles.get(group_profile) if group_profile else None
        if profile is None:
            raise LookupError("label_group has no action selector")
        self.selector: RuntimeProfile = profile
        # Entries name actions as the P4Info does ("FabricIngress.push_label"); the control's
        # prefix is taken from the tables so that another architecture's naming works too.
        prefix = self.edge_classify.name[: -len("edge_classify")]
        self.action_codes: dict[str, int] = {}
        for bare, code in _ACTION_CODES.items():
            self.action_codes[prefix + bare] = code
            self.action_codes[bare] = code
        fields = dict(state.packet_metadata.get("packet_in", ()))
        if "ingress_port" not in fields:
            raise LookupError("no packet_in header with ingress_port")
        self.packet_in_fields = {name: 0 for name in fields}
        # v1model's ingress_global_timestamp: microseconds, here of CLOCK_MONOTONIC (the clock the
        # controller's probes carry), when the frame reached the port (softswitch.ports: the
        # kernel's receive time; the moment it is handled if that is unknown). Only the P4Infos
        # that declare it get it.
        self.stamps_ingress = fields.get("ingress_ts") == INGRESS_TS_BITS


class Pipeline:
    """Runs the committed program on frames from `ports`; `load` is the server's on_commit."""

    def __init__(self, device_id: int, cpu_port: int, ports: Ports, packet_in: PacketIn) -> None:
        self.device_id = device_id
        self.cpu_port = cpu_port
        self.ports = ports
        self.packet_in = packet_in
        self.program = ""
        self.fabric: FabricTables | None = None
        # Egress ports a frame may leave on: the CPU port only ever receives packet-ins.
        self._egress = {n: p for n, p in ports.by_number.items() if n != cpu_port}
        self.receive: FrameHandler = self._drop_all
        ports.on_frame = self.receive

    def load(self, state: DataplaneState | None, program: str) -> None:
        self.program = program
        self.fabric = None
        if state is None:
            log.info("event=pipeline_committed device=%d program=%s forwarding=no reason=control_plane_only",
                     self.device_id, program)
        else:
            try:
                self.fabric = FabricTables(state)
            except LookupError as err:
                log.error("event=pipeline_committed device=%d program=%s forwarding=no reason=%r",
                          self.device_id, program, str(err))
        self.receive = self._compile(self.fabric) if self.fabric is not None else self._drop_all
        self.ports.on_frame = self.receive
        if self.fabric is not None:
            log.info("event=pipeline_committed device=%d program=%s forwarding=yes", self.device_id, program)

    @staticmethod
    def _drop_all(port: Port, frame: bytes, tci: int) -> None:
        port.drops += 1

    def packet_out(self, payload: bytes, metadata: dict[str, int]) -> None:
        """Send a controller frame out of metadata["egress_port"] unchanged, as v1model does."""
        port = self._egress.get(metadata.get("egress_port", -1))
        if port is None:
            log.debug("event=packet_out_dropped device=%d egress_port=%s reason=no_such_port",
                      self.device_id, metadata.get("egress_port"))
            return
        if self.fabric is not None and not parses(payload):
            log.debug("event=packet_out_dropped device=%d egress_port=%d reason=parser_error",
                      self.device_id, port.number)
            return
        port.transmit(payload, control=True)

    def _compile(self, fabric: FabricTables) -> FrameHandler:
        fabric_ports = fabric.fabric_ports
        edge_classify = fabric.edge_classify
        label_group = fabric.label_group
        label_fwd = fabric.label_fwd
        selector = fabric.selector
        codes = fabric.action_codes.get
        packet_in = self.packet_in
        packet_in_fields = fabric.packet_in_fields
        stamps_ingress = fabric.stamps_ingress
        monotonic_ns = time.monotonic_ns
        egress_ports = self._egress.get
        port_up = self.ports.port_up
        unpack_u16 = _U16.unpack_from
        unpack_mpls = _MPLS_IN.unpack_from
        pack_mpls = _MPLS_OUT.pack
        pack_vlan = _VLAN_OUT.pack

        def group_action(entry: Entry, frame: bytes) -> ActionCall | None:
            if entry.group_id is not None:
                flow_hash = crc_hqx(frame[0:6], crc_hqx(frame[6:12], 0))
                member = selector.select(entry.group_id, flow_hash, port_up)
            elif entry.member_id is not None:
                member = selector.members.get(entry.member_id)
            else:
                return entry.action
            return member.action if member is not None else None

        def receive(port: Port, frame: bytes, tci: int) -> None:
            n = len(frame)
            if tci >= 0:
                # A VLAN frame whose tag the kernel set aside.
                if n < 14:
                    port.drops += 1
                    return
                rest = 12
                wire_len = n + 4
                mpls = False
            else:
                if n < ETH_LEN:
                    port.drops += 1
                    return
                ether_type = unpack_u16(frame, 12)[0]
                if ether_type == ETHERTYPE_MPLS:
                    if n < MPLS_FRAME_LEN:
                        port.drops += 1
                        return
                    word, tci = unpack_mpls(frame, 14)
                    rest = 20
                    mpls = True
                elif ether_type == ETHERTYPE_VLAN:
                    if n < VLAN_FRAME_LEN:
                        port.drops += 1
                        return
                    tci = unpack_u16(frame, 14)[0]
                    rest = 16
                    wire_len = n
                    mpls = False
                elif ether_type == ETHERTYPE_PROBE:
                    metadata = dict(packet_in_fields)
                    metadata["ingress_port"] = port.number
                    if stamps_ingress:
                        metadata["ingress_ts"] = (port.arrived_ns or monotonic_ns()) // 1000
                    packet_in(frame, metadata)
                    return
                else:
                    port.drops += 1
                    return

            if mpls:
                # Labels are accepted only from fabric ports; hosts cannot inject them.
                ttl = word & 0xFF
                entry = fabric_ports.exact.get((port.number,))
                action = entry.action if entry is not None else fabric_ports.default
                if action is None or codes(action.name) != MARK_FABRIC or ttl == 0:
                    port.drops += 1
                    return
                label = word >> 12
                tc_bos = word & 0xF00
            else:
                entry = edge_classify.exact.get((port.number, tci & 0xFFF))
                if entry is None:
                    action = edge_classify.default
                else:
                    entry.packets += 1
                    entry.bytes += wire_len
                    action = entry.action
                if action is None or codes(action.name) != PUSH_LABEL:
                    port.drops += 1
                    return
                label = action.args[0]
                tc_bos = (tci >> 13) << 9 | 0x100
                ttl = MPLS_INITIAL_TTL

            key = (label,)
            entry = label_group.exact.get(key)
            if entry is not None:
                action = group_action(entry, frame)
            else:
                entry = label_fwd.exact.get(key)
                action = entry.action if entry is not None else label_fwd.default
            if action is None:  # e.g. a group with no live member: drop, as for an unknown code
                port.drops += 1
                return
            code = codes(action.name)
            if code == FORWARD:
                egress = action.args[0]
                ttl -= 1
            elif code == SWAP_FORWARD:
                label, egress = action.args
                ttl -= 1
            elif code == POP_TO_EDGE:
                egress, vlan_id = action.args
                out_port = egress_ports(egress)
                if out_port is None:
                    port.drops += 1
                    return
                out_port.transmit(frame[:12] + pack_vlan(ETHERTYPE_VLAN, (tci & 0xF000) | vlan_id) + frame[rest:])
                return
            else:
                port.drops += 1
                return
            out_port = egress_ports(egress)
            if out_port is None or ttl == 0:
                port.drops += 1
                return
            out_port.transmit(frame[:12] + pack_mpls(ETHERTYPE_MPLS, label << 12 | tc_bos | ttl, tci) + frame[rest:])

        return receive
