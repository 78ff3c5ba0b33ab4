"""Does a P4Info's port width suit a target? Checked before anything is pushed.

The fabric programs name their port fields alike (p4/README.md): the match field `ingress_port`,
the action parameter `port`, the controller metadata `ingress_port` and `egress_port`. Their width
is the target's: 9 bits in v1model, 32 in PNA (PortId_t) and in the TNA program (its translated
FabricPortId_t). A P4Info of another program would be accepted by the encoder as long as the
values fit, and refused by the switch only at the pipeline push, or not at all.
"""

from __future__ import annotations

from collections.abc import Iterator

from finsy.proto import p4i

from controller.targets.errors import TargetError

PORT_FIELDS = frozenset({"ingress_port", "egress_port", "port"})


def port_fields(p4info: p4i.P4Info) -> Iterator[tuple[str, int]]:
    """(what, bitwidth) of every port field: match fields, action parameters, controller metadata."""
    for t in p4info.tables:
        for f in t.match_fields:
            if f.name in PORT_FIELDS:
                yield f"table {t.preamble.name} match field {f.name!r}", f.bitwidth
    for a in p4info.actions:
        for p in a.params:
            if p.name in PORT_FIELDS:
                yield f"action {a.preamble.name} parameter {p.name!r}", p.bitwidth
    for c in p4info.controller_packet_metadata:
        for m in c.metadata:
            if m.name in PORT_FIELDS:
                yield f"controller header {c.preamble.name} field {m.name!r}", m.bitwidth


def check_port_width(p4info: p4i.P4Info, source: str, kind: str, bits: int, p4info_hint: str) -> None:
    """Refuse a P4Info in which a port field is not `bits` wide, naming the first such field."""
    for what, width in port_fields(p4info):
        if width != bits:
            raise TargetError(f"P4Info {source}: {what} is {width} bits, but a {kind} switch takes "
                              f"{bits}-bit ports; use {p4info_hint}")
