"""A connection plan -> the entities it needs on each switch (install, remove, heal, reconcile).

Every change to a connection is a diff between two plans (None for "absent"), applied in an
order that never lets a packet reach an entity that is not there yet (`phases`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from controller.fabric.model import Attachment, ConnectionPlan, Leg

EDGE_TABLE = "FabricIngress.edge_classify"
LABEL_TABLE = "FabricIngress.label_fwd"
GROUP_TABLE = "FabricIngress.label_group"
FABRIC_PORTS_TABLE = "FabricIngress.fabric_ports"
PROFILE = "FabricIngress.next_hop_selector"
SWAP_FORWARD = "FabricIngress.swap_forward"


@dataclasses.dataclass(frozen=True, slots=True)
class EntrySpec:
    """One table entry by name: a direct action, or (group_id set) a group of the table's profile.
    Hashable, so desired and read-back sets compare directly."""

    switch: str
    table: str
    match: tuple[tuple[str, int], ...]
    action: str = ""
    params: tuple[tuple[str, int], ...] = ()
    group_id: int | None = None

    @property
    def key(self) -> tuple:
        return (self.switch, self.table, self.match)


@dataclasses.dataclass(frozen=True, slots=True)
class MemberSpec:
    switch: str
    member_id: int
    action: str
    params: tuple[tuple[str, int], ...]
    profile: str = PROFILE

    @property
    def key(self) -> tuple:
        return (self.switch, "member", self.profile, self.member_id)


@dataclasses.dataclass(frozen=True, slots=True)
class GroupSpec:
    switch: str
    group_id: int
    members: tuple[tuple[int, int | None], ...]  # (member id, watch port)
    profile: str = PROFILE

    @property
    def key(self) -> tuple:
        return (self.switch, "group", self.profile, self.group_id)


Spec = EntrySpec | MemberSpec | GroupSpec


def leg_transit_entries(leg: Leg, tail: Attachment) -> list[EntrySpec]:
    """label_fwd on every switch of the leg: forward along the path, pop at the tail end."""
    out = []
    last = len(leg.path.hops) - 1
    params: tuple[tuple[str, int], ...]
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


def protection_group(primary: Leg, backup: Leg) -> list[Spec]:
    """Head-end fast failover: the primary label's packets are spread by hash over two members
    that each watch their own port; the target drops a member whose port loses carrier at once,
    before the controller hears of it. Ids are labels, which are unique fabric-wide."""
    head = primary.path.hops[0].switch
    p_port, b_port = primary.path.hops[0].out_port, backup.path.hops[0].out_port
    return [
        MemberSpec(head, primary.label, SWAP_FORWARD, (("label", primary.label), ("port", p_port))),
        MemberSpec(head, backup.label, SWAP_FORWARD, (("label", backup.label), ("port", b_port))),
        GroupSpec(head, primary.label, ((primary.label, p_port), (backup.label, b_port))),
        EntrySpec(head, GROUP_TABLE, (("label", primary.label),), group_id=primary.label),
    ]


def plan_specs(plan: ConnectionPlan | None, fast_failover: frozenset[str] = frozenset()) -> list[Spec]:
    """Everything a plan needs; `fast_failover` names the switches that honour watch ports."""
    if plan is None:
        return []
    out: list[Spec] = []
    for fwd, back, tail in ((plan.a_to_b, plan.a_to_b_backup, plan.b), (plan.b_to_a, plan.b_to_a_backup, plan.a)):
        out += leg_transit_entries(fwd, tail)
        if back is not None:
            out += leg_transit_entries(back, tail)
            if fwd.path.hops[0].switch in fast_failover and back.path.hops[0].out_port != fwd.path.hops[0].out_port:
                out += protection_group(fwd, back)
    out += [head_entry(plan.a, plan.a_to_b), head_entry(plan.b, plan.b_to_a)]
    return out


def fabric_port_entries(switch: str, ports: list[int]) -> list[EntrySpec]:
    return [EntrySpec(switch, FABRIC_PORTS_TABLE, (("ingress_port", p),), "FabricIngress.mark_fabric") for p in ports]


# --- diffs and their order --------------------------------------------------------------------

INSERT, MODIFY, DELETE = "insert", "modify", "delete"


def _rank(op: str, spec: Spec) -> int:
    """Phase of an operation. Inserts go from the tail of the data path towards its head,
    deletes the other way, so that a packet only ever meets entities that exist:
      0 insert label_fwd / members  1 insert+modify groups  2 insert+modify label_group, heads
      3 delete heads, label_group   4 delete groups          5 delete label_fwd / members"""
    if isinstance(spec, GroupSpec):
        return 1 if op != DELETE else 4
    if isinstance(spec, MemberSpec) or spec.table in (LABEL_TABLE, FABRIC_PORTS_TABLE):
        return 0 if op != DELETE else 5
    return 2 if op != DELETE else 3


def diff(old: Iterable[Spec], new: Iterable[Spec]) -> list[tuple[str, Spec]]:
    old_by = {s.key: s for s in old}
    new_by = {s.key: s for s in new}
    ops = [(DELETE, s) for k, s in old_by.items() if k not in new_by]
    ops += [(INSERT, s) for k, s in new_by.items() if k not in old_by]
    ops += [(MODIFY, s) for k, s in new_by.items() if k in old_by and old_by[k] != s]
    return ops


def phases(ops: Iterable[tuple[str, Spec]]) -> list[list[tuple[str, Spec]]]:
    """Group operations into ordered phases; each phase may be written to all switches at once."""
    buckets: dict[int, list[tuple[str, Spec]]] = {}
    for op, spec in ops:
        buckets.setdefault(_rank(op, spec), []).append((op, spec))
    return [buckets[r] for r in sorted(buckets)]


def by_switch(specs: Iterable) -> dict[str, list]:
    """Group specs (or (op, spec) pairs) by switch, keeping their order."""
    out: dict[str, list] = {}
    for s in specs:
        sw = s[1].switch if isinstance(s, tuple) else s.switch
        out.setdefault(sw, []).append(s)
    return out


# Kept for callers that think in "transit first, heads last" terms.
def transit_entries(plan: ConnectionPlan) -> list[EntrySpec]:
    return [s for s in plan_specs(plan) if isinstance(s, EntrySpec) and s.table == LABEL_TABLE]


def head_entries(plan: ConnectionPlan) -> list[EntrySpec]:
    return [head_entry(plan.a, plan.a_to_b), head_entry(plan.b, plan.b_to_a)]


def all_entries(plan: ConnectionPlan) -> list[EntrySpec]:
    return [s for s in plan_specs(plan) if isinstance(s, EntrySpec)]
