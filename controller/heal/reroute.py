"""Move connections off failed elements: switch-over first (one MODIFY per head end, batched
across connections), then the slower work (fresh backups, removal of dead legs).

With no path left a connection is DOWN (its store record stays) and is restored when an
element returns. Nothing here ever deletes a stored connection.
"""

from __future__ import annotations

import asyncio
import logging
import time

from finsy.proto import p4r

from controller.fabric import entries as E
from controller.fabric.model import ConnectionPlan, Leg, Path
from controller.fabric.paths import NoPath, backup_for, shortest
from controller.fabric.service import Fabric
from controller.p4rt.errors import SwitchError

log = logging.getLogger("p4nsm.heal.reroute")


def _leg_alive(fabric: Fabric, leg: Leg | None) -> bool:
    if leg is None:
        return False
    g = fabric.graph
    return all(g.usable(s) for s in leg.path.switches) and not any(l in g.down_links for l in leg.path.links)


def _active_alive(fabric: Fabric, plan: ConnectionPlan) -> bool:
    return _leg_alive(fabric, plan.a_to_b) and _leg_alive(fabric, plan.b_to_a)


class Rerouter:
    """Serialises heal rounds: a failure that arrives during a round triggers another round."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_round: dict[str, float] = {}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heal:reroute")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def kick(self) -> None:
        self._dirty.set()

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.heal_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=heal_round_failed")
                await asyncio.sleep(0.1)
                self._dirty.set()

    async def heal_round(self) -> None:
        t0 = time.perf_counter()
        fabric = self.fabric
        broken = [p for p in fabric.plans.values() if p.state in ("up", "down") and not _active_alive(fabric, p)]
        switched = await self._switch_over([p for p in broken if _leg_alive(fabric, p.a_to_b_backup) and _leg_alive(fabric, p.b_to_a_backup)])
        t_switch = time.perf_counter()
        # Everything else: connections without a live backup, connections that just lost their
        # backup, DOWN connections that may have a path again.
        for plan in list(fabric.plans.values()):
            if plan.state not in ("up", "down"):
                continue
            try:
                async with fabric._lock(plan.id):
                    current = fabric.plans.get(plan.id)
                    if current is None:
                        continue
                    await self._repair(current)
            except SwitchError as e:
                log.error("connection=%s event=repair_failed error=%s", plan.id, e)
        self.last_round = {"switched": len(switched), "switch_over_ms": (t_switch - t0) * 1000, "round_ms": (time.perf_counter() - t0) * 1000}
        if broken:
            log.info("event=heal_round broken=%d switched=%d switch_over_ms=%.1f round_ms=%.1f", len(broken), len(switched),
                     self.last_round["switch_over_ms"], self.last_round["round_ms"])

    async def _switch_over(self, plans: list[ConnectionPlan]) -> list[ConnectionPlan]:
        """Point every head end at its pre-installed backup label: one batched MODIFY per switch."""
        if not plans:
            return []
        fabric = self.fabric
        swapped = []
        for p in plans:
            assert p.a_to_b_backup and p.b_to_a_backup
            swapped.append(p.model_copy(update={
                "a_to_b": p.a_to_b_backup, "b_to_a": p.b_to_a_backup,
                "a_to_b_backup": p.a_to_b, "b_to_a_backup": p.b_to_a,  # the dead legs, cleaned up in _repair
                "state": "up", "revision": p.revision + 1,
            }))
        heads = [e for p in swapped for e in E.head_entries(p)]
        try:
            await fabric.programmer.write_phase(p4r.Update.MODIFY, heads)  # type: ignore[union-attr]
        except SwitchError as e:
            log.error("event=switch_over_partial error=%s", e)
        fabric.store.put_many(swapped)
        for p in swapped:
            fabric.plans[p.id] = p
            fabric._emit(p, "rerouted")
        return swapped

    async def _repair(self, plan: ConnectionPlan) -> None:
        fabric = self.fabric
        prog = fabric.programmer
        assert prog is not None
        alive = _active_alive(fabric, plan)
        if alive and plan.state == "down":
            plan = plan.model_copy(update={"state": "up", "revision": plan.revision + 1})
            await self._commit(plan, "up")
        if alive and _leg_alive(fabric, plan.a_to_b_backup) and _leg_alive(fabric, plan.b_to_a_backup):
            return
        if alive and plan.a_to_b_backup is None and plan.b_to_a_backup is None and not self._could_back_up(plan):
            return  # nothing to do: no alternative exists right now
        g = fabric.graph
        if not alive:
            # No usable backup: find a fresh path, install it, then move the heads onto it.
            try:
                fwd = shortest(g, plan.a, plan.b)
            except NoPath:
                if plan.state != "down":
                    log.warning("connection=%s event=down reason=no_path", plan.id)
                    await self._commit(plan.model_copy(update={"state": "down"}), "down")
                return
            if not (g.usable(plan.a.switch) and g.usable(plan.b.switch)):
                return
            new = plan.model_copy(update={
                "a_to_b": Leg(label=fabric.alloc.labels.take(), path=fwd),
                "b_to_a": Leg(label=fabric.alloc.labels.take(), path=fwd.reversed()),
                "a_to_b_backup": None, "b_to_a_backup": None, "state": "up", "revision": plan.revision + 1,
            })
            await prog.install(plan.id, [E.leg_transit_entries(new.a_to_b, new.b) + E.leg_transit_entries(new.b_to_a, new.a)])
            await prog.write_phase(p4r.Update.MODIFY, E.head_entries(new))
            await self._retire(plan, [plan.a_to_b, plan.b_to_a, plan.a_to_b_backup, plan.b_to_a_backup])
            plan = new
            await self._commit(plan, "rerouted")
        # The active legs are alive; make sure there is a live backup.
        dead_backups = [l for l in (plan.a_to_b_backup, plan.b_to_a_backup) if l is not None and not _leg_alive(fabric, l)]
        back = backup_for(g, plan.a_to_b.path, plan.a, plan.b)
        if back is None:
            if dead_backups:
                await self._retire(plan, dead_backups)
                plan = plan.model_copy(update={"a_to_b_backup": None, "b_to_a_backup": None, "revision": plan.revision + 1})
                await self._commit(plan, None)
            return
        new = plan.model_copy(update={
            "a_to_b_backup": Leg(label=fabric.alloc.labels.take(), path=back),
            "b_to_a_backup": Leg(label=fabric.alloc.labels.take(), path=back.reversed()),
            "revision": plan.revision + 1,
        })
        assert new.a_to_b_backup and new.b_to_a_backup
        await prog.install(plan.id, [E.leg_transit_entries(new.a_to_b_backup, new.b) + E.leg_transit_entries(new.b_to_a_backup, new.a)])
        await self._retire(plan, [plan.a_to_b_backup, plan.b_to_a_backup])
        await self._commit(new, None)

    def _could_back_up(self, plan: ConnectionPlan) -> bool:
        return backup_for(self.fabric.graph, plan.a_to_b.path, plan.a, plan.b) is not None

    async def _retire(self, plan: ConnectionPlan, legs: list[Leg | None]) -> None:
        """Delete a leg's label entries and free its labels. Entries on unreachable switches are
        removed by that switch's reconcile when it returns (they are no longer desired)."""
        fabric = self.fabric
        specs = []
        for leg in legs:
            if leg is None:
                continue
            # A delete matches on the label only, so which tail the leg pops at does not matter.
            specs.extend(E.leg_transit_entries(leg, plan.b))
            fabric.alloc.labels.give(leg.label)
        await fabric.programmer.delete(plan.id, specs)  # type: ignore[union-attr]

    async def _commit(self, plan: ConnectionPlan, event: str | None) -> None:
        self.fabric.plans[plan.id] = plan
        self.fabric.store.put(plan)
        if event:
            self.fabric._emit(plan, event)


def path_text(path: Path) -> str:
    return "-".join(path.switches)
