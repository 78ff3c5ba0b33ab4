"""Heal end to end on diamond: each failure kind moves the connection to the other path, frames
flow again, the element's return does not disturb traffic, and afterwards every switch holds
exactly the desired entries (read back). Functional, not timed: figures are in the heal benchmark.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess

import pytest
from finsy.proto import p4r

from controller.fabric import entries as E
from controller.fabric.model import Leg
from controller.p4rt.errors import SwitchError
from controller.p4rt.schema import update
from controller.runtime import Controller
from controller.settings import REPO_ROOT
from controller.topology import load_topology, switch_ifname
from lab import faults
from tests.e2e.hosts import Host
from tests.e2e.lab_fixtures import running_controller
from tests.e2e.switch_kinds import SWITCH_KINDS, controller_overrides, on_kind, require
from tests.e2e.test_fabric_connections import send_and_expect
from tests.e2e.topology import crosses, tagged

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet, network namespaces)"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)"),
]

# the load test's data on the connection's path: LOAD_PPS frames/s in bursts every LOAD_BURST_S
LOAD_S = 3.0
LOAD_PPS = 2_000
LOAD_BURST_S = 0.02


@pytest.fixture(scope="module", params=SWITCH_KINDS)
def lab(request, tmp_path_factory):
    """Diamond of softswitches, or of real BMv2 switches running p4c's build of the program."""
    from lab.harness import Lab

    kind = request.param
    require(kind)
    topo = on_kind(load_topology(REPO_ROOT / "topologies" / "diamond.yaml"), kind)
    run_dir = tmp_path_factory.mktemp(f"heal-{kind}")
    lab = Lab(topo, run_dir)
    lab.start()
    # The switches serve mutual TLS: the lab's topology names their CA, its settings the certificate.
    lab.overrides = {**controller_overrides(kind, run_dir), **lab.controller_settings()}  # type: ignore[attr-defined]
    try:
        yield lab.topology, lab, run_dir
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def hosts(lab):
    agents = {h: Host(h, h) for h in ("h1", "h4")}
    try:
        for name, agent in agents.items():
            agent.listen(f"{name}-eth0")
        yield agents
    finally:
        for a in agents.values():
            a.close()


@pytest.fixture
async def ctl(lab):
    topo, lab_obj, run_dir = lab
    events: list[tuple[str, str]] = []

    def record(ctl: Controller) -> None:
        ctl.fabric.listeners.append(lambda plan, event: events.append((plan.id, event)))
        ctl.events = events  # type: ignore[attr-defined]

    async with running_controller(topo, run_dir, lab_obj.overrides, setup=record) as ctl:
        yield ctl


async def wait_for(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def probes_caught_up(ctl, switch: str, timeout: float = 5.0) -> None:
    """Until every probe sent so far across `switch`'s links, both ways, has been answered by a
    later one: no probe missed before now can count against a link any more."""
    sent = {k: d.seq for k, d in ctl.links.directions.items() if switch in (d.src, d.dst)}
    await wait_for(lambda: all(ctl.links.directions[k].rx_seq >= seq for k, seq in sent.items()), timeout,
                   f"probes across {switch}'s links again")


async def flows_again(hosts, plan, timeout: float = 8.0) -> None:
    await crosses(hosts["h1"], "h1-eth0", hosts["h4"], "h4-eth0", plan.a.vlan, "heal", timeout)


async def exactly_desired(ctl: Controller) -> None:
    await wait_for(lambda: ctl.rerouter.idle, 10, "the heal rounds to finish")
    for sw in ctl.clients:
        have = set(await ctl.fabric.read_back(sw))
        want = set(ctl.fabric.desired(sw))
        assert have == want, f"{sw}: extra {have - want}, missing {want - have}"


def silent_cut(ifname: str, on: bool) -> None:
    """A silent cut of what the interface sends (carrier stays up)."""
    (faults.cut if on else faults.mend)(ifname)


async def connect(ctl, hosts):
    plan = await ctl.fabric.connect("h1", "h4")
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"before-" + plan.id[:6].encode())
    return plan


def middle(plan) -> str:
    return plan.a_to_b.path.switches[1]


async def recovered(ctl, plan, failed_switch: str | None = None, failed_link: str | None = None) -> None:
    await wait_for(lambda: ctl.fabric.plans[plan.id].state == "up"
                   and not ctl.fabric.plans[plan.id].crosses(switch=failed_switch, link=failed_link), 8, "reroute")


async def test_silent_link_cut(ctl, hosts, lab):
    plan = await connect(ctl, hosts)
    link = plan.a_to_b.path.links[0]
    link_obj = ctl.fabric.graph.links[link]
    ifs = [switch_ifname(link_obj.a, link_obj.a_port), switch_ifname(link_obj.b, link_obj.b_port)]
    for i in ifs:
        await asyncio.to_thread(silent_cut, i, True)
    try:
        await recovered(ctl, plan, failed_link=link)
        await flows_again(hosts, plan)
        assert (plan.id, "rerouted") in ctl.events
        moved = ctl.fabric.plans[plan.id]
    finally:
        for i in ifs:
            await asyncio.to_thread(silent_cut, i, False)
    # the link returns after its hysteresis; traffic stays where it is and keeps flowing
    await wait_for(lambda: ctl.links.link_up(link), 10, "link recovery")
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"after-return")
    assert ctl.fabric.plans[plan.id].a_to_b.path == moved.a_to_b.path
    await wait_for(lambda: ctl.fabric.plans[plan.id].a_to_b_backup is not None, 5, "a new backup")
    await exactly_desired(ctl)


async def test_switch_cut_off_on_every_port(ctl, hosts, lab):
    """A middle switch that still answers keepalives but whose every fabric port went silent has
    no probe of its own to show: a cut shorter than `probe_keepalive_proof_delay` is taken for a
    lagging packet path and changes nothing; a longer one takes both its links down and the
    connection moves to the other middle switch."""
    plan = await connect(ctl, hosts)
    victim = middle(plan)
    ctl.links.settings = ctl.settings.model_copy(update={"probe_keepalive_proof_delay": 1.5})
    links = [l for l in ctl.fabric.graph.links.values() if victim in (l.a, l.b)]
    # every end at one instant: a link cut well before another would rightly be declared down
    # while the victim still delivers over the other one
    cutter = faults.SilentCut(switch_ifname(sw, port) for l in links for sw, port in ((l.a, l.a_port), (l.b, l.b_port)))
    await asyncio.to_thread(cutter.install)
    try:
        cutter.set(True)
        await asyncio.sleep(0.3)  # the fault: a silence this long
        cutter.set(False)
        await probes_caught_up(ctl, victim)
        assert all(ctl.links.link_up(l.name) for l in links), "a short silence with keepalives answered took links down"
        assert ctl.fabric.plans[plan.id].crosses(switch=victim)

        cutter.set(True)
        await wait_for(lambda: not any(ctl.links.link_up(l.name) for l in links), 8, f"{victim}'s links to go down")
        await recovered(ctl, plan, failed_switch=victim)
        await flows_again(hosts, plan)
    finally:
        await asyncio.to_thread(cutter.remove)
    await wait_for(lambda: all(ctl.links.link_up(l.name) for l in links), 10, "link recovery")
    await exactly_desired(ctl)


async def test_port_down(ctl, hosts, lab):
    _, lab_obj, _ = lab
    plan = await connect(ctl, hosts)
    hop = plan.a_to_b.path.hops[0]
    await asyncio.to_thread(lab_obj.set_port_up, hop.switch, hop.out_port, False)
    try:
        await recovered(ctl, plan, failed_link=plan.a_to_b.path.links[0])
        await flows_again(hosts, plan)
        # only the cut link is down: a neighbouring port's carrier loss is no news about the others
        # (a BMv2 with one of its own interfaces admin-down stops receiving on every port)
        assert [n for n, s in ctl.links.links.items() if not s.up] == [plan.a_to_b.path.links[0]]
    finally:
        await asyncio.to_thread(lab_obj.set_port_up, hop.switch, hop.out_port, True)
    await wait_for(lambda: ctl.links.link_up(plan.a_to_b.path.links[0]), 10, "link recovery")
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"port-back")
    await exactly_desired(ctl)


async def test_switch_killed_and_restarted(ctl, hosts, lab):
    _, lab_obj, _ = lab
    plan = await connect(ctl, hosts)
    victim = middle(plan)
    lab_obj.kill_switch(victim, signal.SIGKILL)
    await recovered(ctl, plan, failed_switch=victim)
    await flows_again(hosts, plan)
    await asyncio.to_thread(lab_obj.restart_switch, victim)
    # back: arbitrated, pipeline pushed again (it lost it), reconciled, links re-verified
    await wait_for(lambda: victim in ctl.fabric.ready_switches, 15, f"{victim} to return")
    await wait_for(lambda: all(ctl.links.link_up(l.name) for l in ctl.fabric.graph.links.values()), 10, "links")
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"victim-back")
    await wait_for(lambda: ctl.fabric.plans[plan.id].a_to_b_backup is not None, 5, "a new backup")
    await exactly_desired(ctl)


async def test_failed_reconcile_is_retried(ctl, hosts, lab, caplog):
    """A switch that returns but whose reconcile fails (it froze, as a starved one seems to, and
    the reconcile's Reads miss their deadline while its session lasts) stays out of every path,
    is reconciled again with backoff, and is used once that succeeds, holding exactly the
    desired entries."""
    _, lab_obj, _ = lab
    plan = await connect(ctl, hosts)
    victim = middle(plan)
    client = ctl.clients[victim]
    normal = client.settings
    thawed = asyncio.Event()

    def thaw() -> None:
        lab_obj.kill_switch(victim, signal.SIGCONT)
        client.settings = normal
        thawed.set()

    async def freeze_on_return(c, up: bool, reason: str) -> None:
        # runs before the fabric's listener, once the session is up and the pipeline verified
        if up and not thawed.is_set():
            client.settings = client.settings.model_copy(update={"rpc_timeout": 0.05})
            lab_obj.kill_switch(victim, signal.SIGSTOP)
            asyncio.get_running_loop().call_later(0.6, thaw)

    lab_obj.kill_switch(victim, signal.SIGKILL)
    await recovered(ctl, plan, failed_switch=victim)
    # the next session outlives the freeze: the switch stays up, only its reads fail
    client.settings = normal.model_copy(update={"keepalive_timeout": 5.0})
    client.state_listeners.insert(0, freeze_on_return)
    try:
        await asyncio.to_thread(lab_obj.restart_switch, victim)
        await asyncio.wait_for(thawed.wait(), 20)
        failures = [r for r in caplog.records if "event=reconcile_failed" in r.getMessage() and f"switch={victim}" in r.getMessage()]
        assert len(failures) >= 2, "the reconcile was not retried while it failed"
        assert client.up.is_set() and victim not in ctl.fabric.ready_switches
        assert not any(p.crosses(switch=victim) for p in ctl.fabric.plans.values())
    finally:
        client.state_listeners.remove(freeze_on_return)
        if not thawed.is_set():
            thaw()
    await wait_for(lambda: victim in ctl.fabric.ready_switches, 10, f"{victim} reconciled")
    await wait_for(lambda: all(ctl.links.link_up(l.name) for l in ctl.fabric.graph.links.values()), 10, "links")
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"reconciled-late")
    await exactly_desired(ctl)


async def test_short_stalls_take_no_link_down(ctl, hosts, lab, caplog):
    """A switch that stalls for less than the keepalive timeout (as a starved one does) sends its
    backlog of probes late, all at once: its links were never dead and must not be declared so."""
    _, lab_obj, _ = lab
    plan = await connect(ctl, hosts)
    victim = middle(plan)
    for _ in range(15):
        lab_obj.kill_switch(victim, signal.SIGSTOP)
        await asyncio.sleep(0.08)  # the fault: eight probe rounds; keepalive_timeout is 0.15 s
        lab_obj.kill_switch(victim, signal.SIGCONT)
        await asyncio.sleep(0.3)  # the fault's rhythm: a stall every 0.38 s
    await probes_caught_up(ctl, victim)  # the last stall's probes are judged by now
    # (were the machine so loaded that a stall outlasted the keepalive timeout, the switch would
    # be down, and its links with it, by the switch monitor: that is not what is checked here)
    downs = [r.getMessage() for r in caplog.records if "event=down" in r.getMessage() and r.name == "p4nsm.heal.links"]
    assert not downs, downs


async def test_a_loaded_machine_takes_no_healthy_link_down_and_still_sees_a_cut(ctl, hosts, lab, caplog):
    """The heal benchmark's load on the machine (issue 16): two `yes > /dev/null` beside the lab and
    the connection's path carrying LOAD_PPS of data. Probes are late by turns and no link may be
    declared down for it; a silent cut under the same load is still found and healed around."""
    plan = await connect(ctl, hosts)
    link = plan.a_to_b.path.links[0]
    link_obj = ctl.fabric.graph.links[link]
    cut_ifs = [switch_ifname(link_obj.a, link_obj.a_port), switch_ifname(link_obj.b, link_obj.b_port)]
    burners = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(2)]
    cut = False
    try:
        burst = [tagged(plan.a.vlan, b"load-%06d" % i) for i in range(int(LOAD_PPS * LOAD_BURST_S))]
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in range(int(LOAD_S / LOAD_BURST_S)):  # paced bursts from h1 across the fabric
            await asyncio.to_thread(hosts["h1"].send, "h1-eth0", burst)
            await asyncio.sleep(max(0.0, start + (k + 1) * LOAD_BURST_S - loop.time()))  # the pace, not a wait
        for switch in plan.a_to_b.path.switches:
            await probes_caught_up(ctl, switch)
        # the probes' verdicts; a switch starved past keepalive_timeout would be the switch monitor's call
        downs = [r.getMessage() for r in caplog.records if "event=down" in r.getMessage() and r.name == "p4nsm.heal.links"]
        assert not downs, downs
        assert all(ctl.clients[s].up.is_set() for s in ctl.clients), "a switch was declared down under load"

        cut = True
        for i in cut_ifs:
            await asyncio.to_thread(silent_cut, i, True)
        await recovered(ctl, plan, failed_link=link)
        await flows_again(hosts, plan)
        assert [l for l, state in ctl.links.links.items() if not state.up] == [link]
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        if cut:
            for i in cut_ifs:
                await asyncio.to_thread(silent_cut, i, False)
    await wait_for(lambda: ctl.links.link_up(link), 10, "link recovery")
    await exactly_desired(ctl)


async def test_switch_frozen(ctl, hosts, lab):
    _, lab_obj, _ = lab
    plan = await connect(ctl, hosts)
    victim = middle(plan)
    lab_obj.kill_switch(victim, signal.SIGSTOP)
    try:
        await recovered(ctl, plan, failed_switch=victim)
        await flows_again(hosts, plan)
    finally:
        lab_obj.kill_switch(victim, signal.SIGCONT)
    await wait_for(lambda: victim in ctl.fabric.ready_switches, 15, f"{victim} to return")
    await wait_for(lambda: all(ctl.links.link_up(l.name) for l in ctl.fabric.graph.links.values()), 10, "links")
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"thawed")
    await exactly_desired(ctl)


async def test_no_path_is_down_then_up(ctl, hosts, lab):
    """Both middle switches frozen: DOWN with its record kept; one returns: UP again."""
    _, lab_obj, _ = lab
    plan = await connect(ctl, hosts)
    for s in ("s2", "s3"):
        lab_obj.kill_switch(s, signal.SIGSTOP)
    try:
        await wait_for(lambda: ctl.fabric.plans[plan.id].state == "down", 8, "DOWN")
        assert ctl.store.get(plan.id) is not None
    finally:
        for s in ("s2", "s3"):
            lab_obj.kill_switch(s, signal.SIGCONT)
    await wait_for(lambda: ctl.fabric.plans[plan.id].state == "up", 15, "UP")
    await flows_again(hosts, plan)
    assert (plan.id, "down") in ctl.events and (plan.id, "up") in ctl.events
    await wait_for(lambda: all(ctl.links.link_up(l.name) for l in ctl.fabric.graph.links.values()), 10, "links")
    await exactly_desired(ctl)


async def test_flapping_link_does_not_thrash(ctl, hosts, lab):
    plan = await connect(ctl, hosts)
    link = plan.a_to_b.path.links[0]
    lk = ctl.fabric.graph.links[link]
    ifs = [switch_ifname(lk.a, lk.a_port), switch_ifname(lk.b, lk.b_port)]
    for _ in range(10):  # the fault: down and up every 100 ms for 2 s
        for i in ifs:
            await asyncio.to_thread(silent_cut, i, True)
        await asyncio.sleep(0.1)
        for i in ifs:
            await asyncio.to_thread(silent_cut, i, False)
        await asyncio.sleep(0.1)
    reroutes = [e for e in ctl.events if e == (plan.id, "rerouted")]
    assert len(reroutes) == 1, f"thrashed: {len(reroutes)} reroutes"
    assert not ctl.fabric.plans[plan.id].crosses(link=link)
    await flows_again(hosts, plan)
    await wait_for(lambda: ctl.links.link_up(link), 10, "link recovery after the flapping stops")
    await exactly_desired(ctl)


async def test_forged_probe_is_ignored_and_counted(ctl, hosts, lab):
    """A host sends frames that look like probes: they are punted, recognised as not ours,
    counted, and change nothing."""
    from controller.heal import probe_frame

    links_before = {n: s.up for n, s in ctl.links.links.items()}
    foreign = ctl.links.counters["foreign"]
    forged = probe_frame.encode(probe_frame.Probe(origin=ctl.links.origin ^ 1, device_id=2, port=3, seq=1, sent_ns=0))
    await asyncio.to_thread(hosts["h1"].send, "h1-eth0", [forged] * 5)
    await wait_for(lambda: ctl.links.counters["foreign"] >= foreign + 5, 3, "forged probes to be counted")
    # our own origin but arriving where no link says it should: a topology mismatch, not used
    mismatch = ctl.links.counters["mismatch"]
    spoofed = probe_frame.encode(probe_frame.Probe(origin=ctl.links.origin, device_id=2, port=3, seq=10**9, sent_ns=0))
    await asyncio.to_thread(hosts["h1"].send, "h1-eth0", [spoofed])
    await wait_for(lambda: ctl.links.counters["mismatch"] > mismatch, 3, "the mismatch to be reported")
    assert {n: s.up for n, s in ctl.links.links.items()} == links_before


async def test_losing_every_switch_keeps_the_store(ctl, hosts, lab):
    """Every switch unreachable at once (all frozen): connections go DOWN but stay stored; when
    the switches answer again everything reconciles and traffic flows on the same entries."""
    _, lab_obj, _ = lab
    plan = await connect(ctl, hosts)
    names = [s.name for s in lab[0].switches]
    for s in names:
        lab_obj.kill_switch(s, signal.SIGSTOP)
    try:
        await wait_for(lambda: not ctl.fabric.ready_switches, 8, "every switch to be seen down")
        await wait_for(lambda: ctl.fabric.plans[plan.id].state == "down", 8, "DOWN")
        assert [p.id for p in ctl.store.all()] == [plan.id]
    finally:
        for s in names:
            lab_obj.kill_switch(s, signal.SIGCONT)
    await wait_for(lambda: ctl.fabric.ready_switches == set(names), 20, "switches back")
    await wait_for(lambda: ctl.fabric.plans[plan.id].state == "up", 15, "UP")
    await flows_again(hosts, plan)
    await wait_for(lambda: all(ctl.links.link_up(l.name) for l in ctl.fabric.graph.links.values()), 10, "links")
    await exactly_desired(ctl)


async def test_watch_port_failover_without_the_controller(ctl, hosts, lab):
    """The head end's protection group fails over locally: with the controller's heal stopped,
    taking down the port that carries the traffic does not stop it."""
    _, lab_obj, _ = lab
    plan = await connect(ctl, hosts)
    assert any(isinstance(s, E.GroupSpec) and s.switch == "s1" for s in ctl.fabric.specs(plan))
    await ctl.links.stop()
    await ctl.rerouter.stop()
    # which of s1's two fabric ports carries h1's frames now?
    watch = Host("root", None)
    try:
        for ifname in ("s2-eth3", "s3-eth3"):
            await asyncio.to_thread(watch.listen, ifname)
        marker = b"which-way"
        await asyncio.to_thread(hosts["h1"].send, "h1-eth0", [tagged(plan.a.vlan, marker)])
        via = [i for i in ("s2-eth3", "s3-eth3") if await asyncio.to_thread(watch.take, i, marker, 1, 1.0)]
        assert len(via) == 1
        carrying_port = 3 if via[0] == "s2-eth3" else 4
        await asyncio.to_thread(lab_obj.set_port_up, "s1", carrying_port, False)
        try:
            await flows_again(hosts, plan, timeout=3)
        finally:
            await asyncio.to_thread(lab_obj.set_port_up, "s1", carrying_port, True)
    finally:
        watch.close()


async def test_rejected_path_change_is_rolled_back(ctl, hosts, lab):
    """MARIN3R's lesson: a switch that rejects part of a path change gets the last good state
    back. The tail's label table is full, so the new leg's entry is refused there; the entries
    already written for it on the other switches are removed and the old path keeps working."""
    plan = await connect(ctl, hosts)
    tail = plan.b.switch
    client, schema = ctl.clients[tail], ctl.schema
    room = schema.table(E.LABEL_TABLE).size - len(await client.read_table_entries(E.LABEL_TABLE))
    junk_from = (1 << 20) - room
    junk = [update(p4r.Update.INSERT, schema.table_entry(E.LABEL_TABLE, {"label": junk_from + i}, "FabricIngress.forward", {"port": 3}))
            for i in range(room)]
    await client.write(junk)
    try:
        new = plan.model_copy(update={"a_to_b": Leg(label=ctl.fabric.alloc.labels.take(), path=plan.a_to_b.path),
                                      "revision": plan.revision + 1})
        with pytest.raises(SwitchError) as err:
            await ctl.fabric.transition(plan, new)
        assert err.value.switch == tail
        for sw in ctl.clients:
            have = {e for e in await ctl.fabric.read_back(sw)
                    if not (sw == tail and isinstance(e, E.EntrySpec) and e.table == E.LABEL_TABLE
                            and dict(e.match)["label"] >= junk_from)}
            want = set(ctl.fabric.desired(sw))
            assert have == want, f"{sw}: extra {have - want}, missing {want - have}"
        await flows_again(hosts, plan)
    finally:
        await client.write([update(p4r.Update.DELETE, u.entity.table_entry) for u in junk])


async def test_drift_on_a_live_switch_is_repaired(ctl, hosts, lab):
    """Entities written behind the controller's back on switches that stay up (what a delete
    whose answer was lost leaves): a new connection whose keys are taken by stale entities
    overwrites them instead of failing; anti-entropy deletes the orphans and restores a lost
    entry, but only once it has seen the same drift on two sweeps."""
    s = ctl.settings
    prog = ctl.fabric.programmer
    stale = [E.EntrySpec(sw, E.LABEL_TABLE, (("label", label),), "FabricIngress.forward", (("port", 1),))
             for sw in ctl.clients for label in range(s.label_min, s.label_min + 6)]
    h1_switch, h1_port = ctl.fabric.hosts["h1"]
    stale.append(E.EntrySpec(h1_switch, E.EDGE_TABLE, (("ingress_port", h1_port), ("vlan_id", s.vlan_min)),
                             "FabricIngress.push_label", (("label", 99_999),)))
    far = [E.EntrySpec(sw, E.LABEL_TABLE, (("label", 500_000 + i),), "FabricIngress.forward", (("port", 1),))
           for sw in ctl.clients for i in range(3)]
    await prog.write_ops([(E.INSERT, spec) for spec in stale + far])

    plan = await connect(ctl, hosts)  # its keys are the stale ones: lowest free label and VLAN
    assert plan.a.vlan == s.vlan_min and plan.a_to_b.label == s.label_min
    lost = next(e for e in ctl.fabric.specs(plan)
                if isinstance(e, E.EntrySpec) and e.table == E.LABEL_TABLE and e.switch == middle(plan))
    await prog.write_ops([(E.DELETE, lost)])

    await ctl.anti_entropy.sweep()
    middle_has = set(await ctl.fabric.read_back(middle(plan)))
    assert lost not in middle_has and far[0] in set(await ctl.fabric.read_back(far[0].switch)), "acted on a drift seen once"
    await ctl.anti_entropy.sweep()
    assert ctl.anti_entropy.counters["orphans_deleted"] >= len(far)
    await exactly_desired(ctl)
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"after-anti-entropy")
