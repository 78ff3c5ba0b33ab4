"""A controller killed with SIGKILL under traffic, something changed while it was down, then
started again (`p4nsm run`, tests/e2e/controller_process.py) on diamond: what changed is found
and handled, and what did not change is left alone.

Traffic is the heal benchmark's (benchmarks/heal/traffic.py): two sequence-numbered streams
over one connection, h1 -> h4 and h4 -> h1, 500 frames/s each, hashed onto the primary leg at
the head end. Every assertion is on numbers: frames lost, and lost after what moment; entity
writes of the restart's reconciles; links and connections declared down in its log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.heal.traffic import Stream, Traffic
from controller.admin import call
from controller.commands.cli import ADMIN_SOCKET
from controller.fabric.model import ConnectionPlan
from controller.heal.link_monitor import LINK_STATE, StoredLink
from controller.settings import REPO_ROOT
from controller.topology import load_topology, switch_ifname
from lab import faults
from tests.e2e.controller_process import ControllerProcess, on_free_ports, write_topology
from tests.e2e.switch_kinds import SWITCH_KINDS, controller_overrides, on_kind, require

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet, network namespaces)"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)"),
]

RATE = 500.0  # frames/s per stream, as the stream
HEAL_WITHIN_S = 4.0  # from the restarted controller's ready signal until every frame arrives again
STARTUP_GRACE_S = 2.0  # switch_startup_grace's default
SETTLE_S = 1.5  # traffic after the last event a test waits for: what it shows has to hold a while


@pytest.fixture(scope="module", params=SWITCH_KINDS)
def lab(request, tmp_path_factory):
    from lab.harness import Lab

    kind = request.param
    require(kind)
    run_dir = tmp_path_factory.mktemp(f"restart-{kind}")
    lab = Lab(on_free_ports(on_kind(load_topology(REPO_ROOT / "topologies" / "diamond.yaml"), kind)), run_dir)
    lab.start()
    try:
        lab.sets = {**controller_overrides(kind, run_dir), **lab.controller_settings()}  # type: ignore[attr-defined]
        lab.topology_file = write_topology(lab.topology, run_dir / "diamond.yaml")  # type: ignore[attr-defined]
        yield lab
    finally:
        lab.stop()


@pytest.fixture
async def ctl(lab, tmp_path):
    """A controller process with a store of its own; its connections removed at the end."""
    proc = ControllerProcess(lab.topology_file, tmp_path, sets=lab.sets)
    await proc.start()
    try:
        yield proc
    finally:
        if proc.pid is None:  # the test failed while it was down: up again, to clean up
            proc.switches = {s.name for s in lab.topology.switches if lab.switch_pid(s.name) is not None}
            await proc.start()
        for row in await call(ADMIN_SOCKET, "connections"):
            await call(ADMIN_SOCKET, "disconnect", id=row["id"])
        await proc.stop()


def stored_plans(store: Path) -> dict[str, ConnectionPlan]:
    """The connections as the store holds them (read-only: the controller may be writing)."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return {row[0]: ConnectionPlan.model_validate_json(row[1]) for row in db.execute("SELECT id, plan FROM connections")}
    finally:
        db.close()


def stored_link(store: Path, name: str) -> StoredLink | None:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM records WHERE kind = ? AND key = ?", (LINK_STATE, name)).fetchone()
    finally:
        db.close()
    return StoredLink.model_validate_json(row[0]) if row else None


@dataclasses.dataclass
class Loss:
    sent: int
    lost: int
    lost_after: int  # of frames sent after `after_ns`
    last_lost_ns: int  # send time of the last frame lost (0: none)


def losses(traffic, after_ns: int) -> dict[int, Loss]:
    """Per stream: frames sent, lost, lost among those sent after `after_ns`, and when the last
    lost one was sent (its sequence number times the period: frames go out on a fixed pace).
    The trial must have gone on for SETTLE_S after `after_ns`, or there is nothing to judge."""
    assert traffic.end_ns > after_ns + SETTLE_S * 1e9, "the trial ended before what it was to show: the restart was too slow"
    out = {}
    for stream, sent in traffic.sent.items():
        got = np.unique(traffic.records["seq"][traffic.records["stream"] == stream])
        missing = np.setdiff1d(np.arange(sent), got)
        period_ns = int(1e9 / RATE)
        sent_at = traffic.start_ns + missing.astype(np.int64) * period_ns
        out[stream] = Loss(sent, len(missing), int((sent_at > after_ns).sum()), int(sent_at.max()) if len(missing) else 0)
    return out


async def connection(proc: ControllerProcess) -> ConnectionPlan:
    made = await call(ADMIN_SOCKET, "connect", a="h1", b="h4")
    return stored_plans(proc.store_path)[made["id"]]


async def streams(plan: ConnectionPlan, run_dir: Path, seconds: float) -> tuple[Traffic, asyncio.Task]:
    traffic = Traffic([Stream(0, plan.id, "h1", "h4", plan.a.vlan, RATE), Stream(1, plan.id, "h4", "h1", plan.b.vlan, RATE)],
                      {"h1": "h1-eth0", "h4": "h4-eth0"}, run_dir)
    await traffic.start()
    _, done = await traffic.run(trial=1, seconds=seconds)
    return traffic, done


async def restart_after(proc: ControllerProcess, change, live: set[str] | None = None) -> tuple[int, int]:
    """SIGKILL the controller, make `change` while it is down, start it again; the moments
    (monotonic ns) it was started and it was ready (every switch in `live` reconciled)."""
    await proc.kill(signal.SIGKILL)
    await asyncio.to_thread(change)
    if live is not None:
        proc.switches = live
    started = time.monotonic_ns()
    await proc.start()
    return started, time.monotonic_ns()


def downs(proc: ControllerProcess) -> list[str]:
    """What the running controller's log declared down: links, switches, connections."""
    return [line.strip() for line in proc.logged("event=down") if "event=down " in line or line.rstrip().endswith("event=down")]


def report(what: str, traffic, started: int, ready: int, proc: ControllerProcess) -> None:
    """The figures of one restart, for the log of the run (pytest -s)."""
    loss = losses(traffic, started)
    last = max((l.last_lost_ns for l in loss.values()), default=0)
    print(f"\n{what}: lost={[l.lost for l in loss.values()]} of sent={[l.sent for l in loss.values()]} "
          f"lost_after_start={[l.lost_after for l in loss.values()]} start_to_ready_s={(ready - started) / 1e9:.2f} "
          f"start_to_last_loss_s={max(0, last - started) / 1e9:.2f} reconciled={proc.reconciled}")


async def test_nothing_changed_loses_nothing_and_writes_nothing(ctl, lab, tmp_path):
    plan = await connection(ctl)
    traffic, done = await streams(plan, tmp_path, 12.0)
    try:
        started, ready = await restart_after(ctl, lambda: None)
        result = await done
    finally:
        await traffic.close()
    loss = losses(result, started)
    report("no drift", result, started, ready, ctl)
    assert all(l.lost == 0 for l in loss.values()), loss
    assert ctl.reconciled == {s: (0, 0, 0) for s in ctl.switches}, "a restart with nothing drifted wrote entries"
    assert not ctl.logged("event=pipeline_push"), "a pipeline was pushed although every switch had it"
    assert not downs(ctl), downs(ctl)
    assert not ctl.logged("event=heal_round"), "the restart moved connections"
    assert stored_plans(ctl.store_path)[plan.id] == plan


async def test_a_link_cut_silently_while_down_is_healed_after_the_restart(ctl, lab, tmp_path):
    plan = await connection(ctl)
    name = plan.a_to_b.path.links[0]
    link = next(l for l in lab.topology.links if f"{l.a.switch}:{l.a.port}" in name and f"{l.b.switch}:{l.b.port}" in name)
    ifaces = [switch_ifname(link.a.switch, link.a.port), switch_ifname(link.b.switch, link.b.port)]
    traffic, done = await streams(plan, tmp_path, 14.0)
    try:
        def cut() -> None:
            for i in ifaces:
                faults.cut(i)

        started, ready = await restart_after(ctl, cut)
        await ctl.wait_for(lambda: bool(ctl.logged(f"link={name} event=down")), HEAL_WITHIN_S, f"{name} judged down")
        await ctl.wait_for(lambda: name not in stored_plans(ctl.store_path)[plan.id].a_to_b.path.links, HEAL_WITHIN_S,
                           "the connection moved off the cut link")
        result = await done
    finally:
        await traffic.close()
        for i in ifaces:
            await asyncio.to_thread(faults.mend, i)
    loss = losses(result, ready + int(HEAL_WITHIN_S * 1e9))
    report("silent cut while down", result, started, ready, ctl)
    assert all(l.lost_after == 0 for l in loss.values()), f"frames lost {HEAL_WITHIN_S}s after the restart: {loss}"
    assert loss[0].lost > 0, "the cut cost nothing: it did not cut the path the stream used"
    moved = stored_plans(ctl.store_path)[plan.id]
    assert moved.state == "up" and name not in moved.a_to_b.path.links + moved.b_to_a.path.links
    stored = stored_link(ctl.store_path, name)
    assert stored is not None and not stored.up, f"the cut link's verdict is stored as {stored}"
    # only the cut link was declared down, and no connection
    assert [l for l in downs(ctl) if "link=" in l and f"link={name} " not in l] == [], downs(ctl)
    assert not [l for l in downs(ctl) if "connection=" in l], downs(ctl)


async def test_a_switch_that_restarted_empty_while_down_is_reprogrammed(ctl, lab, tmp_path):
    plan = await connection(ctl)
    victim = plan.a_to_b.path.switches[1]
    traffic, done = await streams(plan, tmp_path, 14.0)
    try:
        def restart_switch() -> None:
            lab.kill_switch(victim, signal.SIGKILL)
            lab.restart_switch(victim)

        started, ready = await restart_after(ctl, restart_switch)
        result = await done
    finally:
        await traffic.close()
    loss = losses(result, ready + int(HEAL_WITHIN_S * 1e9))
    report("switch restarted empty while down", result, started, ready, ctl)
    assert all(l.lost_after == 0 for l in loss.values()), loss
    moved = stored_plans(ctl.store_path)[plan.id]
    assert moved.state == "up" and victim not in moved.a_to_b.path.switches, "its connection was not on its backup"
    assert ctl.logged(f"switch={victim} event=lost_state"), "the empty switch was not seen as such"
    assert ctl.logged(f"switch={victim} event=pipeline_push") and ctl.reconciled[victim][0] > 0, "not reprogrammed"
    assert not [l for l in downs(ctl) if "connection=" in l], downs(ctl)
    # read back by the next start: every switch holds exactly the desired entries
    await ctl.stop()
    await ctl.start()
    assert ctl.reconciled == {s: (0, 0, 0) for s in ctl.switches}, ctl.reconciled


async def test_a_switch_still_dead_after_the_restart_has_its_connections_on_backups(ctl, lab, tmp_path):
    plan = await connection(ctl)
    victim = plan.a_to_b.path.switches[1]
    traffic, done = await streams(plan, tmp_path, 14.0)
    try:
        started, ready = await restart_after(ctl, lambda: lab.kill_switch(victim, signal.SIGKILL), live=ctl.switches - {victim})
        await ctl.wait_for(lambda: victim not in stored_plans(ctl.store_path)[plan.id].a_to_b.path.switches,
                           STARTUP_GRACE_S + HEAL_WITHIN_S, "the connection on its backup")
        result = await done
    finally:
        await traffic.close()
        await asyncio.to_thread(lab.restart_switch, victim)
    loss = losses(result, started + int((STARTUP_GRACE_S + HEAL_WITHIN_S) * 1e9))
    report("switch still dead", result, started, ready, ctl)
    assert all(l.lost_after == 0 for l in loss.values()), loss
    assert ctl.logged(f"switch={victim} event=down reason=not_up_within_startup_grace")
    assert stored_plans(ctl.store_path)[plan.id].state == "up"
    assert not [l for l in downs(ctl) if "connection=" in l], downs(ctl)


async def test_a_head_end_still_dead_after_the_restart_is_down(ctl, lab, tmp_path):
    """No path avoids the dead switch the connection starts at: DOWN, once the grace says it
    is dead (not before), and stored as such."""
    plan = await connection(ctl)
    victim = plan.a.switch
    try:
        await restart_after(ctl, lambda: lab.kill_switch(victim, signal.SIGKILL), live=ctl.switches - {victim})
        await ctl.wait_for(lambda: stored_plans(ctl.store_path)[plan.id].state == "down", STARTUP_GRACE_S + HEAL_WITHIN_S, "DOWN")
        down = ctl.logged(f"connection={plan.id} event=down reason=no_path")
        grace_over = ctl.logged(f"switch={victim} event=down reason=not_up_within_startup_grace")
        assert down and grace_over and ctl.lines.index(grace_over[0]) < ctl.lines.index(down[0]), "DOWN before the switch was known dead"
    finally:
        await asyncio.to_thread(lab.restart_switch, victim)
    await ctl.wait_for(lambda: stored_plans(ctl.store_path)[plan.id].state == "up", 30, "UP once the switch is back")
