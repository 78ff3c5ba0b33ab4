"""Which switches paths may use: a switch that comes up is read back and reconciled to the
desired state first (retried while its session lasts), one that goes down is taken out of the
graph at once. Also what a switch reports, decoded and made comparable with the desired state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from controller.fabric import entries as E
from controller.fabric.codec import SpecCodec
from controller.fabric.graph import FabricGraph
from controller.fabric.programmer import Programmer
from controller.p4rt.client import SwitchClient
from controller.p4rt.errors import SwitchError
from controller.settings import Settings

log = logging.getLogger("p4nsm.fabric")

DECODE_SLICE = 1024  # entities decoded between yields to the loop


class SwitchLifecycle:
    def __init__(
        self,
        graph: FabricGraph,
        clients: dict[str, SwitchClient],
        settings: Settings,
        programmer: Programmer | None,
        connection_specs: Callable[[str], Iterable[E.Spec]],
        on_graph_changed: Callable[[], None],
        group_watch_unreliable: frozenset[str] = frozenset(),
    ) -> None:
        self.graph = graph
        self.clients = clients
        self.settings = settings
        self.programmer = programmer
        # The stored connections' entities on one switch: the owner of the plans answers.
        self._connection_specs = connection_specs
        self._on_graph_changed = on_graph_changed
        # BMv2 reads every group member back with the last member's watch port: comparing
        # them there would see drift that is not there.
        self.group_watch_unreliable = group_watch_unreliable
        self.ready: set[str] = set()
        self._startup: asyncio.TimerHandle | None = None
        self.last_reconcile: dict[str, tuple[int, int, int]] = {}  # switch -> (inserted, modified, deleted)

    def start(self) -> None:
        for client in self.clients.values():
            client.state_listeners.append(self._on_switch_state)
            # Until a switch has been reconciled no new path may use it; the stored ones over it
            # stay until it is known to be down (a restarted controller moves nothing that works).
            self.graph.set_switch_known(client.name, False)
            client.start()
        self._startup = asyncio.get_running_loop().call_later(self.settings.switch_startup_grace, self._unheard_are_down)

    def _unheard_are_down(self) -> None:
        """A switch that has not come up within the grace of a start is dead until it does."""
        unheard = sorted(self.graph.unknown_switches)
        for name in unheard:
            log.warning("switch=%s event=down reason=not_up_within_startup_grace grace_s=%.1f", name,
                        self.settings.switch_startup_grace)
            self.graph.set_switch_known(name, True)
            self.graph.set_switch(name, False)
        if unheard:
            self._on_graph_changed()

    async def stop(self) -> None:
        if self._startup is not None:
            self._startup.cancel()
        await asyncio.gather(*(c.stop() for c in self.clients.values()))

    async def _on_switch_state(self, client: SwitchClient, up: bool, reason: str) -> None:
        if up:
            if not await self._reconciled(client):
                return
            self.ready.add(client.name)
            changed = self.graph.set_switch_known(client.name, True) | self.graph.set_switch(client.name, True)
        else:
            self.ready.discard(client.name)
            changed = self.graph.set_switch_known(client.name, True) | self.graph.set_switch(client.name, False)
        if changed:
            self._on_graph_changed()

    async def _reconciled(self, client: SwitchClient) -> bool:
        """Reconcile a switch that came up. A failure (a read that timed out on a starved
        switch) is retried with backoff for as long as this session lasts: until it succeeds no
        path uses the switch, and without a retry it would stay unused until it reconnected."""
        session = client.sessions
        delay = self.settings.reconnect_backoff_min
        while True:
            try:
                await self.reconcile(client.name)
                return True
            except SwitchError as e:
                log.error("switch=%s event=reconcile_failed retry_in=%.1fs error=%s", client.name, delay, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_backoff_max)
            if not client.up.is_set() or client.sessions != session:
                return False  # gone, or a new session reconciles for itself

    def comparable(self, spec: E.Spec) -> E.Spec:
        """A spec as the switch can report it. A group's members are sorted: P4Runtime gives
        their order no meaning, and BMv2 reads them back in an order of its own, which would
        otherwise look like drift on every read-back."""
        if not isinstance(spec, E.GroupSpec):
            return spec
        members = spec.members
        if spec.switch in self.group_watch_unreliable:
            members = tuple((m, None) for m, _ in members)
        return E.GroupSpec(spec.switch, spec.group_id, tuple(sorted(members, key=lambda m: m[0])), spec.profile)

    def desired(self, switch: str) -> list[E.Spec]:
        out: list[E.Spec] = list(E.fabric_port_entries(switch, self.graph.fabric_ports(switch)))
        out.extend(self._connection_specs(switch))
        return [self.comparable(e) for e in out]

    async def read_back(self, switch: str) -> list[E.Spec]:
        """The entities we own, as the switch reports them."""
        assert self.programmer is not None
        codec: SpecCodec = self.programmer.codec_for(switch)
        entities = await self.clients[switch].read(codec.read_request())
        out: list[E.Spec] = []
        for i, ent in enumerate(entities):
            if i % DECODE_SLICE == DECODE_SLICE - 1:
                await asyncio.sleep(0)  # tens of thousands of entities take a while to decode
            spec = codec.from_entity(switch, ent)
            if spec is not None:
                out.append(self.comparable(spec))
        return out

    async def reconcile(self, switch: str) -> tuple[int, int, int]:
        """Make the switch hold exactly the desired entities, touching only what differs.

        On a controller restart the switch usually already holds them: nothing is rewritten
        and traffic is not interrupted. Returns (inserted, modified, deleted)."""
        assert self.programmer is not None
        ops = E.diff(await self.read_back(switch), self.desired(switch))
        await self.programmer.apply(f"reconcile:{switch}", ops)
        inserted, modified, deleted = (sum(1 for op, _ in ops if op == k) for k in (E.INSERT, E.MODIFY, E.DELETE))
        counts = (inserted, modified, deleted)
        self.last_reconcile[switch] = counts
        log.info("switch=%s event=reconciled inserted=%d modified=%d deleted=%d", switch, *counts)
        return counts
