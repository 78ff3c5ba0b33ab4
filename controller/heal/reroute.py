"""Move connections off failed elements.

A heal round first does the urgent part for every broken connection at once, batched into one
Write per switch: a connection whose active legs died switches to its pre-installed backup
(only the head entries change), and a protection group whose backup leg died is taken away so
that no hash sends packets into it. Then, connection by connection, the slower repairs: a fresh
path when no backup was alive, a fresh backup, DOWN when no path is left and UP when one
returns. Nothing here ever deletes a stored connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from controller.background import cancel_and_wait
from controller.fabric import entries as E
from controller.fabric.model import ConnectionPlan, Leg, Path
from controller.fabric.paths import NoPath, shortest
from controller.fabric.programmer import Programmer
from controller.fabric.service import Fabric
from controller.gc_pause import gc_paused
from controller.p4rt.errors import SwitchError

log = logging.getLogger("p4nsm.heal.reroute")

REPAIR_RETRY_S = 0.2
REPAIR_CONCURRENCY = 64  # repairs in flight at once: their writes coalesce into shared batches


def leg_alive(fabric: Fabric, leg: Leg | None) -> bool:
    if leg is None:
        return False
    g = fabric.graph
    return all(g.usable(s) for s in leg.path.switches) and not any(l in g.down_links for l in leg.path.links)


def active_alive(fabric: Fabric, plan: ConnectionPlan) -> bool:
    return leg_alive(fabric, plan.a_to_b) and leg_alive(fabric, plan.b_to_a)


def backup_alive(fabric: Fabric, plan: ConnectionPlan) -> bool:
    return leg_alive(fabric, plan.a_to_b_backup) and leg_alive(fabric, plan.b_to_a_backup)


def has_backup(plan: ConnectionPlan) -> bool:
    return plan.a_to_b_backup is not None or plan.b_to_a_backup is not None


def overlap(backup: Path, primary: Path) -> tuple[int, int]:
    """Links, then transit switches, that a backup shares with its primary: what one failure
    takes from both."""
    return (len(set(backup.links) & set(primary.links)), len(set(backup.switches[1:-1]) & set(primary.switches[1:-1])))


def better_backup(fabric: Fabric, plan: ConnectionPlan) -> Path | None:
    """A live path that shares less with the primary than the backup in place, or None. A
    backup computed while part of the fabric was down may share a switch with its primary;
    once that part returns, one failure must no longer take both."""
    current = plan.a_to_b_backup
    if current is None:
        return None
    primary = plan.a_to_b.path
    have = overlap(current.path, primary)
    if have == (0, 0):
        return None
    ideal = fabric.backup_path(primary, plan.a, plan.b)
    return ideal if ideal is not None and overlap(ideal, primary) < have else None


def needs_repair(fabric: Fabric, plan: ConnectionPlan) -> bool:
    return (plan.state == "down" or not active_alive(fabric, plan) or not backup_alive(fabric, plan)
            or better_backup(fabric, plan) is not None)


class Rerouter:
    """Serialises heal rounds: a failure that arrives during a round triggers another round."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_round: dict[str, float] = {}
        # callables(head entries, time.monotonic_ns()) when a switch-over batch was acknowledged:
        # the moment traffic is back, long before the round's repairs end
        self.switchover_listeners: list[Callable[[int, int], None]] = []
        self._running = False

    @property
    def idle(self) -> bool:
        """No round running and none pending: the switches hold what the plans say."""
        return not self._running and not self._dirty.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heal:reroute")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def kick(self) -> None:
        self._dirty.set()

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._running = True
            try:
                await self.heal_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=heal_round_failed")
                await asyncio.sleep(0.1)
                self._dirty.set()
            finally:
                self._running = False

    async def heal_round(self) -> None:
        # Connections wait for the urgent part, and at 10,000 of them the repairs allocate
        # enough for full collections (~0.2 s stalls each): no collection during the round.
        with gc_paused():
            await self._heal_round()

    async def _heal_round(self) -> None:
        t0 = time.perf_counter()
        fabric = self.fabric
        urgent: list[tuple[ConnectionPlan, ConnectionPlan]] = []
        for p in fabric.plans.values():
            if p.state not in ("up", "down"):
                continue
            if not active_alive(fabric, p) and backup_alive(fabric, p):
                urgent.append((p, self._swapped(p)))
            elif active_alive(fabric, p) and has_backup(p) and not backup_alive(fabric, p):
                urgent.append((p, p.model_copy(update={"a_to_b_backup": None, "b_to_a_backup": None, "revision": p.revision + 1})))
        t_selected = time.perf_counter()
        t_heads = await self._apply_urgent(urgent)
        # Repairs of different connections touch disjoint keys, so they run side by side.
        gate = asyncio.Semaphore(REPAIR_CONCURRENCY)

        async def repair(conn_id: str) -> bool:
            async with gate:
                try:
                    async with fabric._lock(conn_id):
                        current = fabric.plans.get(conn_id)
                        if current is not None and current.state in ("up", "down"):
                            await self._repair(current)
                except SwitchError as e:
                    log.error("connection=%s event=repair_failed error=%s", conn_id, e)
                    return False
                return True

        todo = [p.id for p in fabric.plans.values() if p.state in ("up", "down") and needs_repair(fabric, p)]
        retry = not all(await asyncio.gather(*(repair(conn_id) for conn_id in todo)))
        if retry:  # again a little later, not in a hot loop against a switch that keeps refusing
            asyncio.get_running_loop().call_later(REPAIR_RETRY_S, self.kick)
        self.last_round = {
            "urgent": len(urgent),
            "selected_ms": (t_selected - t0) * 1000,
            "heads_acked_ms": (t_heads - t0) * 1000 if t_heads else 0.0,
            "round_ms": (time.perf_counter() - t0) * 1000,
            "finished_at": time.time(),
        }
        if urgent:
            log.info("event=heal_round urgent=%d selected_ms=%.1f heads_acked_ms=%.1f round_ms=%.1f", len(urgent),
                     self.last_round["selected_ms"], self.last_round["heads_acked_ms"], self.last_round["round_ms"])

    @staticmethod
    def _swapped(p: ConnectionPlan) -> ConnectionPlan:
        assert p.a_to_b_backup and p.b_to_a_backup
        return p.model_copy(update={"a_to_b": p.a_to_b_backup, "b_to_a": p.b_to_a_backup, "a_to_b_backup": None,
                                    "b_to_a_backup": None, "state": "up", "revision": p.revision + 1})

    async def _apply_urgent(self, pairs: list[tuple[ConnectionPlan, ConnectionPlan]]) -> float | None:
        """All connections' changes merged phase by phase: one Write per switch per phase.

        The head entries that move traffic onto the backups go first, alone: the backups'
        transit entries are already in place, so one batch restores every connection, and the
        full diff (which costs far more to compute than to write at thousands of connections)
        only tidies up behind it. Returns when the head-end batch was acknowledged."""
        if not pairs:
            return None
        fabric = self.fabric
        prog = fabric.programmer
        assert prog is not None
        # A head entry changes when its leg does (a switch-over); labels tell legs apart cheaply.
        heads = [(E.MODIFY, E.head_entry(src, new_leg)) for old, new in pairs
                 for src, old_leg, new_leg in ((new.a, old.a_to_b, new.a_to_b), (new.b, old.b_to_a, new.b_to_a))
                 if new_leg.label != old_leg.label]
        t_heads = None
        if heads:
            await self._write_phase(prog, heads)
            t_heads = time.perf_counter()
            acked_ns = time.monotonic_ns()
            for listener in self.switchover_listeners:
                listener(len(heads), acked_ns)
        done = {spec.key for _, spec in heads}
        ops = [op for old, new in pairs for op in E.diff(fabric.specs(old), fabric.specs(new))
               if not (op[0] == E.MODIFY and op[1].key in done)]
        for phase in E.phases(ops):
            await self._write_phase(prog, phase)
            if t_heads is None and any(isinstance(s, E.EntrySpec) and s.table in (E.EDGE_TABLE, E.GROUP_TABLE) for _, s in phase):
                t_heads = time.perf_counter()
        fabric.store.put_many([new for _, new in pairs])
        for old, new in pairs:
            self._free_labels(old, new)
            fabric.plans[new.id] = new
            if new.a_to_b != old.a_to_b:
                fabric._emit(new, "rerouted")
        return t_heads

    @staticmethod
    async def _write_phase(prog: Programmer, phase: list[tuple[str, E.Spec]]) -> None:
        try:
            await prog.write_ops(phase)
        except SwitchError as e:
            # Deletes on a dead switch fail; its reconcile cleans up when it returns.
            log.info("event=urgent_phase_partial error=%s", e)

    async def _repair(self, plan: ConnectionPlan) -> None:
        fabric = self.fabric
        g = fabric.graph
        if not active_alive(fabric, plan):
            if backup_alive(fabric, plan):
                return  # the next round's urgent pass switches it over
            try:
                fwd = shortest(g, plan.a, plan.b)
            except NoPath:
                if plan.state != "down":
                    log.warning("connection=%s event=down reason=no_path", plan.id)
                    await self._commit(plan, plan.model_copy(update={"state": "down", "revision": plan.revision + 1}), "down")
                return
            new = plan.model_copy(update={
                "a_to_b": Leg(label=fabric.alloc.labels.take(), path=fwd),
                "b_to_a": Leg(label=fabric.alloc.labels.take(), path=fwd.reversed()),
                "a_to_b_backup": None, "b_to_a_backup": None, "state": "up", "revision": plan.revision + 1,
            })
            await self._commit(plan, new, "up" if plan.state == "down" else "rerouted")
            plan = new
        elif plan.state == "down":
            new = plan.model_copy(update={"state": "up", "revision": plan.revision + 1})
            await self._commit(plan, new, "up")
            plan = new
        better = better_backup(fabric, plan)
        if backup_alive(fabric, plan) and better is None:
            return
        back = better or fabric.backup_path(plan.a_to_b.path, plan.a, plan.b)
        if back is None:
            if has_backup(plan):
                await self._commit(plan, plan.model_copy(update={"a_to_b_backup": None, "b_to_a_backup": None,
                                                                 "revision": plan.revision + 1}), None)
            return
        new = plan.model_copy(update={
            "a_to_b_backup": Leg(label=fabric.alloc.labels.take(), path=back),
            "b_to_a_backup": Leg(label=fabric.alloc.labels.take(), path=back.reversed()),
            "revision": plan.revision + 1,
        })
        await self._commit(plan, new, None)

    async def _commit(self, old: ConnectionPlan, new: ConnectionPlan, event: str | None) -> None:
        """Write the difference, then record the new plan. A rejection leaves the old plan in
        force for the next round to retry, and gives back the labels taken for `new`: an entry
        of theirs left on a switch the rollback could not reach is overwritten when the label is
        used again (Programmer) or deleted by anti-entropy, so reusing it is safe."""
        fabric = self.fabric
        try:
            await fabric.transition(old, new)
        except SwitchError:
            self._free_labels(new, old)
            raise
        self._free_labels(old, new)
        fabric.plans[new.id] = new
        fabric.store.put(new)
        if event:
            fabric._emit(new, event)

    def _free_labels(self, old: ConnectionPlan, new: ConnectionPlan) -> None:
        """Give back the labels `old` used that `new` no longer does."""
        keep = {leg.label for leg in new.legs()}
        for leg in old.legs():
            if leg.label not in keep:
                self.fabric.alloc.labels.give(leg.label)
