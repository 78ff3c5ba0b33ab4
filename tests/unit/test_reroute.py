"""Heal rounds on fake switches: the urgent switch-over, repairs, DOWN and UP, and the races
between a round and the connections being made or removed meanwhile."""

from __future__ import annotations

import asyncio

from finsy.proto import p4r

from controller.fabric import entries as E
from tests.unit.fabric_rig import DIAMOND, LINE, LINE_HOSTS, TRIPLE, Rig
from tests.unit.fake_switch import with_type


async def first_of(*aws) -> None:  # type: ignore[no-untyped-def]
    """Until the first of these is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        if not t.done():
            t.cancel()


async def test_urgent_switchover_moves_the_heads_onto_the_backup() -> None:
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    assert plan.a_to_b.path.switches == ("s1", "s2", "s4") and plan.a_to_b_backup is not None
    acked: list[int] = []
    rig.rerouter.switchover_listeners.append(lambda heads, _ns: acked.append(heads))
    for c in rig.clients.values():
        c.writes.clear()

    rig.fabric.set_link(rig.link("s1", "s2"), False)
    await rig.rerouter.heal_round()

    moved = rig.fabric.plans[plan.id]
    assert moved.a_to_b == plan.a_to_b_backup and moved.b_to_a == plan.b_to_a_backup
    # the first write on each head switch is the two heads' MODIFY alone, acknowledged before anything else
    for head, src, leg in (("s1", plan.a, plan.a_to_b_backup), ("s4", plan.b, plan.b_to_a_backup)):
        first = rig.clients[head].writes[0]
        assert len(first) == 1 and first[0].type == p4r.Update.MODIFY
        assert first[0] == rig.fabric.programmer.codec.to_update(E.MODIFY, E.head_entry(src, leg))
    assert acked == [2]
    assert rig.rerouter.last_round["urgent"] == 1
    assert {leg.label for leg in rig.fabric.plans[plan.id].legs()} == rig.labels_in_use()
    assert rig.store.get(plan.id) == rig.fabric.plans[plan.id]
    assert await rig.mismatches() == {}


async def test_repair_gives_a_switched_over_connection_a_new_disjoint_backup() -> None:
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    rig.fabric.set_link(rig.link("s1", "s2"), False)
    await rig.rerouter.heal_round()

    now = rig.fabric.plans[plan.id]
    assert now.a_to_b.path.switches == ("s1", "s3", "s4")
    assert now.a_to_b_backup is not None and now.a_to_b_backup.path.switches == ("s1", "s5", "s4")
    assert now.b_to_a_backup is not None and now.b_to_a_backup.path.switches == ("s4", "s5", "s1")
    assert {leg.label for leg in now.legs()} == rig.labels_in_use()
    assert rig.store.get(plan.id) == now
    assert await rig.mismatches() == {}


async def test_a_backup_that_dies_is_taken_away_at_once_and_replaced() -> None:
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    assert plan.a_to_b_backup is not None and plan.a_to_b_backup.path.switches == ("s1", "s3", "s4")
    rig.fabric.set_link(rig.link("s3", "s4"), False)
    await rig.rerouter.heal_round()
    now = rig.fabric.plans[plan.id]
    assert now.a_to_b == plan.a_to_b
    assert now.a_to_b_backup is not None and now.a_to_b_backup.path.switches == ("s1", "s5", "s4")
    assert await rig.mismatches() == {}


async def test_down_when_no_path_is_left_and_up_when_one_returns() -> None:
    rig = Rig(LINE, LINE_HOSTS)
    await rig.start()
    events: list[str] = []
    rig.fabric.listeners.append(lambda p, event: events.append(event))
    plan = await rig.fabric.connect("h1", "h3")
    link = rig.link("s2", "s3")

    rig.fabric.set_link(link, False)
    await rig.rerouter.heal_round()
    assert rig.fabric.plans[plan.id].state == "down"
    assert rig.store.get(plan.id).state == "down"
    rig.fabric.set_link(link, True)
    await rig.rerouter.heal_round()

    back = rig.fabric.plans[plan.id]
    assert back.state == "up" and back.a_to_b.path.switches == ("s1", "s2", "s3")
    assert events == ["up", "down", "up"]
    assert {leg.label for leg in back.legs()} == rig.labels_in_use()
    assert await rig.mismatches() == {}


async def test_a_connection_whose_lock_is_taken_is_left_out_of_the_urgent_pass_and_switched_by_its_repair() -> None:
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    rig.fabric.set_link(rig.link("s1", "s2"), False)
    swapped = plan.model_copy(update={"a_to_b": plan.a_to_b_backup, "b_to_a": plan.b_to_a_backup, "a_to_b_backup": None,
                                      "b_to_a_backup": None, "revision": plan.revision + 1})
    async with rig.fabric.lock(plan.id):
        assert await rig.fabric.commit_urgent([(plan, swapped)]) == (None, [plan.id])
    assert rig.fabric.plans[plan.id] is plan
    await rig.rerouter.heal_round()
    assert rig.fabric.plans[plan.id].a_to_b == plan.a_to_b_backup
    assert await rig.mismatches() == {}


# --- races -------------------------------------------------------------------------------------


async def test_heal_round_during_a_disconnect_does_not_bring_the_connection_back() -> None:
    """A round that starts while a connection is being removed must leave it alone: it used to
    switch it over after the removal had finished, putting back its plan, store row and entries
    with labels already given back."""
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    deletes = rig.clients["s1"].hold(with_type(p4r.Update.DELETE))
    gone = asyncio.ensure_future(rig.fabric.disconnect(plan.id))
    await deletes.arrived.wait()  # the removal is under way, its plan still there

    modifies = rig.clients["s1"].hold(with_type(p4r.Update.MODIFY))
    rig.fabric.set_link(rig.link("s1", "s2"), False)
    round_ = asyncio.ensure_future(rig.rerouter.heal_round())
    await first_of(modifies.arrived.wait(), asyncio.shield(round_))
    rig.clients["s1"].unhold(deletes)
    assert await gone
    rig.clients["s1"].unhold(modifies)
    await round_

    assert plan.id not in rig.fabric.plans and rig.store.get(plan.id) is None
    assert rig.labels_in_use() == set()
    assert await rig.mismatches() == {}


async def test_a_connection_made_during_a_round_gets_its_backup_within_one_round() -> None:
    """Planned while a link was down (no backup then), stored after that link came back and its
    round had run: nothing else would ever give it the backup that now exists."""
    rig = Rig(DIAMOND, heal_loop=True)
    await rig.start()
    try:
        link = rig.link("s1", "s3")
        rig.fabric.set_link(link, False)
        await rig.rerouter.settled()
        inserts = rig.clients["s4"].hold(with_type(p4r.Update.INSERT), once=True)
        made = asyncio.ensure_future(rig.fabric.connect("h1", "h4"))
        await inserts.arrived.wait()
        rig.fabric.set_link(link, True)
        await rig.rerouter.settled()  # the link's round, while the connection is being made
        rig.clients["s4"].unhold(inserts)
        plan = await made
        assert plan.a_to_b_backup is None

        await rig.rerouter.settled()
        now = rig.fabric.plans[plan.id]
        assert now.a_to_b_backup is not None and now.a_to_b_backup.path.switches == ("s1", "s3", "s4")
        assert await rig.mismatches() == {}
    finally:
        await rig.rerouter.stop()


async def test_a_connection_without_any_backup_does_not_start_rounds() -> None:
    rig = Rig(LINE, LINE_HOSTS, heal_loop=True)
    await rig.start()
    try:
        await rig.fabric.connect("h1", "h3")
        assert rig.rerouter.idle
    finally:
        await rig.rerouter.stop()
