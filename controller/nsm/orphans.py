"""Connections an earlier run of the controller made for NSM clients survive a restart in the
fabric's store, and so does each one's deadline (timeout's `nsm_expiry` record: the expiry of
the path's tokens as its last Request had it). A client that still refreshes re-adopts its
connection by id (elements/adopt.py); one that does not by that deadline has gone, and its
connection is removed everywhere: switch entries, kernel interfaces, store row and record. A
connection stored without a deadline (by a controller before this one) gets `grace` from now."""

from __future__ import annotations

import functools
import logging

from controller.fabric.connections import Fabric
from controller.nsm.base import clock
from controller.nsm.base.tasks import Tasks
from controller.nsm.elements.adopt import KIND, remove_stored
from controller.nsm.elements.begin import Begin
from controller.nsm.elements.host_pool import HostPool
from controller.nsm.elements.timeout import EXPIRY_KIND, StoredExpiry
from controller.nsm.registry.stored import Records

log = logging.getLogger("p4nsm.nsm")

RECHECK_S = 1.0  # how soon a connection whose adoption was under way at its deadline is looked at again


class OrphanReaper:
    def __init__(self, fabric: Fabric, begin: Begin, tasks: Tasks, pool: HostPool, grace: float,
                 records: Records | None = None) -> None:
        self.fabric = fabric
        self.pool = pool
        self.begin = begin
        self.tasks = tasks
        self.grace = grace
        self.records = records

    def _deadlines(self) -> dict[str, float]:
        """Stored deadlines by connection id; those of connections the fabric no longer holds
        are dropped."""
        if self.records is None:
            return {}
        out = {}
        for conn_id, value in self.records.records(EXPIRY_KIND).items():
            try:
                out[conn_id] = StoredExpiry.model_validate_json(value).expires
            except ValueError as e:
                log.error("connection=%s event=stored_expiry_unreadable error=%s", conn_id, e)
            if conn_id not in self.fabric.plans:
                self.records.delete_record(EXPIRY_KIND, conn_id)
        return out

    def start(self) -> int:
        deadlines = self._deadlines()
        adopted = [p.id for p in self.fabric.plans.values() if p.labels.get("kind") == KIND]
        now = clock.now()
        for conn_id in adopted:
            delay = max(0.0, deadlines[conn_id] - now) if conn_id in deadlines else self.grace
            self.tasks.later(delay, functools.partial(self._reap, conn_id), f"orphan:{conn_id}")
            log.info("connection=%s event=awaiting_adoption expires_in=%.1fs stored_deadline=%s", conn_id, delay,
                     conn_id in deadlines)
        if adopted:
            log.info("event=nsm_connections_adopted count=%d", len(adopted))
        return len(adopted)

    async def _reap(self, conn_id: str) -> None:
        plan = self.fabric.plans.get(conn_id)
        st = self.begin.states.get(conn_id)
        if plan is None or (st is not None and st.established):
            return  # gone, or adopted by its client's Request: timeout owns its expiry now
        if st is not None:  # an adopting Request under way: its outcome decides
            self.tasks.later(RECHECK_S, functools.partial(self._reap, conn_id), f"orphan:{conn_id}")
            return
        await remove_stored(self.fabric, self.pool, plan, "expired")
        if self.records is not None:
            self.records.delete_record(EXPIRY_KIND, conn_id)
