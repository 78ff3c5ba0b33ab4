"""A restarted controller takes its stored connections as evidence: a switch it has not heard
from yet is not dead, so nothing is moved, marked DOWN or written while the switches come up one
by one; one that stays silent past the start-up grace is dead, and its connections move."""

from __future__ import annotations

import asyncio

from controller.fabric.connections import Fabric
from controller.heal.reroute import Rerouter
from tests.unit.fabric_rig import DIAMOND, HOSTS, Rig


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
