"""Connections in, switch entries out: connect, disconnect, reconcile a switch that comes up."""

from __future__ import annotations

import asyncio
import logging
import uuid

from finsy.proto import p4r

from controller.fabric import entries as E
from controller.fabric.allocator import Allocator
from controller.fabric.graph import FabricGraph
from controller.fabric.model import Attachment, ConnectionPlan, Leg, Path
from controller.fabric.paths import NoPath, backup_for, shortest
from controller.fabric.programmer import Programmer
from controller.p4rt.client import SwitchClient
from controller.p4rt.errors import SwitchError
from controller.settings import Settings
from controller.store.sqlite import Store

log = logging.getLogger("p4nsm.fabric")

OWNED_TABLES = (E.FABRIC_PORTS_TABLE, E.EDGE_TABLE, E.LABEL_TABLE, E.GROUP_TABLE)


class ConnectError(Exception):
    """A connection that cannot be made; `field` names what was wrong in the request."""

    def __init__(self, message: str, field: str = "", not_found: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.not_found = not_found


class Fabric:
    def __init__(
        self,
        graph: FabricGraph,
        hosts: dict[str, tuple[str, int]],
        clients: dict[str, SwitchClient],
        store: Store,
        settings: Settings,
        fast_failover: frozenset[str] = frozenset(),
        group_watch_unreliable: frozenset[str] = frozenset(),
    ) -> None:
        self.graph = graph
        # Switches whose targets honour watch ports get head-end protection groups.
        self.fast_failover = fast_failover
        # BMv2 reads every group member back with the last member's watch port: comparing
        # them there would see drift that is not there.
        self.group_watch_unreliable = group_watch_unreliable
        self.hosts = hosts
        self.clients = clients
        self.store = store
        self.settings = settings
        schema = next(iter(clients.values())).schema if clients else None
        self.programmer = Programmer(clients, schema) if schema else None  # type: ignore[arg-type]
        self.alloc = Allocator(settings.label_min, settings.label_max, settings.vlan_min, settings.vlan_max)
        self.plans: dict[str, ConnectionPlan] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._path_memo: dict[tuple, tuple[Path, Path, Path | None, Path | None]] = {}
        self._backup_memo: dict[tuple, Path | None] = {}
        self.ready_switches: set[str] = set()
        self.last_reconcile: dict[str, tuple[int, int, int]] = {}  # switch -> (inserted, modified, deleted)
        self.listeners: list = []  # callables(plan, event) for monitor/heal layers
        self.graph_listeners: list = []  # callables() run after a switch or link changed state

    # --- start-up ---------------------------------------------------------------------------

    def load(self) -> None:
        """Adopt the stored desired state. Half-made connections of a crashed run are dropped:
        their caller never got an answer, and the switches' reconcile removes their entries."""
        for plan in self.store.all():
            if plan.state in ("installing", "removing"):
                log.warning("connection=%s event=dropped_unfinished state=%s", plan.id, plan.state)
                self.store.delete(plan.id)
                continue
            self.plans[plan.id] = plan
            self.alloc.claim(plan)
        log.info("event=store_loaded connections=%d", len(self.plans))

    def start(self) -> None:
        for client in self.clients.values():
            client.state_listeners.append(self._on_switch_state)
            # Until a switch has been reconciled no path may use it.
            self.graph.set_switch(client.name, False)
            client.start()

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.clients.values()))

    async def _on_switch_state(self, client: SwitchClient, up: bool, reason: str) -> None:
        if up:
            if not await self._reconciled(client):
                return
            self.ready_switches.add(client.name)
            changed = self.graph.set_switch(client.name, True)
        else:
            self.ready_switches.discard(client.name)
            changed = self.graph.set_switch(client.name, False)
        if changed:
            self.graph_changed()

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

    def set_link(self, link: str, up: bool) -> None:
        if self.graph.set_link(link, up):
            self.graph_changed()

    def graph_changed(self) -> None:
        for listener in self.graph_listeners:
            listener()

    # --- desired state ----------------------------------------------------------------------

    def specs(self, plan: ConnectionPlan | None) -> list[E.Spec]:
        return E.plan_specs(plan, self.fast_failover)

    def desired(self, switch: str) -> list[E.Spec]:
        out: list[E.Spec] = list(E.fabric_port_entries(switch, self.graph.fabric_ports(switch)))
        for plan in self.plans.values():
            out.extend(e for e in self.specs(plan) if e.switch == switch)
        return [self._comparable(e) for e in out]

    def _comparable(self, spec: E.Spec) -> E.Spec:
        if isinstance(spec, E.GroupSpec) and spec.switch in self.group_watch_unreliable:
            return E.GroupSpec(spec.switch, spec.group_id, tuple((m, None) for m, _ in spec.members), spec.profile)
        return spec

    async def read_back(self, switch: str) -> list[E.Spec]:
        """The entities we own, as the switch reports them."""
        client = self.clients[switch]
        schema = client.schema
        profile_id = schema.profile(E.PROFILE).id
        entities = await client.read([
            p4r.Entity(table_entry=p4r.TableEntry()),
            p4r.Entity(action_profile_member=p4r.ActionProfileMember(action_profile_id=profile_id)),
            p4r.Entity(action_profile_group=p4r.ActionProfileGroup(action_profile_id=profile_id)),
        ])
        out: list[E.Spec] = []
        for i, ent in enumerate(entities):
            if i % 1024 == 1023:
                await asyncio.sleep(0)  # tens of thousands of entities take a while to decode
            kind = ent.WhichOneof("entity")
            if kind == "table_entry":
                d = schema.describe_entry(ent.table_entry)
                if d["table"] not in OWNED_TABLES:
                    continue
                out.append(E.EntrySpec(switch, str(d["table"]), tuple(d["match"].items()),  # type: ignore[union-attr]
                                       str(d.get("action", "")), tuple(d.get("params", {}).items()),  # type: ignore[union-attr]
                                       d.get("group")))  # type: ignore[arg-type]
            elif kind == "action_profile_member":
                m = ent.action_profile_member
                act = schema.actions_by_id[m.action.action_id]
                names = {p.id: p.name for p in act.params}
                out.append(E.MemberSpec(switch, m.member_id, act.name,
                                        tuple((names[p.param_id], int.from_bytes(p.value, "big")) for p in m.action.params)))
            elif kind == "action_profile_group":
                g = ent.action_profile_group
                members = tuple((m.member_id, int.from_bytes(m.watch_port, "big") if m.watch_port else None) for m in g.members)
                out.append(self._comparable(E.GroupSpec(switch, g.group_id, members)))
        return out

    async def reconcile(self, switch: str) -> tuple[int, int, int]:
        """Make the switch hold exactly the desired entities, touching only what differs.

        On a controller restart the switch usually already holds them: nothing is rewritten
        and traffic is not interrupted. Returns (inserted, modified, deleted)."""
        assert self.programmer is not None
        ops = E.diff(await self.read_back(switch), self.desired(switch))
        await self.programmer.apply(f"reconcile:{switch}", ops)
        counts = tuple(sum(1 for op, _ in ops if op == k) for k in (E.INSERT, E.MODIFY, E.DELETE))
        self.last_reconcile[switch] = counts  # type: ignore[assignment]
        log.info("switch=%s event=reconciled inserted=%d modified=%d deleted=%d", switch, *counts)
        return counts  # type: ignore[return-value]

    async def transition(self, old: ConnectionPlan | None, new: ConnectionPlan | None) -> None:
        """Move a connection's entities on the switches from `old` to `new` in safe order.

        If a switch rejects part of it, the switches are moved back to `old` before the error
        is raised. Only the insert and modify phases can fail (deletes tolerate failure), so
        nothing of `old` is gone yet: the heads are set back and what only `new` had is deleted."""
        assert self.programmer is not None
        conn_id = (new or old).id  # type: ignore[union-attr]
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

    # --- connections ------------------------------------------------------------------------

    def _lock(self, conn_id: str) -> asyncio.Lock:
        lock = self._locks.get(conn_id)
        if lock is None:
            lock = self._locks[conn_id] = asyncio.Lock()
        return lock

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
            fwd, fwd_rev, back, back_rev = self._paths(a, b)
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

    def _paths(self, a: Attachment, b: Attachment) -> tuple[Path, Path, Path | None, Path | None]:
        """Primary, its reverse, backup, its reverse. Path search costs 0.2-0.4 ms, a good part of
        a connect's CPU, and depends only on the two attachment ports and on which switches and
        links are down, so it is remembered per such state (Paths are immutable). Raises NoPath."""
        g = self.graph
        key = (a.switch, a.port, b.switch, b.port, frozenset(g.down_switches), frozenset(g.down_links))
        found = self._path_memo.get(key)
        if found is None:
            fwd = shortest(g, a, b)
            back = self.backup_path(fwd, a, b)
            found = (fwd, fwd.reversed(), back, back.reversed() if back else None)
            if len(self._path_memo) >= 4096:  # liveness states come and go; keep it bounded
                self._path_memo.clear()
            self._path_memo[key] = found
        return found

    def backup_path(self, primary: Path, a: Attachment, b: Attachment) -> Path | None:
        """backup_for, remembered per primary and liveness state: heal rounds ask it for every
        connection, and at thousands of connections most share a few primaries."""
        g = self.graph
        key = (primary.links, a.switch, a.port, b.switch, b.port, frozenset(g.down_switches), frozenset(g.down_links))
        if key not in self._backup_memo:
            if len(self._backup_memo) >= 4096:
                self._backup_memo.clear()
            self._backup_memo[key] = backup_for(g, primary, a, b)
        return self._backup_memo[key]

    def _give_back(self, a: Attachment, b: Attachment, labels: list[int]) -> None:
        self.alloc.vlan_pool(a.switch, a.port).give(a.vlan)
        self.alloc.vlan_pool(b.switch, b.port).give(b.vlan)
        for label in labels:
            self.alloc.labels.give(label)

    async def connect(self, a_host: str, b_host: str, *, conn_id: str | None = None, vlan_a: int | None = None,
                      vlan_b: int | None = None, labels: dict[str, str] | None = None) -> ConnectionPlan:
        conn_id = conn_id or str(uuid.uuid4())
        async with self._lock(conn_id):
            if conn_id in self.plans:
                return self.plans[conn_id]
            plan = self.plan(conn_id, a_host, b_host, vlan_a, vlan_b, labels)
            for sw in {h.switch for leg in plan.legs() for h in leg.path.hops}:
                if sw not in self.ready_switches:
                    self.alloc.release(plan)
                    raise ConnectError(f"switch {sw} on the path is not ready", field="b")
            # The intent is stored before any switch is touched, so a crash leaves a trace
            # that the next start cleans up.
            self.store.put(plan)
            try:
                await self.transition(None, plan)
            except BaseException:
                self.store.delete(conn_id)
                self.alloc.release(plan)
                raise
            plan = plan.model_copy(update={"state": "up"})
            self.plans[conn_id] = plan
            self.store.put(plan)
            log.info("connection=%s event=up a=%s b=%s path=%s backup=%s labels=%d/%d",
                     conn_id, a_host, b_host, "-".join(plan.a_to_b.path.switches),
                     "-".join(plan.a_to_b_backup.path.switches) if plan.a_to_b_backup else None,
                     plan.a_to_b.label, plan.b_to_a.label)
            self._emit(plan, "up")
            return plan

    async def disconnect(self, conn_id: str) -> bool:
        """Remove a connection's entries everywhere and forget it. Unknown ids are fine."""
        async with self._lock(conn_id):
            plan = self.plans.get(conn_id)
            if plan is None:
                return False
            plan = plan.model_copy(update={"state": "removing"})
            self.store.put(plan)
            assert self.programmer is not None
            await self.programmer.delete(conn_id, self.specs(plan))
            del self.plans[conn_id]
            self.store.delete(conn_id)
            self.alloc.release(plan)
            log.info("connection=%s event=removed", conn_id)
            self._emit(plan, "removed")
        self._locks.pop(conn_id, None)
        return True

    def _emit(self, plan: ConnectionPlan, event: str) -> None:
        for listener in self.listeners:
            try:
                listener(plan, event)
            except Exception:
                log.exception("connection=%s event=listener_failed", plan.id)
