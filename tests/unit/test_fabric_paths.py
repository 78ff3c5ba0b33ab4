"""Paths, backups and entry translation on small graphs (no switches involved)."""

import pytest

from controller.fabric import entries as E
from controller.fabric.allocator import Allocator, Exhausted
from controller.fabric.graph import FabricGraph, Link, link_name
from controller.fabric.model import Attachment, ConnectionPlan, Leg
from controller.fabric.paths import NoPath, backup_for, shortest


def graph(edges: list[tuple[str, int, str, int]]) -> FabricGraph:
    switches = sorted({e[0] for e in edges} | {e[2] for e in edges})
    return FabricGraph(switches, [Link(link_name(*e), *e) for e in edges])


DIAMOND = [("s1", 2, "s2", 1), ("s1", 3, "s3", 1), ("s2", 2, "s4", 2), ("s3", 2, "s4", 3)]
LINE = [("s1", 2, "s2", 1), ("s2", 2, "s3", 1)]


def att(host: str, switch: str, port: int = 1, vlan: int = 10) -> Attachment:
    return Attachment(host=host, switch=switch, port=port, vlan=vlan)


def test_diamond_primary_and_node_disjoint_backup():
    g = graph(DIAMOND)
    a, b = att("h1", "s1"), att("h3", "s4")
    p = shortest(g, a, b)
    assert p.switches[0] == "s1" and p.switches[-1] == "s4" and len(p.hops) == 3
    assert p.hops[0].in_port == 1 and p.hops[-1].out_port == 1
    back = backup_for(g, p, a, b)
    assert back is not None
    assert set(back.switches[1:-1]).isdisjoint(p.switches[1:-1])
    assert set(back.links).isdisjoint(p.links)


def test_ports_follow_links():
    g = graph(DIAMOND)
    p = shortest(g, att("h1", "s1"), att("h3", "s4"))
    for hop, nxt, link in zip(p.hops, p.hops[1:], p.links):
        lk = g.links[link]
        assert lk.port_of(hop.switch) == hop.out_port
        assert lk.port_of(nxt.switch) == nxt.in_port


def test_line_has_no_backup_and_reroute_fails_when_cut():
    g = graph(LINE)
    a, b = att("h1", "s1"), att("h2", "s3")
    p = shortest(g, a, b)
    assert backup_for(g, p, a, b) is None
    g.set_link(p.links[0], False)
    with pytest.raises(NoPath):
        shortest(g, a, b)


def test_down_switch_is_avoided():
    g = graph(DIAMOND)
    a, b = att("h1", "s1"), att("h3", "s4")
    first = shortest(g, a, b)
    g.set_switch(first.switches[1], False)
    second = shortest(g, a, b)
    assert first.switches[1] not in second.switches


def test_same_switch_connection():
    g = graph(DIAMOND)
    a, b = att("h1", "s1", 1, 10), att("h2", "s1", 4, 20)
    p = shortest(g, a, b)
    assert [(h.switch, h.in_port, h.out_port) for h in p.hops] == [("s1", 1, 4)]
    assert backup_for(g, p, a, b) is None


def plan_on_line() -> ConnectionPlan:
    g = graph(LINE)
    a, b = att("h1", "s1", 1, 100), att("h2", "s3", 3, 200)
    p = shortest(g, a, b)
    return ConnectionPlan(id="c1", a=a, b=b, a_to_b=Leg(label=1001, path=p), b_to_a=Leg(label=1002, path=p.reversed()))


def test_entries_push_forward_pop():
    plan = plan_on_line()
    got = {(e.switch, e.table, e.match, e.action, e.params) for e in E.all_entries(plan)}
    assert ("s1", E.EDGE_TABLE, (("ingress_port", 1), ("vlan_id", 100)), "FabricIngress.push_label", (("label", 1001),)) in got
    assert ("s1", E.LABEL_TABLE, (("label", 1001),), "FabricIngress.forward", (("port", 2),)) in got
    assert ("s2", E.LABEL_TABLE, (("label", 1001),), "FabricIngress.forward", (("port", 2),)) in got
    assert ("s3", E.LABEL_TABLE, (("label", 1001),), "FabricIngress.pop_to_edge", (("port", 3), ("vlan_id", 200))) in got
    # reverse direction pops at h1's port with h1's VLAN
    assert ("s1", E.LABEL_TABLE, (("label", 1002),), "FabricIngress.pop_to_edge", (("port", 1), ("vlan_id", 100))) in got
    assert len(got) == 2 + 3 + 3  # two heads, three label entries per direction


def test_heads_are_last_phase():
    plan = plan_on_line()
    assert all(e.table == E.LABEL_TABLE for e in E.transit_entries(plan))
    assert all(e.table == E.EDGE_TABLE for e in E.head_entries(plan))


def test_allocator_reuses_and_exhausts():
    alloc = Allocator(100, 102, 5, 6)
    got = [alloc.labels.take() for _ in range(3)]
    assert got == [100, 101, 102]
    with pytest.raises(Exhausted):
        alloc.labels.take()
    alloc.labels.give(101)
    assert alloc.labels.take() == 101
    pool = alloc.vlan_pool("s1", 1)
    assert pool.take() == 5 and pool.take() == 6
    with pytest.raises(Exhausted, match="VLAN id on s1:1"):
        pool.take()
    assert alloc.vlan_pool("s1", 2).take() == 5  # pools are per host port


def diamond_plan(ff: bool) -> tuple[ConnectionPlan, list]:
    g = graph(DIAMOND)
    a, b = att("h1", "s1", 1, 100), att("h3", "s4", 1, 200)
    p = shortest(g, a, b)
    back = backup_for(g, p, a, b)
    plan = ConnectionPlan(id="c", a=a, b=b, a_to_b=Leg(label=1001, path=p), b_to_a=Leg(label=1002, path=p.reversed()),
                          a_to_b_backup=Leg(label=1003, path=back), b_to_a_backup=Leg(label=1004, path=back.reversed()))
    return plan, E.plan_specs(plan, frozenset({"s1", "s4"}) if ff else frozenset())


def test_protection_groups_watch_both_ports():
    plan, specs = diamond_plan(ff=True)
    groups = [s for s in specs if isinstance(s, E.GroupSpec)]
    assert {g.switch for g in groups} == {"s1", "s4"}
    g1 = next(g for g in groups if g.switch == "s1")
    assert g1.group_id == 1001
    assert {w for _, w in g1.members} == {plan.a_to_b.path.hops[0].out_port, plan.a_to_b_backup.path.hops[0].out_port}
    members = {s.member_id: s for s in specs if isinstance(s, E.MemberSpec) and s.switch == "s1"}
    assert dict(members[1003].params) == {"label": 1003, "port": plan.a_to_b_backup.path.hops[0].out_port}
    assert not [s for s in diamond_plan(ff=False)[1] if isinstance(s, (E.GroupSpec, E.MemberSpec))]


def test_install_order_never_points_at_missing_entities():
    _plan, specs = diamond_plan(ff=True)
    order = [s for phase in E.phases(E.diff([], specs)) for _, s in phase]
    pos = {s.key: i for i, s in enumerate(order)}
    for s in specs:
        if isinstance(s, E.GroupSpec):
            assert all(pos[(s.switch, "member", E.PROFILE, m)] < pos[s.key] for m, _ in s.members)
        if isinstance(s, E.EntrySpec) and s.group_id is not None:
            assert pos[(s.switch, "group", E.PROFILE, s.group_id)] < pos[s.key]
        if isinstance(s, E.EntrySpec) and s.table == E.EDGE_TABLE:
            label = dict(s.params)["label"]
            assert all(pos[t.key] < pos[s.key] for t in specs if isinstance(t, E.EntrySpec) and t.match == (("label", label),))
    # removal runs the other way round
    rev = [s for phase in E.phases(E.diff(specs, [])) for _, s in phase]
    assert isinstance(rev[0], E.EntrySpec) and rev[0].table in (E.EDGE_TABLE, E.GROUP_TABLE)
    assert rev.index(next(s for s in rev if isinstance(s, E.GroupSpec))) < rev.index(next(s for s in rev if isinstance(s, E.MemberSpec)))


def test_switch_over_diff_touches_heads_first():
    plan, specs = diamond_plan(ff=True)
    swapped = plan.model_copy(update={"a_to_b": plan.a_to_b_backup, "b_to_a": plan.b_to_a_backup,
                                      "a_to_b_backup": None, "b_to_a_backup": None})
    ph = E.phases(E.diff(specs, E.plan_specs(swapped, frozenset({"s1", "s4"}))))
    first = ph[0]
    assert {op for op, _ in first} == {E.MODIFY}
    assert {s.table for _, s in first} == {E.EDGE_TABLE}
