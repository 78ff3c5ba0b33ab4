"""The programmer on fake switches: stale entities are overwritten instead of refusing every
later try, and a rejected connect or path change leaves the switches as they were."""

from __future__ import annotations

import pytest
from finsy.proto import p4r

from controller.fabric import entries as E
from controller.p4rt.errors import SwitchError
from tests.unit.fabric_rig import DIAMOND, TRIPLE, Rig, schema


def label_fwd(update: p4r.Update) -> bool:
    """An insert into the label table: what a tail refuses when that table is full."""
    return update.type == p4r.Update.INSERT and update.entity.table_entry.table_id == schema().table(E.LABEL_TABLE).id


async def test_an_insert_that_meets_a_stale_entity_overwrites_it() -> None:
    """Entities a lost delete left behind hold the keys a new connection is given."""
    rig = Rig(DIAMOND)
    await rig.start()
    s = rig.settings
    stale = [E.EntrySpec(sw, E.LABEL_TABLE, (("label", s.label_min),), "FabricIngress.forward", (("port", 9),))
             for sw in ("s1", "s2", "s4")]
    stale.append(E.EntrySpec("s1", E.EDGE_TABLE, (("ingress_port", 1), ("vlan_id", s.vlan_min)),
                             "FabricIngress.push_label", (("label", 99_999),)))
    await rig.fabric.programmer.write_ops([(E.INSERT, spec) for spec in stale])

    plan = await rig.fabric.connect("h1", "h4")
    assert plan.a_to_b.label == s.label_min and plan.a.vlan == s.vlan_min
    assert await rig.mismatches() == {}


async def test_a_modify_that_finds_nothing_inserts() -> None:
    """A head entry lost on a switch that stayed up is written again by the switch-over."""
    rig = Rig(DIAMOND)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    head = E.head_entry(plan.a, plan.a_to_b)
    await rig.clients["s1"].write([rig.fabric.programmer.codec.to_update(E.DELETE, head)])

    rig.fabric.set_link(rig.link("s1", "s2"), False)
    await rig.rerouter.heal_round()
    assert E.head_entry(plan.a, plan.a_to_b_backup) in await rig.held("s1")
    assert await rig.mismatches() == {}


async def test_a_rejected_connect_is_removed_from_every_switch() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    before = {sw: await rig.held(sw) for sw in rig.clients}
    rig.clients["s4"].fail(label_fwd)
    with pytest.raises(SwitchError) as err:
        await rig.fabric.connect("h1", "h4")
    assert err.value.switch == "s4"
    assert {sw: await rig.held(sw) for sw in rig.clients} == before
    assert rig.fabric.plans == {} and rig.store.all() == []
    assert rig.labels_in_use() == set() and all(not pool.used for pool in rig.fabric.alloc.vlans.values())


async def test_a_rejected_repair_leaves_the_plan_in_force_and_gives_its_labels_back() -> None:
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    rig.clients["s5"].fail(label_fwd)  # the new backup would cross s5
    rig.fabric.set_link(rig.link("s1", "s2"), False)
    await rig.rerouter.heal_round()

    now = rig.fabric.plans[plan.id]
    assert now.a_to_b == plan.a_to_b_backup and now.a_to_b_backup is None  # switched over, no new backup yet
    assert {leg.label for leg in now.legs()} == rig.labels_in_use()
    assert await rig.mismatches() == {}
    rig.clients["s5"].heal()
    await rig.rerouter.heal_round()
    assert rig.fabric.plans[plan.id].a_to_b_backup is not None
    assert await rig.mismatches() == {}
