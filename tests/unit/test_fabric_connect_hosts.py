"""`p4nsm connect` (Controller.connect_hosts) on fake switches: the host side is made after the
fabric connection, and whatever heal did to the connection meanwhile must survive it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from controller.host import kernel_iface
from controller.runtime import Controller
from controller.settings import REPO_ROOT
from controller.topology import load_topology
from tests.support.settings import settings_for_test
from tests.unit.fabric_rig import schema
from tests.unit.fake_switch import FakeSwitch


@pytest.fixture
async def ctl(tmp_path):  # type: ignore[no-untyped-def]
    settings = settings_for_test(env=False, store_path=tmp_path / "p4nsm.sqlite")
    controller = Controller(load_topology(REPO_ROOT / "topologies" / "diamond.yaml"), settings)
    fakes = {name: FakeSwitch(name, schema()) for name in controller.clients}
    controller.clients.update(fakes)  # the fabric and its programmer share this dict
    controller.fabric.load()
    controller.fabric.start()
    await asyncio.gather(*(f.came_up.wait() for f in fakes.values()))
    yield controller
    await controller.fabric.stop()
    controller.store.close()


async def test_a_reroute_while_the_host_side_is_made_is_kept(ctl, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    reached, release = threading.Event(), threading.Event()

    def ensure_vlan_iface(host, parent, vlan, name, addrs, routes, *, owner):  # type: ignore[no-untyped-def]
        reached.set()
        assert release.wait(30), "the test never released the host side"

    monkeypatch.setattr(kernel_iface, "host_parent_iface", lambda host: f"{host}-eth0")
    monkeypatch.setattr(kernel_iface, "ensure_vlan_iface", ensure_vlan_iface)
    made = asyncio.ensure_future(ctl.connect_hosts("h1", "h4"))
    assert await asyncio.to_thread(reached.wait, 30)
    (conn_id, before), = ctl.fabric.plans.items()
    assert before.a_to_b.path.switches == ("s1", "s2", "s4")

    link = next(l.name for l in ctl.fabric.graph.links.values() if {l.a, l.b} == {"s1", "s2"})
    ctl.fabric.set_link(link, False)
    await ctl.rerouter.heal_round()
    moved = ctl.fabric.plans[conn_id]
    assert moved.a_to_b.path.switches == ("s1", "s3", "s4")
    release.set()
    shown = await made

    now = ctl.fabric.plans[conn_id]
    assert now.a_to_b == moved.a_to_b and now.b_to_a == moved.b_to_a
    assert now.labels["kind"] == "direct" and shown["a_iface"] == now.labels["a_iface"]
    assert ctl.store.get(conn_id) == now
    for sw in ctl.clients:
        assert set(await ctl.fabric.read_back(sw)) == set(ctl.fabric.desired(sw)), sw
