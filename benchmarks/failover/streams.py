"""N connections made through a replica's admin socket (`p4nsm connect`'s way) and a
sequence-numbered 802.1Q stream on each (benchmarks/heal's senders and receivers); what a run
of them lost, and when."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.heal import scenario
from benchmarks.heal.analysis import stream_result
from benchmarks.heal.traffic import Stream, Traffic, TrialTraffic
from controller.admin import call
from controller.topology import Topology, host_ifname
from tests.e2e.replica_process import Replica

RATE = 100.0  # frames/s per stream, as bench_heal's tracked streams
# One at a time: two direct connects on one host race on this kernel (no VLAN driver, so the
# subinterfaces are emulated): the second one's host_parent_iface sees the first one's veth pair
# before its alias marks it, and refuses ("expected one fabric-facing interface, found
# ['h3-eth0', 'nsv7b8ba077']"). A product bug (controller/host/kernel_iface.py), worked around here.
CONNECT_CONCURRENCY = 1
VLAN = re.compile(r"^(\S+) \((\S+):(\d+) vlan (\d+)\)$")


async def connect_n(leader: Replica, topo: Topology, n: int) -> list[dict[str, Any]]:
    """n direct connections round-robin over the host pairs whose paths cross the core."""
    pairs = scenario.host_pairs(topo)
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> dict[str, Any]:
        async with sem:
            a, b = pairs[i % len(pairs)]
            reply: dict[str, Any] = await call(leader.admin, "connect", a=a, b=b)
            return reply

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def streams_of(conns: list[dict[str, Any]]) -> list[Stream]:
    out = []
    for k, c in enumerate(conns):
        a, b = VLAN.match(c["a"]), VLAN.match(c["b"])
        assert a and b, c
        out.append(Stream(k, c["id"], a[1], b[1], int(a[4]), RATE))
    return out


@dataclasses.dataclass
class Gap:
    stream: int
    conn_id: str
    from_ns: int  # send time the run of lost frames began (the frame before it, plus one interval)
    frames: int

    @property
    def ms(self) -> float:
        return self.frames * 1000.0 / RATE


@dataclasses.dataclass
class Run:
    """One run of every stream: frames sent and received."""

    streams: list[Stream]
    traffic: TrialTraffic

    def lost(self, before_ns: int | None = None) -> int:
        """Frames sent (before `before_ns`, on the send clock) that never arrived."""
        rec = self.traffic.records
        lost = 0
        for s in self.streams:
            sent = self.traffic.sent.get(s.index, 0)
            got = np.unique(rec["seq"][(rec["stream"] == s.index) & (rec["seq"] < sent)])
            if before_ns is None:
                lost += sent - len(got)
            else:
                # frame k goes out at start + phase + k/rate, phase < 1/rate: those before k-1 surely did
                due = int(min(sent, max(0, (before_ns - self.traffic.start_ns) * RATE / 1e9 - 1)))
                lost += due - int((got < due).sum())
        return lost

    def where(self, ref_ns: int, what: str) -> str:
        """Where the losses were, relative to `ref_ns` (CLOCK_MONOTONIC): for the report, to tell a
        loss everywhere at once (a stalled switch or sender) from one connection's."""
        gaps = self.gaps_over(0)
        if not gaps:
            return "no frame lost"
        starts = sorted((g.from_ns - ref_ns) / 1e6 for g in gaps)
        worst = max(gaps, key=lambda g: g.frames)
        return (f"{len(gaps)} runs of lost frames on {len({g.stream for g in gaps})} of {len(self.streams)} streams, "
                f"beginning {starts[0]:.0f} .. {starts[-1]:.0f} ms after {what}; the largest {worst.ms:.0f} ms "
                f"(connection {worst.conn_id[:8]}, from {(worst.from_ns - ref_ns) / 1e6:.0f} ms); sender late max "
                f"{self.traffic.late_max_ms:.1f} ms, send errors {self.traffic.send_errors}")

    def largest_gaps(self, since_ns: int) -> list[Gap]:
        """Per stream, its largest run of lost frames not over before `since_ns`."""
        rec = self.traffic.records
        out = []
        for s in self.streams:
            r = stream_result(s, rec[rec["stream"] == s.index], self.traffic.sent.get(s.index, 0), since_ns, True)
            out.append(Gap(s.index, s.conn_id, r.lost_from_ns or 0, r.lost_run))
        return out

    def gaps_over(self, frames: int) -> list[Gap]:
        """Every run of more than `frames` lost frames of any stream, with where it began."""
        rec = self.traffic.records
        out = []
        for s in self.streams:
            sent = self.traffic.sent.get(s.index, 0)
            mine = rec[(rec["stream"] == s.index) & (rec["seq"] < sent)]
            present = np.zeros(sent + 2, dtype=bool)
            present[0] = present[-1] = True  # sentinels: a run at either end is bounded
            present[mine["seq"] + 1] = True
            tx = np.zeros(sent + 2, dtype=np.int64)
            tx[mine["seq"] + 1] = mine["tx"].astype(np.int64)
            got = np.flatnonzero(present)
            for left, right in itertools.pairwise(got):
                run = int(right - left - 1)
                if run > frames:
                    began = int(tx[left]) + int(1e9 / RATE) if left > 0 else self.traffic.start_ns
                    out.append(Gap(s.index, s.conn_id, began, run))
        return out


class Streams:
    """The streams of a row's connections, started once and run once per trial."""

    def __init__(self, topo: Topology, conns: list[dict[str, Any]], run_dir: Path) -> None:
        self.streams = streams_of(conns)
        self.traffic = Traffic(self.streams, {h.name: host_ifname(h.name) for h in topo.hosts}, run_dir)
        self.runs = 0

    async def start(self) -> None:
        await self.traffic.start()

    async def run(self, seconds: float) -> tuple[int, asyncio.Task[Run]]:
        """(first frame's CLOCK_MONOTONIC ns, a task ending with the run once it drained)."""
        self.runs += 1
        start, task = await self.traffic.run(self.runs, seconds)

        async def done() -> Run:
            return Run(self.streams, await task)

        return start, asyncio.create_task(done())

    async def close(self) -> None:
        await self.traffic.close()
