"""Anti-entropy on fake switches: a difference is acted on only when seen on two sweeps in a
row, and never while connections are being moved."""

from __future__ import annotations

from controller.fabric import entries as E
from controller.fabric.anti_entropy import AntiEntropy
from tests.unit.fabric_rig import DIAMOND, Rig


async def drifted(rig: Rig):  # type: ignore[no-untyped-def]
    """A connection, an entity nobody owns on s2 and one of the connection's lost there."""
    plan = await rig.fabric.connect("h1", "h4")
    orphan = E.EntrySpec("s2", E.LABEL_TABLE, (("label", 500_000),), "FabricIngress.forward", (("port", 1),))
    lost = next(s for s in rig.fabric.specs(plan) if s.switch == "s2")
    await rig.fabric.programmer.write_ops([(E.INSERT, orphan)])
    await rig.fabric.programmer.write_ops([(E.DELETE, lost)])
    return plan, orphan, lost


async def test_a_difference_is_acted_on_when_seen_on_two_sweeps_in_a_row() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    _, orphan, lost = await drifted(rig)
    ae = AntiEntropy(rig.fabric, lambda: False, 0)

    await ae.sweep()
    held = await rig.held("s2")
    assert orphan in held and lost not in held, "acted on a difference seen once"
    # one seen for the first time now: the orphan's and lost entry's second sighting, its first
    late = E.EntrySpec("s4", E.LABEL_TABLE, (("label", 500_001),), "FabricIngress.forward", (("port", 1),))
    await rig.fabric.programmer.write_ops([(E.INSERT, late)])
    await ae.sweep()
    held = await rig.held("s2")
    assert orphan not in held and lost in held
    assert late in await rig.held("s4"), "acted on a difference seen once"
    assert ae.counters["orphans_deleted"] == 1 and ae.counters["repaired"] == 1
    await ae.sweep()
    assert await rig.mismatches() == {}


async def test_nothing_is_acted_on_while_busy_and_what_was_seen_then_does_not_count() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    _, orphan, _ = await drifted(rig)
    busy = True
    ae = AntiEntropy(rig.fabric, lambda: busy, 0)
    for _ in range(3):
        await ae.sweep()
    assert orphan in await rig.held("s2")
    busy = False
    await ae.sweep()
    assert orphan in await rig.held("s2"), "a sweep while busy counted as a sighting"
    await ae.sweep()
    assert await rig.mismatches() == {}


async def test_group_members_read_back_in_another_order_are_no_drift() -> None:
    """BMv2 reports a group's members in an order of its own; P4Runtime gives the order no
    meaning, so neither reconcile nor anti-entropy may rewrite the group for it."""
    rig = Rig(DIAMOND)
    await rig.start()
    await rig.fabric.connect("h1", "h4")
    head = rig.clients["s1"]
    plain_read = head.read

    async def reversed_members(entities):  # type: ignore[no-untyped-def]
        out = await plain_read(entities)
        for ent in out:
            if ent.WhichOneof("entity") == "action_profile_group":
                members = list(ent.action_profile_group.members)[::-1]
                del ent.action_profile_group.members[:]
                ent.action_profile_group.members.extend(members)
        return out

    head.read = reversed_members  # type: ignore[method-assign]
    groups = [s for s in await rig.held("s1") if isinstance(s, E.GroupSpec)]
    assert groups and all(len(g.members) == 2 for g in groups), "no two-member group to reorder"
    ae = AntiEntropy(rig.fabric, lambda: False, 0)
    for _ in range(3):
        await ae.sweep()
    assert ae.counters["repaired"] == 0
    assert await rig.fabric.reconcile("s1") == (0, 0, 0)
