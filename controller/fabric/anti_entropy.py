"""Anti-entropy: every `anti_entropy_interval` each ready switch is read back and compared with
the desired state, so that a switch that stayed up but missed a change heals without waiting
for a reconnect and its reconcile.

A switch drifts when a write's outcome was lost (an RPC that timed out on a starved switch, a
delete that failed while the switch stayed reachable) or when someone wrote behind the
controller's back. Only a difference seen on two sweeps in a row is acted on, never during a
heal round, and each correction re-checks, just before it is written, that nothing has moved:
  - an entity whose ids (label, VLAN) are free in the allocator belongs to nobody: it is
    deleted, with its ids held for the time of the delete so that no connection takes them;
  - an entity of a stored connection that is missing, differs, or sits on a switch its plan
    does not use is written or deleted under that connection's lock, if its plan is still the
    one compared;
  - an entity whose ids a connection still being made holds is left for a later sweep.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from controller.aio import cancel_and_wait, gc_paused
from controller.fabric import entries as E
from controller.fabric.connections import Fabric
from controller.fabric.model import ConnectionPlan
from controller.p4rt.errors import SwitchError

log = logging.getLogger("p4nsm.fabric.anti_entropy")

Op = tuple[str, E.Spec]
YIELD_EVERY = 256  # plans per slice of the desired-state pass


def id_owners(fabric: Fabric) -> dict[tuple[int, int], ConnectionPlan]:
    """(id of its pool, id) -> the stored connection that holds it."""
    out: dict[tuple[int, int], ConnectionPlan] = {}
    labels = id(fabric.alloc.labels)
    for plan in fabric.plans.values():
        for leg in plan.legs():
            out[(labels, leg.label)] = plan
        for att in (plan.a, plan.b):
            out[(id(fabric.alloc.vlan_pool(att.switch, att.port)), att.vlan)] = plan
    return out


class AntiEntropy:
    def __init__(self, fabric: Fabric, busy: Callable[[], bool], interval: float) -> None:
        self.fabric = fabric
        # True while connections are being moved (a heal round): the switches are expected to
        # differ from the plans then, so nothing seen is acted on.
        self.busy = busy
        self.interval = interval
        self.counters: Counter[str] = Counter()
        self._last: dict[str, set[Op]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(self._run(), name="fabric:anti-entropy")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one bad sweep
                log.exception("event=anti_entropy_sweep_failed")

    async def sweep(self) -> None:
        # The pass allocates an object per desired entity (220,000 at 10,000 connections); the
        # collections that would trigger stall the loop far longer than its yielding slices.
        with gc_paused():
            want = await self._desired_by_switch()
            for switch in sorted(self.fabric.ready_switches):
                try:
                    await self._sweep_switch(switch, want.get(switch, {}))
                except SwitchError as e:
                    log.warning("switch=%s event=anti_entropy_skipped error=%s", switch, e)

    async def _desired_by_switch(self) -> dict[str, dict[tuple, tuple[E.Spec, ConnectionPlan | None]]]:
        """Every switch's desired entities with the connection that owns each, from one pass over
        the plans that yields to the loop every few hundred of them: at 10,000 connections the
        pass costs about a second of CPU, which must not stall keepalives and heal rounds. The
        plans may move meanwhile; every correction is checked against the live plan first."""
        fabric = self.fabric
        out: dict[str, dict[tuple, tuple[E.Spec, ConnectionPlan | None]]] = {}
        for switch in fabric.clients:
            out[switch] = {s.key: (s, None) for s in E.fabric_port_entries(switch, fabric.graph.fabric_ports(switch))}
        for i, plan in enumerate(list(fabric.plans.values())):
            for spec in fabric.specs(plan):
                out.setdefault(spec.switch, {})[spec.key] = (fabric.comparable(spec), plan)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return out

    async def _sweep_switch(self, switch: str, want: dict[tuple, tuple[E.Spec, ConnectionPlan | None]]) -> None:
        fabric = self.fabric
        have = await fabric.read_back(switch)
        if self.busy() or switch not in fabric.ready_switches:
            self._last.pop(switch, None)  # things are moving: compare afresh next time
            return
        seen = set(E.diff(have, (spec for spec, _ in want.values())))
        stable, self._last[switch] = seen & self._last.get(switch, set()), seen
        if not stable:
            return
        owners = {key: plan for key, (_, plan) in want.items() if plan is not None}
        by_id = id_owners(fabric)
        orphans: list[E.Spec] = []
        repairs: dict[str, tuple[ConnectionPlan, list[Op]]] = {}
        unowned: list[Op] = []
        for op, spec in stable:
            plan = owners.get(spec.key)
            ids = fabric.ids_of(spec)
            if plan is None and ids is not None:  # an extra: whose ids does it carry?
                if not any(value in pool.used for pool, value in ids):
                    orphans.append(spec)  # nobody's
                    continue
                holders = {by_id[key].id: by_id[key] for key in ((id(pool), value) for pool, value in ids) if key in by_id}
                if len(holders) != 1:
                    continue  # held by a connection still being made: judged on a later sweep
                plan = next(iter(holders.values()))
            if plan is None:
                unowned.append((op, spec))
            else:
                repairs.setdefault(plan.id, (plan, []))[1].append((op, spec))
        if orphans:
            await self._delete_orphans(switch, orphans)
        for plan, ops in repairs.values():
            await self._repair(switch, plan, ops)
        if unowned:  # fabric-port marks: the topology's, nobody else writes them
            await self._write(switch, "fabric-ports", unowned, lambda: True)
        self._last.pop(switch, None)  # what was fixed must not count as seen once already

    async def _delete_orphans(self, switch: str, specs: list[E.Spec]) -> None:
        with self.fabric.holding_free_ids(specs) as doomed:
            if doomed:
                log.warning("switch=%s event=orphans_deleted count=%d keys=%s", switch, len(doomed),
                            [s.key[1:] for s in doomed[:5]])
                self.counters["orphans_deleted"] += len(doomed)
                assert self.fabric.programmer is not None
                await self.fabric.programmer.delete(f"anti-entropy:{switch}", doomed)

    async def _repair(self, switch: str, plan: ConnectionPlan, ops: list[Op]) -> None:
        fabric = self.fabric
        async with fabric.lock(plan.id):
            live = fabric.plans.get(plan.id)
            if live is None:
                return
            # Judged against the plan as it is now, not as it was when the sweep began.
            current = {s.key: fabric.comparable(s) for s in fabric.specs(live) if s.switch == switch}
            ops = [(op, spec) for op, spec in ops if (spec.key not in current if op == E.DELETE else current.get(spec.key) == spec)]
            await self._write(switch, plan.id, ops, lambda: fabric.plans.get(plan.id) is live and not self.busy())

    async def _write(self, switch: str, owner: str, ops: list[Op], still_valid: Callable[[], bool]) -> None:
        assert self.fabric.programmer is not None
        for phase in E.phases(ops):
            if not still_valid():
                return
            log.warning("switch=%s connection=%s event=drift_repaired ops=%s", switch, owner,
                        dict(Counter(op for op, _ in phase)))
            self.counters["repaired"] += len(phase)
            await self.fabric.programmer.write_ops(phase)
