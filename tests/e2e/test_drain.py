"""Draining a switch on the softswitch diamond under sequence-numbered streams: every connection
that can avoid the switch is moved off it, so that emptying the switch (what a pipeline commit
does to its tables) and rewriting it loses not one frame of theirs; afterwards the switch holds
exactly the desired entries again (read back) and paths may use it.

Softswitch only: the subject is the fabric's drain, not a target's behaviour. Streams and their
loss accounting are the heal benchmark's (benchmarks/heal).
"""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from benchmarks.heal.analysis import stream_result
from benchmarks.heal.scenario import settle
from benchmarks.heal.traffic import Stream, Traffic
from controller.fabric import entries as E
from controller.fabric.drain import drain, restore
from controller.runtime import Controller
from controller.settings import REPO_ROOT
from controller.topology import host_ifname, load_topology
from tests.e2e.lab_fixtures import running_controller
from tests.e2e.switch_kinds import SOFTSWITCH, require
from tests.e2e.topology import with_free_ports

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet, network namespaces)"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)"),
]

PAIRS = [("h1", "h3"), ("h2", "h4"), ("h1", "h4"), ("h2", "h3")]
CONNECTIONS = 8
RATE = 200.0  # frames/s per stream: a frame every 5 ms
LEAD_S = 0.5  # streams run this long before the drain, and after the switch is back
# How long the switch stays empty, as a pipeline commit leaves it: the fault's length (long
# enough for dozens of frames to be lost if anything still crossed it), not a wait for anything.
EMPTY_S = 0.4
SETTLE_S = 60.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from lab.harness import Lab

    require(SOFTSWITCH)
    topo = with_free_ports(load_topology(REPO_ROOT / "topologies" / "diamond.yaml"))
    run_dir = tmp_path_factory.mktemp("drain")
    lab = Lab(topo, run_dir, tls=False)
    lab.start()
    try:
        yield lab.topology, run_dir
    finally:
        lab.stop()


@pytest.fixture
async def ctl(lab):
    topo, run_dir = lab
    async with running_controller(topo, run_dir) as ctl:
        yield ctl


async def empty_and_rewrite(ctl: Controller, switch: str) -> None:
    """What a commit of a new pipeline does to the switch's state, then the rewrite after it."""
    fabric = ctl.fabric
    assert fabric.programmer is not None
    held = await fabric.read_back(switch)
    for phase in E.phases([(E.DELETE, spec) for spec in held]):
        await fabric.programmer.write_ops(phase)
    assert await fabric.read_back(switch) == []
    await asyncio.sleep(EMPTY_S)
    await fabric.reconcile(switch)
    assert set(await fabric.read_back(switch)) == set(fabric.desired(switch))


async def test_connections_that_avoid_a_drained_switch_lose_nothing_while_it_is_emptied(lab, ctl) -> None:
    topo, run_dir = lab
    plans = [await ctl.fabric.connect(*PAIRS[i % len(PAIRS)]) for i in range(CONNECTIONS)]
    await settle(ctl, SETTLE_S)
    plans = [ctl.fabric.plans[p.id] for p in plans]
    # The transit switch most active paths cross: the one whose emptying would hurt most.
    switch = max(("s2", "s3"), key=lambda s: sum(p.crosses(switch=s) for p in plans))
    crossing = {p.id for p in plans if p.crosses(switch=switch)}
    assert crossing, f"no connection crosses {switch}: the test would prove nothing"
    streams = [Stream(k, p.id, p.a.host, p.b.host, p.a.vlan, RATE) for k, p in enumerate(plans)]
    traffic = Traffic(streams, {h.name: host_ifname(h.name) for h in topo.hosts}, run_dir)
    await traffic.start()
    try:
        start_ns, task = await traffic.run(1, LEAD_S * 2 + EMPTY_S + 2.0)
        await asyncio.sleep(LEAD_S)
        report = await drain(ctl.fabric, switch)
        assert set(report.moved) == crossing and report.stuck == ()
        assert not any(p.crosses(switch=switch) for p in ctl.fabric.plans.values())
        await empty_and_rewrite(ctl, switch)
        restore(ctl.fabric, switch)
        done = await task
    finally:
        await traffic.close()
    lost = {}
    for s in streams:
        result = stream_result(s, done.records[done.records["stream"] == s.index], done.sent[s.index], start_ns, True)
        assert result.sent > 0
        lost[s.conn_id[:8]] = result.sent - result.received
    assert lost == {k: 0 for k in lost}, f"frames lost per connection (drained {switch}): {lost}"
    assert switch not in ctl.fabric.graph.drained_switches
