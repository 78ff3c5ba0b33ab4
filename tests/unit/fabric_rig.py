"""A fabric of fake switches (tests/unit/fake_switch.py) with its Fabric and Rerouter, for the
fast tests of connections, heal rounds, the programmer and anti-entropy."""

from __future__ import annotations

import asyncio
import functools

from controller.fabric import entries as E
from controller.fabric.connections import Fabric
from controller.fabric.graph import FabricGraph, Link, link_name
from controller.fabric.store import StateStore, Store
from controller.heal.reroute import Rerouter
from controller.p4rt.schema import P4Schema
from controller.settings import Settings
from tests.support.settings import settings_for_test
from tests.unit.fake_switch import FakeSwitch

Edge = tuple[str, int, str, int]
# s1 and s4: port 1 faces a host; s1 -> s4 over s2 (shortest by name), s3, and in TRIPLE s5.
DIAMOND: list[Edge] = [("s1", 2, "s2", 1), ("s2", 2, "s4", 2), ("s1", 3, "s3", 1), ("s3", 2, "s4", 3)]
TRIPLE: list[Edge] = DIAMOND + [("s1", 4, "s5", 1), ("s5", 2, "s4", 4)]
LINE: list[Edge] = [("s1", 2, "s2", 1), ("s2", 2, "s3", 1)]
HOSTS = {"h1": ("s1", 1), "h4": ("s4", 1)}
LINE_HOSTS = {"h1": ("s1", 1), "h3": ("s3", 1)}


@functools.cache
def schema() -> P4Schema:
    return P4Schema.from_file(Settings().p4info_path)


class Rig:
    def __init__(self, edges: list[Edge], hosts: dict[str, tuple[str, int]] | None = None,
                 fast_failover: bool = True, heal_loop: bool = False, store: StateStore | None = None) -> None:
        """With `heal_loop`, topology changes start heal rounds as in the controller; without,
        a test runs them itself (rerouter.heal_round()). The store is SQLite in memory unless
        `store` is given (started by the caller)."""
        switches = sorted({e[0] for e in edges} | {e[2] for e in edges})
        self.graph = FabricGraph(switches, [Link(link_name(*e), *e) for e in edges])
        self.clients = {s: FakeSwitch(s, schema()) for s in switches}
        self.settings = settings_for_test(env=False)
        self.store: StateStore = store if store is not None else Store(":memory:")
        self.fabric = Fabric(self.graph, dict(hosts or HOSTS), self.clients, self.store, self.settings,
                             fast_failover=frozenset(switches) if fast_failover else frozenset())
        self.rerouter = Rerouter(self.fabric)
        self.heal_loop = heal_loop
        if heal_loop:
            self.fabric.graph_listeners.append(self.rerouter.kick)  # as the controller wires it

    async def start(self) -> None:
        self.fabric.load()
        self.fabric.start()
        await asyncio.gather(*(c.came_up.wait() for c in self.clients.values()))
        if self.heal_loop:
            self.rerouter.start()
            await self.rerouter.settled()

    def link(self, a: str, b: str) -> str:
        return next(l.name for l in self.graph.links.values() if {l.a, l.b} == {a, b})

    async def held(self, switch: str) -> set[E.Spec]:
        return set(await self.fabric.read_back(switch))

    async def mismatches(self) -> dict[str, tuple[set[E.Spec], set[E.Spec]]]:
        """switch -> (extra, missing) wherever a switch differs from the desired state."""
        out = {}
        for sw in self.clients:
            have, want = await self.held(sw), set(self.fabric.desired(sw))
            if have != want:
                out[sw] = (have - want, want - have)
        return out

    def labels_in_use(self) -> set[int]:
        return set(self.fabric.alloc.labels.used)
