"""Draining a switch for an upgrade, on fake switches: connections that can avoid it move off it
(one head-end write each when their backup avoids it), backups through it are taken away, its
own hosts' connections are reported stuck, no new path crosses it until it is restored, and
afterwards the heal loop gives the moved connections their backups back."""

from __future__ import annotations

from finsy.proto import p4r

from controller.fabric import entries as E
from controller.fabric.drain import drain, restore
from tests.unit.fabric_rig import DIAMOND, LINE, LINE_HOSTS, TRIPLE, Rig

HOSTS_ON_S2 = {"h1": ("s1", 1), "h4": ("s4", 1), "h2": ("s2", 3)}


def connection_entries(rig: Rig, switch: str) -> list[E.Spec]:
    """What the desired state holds on `switch` beyond its fabric-port marks."""
    return [s for s in rig.fabric.desired(switch) if not (isinstance(s, E.EntrySpec) and s.table == E.FABRIC_PORTS_TABLE)]


async def test_a_connection_whose_backup_avoids_the_switch_moves_with_its_two_head_writes() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    assert plan.a_to_b.path.switches == ("s1", "s2", "s4")
    for c in rig.clients.values():
        c.writes.clear()

    report = await drain(rig.fabric, "s2")

    now = rig.fabric.plans[plan.id]
    assert report.moved == (plan.id,) and report.stuck == () and report.unprotected == ()
    assert now.a_to_b == plan.a_to_b_backup and now.b_to_a == plan.b_to_a_backup and now.a_to_b_backup is None
    for head, src, leg in (("s1", plan.a, plan.a_to_b_backup), ("s4", plan.b, plan.b_to_a_backup)):
        first = rig.clients[head].writes[0]
        assert len(first) == 1 and first[0].type == p4r.Update.MODIFY
        assert first[0] == rig.fabric.programmer.codec.to_update(E.MODIFY, E.head_entry(src, leg))
    assert not rig.clients["s3"].writes  # the backup's transit entries were there already
    assert connection_entries(rig, "s2") == []
    assert await rig.mismatches() == {}


async def test_no_new_path_crosses_a_drained_switch_until_it_is_restored() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    await drain(rig.fabric, "s2")
    made = await rig.fabric.connect("h1", "h4")
    assert "s2" not in made.a_to_b.path.switches and made.a_to_b_backup is None  # no backup that avoids s2
    assert connection_entries(rig, "s2") == []
    restore(rig.fabric, "s2")
    again = await rig.fabric.connect("h4", "h1")
    assert again.a_to_b_backup is not None and "s2" in {*again.a_to_b.path.switches, *again.a_to_b_backup.path.switches}


async def test_a_backup_through_the_switch_is_taken_away() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    assert plan.a_to_b_backup is not None and plan.a_to_b_backup.path.switches == ("s1", "s3", "s4")

    report = await drain(rig.fabric, "s3")

    now = rig.fabric.plans[plan.id]
    assert report.unprotected == (plan.id,) and report.moved == ()
    assert now.a_to_b == plan.a_to_b and now.a_to_b_backup is None
    assert connection_entries(rig, "s3") == []
    assert await rig.mismatches() == {}


async def test_connections_of_the_switchs_own_hosts_are_stuck_and_left_alone() -> None:
    rig = Rig(DIAMOND, hosts=HOSTS_ON_S2)
    await rig.start()
    own = await rig.fabric.connect("h2", "h4")
    through = await rig.fabric.connect("h1", "h4")
    report = await drain(rig.fabric, "s2")
    assert report.stuck == (own.id,) and report.moved == (through.id,)
    assert rig.fabric.plans[own.id] == own
    # A new connection of its own host may still start there.
    made = await rig.fabric.connect("h4", "h2")
    assert made.b.switch == "s2" and made.a_to_b.path.switches[1:-1] != ("s2",)


async def test_without_a_path_around_it_a_transit_connection_is_stuck() -> None:
    rig = Rig(LINE, hosts=LINE_HOSTS)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h3")
    report = await drain(rig.fabric, "s2")
    assert report.stuck == (plan.id,) and rig.fabric.plans[plan.id] == plan


async def test_one_without_a_usable_backup_gets_a_fresh_path_around_it() -> None:
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    assert plan.a_to_b.path.switches == ("s1", "s2", "s4")
    rig.fabric.set_link(rig.link("s3", "s4"), False)  # its backup over s3 is dead
    await rig.rerouter.heal_round()
    plan = rig.fabric.plans[plan.id]
    assert plan.a_to_b_backup is not None and "s3" not in plan.a_to_b_backup.path.switches
    rig.fabric.set_link(rig.link("s1", "s5"), False)  # and now so is the one over s5
    await rig.rerouter.heal_round()
    plan = rig.fabric.plans[plan.id]
    assert plan.a_to_b_backup is None
    rig.fabric.set_link(rig.link("s1", "s5"), True)

    report = await drain(rig.fabric, "s2")

    now = rig.fabric.plans[plan.id]
    assert report.moved == (plan.id,)
    assert now.a_to_b.path.switches == ("s1", "s5", "s4")
    assert connection_entries(rig, "s2") == []
    assert await rig.mismatches() == {}


async def test_restore_lets_the_heal_loop_give_backups_back() -> None:
    rig = Rig(DIAMOND, heal_loop=True)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    await drain(rig.fabric, "s2")
    await rig.rerouter.settled()
    assert rig.fabric.plans[plan.id].a_to_b_backup is None  # nothing avoids s2 to back it up with
    restore(rig.fabric, "s2")
    await rig.rerouter.settled()
    now = rig.fabric.plans[plan.id]
    assert now.a_to_b.path.switches == ("s1", "s3", "s4")
    assert now.a_to_b_backup is not None and now.a_to_b_backup.path.switches == ("s1", "s2", "s4")
    assert await rig.mismatches() == {}
    await rig.rerouter.stop()


async def test_heal_during_a_drain_does_not_put_a_backup_on_the_drained_switch() -> None:
    rig = Rig(TRIPLE, heal_loop=True)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    await drain(rig.fabric, "s2")
    await rig.rerouter.settled()
    now = rig.fabric.plans[plan.id]
    assert now.a_to_b.path.switches == ("s1", "s3", "s4")
    assert now.a_to_b_backup is not None and now.a_to_b_backup.path.switches == ("s1", "s5", "s4")
    assert connection_entries(rig, "s2") == []
    await rig.rerouter.stop()
