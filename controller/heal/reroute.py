"""Move connections off failed elements.

A heal round first does the urgent part for every broken connection at once, batched into one
Write per switch: a connection whose active legs died switches to its pre-installed backup
(only the head entries change), and a protection group whose backup leg died is taken away so
that no hash sends packets into it. Then, connection by connection, the slower repairs: a fresh
path when no backup was alive, a fresh backup, DOWN when no path is left and UP when one
returns. Nothing here ever deletes a stored connection.

Only the decisions live here (what is broken, what to swap, which backup is better); the fabric's
owner applies them (Fabric.commit_urgent, Fabric.commit) under each connection's lock, so a
connection being made, removed or rewritten meanwhile is never changed behind its back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from controller.aio import cancel_and_wait, gc_paused
from controller.fabric.connections import Fabric
from controller.fabric.model import ConnectionPlan, Leg, Path
from controller.fabric.paths import NoPath, shortest
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


def _path_once_verified(fabric: Fabric, plan: ConnectionPlan) -> bool:
    """Whether a path would exist were every element not heard from yet as up as it was."""
    try:
        shortest(fabric.graph, plan.a, plan.b, trust_unknown=True)
    except NoPath:
        return False
    return True


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
    if plan.state == "down" or not active_alive(fabric, plan):
        return True
    if has_backup(plan):
        return not backup_alive(fabric, plan) or better_backup(fabric, plan) is not None
    # Without a backup: only if one exists now (on a line none ever does).
    return fabric.backup_path(plan.a_to_b.path, plan.a, plan.b) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class HealRound:
    """One finished round, for observers (metrics). Times are time.monotonic_ns()."""

    kicked_ns: int  # the first kick this round serves (a failure or return was decided then); 0 if none
    started_ns: int
    heads_acked_ns: int  # the switch-over batch was acknowledged; 0 if the round switched nothing over
    finished_ns: int
    urgent: int  # connections switched over or stripped of a dead backup in the urgent pass


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
        self.round_listeners: list[Callable[[HealRound], None]] = []  # after every round
        self._kicked_ns = 0  # the first kick no round has served yet
        self._heads_acked_ns = 0
        self._running = False
        self._settled = asyncio.Event()
        self._settled.set()
        # A connection made while a round ran was not among that round's repairs: one that
        # arrives needing repair (no backup while one exists) gets a round of its own.
        fabric.listeners.append(self._on_connection_event)

    @property
    def idle(self) -> bool:
        """No round running and none pending: the switches hold what the plans say."""
        return not self._running and not self._dirty.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heal:reroute")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def kick(self) -> None:
        if not self._kicked_ns:
            self._kicked_ns = time.monotonic_ns()
        self._dirty.set()
        self._settled.clear()

    async def settled(self) -> None:
        """Until no round runs and none is pending."""
        await self._settled.wait()

    def _on_connection_event(self, plan: ConnectionPlan, event: str) -> None:
        if event == "up" and not self._dirty.is_set() and needs_repair(self.fabric, plan):
            log.info("connection=%s event=repair_due cause=%s", plan.id, event)
            self.kick()

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
                if not self._dirty.is_set():
                    self._settled.set()

    async def heal_round(self) -> None:
        # Connections wait for the urgent part, and at 10,000 of them the repairs allocate
        # enough for full collections (~0.2 s stalls each): no collection during the round.
        with gc_paused():
            await self._heal_round()

    async def _heal_round(self) -> None:
        t0 = time.perf_counter()
        started_ns = time.monotonic_ns()
        kicked_ns, self._kicked_ns, self._heads_acked_ns = self._kicked_ns, 0, 0
        fabric = self.fabric
        urgent: list[tuple[ConnectionPlan, ConnectionPlan]] = []
        for p in fabric.plans.values():
            if p.state not in ("up", "down"):
                continue
            if not active_alive(fabric, p) and backup_alive(fabric, p):
                urgent.append((p, p.on_backup()))
            elif active_alive(fabric, p) and has_backup(p) and not backup_alive(fabric, p):
                urgent.append((p, p.without_backup()))
        t_selected = time.perf_counter()
        t_heads, deferred = await fabric.commit_urgent(urgent, self._heads_acked)
        # Repairs of different connections touch disjoint keys, so they run side by side.
        gate = asyncio.Semaphore(REPAIR_CONCURRENCY)

        async def repair(conn_id: str) -> bool:
            async with gate:
                try:
                    async with fabric.lock(conn_id):
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
            "urgent": len(urgent) - len(deferred),
            "selected_ms": (t_selected - t0) * 1000,
            "heads_acked_ms": (t_heads - t0) * 1000 if t_heads else 0.0,
            "round_ms": (time.perf_counter() - t0) * 1000,
            "finished_at": time.time(),
        }
        done = HealRound(kicked_ns, started_ns, self._heads_acked_ns, time.monotonic_ns(), len(urgent) - len(deferred))
        for listener in self.round_listeners:
            listener(done)
        if urgent:
            log.info("event=heal_round urgent=%d deferred=%d selected_ms=%.1f heads_acked_ms=%.1f round_ms=%.1f",
                     len(urgent) - len(deferred), len(deferred), self.last_round["selected_ms"],
                     self.last_round["heads_acked_ms"], self.last_round["round_ms"])

    def _heads_acked(self, heads: int) -> None:
        acked_ns = self._heads_acked_ns = time.monotonic_ns()
        for listener in self.switchover_listeners:
            listener(heads, acked_ns)

    async def _repair(self, plan: ConnectionPlan) -> None:
        """Under the connection's lock: what the plan in force needs, one commit at a time."""
        fabric = self.fabric
        if not active_alive(fabric, plan):
            if backup_alive(fabric, plan):
                # Left out of the urgent pass (its lock was taken then): switch over now.
                await fabric.commit(plan, plan.on_backup(), "rerouted")
                return
            try:
                fwd = shortest(fabric.graph, plan.a, plan.b)
            except NoPath:
                if plan.state != "down" and _path_once_verified(fabric, plan):
                    # Not heard from is not dead (a restart: switches still being reconciled):
                    # DOWN waits for evidence; the graph's next change brings this repair back.
                    log.info("connection=%s event=down_deferred reason=path_over_unverified_elements unknown=%s",
                             plan.id, ",".join(sorted(fabric.graph.unknown_switches | fabric.graph.unknown_links)))
                    return
                if plan.state != "down":
                    log.warning("connection=%s event=down reason=no_path", plan.id)
                    await fabric.commit(plan, plan.model_copy(update={"state": "down", "revision": plan.revision + 1}), "down")
                return
            new = plan.model_copy(update={
                "a_to_b": fabric.leg(fwd), "b_to_a": fabric.leg(fwd.reversed()),
                "a_to_b_backup": None, "b_to_a_backup": None, "state": "up", "revision": plan.revision + 1,
            })
            await fabric.commit(plan, new, "up" if plan.state == "down" else "rerouted")
            plan = new
        elif plan.state == "down":
            new = plan.model_copy(update={"state": "up", "revision": plan.revision + 1})
            await fabric.commit(plan, new, "up")
            plan = new
        better = better_backup(fabric, plan)
        if backup_alive(fabric, plan) and better is None:
            return
        back = better or fabric.backup_path(plan.a_to_b.path, plan.a, plan.b)
        if back is None:
            if has_backup(plan):
                await fabric.commit(plan, plan.without_backup(), None)
            return
        new = plan.model_copy(update={
            "a_to_b_backup": fabric.leg(back), "b_to_a_backup": fabric.leg(back.reversed()),
            "revision": plan.revision + 1,
        })
        await fabric.commit(plan, new, None)
