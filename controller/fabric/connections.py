"""The one owner of connection state: the plans, their rows in the store, the ids they hold
(labels, VLANs) and each connection's lock.

Every change of a connection goes through an operation here (connect, disconnect, commit,
commit_urgent, relabel) that takes the lock, moves the switches, writes the store, records the
plan, gives back or keeps ids and tells the listeners, in that one place. Others read `plans`
(a read-only view) and decide; heal decides what to repair and what to swap, this applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping

from controller.fabric import entries as E
from controller.fabric.allocator import Allocator, Exhausted, IdPool
from controller.fabric.codec import SpecCodec
from controller.fabric.graph import FabricGraph
from controller.fabric.model import Attachment, ConnectionPlan, Leg, Path
from controller.fabric.path_memo import PathMemo
from controller.fabric.paths import NoPath
from controller.fabric.programmer import Programmer
from controller.fabric.store import StateStore
from controller.fabric.switch_lifecycle import SwitchLifecycle
from controller.p4rt.client import SwitchClient
from controller.p4rt.errors import SwitchError
from controller.settings import Settings

log = logging.getLogger("p4nsm.fabric")

Op = tuple[str, E.Spec]


class ConnectError(Exception):
    """A connection that cannot be made; `field` names what was wrong in the request."""

    def __init__(self, message: str, field: str = "", not_found: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.not_found = not_found


class StalePlan(Exception):
    """A commit from a plan that is no longer the connection's, or without its lock: applying it
    would undo what happened since."""


class _Turn:
    """One connection's lock and how many callers hold it or wait for it. The urgent switch-over
    takes only locks nobody wants, so it never waits behind a connect, disconnect or repair."""

    __slots__ = ("lock", "wanted")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.wanted = 0


class Fabric:
    def __init__(
        self,
        graph: FabricGraph,
        hosts: dict[str, tuple[str, int]],
        clients: dict[str, SwitchClient],
        store: StateStore,
        settings: Settings,
        fast_failover: frozenset[str] = frozenset(),
        group_watch_unreliable: frozenset[str] = frozenset(),
    ) -> None:
        self.graph = graph
        # Switches whose targets honour watch ports get head-end protection groups.
        self.fast_failover = fast_failover
        self.group_watch_unreliable = group_watch_unreliable
        self.hosts = hosts
        self.clients = clients
        self.store = store
        self.settings = settings
        schema = next(iter(clients.values())).schema if clients else None
        self.programmer = Programmer(clients, SpecCodec(schema)) if schema is not None else None
        self.alloc = Allocator(settings.label_min, settings.label_max, settings.vlan_min, settings.vlan_max)
        self._plans: dict[str, ConnectionPlan] = {}
        self.plans: Mapping[str, ConnectionPlan] = types.MappingProxyType(self._plans)
        self._turns: dict[str, _Turn] = {}
        self.path_memo = PathMemo(graph)
        self.switches = SwitchLifecycle(graph, clients, settings, self.programmer, self._specs_on, self.graph_changed,
                                        group_watch_unreliable)
        self.listeners: list[Callable[[ConnectionPlan, str], None]] = []  # (plan, event) for monitor/heal layers
        self.graph_listeners: list[Callable[[], None]] = []  # run after a switch or link changed state

    # --- start-up and the switches ----------------------------------------------------------

    def load(self) -> None:
        """Adopt the stored desired state. Half-made connections of a crashed run are dropped:
        their caller never got an answer, and the switches' reconcile removes their entries."""
        for plan in self.store.all():
            if plan.state in ("installing", "removing"):
                log.warning("connection=%s event=dropped_unfinished state=%s", plan.id, plan.state)
                self.store.delete(plan.id)
                continue
            self._plans[plan.id] = plan
            self.alloc.claim(plan)
        log.info("event=store_loaded connections=%d", len(self._plans))

    def start(self) -> None:
        self.switches.start()

    async def stop(self) -> None:
        await self.switches.stop()

    @property
    def ready_switches(self) -> set[str]:
        return self.switches.ready

    @property
    def last_reconcile(self) -> dict[str, tuple[int, int, int]]:
        return self.switches.last_reconcile

    def set_link(self, link: str, up: bool) -> None:
        if self.graph.set_link(link, up):
            self.graph_changed()

    def set_link_known(self, link: str, known: bool) -> None:
        """An unknown link takes no new path; those on it stay (graph.unknown_links)."""
        if self.graph.set_link_known(link, known):
            self.graph_changed()

    def graph_changed(self) -> None:
        for listener in self.graph_listeners:
            listener()

    async def read_back(self, switch: str) -> list[E.Spec]:
        return await self.switches.read_back(switch)

    async def reconcile(self, switch: str) -> tuple[int, int, int]:
        return await self.switches.reconcile(switch)

    def desired(self, switch: str) -> list[E.Spec]:
        return self.switches.desired(switch)

    def comparable(self, spec: E.Spec) -> E.Spec:
        return self.switches.comparable(spec)

    # --- desired state ----------------------------------------------------------------------

    def specs(self, plan: ConnectionPlan | None) -> list[E.Spec]:
        return E.plan_specs(plan, self.fast_failover)

    def _specs_on(self, switch: str) -> Iterator[E.Spec]:
        for plan in self._plans.values():
            yield from (e for e in self.specs(plan) if e.switch == switch)

    def backup_path(self, primary: Path, a: Attachment, b: Attachment) -> Path | None:
        return self.path_memo.backup(primary, a, b)

    async def transition(self, old: ConnectionPlan | None, new: ConnectionPlan | None) -> None:
        """Move a connection's entities on the switches from `old` to `new` in safe order.

        If a switch rejects part of it, the switches are moved back to `old` before the error
        is raised. Only the insert and modify phases can fail (deletes tolerate failure), so
        nothing of `old` is gone yet: the heads are set back and what only `new` had is deleted."""
        assert self.programmer is not None
        conn_id = new.id if new is not None else old.id if old is not None else ""
        try:
            await self.programmer.apply(conn_id, E.diff(self.specs(old), self.specs(new)), compensate=old is None)
        except SwitchError as e:
            if old is None:
                raise  # apply() compensated the fresh install already
            back = [op for op in E.diff(self.specs(new), self.specs(old)) if op[0] != E.INSERT]
            try:
                await self.programmer.apply(conn_id, back)
            except SwitchError as again:
                log.error("connection=%s event=rollback_failed switch=%s error=%s", conn_id, again.switch, again)
            else:
                log.warning("connection=%s event=transition_rolled_back switch=%s error=%s", conn_id, e.switch, e)
            raise

    # --- locks and commits ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, conn_id: str) -> AsyncIterator[None]:
        """Hold one connection still: whoever changes or rewrites it holds this."""
        turn = self._want(conn_id)
        try:
            async with turn.lock:
                yield
        finally:
            self._unwant(conn_id, turn)

    def _want(self, conn_id: str) -> _Turn:
        turn = self._turns.get(conn_id)
        if turn is None:
            turn = self._turns[conn_id] = _Turn()
        turn.wanted += 1
        return turn

    def _unwant(self, conn_id: str, turn: _Turn) -> None:
        turn.wanted -= 1
        if not turn.wanted and conn_id not in self._plans:
            self._turns.pop(conn_id, None)

    def _held(self, conn_id: str) -> bool:
        turn = self._turns.get(conn_id)
        return turn is not None and turn.lock.locked()

    def leg(self, path: Path) -> Leg:
        """A leg over `path` with a fresh label: the commit that uses it keeps the label, or
        gives it back if the plan is rejected."""
        return Leg(label=self.alloc.labels.take(), path=path)

    async def commit(self, old: ConnectionPlan, new: ConnectionPlan, event: str | None) -> None:
        """Write the difference, then record the new plan; the caller holds lock(old.id) and
        `old` is the plan in force. A rejection leaves `old` in force for a later retry and gives
        back the labels taken for `new`: an entry of theirs left on a switch the rollback could
        not reach is overwritten when the label is used again (Programmer) or deleted by
        anti-entropy, so reusing it is safe."""
        if not self._held(old.id) or self._plans.get(old.id) is not old:
            self._free_labels(new, old)
            raise StalePlan(f"connection {old.id}: revision {old.revision} is not the plan in force under its lock")
        try:
            await self.transition(old, new)
        except SwitchError:
            self._free_labels(new, old)
            raise
        self._free_labels(old, new)
        self._plans[new.id] = new
        self.store.put(new)
        if event:
            self._emit(new, event)

    async def commit_urgent(self, pairs: list[tuple[ConnectionPlan, ConnectionPlan]],
                            on_heads_acked: Callable[[int], None] | None = None) -> tuple[float | None, list[str]]:
        """Many connections' changes merged phase by phase: one Write per switch per phase.

        The head entries that move traffic onto the backups go first, alone: the backups'
        transit entries are already in place, so one batch restores every connection, and the
        full diff (which costs far more to compute than to write at thousands of connections)
        only tidies up behind it. A connection whose lock someone holds or waits for, or whose
        plan moved, is left out: it is being changed and must not be changed under its owner.
        Returns when the head-end batch was acknowledged (perf_counter) and the ids left out."""
        taken: list[tuple[ConnectionPlan, ConnectionPlan]] = []
        deferred: list[str] = []
        for old, new in pairs:
            turn = self._turns.get(old.id)
            if (turn is not None and turn.wanted) or self._plans.get(old.id) is not old:
                self._free_labels(new, old)
                deferred.append(old.id)
                continue
            taken.append((old, new))
        if not taken:
            return None, deferred
        # Taken directly, not through lock(): 10,000 context managers cost ~40 ms before the
        # heads could be written, these ~2 ms.
        held: list[tuple[str, _Turn]] = []
        try:
            for old, _ in taken:
                turn = self._want(old.id)
                try:
                    await turn.lock.acquire()  # nobody holds or waits for it: never suspends
                except BaseException:
                    self._unwant(old.id, turn)
                    raise
                held.append((old.id, turn))
            t_heads = await self._write_urgent(taken, on_heads_acked)
        finally:
            for conn_id, turn in held:
                turn.lock.release()
                self._unwant(conn_id, turn)
        return t_heads, deferred

    async def _write_urgent(self, pairs: list[tuple[ConnectionPlan, ConnectionPlan]],
                            on_heads_acked: Callable[[int], None] | None) -> float | None:
        assert self.programmer is not None
        # A head entry changes when its leg does (a switch-over); labels tell legs apart cheaply.
        heads: list[Op] = [(E.MODIFY, E.head_entry(src, new_leg)) for old, new in pairs
                           for src, old_leg, new_leg in ((new.a, old.a_to_b, new.a_to_b), (new.b, old.b_to_a, new.b_to_a))
                           if new_leg.label != old_leg.label]
        t_heads = None
        if heads:
            await self._write_phase(heads)
            t_heads = time.perf_counter()
            if on_heads_acked is not None:
                on_heads_acked(len(heads))
        done = {spec.key for _, spec in heads}
        ops = [op for old, new in pairs for op in E.diff(self.specs(old), self.specs(new))
               if not (op[0] == E.MODIFY and op[1].key in done)]
        for phase in E.phases(ops):
            await self._write_phase(phase)
            if t_heads is None and any(isinstance(s, E.EntrySpec) and s.table in (E.EDGE_TABLE, E.GROUP_TABLE) for _, s in phase):
                t_heads = time.perf_counter()
        self.store.put_many([new for _, new in pairs])
        for old, new in pairs:
            self._free_labels(old, new)
            self._plans[new.id] = new
            if new.a_to_b != old.a_to_b:
                self._emit(new, "rerouted")
        return t_heads

    async def _write_phase(self, phase: list[Op]) -> None:
        assert self.programmer is not None
        try:
            await self.programmer.write_ops(phase)
        except SwitchError as e:
            # Deletes on a dead switch fail; its reconcile cleans up when it returns.
            log.info("event=urgent_phase_partial switch=%s error=%s", e.switch, e)

    async def relabel(self, conn_id: str, labels: dict[str, str]) -> ConnectionPlan | None:
        """Replace the metadata of the connection's plan as it is now (whatever heal did to it
        meanwhile); None if it is gone. Switches are not touched."""
        async with self.lock(conn_id):
            live = self._plans.get(conn_id)
            if live is None or live.state == "removing":
                return None
            plan = live.model_copy(update={"labels": dict(labels)})
            self._plans[conn_id] = plan
            self.store.put(plan)
            return plan

    def _free_labels(self, old: ConnectionPlan, new: ConnectionPlan) -> None:
        """Give back the labels `old` used that `new` no longer does."""
        keep = {leg.label for leg in new.legs()}
        for leg in old.legs():
            if leg.label not in keep:
                self.alloc.labels.give(leg.label)

    def ids_of(self, spec: E.Spec) -> list[tuple[IdPool, int]] | None:
        """The allocator pools and ids an entity's key is made of; None for entities that no
        connection owns by id (fabric-port marks, which follow the topology)."""
        if isinstance(spec, (E.MemberSpec, E.GroupSpec)):
            return [(self.alloc.labels, spec.member_id if isinstance(spec, E.MemberSpec) else spec.group_id)]
        match = dict(spec.match)
        if spec.table in (E.LABEL_TABLE, E.GROUP_TABLE):
            return [(self.alloc.labels, match["label"])]
        if spec.table == E.EDGE_TABLE:
            return [(self.alloc.vlan_pool(spec.switch, match["ingress_port"]), match["vlan_id"])]
        return None

    @contextlib.contextmanager
    def holding_free_ids(self, specs: list[E.Spec]) -> Iterator[list[E.Spec]]:
        """Of `specs`, those whose ids are all free, with those ids held meanwhile so that no
        connection takes them (what deletes an entity nobody owns); given back on exit."""
        held: list[tuple[IdPool, int]] = []
        free: list[E.Spec] = []
        try:
            for spec in specs:
                claimed: list[tuple[IdPool, int]] = []
                try:
                    for pool, value in self.ids_of(spec) or ():
                        pool.take(value)
                        claimed.append((pool, value))
                except Exhausted:  # taken since: a connection owns it now
                    for pool, value in claimed:
                        pool.give(value)
                    continue
                held += claimed
                free.append(spec)
            yield free
        finally:
            for pool, value in held:
                pool.give(value)

    # --- connections ------------------------------------------------------------------------

    def attachment(self, host: str, field: str, vlan: int | None) -> Attachment:
        where = self.hosts.get(host)
        if where is None:
            raise ConnectError(f"{field}: unknown host {host!r}", field=field, not_found=True)
        switch, port = where
        return Attachment(host=host, switch=switch, port=port, vlan=self.alloc.vlan_pool(switch, port).take(vlan))

    def plan(self, conn_id: str, a_host: str, b_host: str, vlan_a: int | None = None, vlan_b: int | None = None,
             labels: dict[str, str] | None = None) -> ConnectionPlan:
        """Allocate ids and compute paths; touches no switch. Raises ConnectError."""
        if a_host == b_host:
            raise ConnectError(f"b: a connection needs two different hosts, got {a_host!r} twice", field="b")
        for field, host in (("a", a_host), ("b", b_host)):
            if host not in self.hosts:
                raise ConnectError(f"{field}: unknown host {host!r}", field=field, not_found=True)
        a = self.attachment(a_host, "a", vlan_a)
        try:
            b = self.attachment(b_host, "b", vlan_b)
        except Exception:
            self.alloc.vlan_pool(a.switch, a.port).give(a.vlan)
            raise
        taken: list[int] = []
        try:
            fwd, fwd_rev, back, back_rev = self.path_memo.paths(a, b)
            for _ in range(4 if back else 2):
                taken.append(self.alloc.labels.take())
        except NoPath as e:
            self._give_back(a, b, taken)
            raise ConnectError(f"b: host {b_host!r} is unreachable from {a_host!r}: {e}", field="b") from None
        except Exception:
            self._give_back(a, b, taken)
            raise
        return ConnectionPlan(
            id=conn_id,
            a=a,
            b=b,
            a_to_b=Leg(label=taken[0], path=fwd),
            b_to_a=Leg(label=taken[1], path=fwd_rev),
            a_to_b_backup=Leg(label=taken[2], path=back) if back else None,
            b_to_a_backup=Leg(label=taken[3], path=back_rev) if back_rev else None,
            labels=labels or {},
        )

    def _give_back(self, a: Attachment, b: Attachment, labels: list[int]) -> None:
        self.alloc.vlan_pool(a.switch, a.port).give(a.vlan)
        self.alloc.vlan_pool(b.switch, b.port).give(b.vlan)
        for label in labels:
            self.alloc.labels.give(label)

    async def connect(self, a_host: str, b_host: str, *, conn_id: str | None = None, vlan_a: int | None = None,
                      vlan_b: int | None = None, labels: dict[str, str] | None = None) -> ConnectionPlan:
        conn_id = conn_id or str(uuid.uuid4())
        async with self.lock(conn_id):
            if conn_id in self._plans:
                await self.store.durable()  # a retry after UNAVAILABLE: answered once it is stored
                return self._plans[conn_id]
            plan = self.plan(conn_id, a_host, b_host, vlan_a, vlan_b, labels)
            for sw in {h.switch for leg in plan.legs() for h in leg.path.hops}:
                if sw not in self.ready_switches:
                    self.alloc.release(plan)
                    raise ConnectError(f"switch {sw} on the path is not ready", field="b")
            # The intent is stored before any switch is touched, so a crash leaves a trace
            # that the next start cleans up.
            self.store.put(plan)
            try:
                await self.store.durable()
                await self.transition(None, plan)
            except BaseException:
                self.store.delete(conn_id)
                self.alloc.release(plan)
                raise
            plan = plan.model_copy(update={"state": "up"})
            self._plans[conn_id] = plan
            self.store.put(plan)
            # Not answered before it is stored: a StoreUnavailable here leaves the connection
            # made and its write queued, and the caller's retry adopts it (above).
            await self.store.durable()
            log.info("connection=%s event=up a=%s b=%s path=%s backup=%s labels=%d/%d",
                     conn_id, a_host, b_host, "-".join(plan.a_to_b.path.switches),
                     "-".join(plan.a_to_b_backup.path.switches) if plan.a_to_b_backup else None,
                     plan.a_to_b.label, plan.b_to_a.label)
            self._emit(plan, "up")
            return plan

    async def disconnect(self, conn_id: str) -> bool:
        """Remove a connection's entries everywhere and forget it. Unknown ids are fine."""
        async with self.lock(conn_id):
            plan = self._plans.get(conn_id)
            if plan is None:
                return False
            # Recorded as removing, not only stored so: heal leaves a connection on its way out alone.
            before, plan = plan, plan.model_copy(update={"state": "removing"})
            self._plans[conn_id] = plan
            self.store.put(plan)
            assert self.programmer is not None
            try:
                await self.store.durable()
                await self.programmer.delete(conn_id, self.specs(plan))
            except BaseException:  # cancelled: still a connection, for heal and for a retried removal
                self._plans[conn_id] = before
                self.store.put(before)
                raise
            del self._plans[conn_id]
            self.store.delete(conn_id)
            self.alloc.release(plan)
            log.info("connection=%s event=removed", conn_id)
            self._emit(plan, "removed")
        return True

    def _emit(self, plan: ConnectionPlan, event: str) -> None:
        for listener in self.listeners:
            try:
                listener(plan, event)
            except Exception:
                log.exception("connection=%s event=listener_failed", plan.id)
