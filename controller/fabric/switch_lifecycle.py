"""Which switches paths may use: a switch that comes up is read back and reconciled to the
desired state first (retried while its session lasts), one that goes down is taken out of the
graph at once. Also what a switch reports, decoded and made comparable with the desired state.

What was last known of each switch (up or down) is kept in the store (records of kind
`switch_state`), so that a restarted controller starts from it: a switch that was down stays out
of every path until it comes up and is reconciled, without waiting `switch_startup_grace`; one
that was up carries its stored connections until it is heard from, or until the grace ends. A
switch whose read-back lacks entries of the connections stored over it (it restarted and came
back empty while nobody watched) is taken out of the paths before it is reprogrammed: its
connections move to their backups meanwhile, and it is used again once it is reconciled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from pydantic import BaseModel, ValidationError

from controller.aio import cancel_and_wait
from controller.fabric import entries as E
from controller.fabric.codec import SpecCodec
from controller.fabric.graph import FabricGraph
from controller.fabric.programmer import Programmer
from controller.fabric.store import StateStore
from controller.p4rt.client import SwitchClient
from controller.p4rt.errors import SwitchError
from controller.settings import Settings

log = logging.getLogger("p4nsm.fabric")

DECODE_SLICE = 1024  # entities decoded between yields to the loop
SWITCH_STATE = "switch_state"  # store records: the last known state of each switch
RECONCILE_PASSES = 3  # a heal that moved connections while a reconcile ran makes another pass


class StoredSwitch(BaseModel):
    """A switch as the last run knew it."""

    up: bool


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
        store: StateStore | None = None,
    ) -> None:
        self.graph = graph
        self.store = store
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
        self._startup: asyncio.Task[None] | None = None
        self.last_reconcile: dict[str, tuple[int, int, int]] = {}  # switch -> (inserted, modified, deleted)

    def stored(self) -> dict[str, StoredSwitch]:
        """The last known state of each switch of the topology, as the store holds it."""
        out: dict[str, StoredSwitch] = {}
        for name, value in (self.store.records(SWITCH_STATE) if self.store is not None else {}).items():
            try:
                if name in self.clients:
                    out[name] = StoredSwitch.model_validate_json(value)
            except ValidationError as e:  # a record we cannot read is no evidence: the switch starts unknown
                log.warning("switch=%s event=stored_state_unreadable error=%s", name, e.errors()[0]["msg"])
        return out

    def start(self) -> None:
        stored = self.stored()
        for client in self.clients.values():
            client.state_listeners.append(self._on_switch_state)
            if client.name in stored and not stored[client.name].up:
                # It was down when the last run ended: down until it comes up and is reconciled.
                log.info("switch=%s event=down reason=stored_down", client.name)
                self.graph.set_switch_known(client.name, True)
                self.graph.set_switch(client.name, False)
            else:
                # Until a switch has been reconciled no new path may use it; the stored ones over
                # it stay until it is known to be down (a restarted controller moves nothing that works).
                self.graph.set_switch_known(client.name, False)
            client.start()
        self._startup = asyncio.create_task(self._unheard_are_down(), name="fabric:startup-grace")

    async def _unheard_are_down(self) -> None:
        """A switch that has not come up within the grace of a start is dead until it does."""
        await asyncio.sleep(self.settings.switch_startup_grace)
        unheard = sorted(self.graph.unknown_switches)
        for name in unheard:
            log.warning("switch=%s event=down reason=not_up_within_startup_grace grace_s=%.1f", name,
                        self.settings.switch_startup_grace)
            self.graph.set_switch_known(name, True)
            self.graph.set_switch(name, False)
            self._remember(name, False)
        if unheard:
            await self._durable()
            self._on_graph_changed()

    async def stop(self) -> None:
        await cancel_and_wait(self._startup)
        await asyncio.gather(*(c.stop() for c in self.clients.values()))

    def _remember(self, name: str, up: bool) -> None:
        if self.store is not None:
            self.store.put_record(SWITCH_STATE, name, StoredSwitch(up=up).model_dump_json())

    async def _durable(self) -> None:
        if self.store is not None:
            await self.store.durable()

    async def _on_switch_state(self, client: SwitchClient, up: bool, reason: str) -> None:
        if up:
            if not await self._reconciled(client):
                return
            self.ready.add(client.name)
            changed = self.graph.set_switch_known(client.name, True) | self.graph.set_switch(client.name, True)
        else:
            self.ready.discard(client.name)
            changed = self.graph.set_switch_known(client.name, True) | self.graph.set_switch(client.name, False)
        # Stored before paths move on the strength of it: the next run starts from it.
        self._remember(client.name, up)
        await self._durable()
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
        and traffic is not interrupted. A switch that lacks entries of the connections over it
        is taken out of the paths first (their heal runs meanwhile), and another pass follows
        while the desired state moved under the one before. Returns (inserted, modified, deleted)."""
        assert self.programmer is not None
        inserted = modified = deleted = 0
        for _ in range(RECONCILE_PASSES):
            want = self.desired(switch)
            ops = E.diff(await self.read_back(switch), want)
            lost = self._lost(switch, ops)
            if lost and self.graph.usable(switch):
                log.warning("switch=%s event=lost_state missing_entries=%d action=out_of_paths_until_reconciled", switch, lost)
                self.graph.set_switch_known(switch, True)
                self.graph.set_switch(switch, False)
                self._on_graph_changed()
            await self.programmer.apply(f"reconcile:{switch}", ops)
            inserted += sum(1 for op, _ in ops if op == E.INSERT)
            modified += sum(1 for op, _ in ops if op == E.MODIFY)
            deleted += sum(1 for op, _ in ops if op == E.DELETE)
            if self.desired(switch) == want:
                break
        counts = (inserted, modified, deleted)
        self.last_reconcile[switch] = counts
        log.info("switch=%s event=reconciled inserted=%d modified=%d deleted=%d", switch, *counts)
        return counts

    def _lost(self, switch: str, ops: list[tuple[str, E.Spec]]) -> int:
        """How many entries of stored connections the switch lacks: it forwards none of them."""
        if not any(op == E.INSERT for op, _ in ops):
            return 0
        carried = {self.comparable(e) for e in self._connection_specs(switch)}
        return sum(1 for op, spec in ops if op == E.INSERT and spec in carried)
