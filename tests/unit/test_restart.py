"""A restarted controller takes its stored connections as evidence: a switch it has not heard
from yet is not dead, so nothing is moved, marked DOWN or written while the switches come up one
by one; one that stays silent past the start-up grace is dead, and its connections move. It
starts from the stored switch states: one the last run saw down is down at once, and one that
came back empty is out of the paths until it is reprogrammed."""

from __future__ import annotations

import asyncio

from controller.fabric.connections import Fabric
from controller.fabric.switch_lifecycle import SWITCH_STATE, StoredSwitch
from controller.heal.reroute import Rerouter
from softswitch.p4info_index import NSM_FABRIC, P4InfoIndex
from softswitch.tables import EntityStore
from tests.unit.fabric_rig import DIAMOND, HOSTS, TRIPLE, Rig
from tests.unit.test_gnmi_port_state import until


def restarted(rig: Rig, silent: set[str], grace: float) -> tuple[Fabric, Rerouter]:
    """A new Fabric and Rerouter over the rig's store and switches (which kept their entries),
    with the switches in `silent` not coming up."""
    for client in rig.clients.values():
        client.state_listeners.clear()
        client.up.clear()
        if client.name in silent:
            client.start = lambda: None  # type: ignore[method-assign]
    settings = rig.settings.model_copy(update={"switch_startup_grace": grace})
    fabric = Fabric(rig.graph, dict(HOSTS), rig.clients, rig.store, settings, fast_failover=rig.fabric.fast_failover)
    rerouter = Rerouter(fabric)
    fabric.graph_listeners.append(rerouter.kick)
    fabric.load()
    rerouter.start()
    fabric.start()
    return fabric, rerouter


async def test_switches_coming_up_one_by_one_after_a_restart_change_nothing() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    transit = plan.a_to_b.path.switches[1]
    writes_before = {sw: len(c.writes) for sw, c in rig.clients.items()}
    fabric, rerouter = restarted(rig, {transit}, grace=30.0)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.came_up.wait() for n, c in rig.clients.items() if n != transit)), 5)
        await rerouter.settled()
        assert fabric.plans[plan.id] == plan, "a connection over a switch not heard from yet was changed"
        await rig.clients[transit].set_up()
        await rerouter.settled()
        assert fabric.plans[plan.id] == plan
        assert {sw: len(c.writes) for sw, c in rig.clients.items()} == writes_before
    finally:
        await rerouter.stop()


async def test_a_switch_silent_past_the_startup_grace_is_down_and_its_connections_move() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    transit = plan.a_to_b.path.switches[1]
    fabric, rerouter = restarted(rig, {transit}, grace=0.2)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while transit in fabric.plans[plan.id].a_to_b.path.switches:
            assert loop.time() < deadline, "connections over a dead switch stayed on it"
            await asyncio.sleep(0.02)
        assert transit in rig.graph.down_switches
        assert fabric.plans[plan.id].state == "up"
    finally:
        await rerouter.stop()


async def test_a_switch_stored_down_is_down_from_the_start_and_its_connections_move_at_once() -> None:
    """The last run saw the transit switch die (its record says so) and died before moving the
    connection: the restarted controller does not wait the start-up grace for evidence it has."""
    rig = Rig(DIAMOND)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    transit = plan.a_to_b.path.switches[1]
    rig.store.put_record(SWITCH_STATE, transit, StoredSwitch(up=False).model_dump_json())
    fabric, rerouter = restarted(rig, {transit}, grace=30.0)
    try:
        await until(lambda: transit not in fabric.plans[plan.id].a_to_b.path.switches, "the connection to move off it", 2.0)
        assert fabric.plans[plan.id].state == "up" and transit in rig.graph.down_switches
    finally:
        await rerouter.stop()


async def test_switch_states_are_stored_as_they_change() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    assert {n: StoredSwitch.model_validate_json(v) for n, v in rig.store.records(SWITCH_STATE).items()} == {
        n: StoredSwitch(up=True) for n in rig.clients}
    await rig.clients["s2"].set_down()
    assert StoredSwitch.model_validate_json(rig.store.get_record(SWITCH_STATE, "s2") or "") == StoredSwitch(up=False)


async def test_a_switch_that_came_back_empty_is_out_of_paths_until_reprogrammed() -> None:
    """The transit switch restarted while nobody watched and holds nothing: its connections
    move to their backups, and once it is reconciled it holds exactly the desired entries."""
    rig = Rig(DIAMOND)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    transit = plan.a_to_b.path.switches[1]
    emptied = rig.clients[transit]
    emptied.entities = EntityStore(P4InfoIndex(emptied.schema.p4info), NSM_FABRIC)
    taken_out: list[bool] = []
    fabric, rerouter = restarted(rig, set(), grace=30.0)
    fabric.graph_listeners.append(lambda: taken_out.append(transit in rig.graph.down_switches))
    try:
        await until(lambda: transit in fabric.ready_switches, "the emptied switch to be reconciled")
        await until(lambda: rerouter.idle, "heal to settle")
        assert True in taken_out, "the emptied switch was never taken out of the paths"
        assert transit not in fabric.plans[plan.id].a_to_b.path.switches, "its connection stayed on it"
        assert fabric.plans[plan.id].state == "up"
        for sw in rig.clients:
            have, want = set(await fabric.read_back(sw)), set(fabric.desired(sw))
            assert have == want, f"{sw}: extra {have - want}, missing {want - have}"
    finally:
        await rerouter.stop()


async def test_no_connection_is_down_for_want_of_a_path_over_switches_not_heard_from_yet() -> None:
    """Both stored paths are over switches known dead (s2, s3); s5 is not heard from yet. That
    is no proof that no path is left: the connection is not marked DOWN, and once s5 is up it
    moves there."""
    rig = Rig(TRIPLE)
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    assert {plan.a_to_b.path.switches[1], plan.a_to_b_backup.path.switches[1]} == {"s2", "s3"}  # type: ignore[union-attr]
    for dead in ("s2", "s3"):
        rig.store.put_record(SWITCH_STATE, dead, StoredSwitch(up=False).model_dump_json())
    events: list[str] = []
    fabric, rerouter = restarted(rig, {"s2", "s3", "s5"}, grace=30.0)
    fabric.listeners.append(lambda p, event: events.append(event))
    try:
        await until(lambda: {"s1", "s4"} <= fabric.ready_switches, "s1 and s4")
        await until(lambda: rerouter.idle, "heal to settle")
        assert fabric.plans[plan.id].state == "up" and "down" not in events
        await rig.clients["s5"].set_up()
        await until(lambda: "s5" in fabric.plans[plan.id].a_to_b.path.switches, "the connection to move over s5")
        assert "down" not in events
    finally:
        await rerouter.stop()
