"""A connection plan -> the entries it needs on each switch (used to install, remove, reconcile)."""

from __future__ import annotations

import dataclasses

from controller.fabric.model import Attachment, ConnectionPlan, Leg

EDGE_TABLE = "FabricIngress.edge_classify"
LABEL_TABLE = "FabricIngress.label_fwd"
FABRIC_PORTS_TABLE = "FabricIngress.fabric_ports"


@dataclasses.dataclass(frozen=True, slots=True)
class EntrySpec:
    """One table entry by name. Hashable, so desired and read-back sets compare directly."""

    switch: str
    table: str
    match: tuple[tuple[str, int], ...]
    action: str
    params: tuple[tuple[str, int], ...] = ()

    @property
    def key(self) -> tuple[str, str, tuple[tuple[str, int], ...]]:
        return (self.switch, self.table, self.match)


def leg_transit_entries(leg: Leg, tail: Attachment) -> list[EntrySpec]:
    """label_fwd on every switch of the leg: forward along the path, pop at the tail end."""
    out = []
    last = len(leg.path.hops) - 1
    for i, hop in enumerate(leg.path.hops):
        if i == last:
            action, params = "FabricIngress.pop_to_edge", (("port", tail.port), ("vlan_id", tail.vlan))
        else:
            action, params = "FabricIngress.forward", (("port", hop.out_port),)
        out.append(EntrySpec(hop.switch, LABEL_TABLE, (("label", leg.label),), action, params))
    return out


def head_entry(src: Attachment, leg: Leg) -> EntrySpec:
    return EntrySpec(
        src.switch,
        EDGE_TABLE,
        (("ingress_port", src.port), ("vlan_id", src.vlan)),
        "FabricIngress.push_label",
        (("label", leg.label),),
    )


def transit_entries(plan: ConnectionPlan) -> list[EntrySpec]:
    """Entries that no packet reaches until a head entry pushes their label: safe to write first."""
    out = leg_transit_entries(plan.a_to_b, plan.b) + leg_transit_entries(plan.b_to_a, plan.a)
    if plan.a_to_b_backup is not None:
        out += leg_transit_entries(plan.a_to_b_backup, plan.b)
    if plan.b_to_a_backup is not None:
        out += leg_transit_entries(plan.b_to_a_backup, plan.a)
    return out


def head_entries(plan: ConnectionPlan) -> list[EntrySpec]:
    return [head_entry(plan.a, plan.a_to_b), head_entry(plan.b, plan.b_to_a)]


def all_entries(plan: ConnectionPlan) -> list[EntrySpec]:
    return transit_entries(plan) + head_entries(plan)


def fabric_port_entries(switch: str, ports: list[int]) -> list[EntrySpec]:
    return [EntrySpec(switch, FABRIC_PORTS_TABLE, (("ingress_port", p),), "FabricIngress.mark_fabric") for p in ports]


def by_switch(entries: list[EntrySpec]) -> dict[str, list[EntrySpec]]:
    out: dict[str, list[EntrySpec]] = {}
    for e in entries:
        out.setdefault(e.switch, []).append(e)
    return out
