"""The controller core end to end: Mininet lab of softswitches, the real controller, scapy frames.

- a connection across line3 and diamond carries frames end to end;
- closing it leaves every table exactly as before (read back from each switch);
- a write rejected on one switch (full table) leaves no entry of that connection on any switch,
  and the store has no record of it;
- two concurrent connections stay isolated;
- a restarted controller reconciles without rewriting, and traffic keeps flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid

import pytest
from finsy.proto import p4r
from scapy.layers.l2 import Dot1Q, Ether

from controller.fabric import entries as E
from controller.fabric.connections import ConnectError
from controller.p4rt.errors import SwitchError
from controller.p4rt.schema import update
from controller.runtime import Controller
from controller.settings import REPO_ROOT
from controller.topology import load_topology
from tests.e2e.hosts import Host
from tests.e2e.lab_fixtures import running_controller
from tests.e2e.switch_kinds import SWITCH_KINDS, controller_overrides, on_kind, require
from tests.e2e.topology import tagged
from tests.support.settings import settings_for_test

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet, network namespaces)"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)"),
]


@pytest.fixture(scope="module", params=[pytest.param((topo, kind.values[0]), id=f"{topo}-{kind.id}", marks=kind.marks)
                                        for kind in SWITCH_KINDS for topo in ("line3", "diamond")])
def lab(request, tmp_path_factory):
    from lab.harness import Lab

    name, kind = request.param
    require(kind)
    run_dir = tmp_path_factory.mktemp(f"lab-{name}-{kind}")
    # On BMv2 every switch runs p4c's build of nsm_fabric.p4; its P4Info (p4c's ids) goes with it.
    topo = on_kind(load_topology(REPO_ROOT / "topologies" / f"{name}.yaml"), kind)
    lab = Lab(topo, run_dir)
    lab.start()
    # The switches serve mutual TLS: the lab's topology names their CA, its settings the certificate.
    overrides = {**controller_overrides(kind, run_dir), **lab.controller_settings()}
    try:
        yield lab.topology, lab, run_dir, overrides
    finally:
        lab.stop()


@pytest.fixture
async def controller(lab):
    topo, _, run_dir, overrides = lab
    async with running_controller(topo, run_dir, overrides) as ctl:
        yield ctl


@pytest.fixture
def hosts(lab):
    topo = lab[0]
    agents = {h.name: Host(h.name, h.name) for h in topo.hosts}
    try:
        for h in topo.hosts:
            agents[h.name].listen(f"{h.name}-eth0")
        yield agents
    finally:
        for a in agents.values():
            a.close()


async def snapshot(ctl: Controller) -> dict[str, set]:
    return {sw: set(await ctl.fabric.read_back(sw)) for sw in ctl.clients}


def far_hosts(topo) -> tuple[str, str]:
    return topo.hosts[0].name, topo.hosts[-1].name


async def send_and_expect(hosts, src: str, dst: str, vid_in: int, vid_out: int | None, marker: bytes) -> list[bytes]:
    await asyncio.to_thread(hosts[src].send, f"{src}-eth0", [tagged(vid_in, marker)])
    got = await asyncio.to_thread(hosts[dst].take, f"{dst}-eth0", marker, 1, 2.0 if vid_out is not None else 0.7)
    if vid_out is not None:
        assert len(got) == 1, f"frame {marker!r} from {src} did not reach {dst}"
        frame = Ether(got[0])
        assert frame[Dot1Q].vlan == vid_out and frame.type == 0x8100
        assert bytes(frame[Dot1Q].payload).startswith(marker)
    return got


async def test_connection_carries_frames_and_close_restores_tables(controller, hosts, lab):
    topo = lab[0]
    a, b = far_hosts(topo)
    before = await snapshot(controller)
    plan = await controller.fabric.connect(a, b)
    assert plan.a_to_b.path.switches[0] == topo.host_port(a).switch
    assert plan.a_to_b.path.switches[-1] == topo.host_port(b).switch
    # entries are on the switches, read back
    during = await snapshot(controller)
    for spec in E.all_entries(plan):
        assert spec in during[spec.switch], f"missing on {spec.switch}: {spec}"
    await send_and_expect(hosts, a, b, plan.a.vlan, plan.b.vlan, b"fwd-" + plan.id[:8].encode())
    await send_and_expect(hosts, b, a, plan.b.vlan, plan.a.vlan, b"rev-" + plan.id[:8].encode())
    # untagged-to-the-wrong-VLAN frames are dropped
    assert await send_and_expect(hosts, a, b, plan.a.vlan + 1, None, b"stray-vlan") == []
    assert await controller.fabric.disconnect(plan.id)
    assert await snapshot(controller) == before
    assert controller.store.get(plan.id) is None
    assert await send_and_expect(hosts, a, b, plan.a.vlan, None, b"after-close") == []


async def test_two_connections_stay_isolated(controller, hosts, lab):
    topo = lab[0]
    names = [h.name for h in topo.hosts]
    if len(names) < 3:
        pytest.skip("needs three hosts")
    a, b = far_hosts(topo)
    c = names[1]
    p1 = await controller.fabric.connect(a, b)
    p2 = await controller.fabric.connect(c, b)
    assert p1.b.vlan != p2.b.vlan
    got = await send_and_expect(hosts, a, b, p1.a.vlan, p1.b.vlan, b"iso-one")
    got2 = await send_and_expect(hosts, c, b, p2.a.vlan, p2.b.vlan, b"iso-two")
    assert Ether(got[0])[Dot1Q].vlan != Ether(got2[0])[Dot1Q].vlan
    # a's frames on c's VLAN id go nowhere: VLANs are per host port
    if p2.a.vlan != p1.a.vlan:
        assert await send_and_expect(hosts, a, b, p2.a.vlan, None, b"iso-cross") == []


async def test_rejected_write_leaves_nothing(controller, lab):
    """Fill the head switch's edge_classify table: the head entry (written last) is refused, and
    every label entry already written on every switch is removed again."""
    topo = lab[0]
    a, b = far_hosts(topo)
    head = topo.host_port(a).switch
    client = controller.clients[head]
    schema = controller.schema
    size = schema.table(E.EDGE_TABLE).size
    junk = [
        update(p4r.Update.INSERT, schema.table_entry(E.EDGE_TABLE, {"ingress_port": 400 + i // 4000, "vlan_id": 1 + i % 4000},
                                                     "push_label", {"label": 7}))
        for i in range(size)
    ]
    before = await snapshot(controller)
    await client.write(junk)
    try:
        with pytest.raises(SwitchError) as err:
            await controller.fabric.connect(a, b)
        assert err.value.switch == head
        assert any(e.table_full for e in err.value.failed)
        after = await snapshot(controller)
        for sw in controller.clients:
            extra = {e for e in after[sw] - before[sw] if not (e.table == E.EDGE_TABLE and e.switch == head and dict(e.params).get("label") == 7)}
            assert extra == set(), f"orphaned entries on {sw}: {extra}"
        assert controller.store.all() == []
        assert controller.fabric.plans == {}
    finally:
        await client.write([update(p4r.Update.DELETE, u.entity.table_entry) for u in junk])


async def test_bad_requests_touch_no_switch(controller, lab):
    topo = lab[0]
    before = await snapshot(controller)
    with pytest.raises(ConnectError, match="unknown host 'nope'") as err:
        await controller.fabric.connect(topo.hosts[0].name, "nope")
    assert err.value.field == "b"
    with pytest.raises(ConnectError, match="two different hosts"):
        await controller.fabric.connect(topo.hosts[0].name, topo.hosts[0].name)
    assert await snapshot(controller) == before
    assert controller.store.all() == []


async def test_restart_reconciles_without_rewriting(lab, hosts):
    """Kmesh's lesson: a controller restart must not interrupt traffic."""
    topo, _, run_dir, overrides = lab
    settings = settings_for_test({**overrides, "store_path": str(run_dir / f"restart-{uuid.uuid4().hex[:6]}.sqlite")})
    a, b = far_hosts(topo)
    first = Controller(topo, settings)
    await first.start()
    assert await first.wait_ready(30)
    plan = await first.fabric.connect(a, b)
    await first.stop()  # the switches keep forwarding with nobody in charge
    await send_and_expect(hosts, a, b, plan.a.vlan, plan.b.vlan, b"headless")
    second = Controller(topo, settings)
    await second.start()
    try:
        assert await second.wait_ready(30)
        assert plan.id in second.fabric.plans
        # nothing was rewritten: the pipeline was kept by cookie and every switch's start-up
        # reconcile found exactly the desired entries
        assert {sw: c.pipeline_pushes for sw, c in second.clients.items()} == {sw: 0 for sw in second.clients}
        assert second.fabric.last_reconcile == {sw: (0, 0, 0) for sw in second.clients}
        await send_and_expect(hosts, a, b, plan.a.vlan, plan.b.vlan, b"after-restart")
    finally:
        await second.fabric.disconnect(plan.id)
        await second.stop()
