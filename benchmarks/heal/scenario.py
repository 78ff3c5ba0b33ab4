"""Which connections to make, which element to fail, how to fail and restore it, and when the
fabric has settled again."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from collections.abc import Mapping

import networkx as nx

from controller.fabric.graph import Link
from controller.fabric.model import ConnectionPlan
from controller.heal.reroute import active_alive, backup_alive
from controller.runtime import Controller
from controller.topology import Topology, switch_ifname
from lab import faults
from lab.harness import Lab

KINDS = ("cut", "port", "kill", "freeze")
# Sources per topology: on fattree4 the four hosts of pod 1, so that 10,000 connections fit in
# their VLAN pools (4,093 per host link) while all of them still leave the pod.
SOURCES = {"diamond": ("h1", "h2"), "fattree4": ("h1", "h2", "h3", "h4")}
CONNECT_CONCURRENCY = 64  # concurrent connects: the clients coalesce their writes into batches
SETTLE_POLL_S = 0.1


def host_pairs(topo: Topology) -> list[tuple[str, str]]:
    """Each source with every host at the largest distance from it: their paths cross the core,
    where the failed elements are."""
    graph = topo.graph()
    attach = {h.name: h.attach.switch for h in topo.hosts}
    sources = SOURCES.get(topo.name) or tuple(h for h, s in attach.items() if s == topo.hosts[0].attach.switch)
    pairs = []
    for a in sources:
        hops = nx.single_source_shortest_path_length(graph, attach[a])
        far = max(hops[attach[b]] for b in attach if b not in sources)
        pairs += [(a, b) for b in attach if b not in sources and hops[attach[b]] == far]
    return pairs


async def connect_all(ctl: Controller, pairs: list[tuple[str, str]], n: int, progress) -> list[ConnectionPlan]:
    """n connections spread round-robin over the pairs, in order of index."""
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    done = 0

    async def one(i: int) -> ConnectionPlan:
        nonlocal done
        async with sem:
            plan = await ctl.fabric.connect(*pairs[i % len(pairs)])
        done += 1
        if done % 500 == 0:
            progress(f"  {done:,}/{n:,} connections")
        return plan

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def sample(n: int, size: int) -> list[int]:
    """`size` indexes spread evenly over range(n) (all of them when n <= size)."""
    if n <= size:
        return list(range(n))
    return sorted({round(i * n / size) for i in range(size)})


@dataclasses.dataclass(frozen=True)
class Target:
    kind: str
    element: str  # a link name or a switch
    switch: str = ""  # link kinds: the upstream end of the link (toward the data's source) ...
    port: int = 0  # ... and its port there

    def expected_down(self, links: Mapping[str, Link]) -> set[str]:
        """What the controller should declare down: the link, or the switch and its links."""
        if self.kind in ("cut", "port"):
            return {self.element}
        return {self.element, *(l.name for l in links.values() if self.element in (l.a, l.b))}

    def crossed_by(self, plan: ConnectionPlan) -> bool:
        path = plan.a_to_b.path
        return self.element in (path.links if self.kind in ("cut", "port") else path.switches)


def choose(kind: str, tracked: list[ConnectionPlan], every: list[ConnectionPlan]) -> Target:
    """The element that most tracked connections cross on their active a->b path.

    port: the first link of the path, where the head end's own port loses carrier (what
    watch-port groups at the head end can react to). cut: any link. kill/freeze: a transit
    switch that is no connection's head or tail end (with its ends gone a connection has no
    path at all)."""
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    ends = {s for p in every for s in (p.a.switch, p.b.switch)}
    for plan in tracked:
        path = plan.a_to_b.path
        if kind == "port":
            names = list(path.links[:1])
        elif kind == "cut":
            names = list(path.links)
        else:
            names = [s for s in path.switches[1:-1] if s not in ends]
        for pos, name in enumerate(names):
            counts[name] = counts.get(name, 0) + 1
            first_seen[name] = min(first_seen.get(name, pos), pos)
    if not counts:
        raise RuntimeError(f"no element to fail for {kind}: the tracked connections cross none")
    element = max(counts, key=lambda e: (counts[e], -first_seen[e]))
    if kind in ("kill", "freeze"):
        return Target(kind, element)
    for plan in tracked:
        path = plan.a_to_b.path
        if element in path.links:
            hop = path.hops[path.links.index(element)]
            return Target(kind, element, hop.switch, hop.out_port)
    raise AssertionError("unreachable")


class Fault:
    """One failure of a target, injected and later undone; `undo_now` is for cleanup paths.

    `links` are the fabric's links by name (an in-process controller's `fabric.graph.links`, or
    `controller.runtime.fabric_graph(topology).links` beside out-of-process replicas): a cut needs
    both ends of its link."""

    def __init__(self, lab: Lab, links: Mapping[str, Link], target: Target) -> None:
        self.lab = lab
        self.links = links
        self.target = target
        self.active = False

    def _ifnames(self) -> list[str]:
        link = self.links[self.target.element]
        up = (self.target.switch, self.target.port)
        down = (link.b, link.b_port) if (link.a, link.a_port) == up else (link.a, link.a_port)
        return [switch_ifname(*up), switch_ifname(*down)]  # the data's direction first

    async def inject(self) -> tuple[int, int]:
        """(start, end) of the call that breaks the data's direction (CLOCK_MONOTONIC ns). The
        failure took effect somewhere inside it: pyroute2's set-up and tear-down take most of
        a call's few ms, a signal is immediate."""
        t = self.target
        self.active = True
        start = time.monotonic_ns()
        if t.kind == "cut":
            first, *rest = self._ifnames()
            await asyncio.to_thread(faults.cut, first)
            done = time.monotonic_ns()
            for ifname in rest:
                await asyncio.to_thread(faults.cut, ifname)
        elif t.kind == "port":
            await asyncio.to_thread(self.lab.set_port_up, t.switch, t.port, False)
            done = time.monotonic_ns()
        else:
            self.lab.kill_switch(t.element, signal.SIGKILL if t.kind == "kill" else signal.SIGSTOP)
            done = start
        return start, done

    async def restore(self) -> None:
        t = self.target
        if t.kind == "cut":
            for ifname in self._ifnames():
                await asyncio.to_thread(faults.mend, ifname)
        elif t.kind == "port":
            await asyncio.to_thread(self.lab.set_port_up, t.switch, t.port, True)
        elif t.kind == "kill":
            await asyncio.to_thread(self.lab.restart_switch, t.element)
        else:
            self.lab.kill_switch(t.element, signal.SIGCONT)
        self.active = False

    def undo_now(self) -> None:
        """Best effort, synchronous: a frozen switch would not even die on the lab's SIGTERM."""
        if not self.active:
            return
        t = self.target
        try:
            if t.kind == "cut":
                for ifname in self._ifnames():
                    faults.mend(ifname)
            elif t.kind == "port":
                self.lab.set_port_up(t.switch, t.port, True)
            elif t.kind == "freeze":
                self.lab.kill_switch(t.element, signal.SIGCONT)
        except Exception:
            pass
        self.active = False


def unsettled(ctl: Controller) -> str:
    """Why the fabric is not back to normal yet ("" once it is): every switch ready, every link
    up, every connection up on live legs with a live backup, and no link recovered so recently
    that failing it again would count as a flap (which doubles its next recovery time)."""
    fabric, links = ctl.fabric, ctl.links
    g = fabric.graph
    if fabric.ready_switches != set(ctl.clients):
        return f"switches not ready: {sorted(set(ctl.clients) - fabric.ready_switches)}"
    if g.down_links or g.down_switches:
        return f"down: {sorted(g.down_links | g.down_switches)}"
    recent = max((s.went_up_at for s in links.links.values()), default=float("-inf"))
    if time.monotonic() - recent < ctl.settings.flap_window:
        return "a link recovered within the flap window"
    if not ctl.rerouter.idle:
        return "a heal round is running"
    for plan in fabric.plans.values():
        if plan.state != "up" or not active_alive(fabric, plan):
            return f"connection {plan.id[:8]} is {plan.state}"
        if not backup_alive(fabric, plan):
            return f"connection {plan.id[:8]} has no live backup yet"
    return ""


def _where(ctl: Controller, why: str) -> str:
    """Where a heal round that does not end is waiting, for whoever debugs it."""
    task = getattr(ctl.rerouter, "_task", None)
    if "heal round" not in why or task is None:
        return ""
    frames, coro = [], task.get_coro()
    while coro is not None:  # down the chain of awaits (Task.get_stack shows only the outermost)
        f = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if f is not None:
            frames.append(f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "; the rerouter waits in " + " -> ".join(frames)


async def settle(ctl: Controller, timeout: float) -> float:
    """Seconds until the fabric settled; raises TimeoutError with the reason if it does not."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    why = unsettled(ctl)
    while why:
        if loop.time() - start > timeout:
            raise TimeoutError(f"the fabric did not settle within {timeout:.0f}s: {why}{_where(ctl, why)}")
        await asyncio.sleep(SETTLE_POLL_S)
        why = unsettled(ctl)
    return loop.time() - start
