"""Row D: chaos. Three replicas on the 3-member etcd, N connections carrying streams, and for
`seconds` a random failure every 2-5 s (a silent link cut, a port down, a transit switch
SIGKILLed or SIGSTOPped, the leader SIGKILLed, one etcd member SIGKILLed), each mended 2-4 s
later. Seeded: a run is repeated by its seed (the failures and their timing, not the machine's).

Afterwards, read from the streams, the replicas and the switches:
- connections that stopped delivering for more than 1 s while a path survived (no moment of the
  gap without a path between its ends, by the failures active then);
- stored connections lost (the leader's connections against the N made);
- orphaned entries: every connection disconnected, the entries read back from the switches
  against those before the connections were made."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import time
from typing import Any

import networkx as nx

from benchmarks.failover.lab import Bench, status_if
from benchmarks.failover.rows import Say, interesting, settled, three_replicas
from benchmarks.failover.streams import RATE, Streams, connect_n
from benchmarks.heal import scenario
from controller.runtime import fabric_graph
from tests.e2e.replica_process import Replica, leading

KINDS = ("cut", "port", "kill", "freeze", "leader", "etcd")
EVERY_S = (2.0, 5.0)
MEND_AFTER_S = (2.0, 4.0)
TAIL_S = 8.0  # of streaming after the last failure's time: its mend and the heal after it
STALL_S = 1.0


@dataclasses.dataclass
class Failure:
    kind: str
    element: str
    start_ns: int
    end_ns: int = 0  # 0 while not mended

    @property
    def breaks_paths(self) -> bool:
        return self.kind in ("cut", "port", "kill", "freeze")


class Chaos:
    def __init__(self, bench: Bench, reps: list[Replica], rng: random.Random) -> None:
        self.bench = bench
        self.reps = reps
        self.rng = rng
        self.failures: list[Failure] = []
        self.mends: list[asyncio.Task[None]] = []
        self.undo: list[scenario.Fault] = []
        self.stopped_members: list[Any] = []

    def _active(self, kind: str) -> set[str]:
        return {f.element for f in self.failures if f.kind == kind and not f.end_ns}

    def _choices(self) -> list[tuple[str, str]]:
        """(kind, element) pairs that may fail now: never an element already failed; one etcd
        member at a time (two would take the quorum); the leader only while every replica runs."""
        links = sorted(self.bench.links)
        transit = [s.name for s in self.bench.topo.switches if s.name not in
                   {h.attach.switch for h in self.bench.topo.hosts}]
        out = [(k, l) for k in ("cut", "port") for l in links if l not in self._active("cut") | self._active("port")]
        out += [(k, s) for k in ("kill", "freeze") for s in transit if s not in self._active("kill") | self._active("freeze")]
        if not self._active("leader") and all(r.process is not None and r.process.poll() is None for r in self.reps):
            out.append(("leader", ""))
        if not self._active("etcd"):
            out += [("etcd", m.name) for m in self.bench.cluster.members]
        return out

    async def inject(self) -> Failure:
        # the kind first, evenly among those possible now, then its element: by pairs, the links'
        # eight (kind, link) pairs would crowd out the one leader
        choices = self._choices()
        kind = self.rng.choice(sorted({k for k, _ in choices}, key=KINDS.index))
        element = self.rng.choice([e for k, e in choices if k == kind])
        now = time.monotonic_ns()
        fault = None
        if kind in ("cut", "port"):
            link = self.bench.links[element]
            fault = scenario.Fault(self.bench.lab, self.bench.links, scenario.Target(kind, element, link.a, link.a_port))
        elif kind in ("kill", "freeze"):
            fault = scenario.Fault(self.bench.lab, self.bench.links, scenario.Target(kind, element))
        if fault is not None:
            now, _ = await fault.inject()
            self.undo.append(fault)
        elif kind == "leader":
            leader = await self._leader()
            element = leader.name
            leader.signal(signal.SIGKILL)
        else:
            self.bench.cluster.kill(next(m for m in self.bench.cluster.members if m.name == element))
        failure = Failure(kind, element, now)
        self.failures.append(failure)
        self.mends.append(asyncio.create_task(self._mend(failure, fault, self.rng.uniform(*MEND_AFTER_S))))
        return failure

    async def _leader(self) -> Replica:
        for r in self.reps:
            if await status_if(r, lambda s: s is not None and s["role"] == "leader"):
                return r
        raise RuntimeError("no replica leads")

    async def _mend(self, failure: Failure, fault: scenario.Fault | None, after: float) -> None:
        await asyncio.sleep(after)  # the chaos's own timing: how long the element stays failed
        if fault is not None:
            await fault.restore()
            self.undo.remove(fault)
        elif failure.kind == "leader":
            replica = next(r for r in self.reps if r.name == failure.element)
            if replica.process is not None:
                await asyncio.to_thread(replica.process.wait)
            replica.start()
        else:
            member = next(m for m in self.bench.cluster.members if m.name == failure.element)
            await asyncio.to_thread(self.bench.cluster.restart, member)
        failure.end_ns = time.monotonic_ns()

    async def finish(self) -> None:
        await asyncio.gather(*self.mends)

    def undo_now(self) -> None:
        for fault in self.undo:
            fault.undo_now()
        for m in self.bench.cluster.members:
            if m.process is None:
                self.bench.cluster.restart(m)

    def path_lost(self, a: str, b: str, from_ns: int, to_ns: int) -> bool:
        """Whether some moment in [from_ns, to_ns] had no path from switch a to b, by the data
        path failures active then (each failure's start is a moment to check)."""
        breaking = [f for f in self.failures if f.breaks_paths]
        moments = [from_ns] + [f.start_ns for f in breaking if from_ns <= f.start_ns <= to_ns]
        for t in moments:
            g = fabric_graph(self.bench.topo).g
            for f in breaking:
                if f.start_ns <= t and (not f.end_ns or f.end_ns > t):
                    if f.kind in ("cut", "port"):
                        link = self.bench.links[f.element]
                        g.remove_edge(link.a, link.b, key=f.element)
                    elif g.has_node(f.element):
                        g.remove_node(f.element)
            if not (g.has_node(a) and g.has_node(b) and nx.has_path(g, a, b)):
                return True
        return False


async def run_chaos(bench: Bench, n: int, seconds: float, seed: int, say: Say, notes: list[str]) -> dict[str, Any]:
    rng = random.Random(seed)
    reps, _ = await three_replicas(bench)
    before = await bench.entries()
    conns = await connect_n(reps[0], bench.topo, n)
    await settled(reps[0], n, "every connection up with a backup")
    ends = {c["id"]: (c["a"].split("(")[1].split(":")[0], c["b"].split("(")[1].split(":")[0]) for c in conns}
    streams = Streams(bench.topo, conns, bench.run_dir)
    await streams.start()
    chaos = Chaos(bench, reps, rng)
    offsets = {r.name: len(r.log()) for r in reps}
    try:
        start_ns, task = await streams.run(seconds + TAIL_S)
        end_ns = start_ns + int(seconds * 1e9)
        while True:
            pause = rng.uniform(*EVERY_S)
            if time.monotonic_ns() + pause * 1e9 > end_ns:
                break
            await asyncio.sleep(pause)  # the chaos's own timing
            f = await chaos.inject()
            say(f"  D seed {seed} t={(f.start_ns - start_ns) / 1e9:5.1f}s: {f.kind} {f.element}")
        await chaos.finish()
        run = await task
        leader = await _any_leader(reps)
        after_conns = await settled(leader, n, "every connection up with a backup after the chaos")
    except BaseException:
        await asyncio.to_thread(chaos.undo_now)
        await streams.close()
        await bench.end_row(notes)
        raise
    stalls = [g for g in run.gaps_over(int(STALL_S * RATE))
              if not chaos.path_lost(*ends[g.conn_id], g.from_ns, g.from_ns + int(g.ms * 1e6))]
    stalled = {g.conn_id for g in stalls}
    lost_stored = len({c["id"] for c in conns} - {c["id"] for c in after_conns})
    await streams.close()
    left = await bench.end_row(notes, before)
    kinds: dict[str, int] = {}
    for f in chaos.failures:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    result = {"seed": seed, "failures": len(chaos.failures), "kinds": kinds, "stalled": len(stalled),
              "worst_stall_ms": max((g.ms for g in stalls), default=0.0), "stored_lost": lost_stored,
              "orphans": sum(left.values()), "orphans_by_switch": left, "leader": leader.name,
              "frames_lost": run.lost(), "sent": sum(run.traffic.sent.values())}
    if stalls or lost_stored or left:
        notes.append(f"D seed {seed}: {len(stalled)} connections stalled > {STALL_S:g} s with a path, {lost_stored} "
                     f"stored connections lost, orphans {left}; failures "
                     + ", ".join(f"{(f.start_ns - start_ns) / 1e9:.1f}s {f.kind} {f.element}" for f in chaos.failures))
        for g in stalls[:5]:
            notes.append(f"    stall: connection {g.conn_id[:8]} from t={(g.from_ns - start_ns) / 1e9:.2f}s for {g.ms:.0f} ms")
        for r in reps:
            notes += [f"    {r.name}: {ln}" for ln in interesting(r.log()[offsets[r.name]:], 6)]
    return result


async def _any_leader(reps: list[Replica]) -> Replica:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for r in reps:
            if await status_if(r, leading):
                return r
        await asyncio.sleep(0.1)
    raise TimeoutError("no replica leads every switch after the chaos")
