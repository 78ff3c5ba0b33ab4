"""The owner of connection state refuses changes that would undo what happened meanwhile."""

from __future__ import annotations

import pytest

from controller.fabric.connections import StalePlan
from tests.unit.fabric_rig import TRIPLE, Rig


async def test_a_commit_without_the_lock_or_from_an_old_plan_is_refused_and_gives_its_labels_back() -> None:
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    in_use = rig.labels_in_use()
    backup = plan.a_to_b_backup.path
    new = plan.model_copy(update={"a_to_b_backup": rig.fabric.leg(backup), "revision": plan.revision + 1})
    with pytest.raises(StalePlan):
        await rig.fabric.commit(plan, new, None)  # lock not held
    assert rig.labels_in_use() == in_use

    old = plan.model_copy(update={"revision": 0})
    async with rig.fabric.lock(plan.id):
        with pytest.raises(StalePlan):
            await rig.fabric.commit(old, plan.model_copy(update={"b_to_a_backup": rig.fabric.leg(backup.reversed())}), None)
    assert rig.labels_in_use() == in_use
    assert rig.fabric.plans[plan.id] is plan and await rig.mismatches() == {}


async def test_plans_are_read_only_outside_the_owner() -> None:
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    with pytest.raises(TypeError):
        rig.fabric.plans[plan.id] = plan  # type: ignore[index]


async def test_relabel_keeps_the_plan_as_it_is_and_skips_what_is_gone() -> None:
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    relabelled = await rig.fabric.relabel(plan.id, {"kind": "direct"})
    assert relabelled == plan.model_copy(update={"labels": {"kind": "direct"}})
    assert rig.fabric.plans[plan.id] == relabelled == rig.store.get(plan.id)
    await rig.fabric.disconnect(plan.id)
    assert await rig.fabric.relabel(plan.id, {"kind": "direct"}) is None
    assert rig.store.get(plan.id) is None
