"""Take a switch out of the fabric's paths for a while (a pipeline commit), without loss, and
give it back.

`drain` marks the switch drained in the graph, so that no new path, fresh or backup, crosses it
(paths.shortest, paths.backup_for; a path that starts or ends there still may), then moves every
connection off it that can avoid it: one whose pre-installed backup avoids it switches over to
the backup (only its two head entries change, all connections in one batch per switch, as a heal
does); one whose backup crosses the switch loses that backup, so that no head-end hash sends
packets into it; one without such a backup gets a fresh path around it, installed before its
heads move. A connection whose own host hangs off the switch cannot avoid it: the report names
those, and they lose traffic only while the switch itself is rewritten. `restore` lets paths use
the switch again and kicks the usual repairs (the graph listeners), which give the moved
connections their backups back.

Nothing here is stored: a controller that restarts mid-drain forgets the mark, and the switch is
used again as soon as it is reconciled.
"""

from __future__ import annotations

import dataclasses
import logging

from controller.fabric.connections import Fabric
from controller.fabric.model import ConnectionPlan, Leg
from controller.fabric.paths import NoPath, shortest
from controller.p4rt.errors import SwitchError

log = logging.getLogger("p4nsm.fabric.drain")

# Connections that a connect or a heal placed on the switch while a pass ran are caught by the
# next pass; after this many the rest are reported as stuck rather than chased forever.
MAX_PASSES = 3


@dataclasses.dataclass(frozen=True)
class DrainReport:
    switch: str
    moved: tuple[str, ...]  # connection ids now on paths that avoid the switch
    unprotected: tuple[str, ...]  # ids whose backup crossed the switch and was taken away
    stuck: tuple[str, ...]  # ids that still cross it: their own host is there, or no path avoids it


def _avoids(leg: Leg | None, switch: str) -> bool:
    return leg is not None and switch not in leg.path.switches


def _alive(fabric: Fabric, leg: Leg) -> bool:
    g = fabric.graph
    return all(g.usable(s) for s in leg.path.switches) and not any(l in g.down_links for l in leg.path.links)


def _urgent(fabric: Fabric, plan: ConnectionPlan, switch: str) -> ConnectionPlan | None:
    """The plan that takes `plan` off `switch` with pre-installed entries only, or None."""
    if plan.crosses(switch=switch):
        back, back_rev = plan.a_to_b_backup, plan.b_to_a_backup
        if _avoids(back, switch) and _avoids(back_rev, switch) and back is not None and back_rev is not None \
                and _alive(fabric, back) and _alive(fabric, back_rev):
            return plan.on_backup()
        return None
    if not (_avoids(plan.a_to_b_backup, switch) and _avoids(plan.b_to_a_backup, switch)) and \
            (plan.a_to_b_backup is not None or plan.b_to_a_backup is not None):
        return plan.without_backup()
    return None


def _touches(plan: ConnectionPlan, switch: str) -> bool:
    return any(switch in leg.path.switches for leg in plan.legs())


async def drain(fabric: Fabric, switch: str) -> DrainReport:
    """Move every connection that can avoid `switch` off it; returns who moved and who could not."""
    if switch not in fabric.graph.g:
        raise KeyError(f"unknown switch {switch!r}")
    if fabric.graph.set_switch_drained(switch, True):
        fabric.graph_changed()
    moved: set[str] = set()
    unprotected: set[str] = set()
    stuck: set[str] = set()
    for _ in range(MAX_PASSES):
        pairs = []
        slow = []
        for plan in fabric.plans.values():
            # A connection that is down, or on its way in or out, is its owner's (heal, connect) to place.
            if plan.state != "up" or not _touches(plan, switch) or plan.id in stuck:
                continue
            new = _urgent(fabric, plan, switch)
            if new is not None:
                pairs.append((plan, new))
            else:
                slow.append(plan.id)
        if not pairs and not slow:
            break
        _, deferred = await fabric.commit_urgent(pairs)
        left = set(deferred)
        for old, _ in pairs:
            if old.id not in left:
                (moved if old.crosses(switch=switch) else unprotected).add(old.id)
        for conn_id in [*deferred, *slow]:
            outcome = await _move_one(fabric, conn_id, switch)
            if outcome == "stuck":
                stuck.add(conn_id)
            elif outcome == "moved":
                moved.add(conn_id)
            elif outcome == "unprotected":
                unprotected.add(conn_id)
    # Whatever still crosses it after the passes is stuck too (placed there meanwhile, or refused).
    stuck |= {p.id for p in fabric.plans.values() if p.state == "up" and p.crosses(switch=switch)}
    moved -= stuck
    report = DrainReport(switch, tuple(sorted(moved)), tuple(sorted(unprotected - stuck)), tuple(sorted(stuck)))
    # The moved connections lost their backups: the heal loop finds them new ones around the switch.
    fabric.graph_changed()
    log.info("switch=%s event=drained moved=%d unprotected=%d stuck=%d", switch, len(report.moved),
             len(report.unprotected), len(report.stuck))
    return report


async def _move_one(fabric: Fabric, conn_id: str, switch: str) -> str:
    """Under the connection's lock, off `switch` as the plan in force allows: "moved",
    "unprotected", "stuck" or "" (gone, or nothing to do any more)."""
    try:
        async with fabric.lock(conn_id):
            plan = fabric.plans.get(conn_id)
            if plan is None or plan.state != "up" or not _touches(plan, switch):
                return ""
            new = _urgent(fabric, plan, switch)
            if new is not None:
                await fabric.commit(plan, new, "rerouted" if plan.crosses(switch=switch) else None)
                return "moved" if plan.crosses(switch=switch) else "unprotected"
            if switch in (plan.a.switch, plan.b.switch):
                return "stuck"
            try:
                fwd = shortest(fabric.graph, plan.a, plan.b)
            except NoPath:
                return "stuck"
            back = fabric.backup_path(fwd, plan.a, plan.b)
            new = plan.model_copy(update={
                "a_to_b": fabric.leg(fwd), "b_to_a": fabric.leg(fwd.reversed()),
                "a_to_b_backup": fabric.leg(back) if back else None,
                "b_to_a_backup": fabric.leg(back.reversed()) if back else None,
                "revision": plan.revision + 1,
            })
            await fabric.commit(plan, new, "rerouted")
            return "moved"
    except SwitchError as e:
        log.error("connection=%s switch=%s event=drain_move_failed error=%s", conn_id, switch, e)
        return "stuck"


def restore(fabric: Fabric, switch: str) -> None:
    """Paths may cross `switch` again (after its commit and rewrite). The graph listeners (the
    heal loop) then give the connections that lost their backups new ones."""
    if fabric.graph.set_switch_drained(switch, False):
        log.info("switch=%s event=restored", switch)
        fabric.graph_changed()
