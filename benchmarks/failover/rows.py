"""The rows of issue 10's failover benchmark, each a set of trials on the bench's lab (see
benchmarks/bench_failover.py for what each measures and its target). A row makes its replicas
and connections once and runs its trials on them one after another; every trial returns its
figures as a dict, and `notes` collects what the product logged when a figure misses its target."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks.failover.lab import Bench, follows, leads, orphans, seconds_of_day, stamps, status_if, until
from benchmarks.failover.report import pct
from benchmarks.failover.streams import Streams, connect_n
from benchmarks.heal import scenario
from controller.admin import call
from tests.e2e.controller_process import RECONCILED
from tests.e2e.replica_process import Replica, following, leading

Say = Callable[[str], None]
KILL_AFTER_S = 1.5  # of streaming before the fault: a loss through it shows against frames that flowed
RESTART_STREAM_S = 12.0  # row A's stream: the kill, a start of `p4nsm run` on a loaded machine, and after
CUT_AFTER_DEATH_S = 0.2  # row B: the silent cut this long after the leader's death
TAKEOVER_STREAM_S = 7.0
CONTROL_STREAM_S = 4.0
SETTLE_S = 60.0
REFUSALS = (r"event=write_refused updates=(\d+)", r"event=writes_refused ops=(\d+)")
NOT_LEADING = "event=write_refused reason=not_leading"


def tail(r: Replica, offset: int) -> str:
    return r.log()[offset:]


def interesting(log: str, limit: int = 12, links: bool = False) -> list[str]:
    """The warnings and errors of a log part (with `links`, also the link and leading events):
    what a report quotes when a target is missed."""
    keys = (" WARNING ", " ERROR ", *((" link=", "event=leading", "event=heal_round") if links else ()))
    lines = [ln for ln in log.splitlines() if any(k in ln for k in keys)]
    return lines[-limit:]


async def settled(leader: Replica, n: int, what: str) -> list[dict[str, Any]]:
    """The leader's connections once all n are up with a backup path."""
    async def check() -> list[dict[str, Any]] | None:
        try:
            conns = await leader.connections()
        except (RuntimeError, OSError):
            return None
        return conns if len(conns) == n and all(c["state"] == "up" and c["backup"] for c in conns) else None

    return await until(check, SETTLE_S, what, leader.log)


# --- A: controller restart --------------------------------------------------------------------

async def row_a(bench: Bench, n: int, trials: int, say: Say, notes: list[str]) -> list[dict[str, float]]:
    """One controller on its sqlite store, SIGKILLed under the streams and started again at once."""
    (solo,) = bench.replicas("solo", etcd=False)
    solo.start()
    await leads(solo)
    before = await bench.entries()
    conns = await connect_n(solo, bench.topo, n)
    await settled(solo, n, "every connection up with a backup")
    streams = Streams(bench.topo, conns, bench.run_dir)
    await streams.start()
    out = []
    try:
        for i in range(trials):
            row, log = await _restart_trial(bench, solo, streams)
            out.append(row)
            say(f"A trial {i + 1}/{trials}: lost {row['lost']} of {row['sent']} frames, {row['writes']} entity writes at "
                f"start-up, death -> every switch reconciled {row['reconciled'] * 1000:.0f} ms, {row['stored_lost']} "
                "stored connections lost")
            if row["lost"] or row["writes"] or row["stored_lost"]:
                notes.append(f"A trial {i + 1}: lost {row['lost']}, writes {row['writes']}, stored connections lost "
                             f"{row['stored_lost']}; the restarted controller's warnings and non-empty reconciles:")
                notes += [f"    {ln}" for ln in log.splitlines()[:1] if ln.startswith("losses:")]
                notes += [f"    {ln}" for ln in interesting(log)]
                notes += [f"    {m[0]}" for m in RECONCILED.finditer(log) if m[0].split("inserted=")[1] != "0 modified=0 deleted=0"]
    finally:
        await streams.close()
        await bench.end_row(notes, before)
    return out


async def _restart_trial(bench: Bench, solo: Replica, streams: Streams) -> tuple[dict[str, float], str]:
    n = len(streams.streams)
    _, task = await streams.run(RESTART_STREAM_S)
    await asyncio.sleep(KILL_AFTER_S)  # the scenario's timing: frames flow before the kill
    offset = len(solo.log())
    killed = time.time()
    killed_ns = time.monotonic_ns()
    solo.signal(signal.SIGKILL)
    assert solo.process is not None
    await asyncio.to_thread(solo.process.wait)
    solo.start()

    async def reconciled() -> str | None:
        log = tail(solo, offset)
        return log if len({m[1] for m in RECONCILED.finditer(log)}) >= len(bench.topo.switches) else None

    log = await until(reconciled, RESTART_STREAM_S, "the restarted controller reconciled every switch",
                      lambda: tail(solo, offset))
    run = await task
    writes = sum(int(m[2]) + int(m[3]) + int(m[4]) for m in RECONCILED.finditer(log))
    stored = len(await solo.connections())
    back = max(stamps(log, "event=reconciled")) - seconds_of_day(killed)
    row = {"lost": run.lost(), "writes": writes, "reconciled": back, "stored_lost": n - stored,
           "sent": sum(run.traffic.sent.values())}
    if row["lost"]:
        log = f"losses: {run.where(killed_ns, 'the kill')}\n{log}"
    return row, log


# --- B: leader SIGKILL with two followers, a silent cut 200 ms after ------------------------------

def busiest_first_link(bench: Bench, conns: list[dict[str, Any]]) -> scenario.Target:
    """The link from the head end most connections' active paths take first."""
    counts = Counter(tuple(c["path"].split(" -> ")[:2]) for c in conns)
    (head, nxt), _ = counts.most_common(1)[0]
    link = next(l for l in bench.links.values() if {l.a, l.b} == {head, nxt})
    return scenario.Target("cut", link.name, head, link.port_of(head))


async def three_replicas(bench: Bench) -> tuple[list[Replica], dict[str, Any]]:
    reps = bench.replicas("r1", "r2", "r3")
    reps[0].start()
    first = await leads(reps[0])
    for r in reps[1:]:
        r.start()
    for r in reps[1:]:
        await follows(r, first["election_id"])
    return reps, first


async def new_leader(reps: list[Replica], dead: Replica, timeout: float = 30.0) -> Replica:
    async def check() -> Replica | None:
        for r in reps:
            if r is not dead and await status_if(r, leading):
                return r
        return None

    return await until(check, timeout, "a follower leads every switch", lambda: "\n".join(r.log()[-1500:] for r in reps))


def takeover_s(winner: Replica, offset: int, died: float) -> float:
    """The death -> the last switch's `event=primary` in the winner's log after it won."""
    log = tail(winner, offset)
    won = min(t for t in stamps(log, "event=leading") if t >= died - 0.01)
    return max(t for t in stamps(log, "event=primary election_id") if t >= won) - died


async def row_b(bench: Bench, n: int, trials: int, say: Say, notes: list[str]) -> list[dict[str, float]]:
    """Each trial first cuts the busiest link with the leader alive (the silent-cut heal of these
    replicas' settings, the control), then kills the leader and cuts it again 200 ms later."""
    reps, _ = await three_replicas(bench)
    leader = reps[0]
    conns = await connect_n(leader, bench.topo, n)
    await settled(leader, n, "every connection up with a backup")
    streams = Streams(bench.topo, conns, bench.run_dir)
    await streams.start()
    out = []
    faults: list[scenario.Fault] = []
    try:
        for i in range(trials):
            control = await _control_cut(bench, leader, streams, faults)
            row, leader, log = await _takeover_trial(bench, reps, leader, streams, faults)
            row["control"] = control
            out.append(row)
            say(f"B trial {i + 1}/{trials}: control cut's loss window {control * 1000:.0f} ms; {leader.name} took over in "
                f"{row['takeover'] * 1000:.0f} ms; {row['lost_before_cut']} frames lost before the cut; cut crossed by "
                f"{row['crossing']}: loss window max {row['window'] * 1000:.0f} ms; others' largest gap "
                f"{row['others'] * 1000:.0f} ms")
            if row["lost_before_cut"] or row["window"] > row["takeover"] - CUT_AFTER_DEATH_S + control:
                notes.append(f"B trial {i + 1}: {row['lost_before_cut']} lost before the cut, window "
                             f"{row['window'] * 1000:.0f} ms (control {control * 1000:.0f} ms, takeover "
                             f"{row['takeover'] * 1000:.0f} ms); {leader.name}'s log of the trial (warnings, link events):")
                notes += [f"    {ln}" for ln in log.splitlines()[:1] if ln.startswith("losses:")]
                notes += [f"    {ln}" for ln in interesting(log, links=True)]
    finally:
        for fault in faults:
            await asyncio.to_thread(fault.undo_now)
        await streams.close()
        await bench.end_row(notes)
    # the bound: this trial's takeover, less the 200 ms, plus the row's silent-cut heal (p90 of the controls)
    heal = pct([r["control"] for r in out], 0.9) if out else 0.0
    for r in out:
        r["bound"] = r["takeover"] - CUT_AFTER_DEATH_S + heal
    return out


async def _control_cut(bench: Bench, leader: Replica, streams: Streams, faults: list[scenario.Fault]) -> float:
    """The largest loss window of the connections crossing a silent cut of the busiest first
    link while the leader lives; the cut mended and the fabric settled after."""
    conns = await leader.connections()
    target = busiest_first_link(bench, conns)
    crossing = {c["id"] for c in conns if target.element in _links_of(bench, c["path"])}
    fault = scenario.Fault(bench.lab, bench.links, target)
    faults.append(fault)
    offset = len(leader.log())
    _, task = await streams.run(CONTROL_STREAM_S)
    await asyncio.sleep(KILL_AFTER_S)  # the scenario's timing: frames flow before the cut
    cut_start, _ = await fault.inject()
    run = await task
    await fault.restore()
    faults.remove(fault)
    await _mended(leader, offset, target.element, len(streams.streams))
    return max((g.ms for g in run.largest_gaps(cut_start) if g.conn_id in crossing), default=0.0) / 1000


async def _mended(leader: Replica, offset: int, link: str, n: int) -> None:
    await until(lambda: _link_up_since(leader, offset, link), SETTLE_S, f"{link} up again", leader.log)
    await settled(leader, n, "every connection up with a backup after the mend")


async def _takeover_trial(bench: Bench, reps: list[Replica], leader: Replica, streams: Streams,
                          faults: list[scenario.Fault]) -> tuple[dict[str, float], Replica, str]:
    """One trial of B; returns its figures, the new leader (the dead one is a follower again,
    the cut mended and the fabric settled) and the new leader's log of the trial."""
    conns = await leader.connections()
    target = busiest_first_link(bench, conns)
    crossing = {c["id"] for c in conns if target.element in _links_of(bench, c["path"])}
    fault = scenario.Fault(bench.lab, bench.links, target)
    faults.append(fault)
    offsets = {r.name: len(r.log()) for r in reps}
    _, task = await streams.run(TAKEOVER_STREAM_S)
    await asyncio.sleep(KILL_AFTER_S)  # the scenario's timing: frames flow before the kill
    killed, killed_ns = time.time(), time.monotonic_ns()
    leader.signal(signal.SIGKILL)
    await asyncio.sleep(max(0.0, killed + CUT_AFTER_DEATH_S - time.time()))
    cut_start, _ = await fault.inject()
    winner = await new_leader(reps, leader)
    run = await task
    await fault.restore()
    faults.remove(fault)
    took = takeover_s(winner, offsets[winner.name], seconds_of_day(killed))
    lost_before = run.lost(before_ns=cut_start - int(20e6))
    gaps = run.largest_gaps(cut_start)
    window = max((g.ms for g in gaps if g.conn_id in crossing), default=0.0)
    others = max((g.ms for g in gaps if g.conn_id not in crossing), default=0.0)
    row = {"lost_before_cut": lost_before, "takeover": took, "window": window / 1000, "crossing": len(crossing),
           "others": others / 1000}
    # the dead replica comes back as a follower, and the fabric settles before the next trial
    leader.start()
    st = await leads(winner)
    await follows(leader, st["election_id"])
    await _mended(winner, offsets[winner.name], target.element, len(streams.streams))
    log = tail(winner, offsets[winner.name])
    if lost_before:
        log = f"losses: {run.where(killed_ns, 'the kill')}\n{log}"
    return row, winner, log


def _links_of(bench: Bench, path: str) -> set[str]:
    hops = path.split(" -> ")
    return {l.name for a, b in itertools.pairwise(hops) for l in bench.links.values() if {l.a, l.b} == {a, b}}


async def _link_up_since(r: Replica, offset: int, link: str) -> bool:
    log = tail(r, offset)
    down = log.rfind(f"link={link} event=down")
    return down < 0 or log.rfind(f"link={link} event=up") > down


# --- C: a deposed leader waking up ---------------------------------------------------------------

async def row_c(bench: Bench, n: int, trials: int, say: Say, notes: list[str]) -> list[dict[str, float]]:
    """The leader SIGSTOPped (connections being made and removed through it) until a follower
    leads, then SIGCONT: what it then tries to write must be refused, by the switches or etcd."""
    one, two = bench.replicas("r1", "r2")
    one.start()
    first = await leads(one)
    two.start()
    await follows(two, first["election_id"])
    conns = await connect_n(one, bench.topo, n)
    await settled(one, n, "every connection up with a backup")
    keep = {c["id"] for c in conns}
    leader, follower = one, two
    out = []
    for i in range(trials):
        row, log = await _deposed_trial(bench, leader, follower, keep)
        out.append(row)
        say(f"C trial {i + 1}/{trials}: {leader.name} after SIGCONT: {row['refused']} writes refused, {row['through']} "
            f"entries of its own left on the switches, {row['missing']} of the fabric's entries gone; {row['churned']} "
            "connections churned")
        if row["through"] or row["missing"] or not row["attempted"]:
            notes.append(f"C trial {i + 1}: {row['attempted']} writes attempted, {row['through']} entries got through, "
                         f"{row['missing']} went missing; {leader.name}'s warnings after SIGCONT:")
            notes += [f"    {ln}" for ln in interesting(log)]
        leader, follower = follower, leader
    await bench.end_row(notes)
    return out


async def _deposed_trial(bench: Bench, leader: Replica, follower: Replica, keep: set[str]) -> tuple[dict[str, float], str]:
    baseline = await bench.entries()
    stop = asyncio.Event()
    made = [0]

    async def churn() -> None:
        # made and removed back to back: writes are in flight whenever the leader stops
        while not stop.is_set():
            with contextlib.suppress(Exception):
                c = await asyncio.wait_for(call(leader.admin, "connect", a="h1", b="h3"), 5)
                made[0] += 1
                await asyncio.wait_for(call(leader.admin, "disconnect", id=c["id"]), 5)

    churners = [asyncio.create_task(churn()) for _ in range(3)]
    try:
        await until(lambda: _at_least(made, 3), 60, "the churn makes connections", leader.log)
        offset = len(leader.log())
        leader.signal(signal.SIGSTOP)
        await new_leader([leader, follower], leader, 30)
        leader.signal(signal.SIGCONT)
        await until(lambda: _logged(leader, offset, "event=stepped_down"), 20, f"{leader.name} finds it lost its term",
                    leader.log)
        st = await leads(follower)
        await until(lambda: status_if(leader, lambda s: following(s, st["election_id"])), 30,
                    f"{leader.name} is a follower again", leader.log)
    finally:
        stop.set()
        await asyncio.gather(*churners, return_exceptions=True)
    log = tail(leader, offset)
    refused = sum(int(m[1]) for pat in REFUSALS for m in re.finditer(pat, log)) + log.count(NOT_LEADING)
    # what the new leader holds beyond the row's connections is churn: removed, then only the
    # entries of before may remain; any other is a write of the deposed leader that got through
    for c in await follower.connections():
        if c["id"] not in keep:
            await call(follower.admin, "disconnect", id=c["id"])
    after = await bench.entries()
    through = sum(orphans(baseline, after).values())
    missing = sum(orphans(after, baseline).values())
    return {"attempted": refused + through, "refused": refused, "through": through, "missing": missing,
            "churned": made[0]}, log


async def _at_least(made: list[int], k: int) -> bool:
    return made[0] >= k


async def _logged(r: Replica, offset: int, needle: str) -> bool:
    return needle in tail(r, offset)


# --- S: leader SIGKILL with one follower, where the time goes (the first row measured) ------------

async def row_s(bench: Bench, n: int, trials: int, say: Say, notes: list[str]) -> list[dict[str, float]]:
    """Time from the death until every switch has the new primary, split where it goes, read
    from the follower's own log: heartbeat silence (store_leader_suspect), lease revoked, election, arbitration, reconcile."""
    out = []
    for i in range(trials):
        try:
            row = await _sigkill_trial(bench)
        finally:
            bench.stop_all()
        out.append(row)
        say(f"S trial {i + 1}/{trials}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in row.items()))
    return out


async def _sigkill_trial(bench: Bench) -> dict[str, float]:
    one, two = bench.replicas("r1", "r2")
    one.start()
    first = await leads(one)
    two.start()
    await follows(two, first["election_id"])
    killed = time.time()
    one.signal(signal.SIGKILL)
    await leads(two, 30)
    died = seconds_of_day(killed)

    async def reconciled_all() -> str | None:
        log = two.log()
        won = [t for t in stamps(log, "event=leading") if t >= died - 0.01]
        done = [t for t in stamps(log, "event=reconciled") if won and t >= won[0]]
        return log if len(done) >= len(bench.topo.switches) else None

    log = await until(reconciled_all, 30, "r2 reconciled every switch", two.log)
    won = next(t for t in stamps(log, "event=leading") if t >= died - 0.01)
    primary = max(t for t in stamps(log, "event=primary election_id") if t >= won)
    reconciled = max(t for t in stamps(log, "event=reconciled") if t >= won)
    return {"election": won - died, "arbitration": primary - won, "reconcile": reconciled - primary,
            "primary": primary - died, "total": reconciled - died}
