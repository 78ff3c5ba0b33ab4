"""Connections an earlier run of the controller made for NSM clients survive a restart in the
fabric's store, but not the NSM state that would expire them. A client that still refreshes
re-adopts its connection by id; one that does not within a token lifetime has gone, and its
connection (entries and kernel interfaces) is removed."""

from __future__ import annotations

import functools
import logging

from controller.fabric.connections import Fabric
from controller.host.kernel_iface import HostIfaceError, remove_iface
from controller.nsm.base.tasks import Tasks
from controller.nsm.elements.begin import Begin
from controller.nsm.elements.fabric_connect import KIND
from controller.nsm.elements.host_pool import HostPool

log = logging.getLogger("p4nsm.nsm")


class OrphanReaper:
    def __init__(self, fabric: Fabric, begin: Begin, tasks: Tasks, pool: HostPool, grace: float) -> None:
        self.fabric = fabric
        self.pool = pool
        self.begin = begin
        self.tasks = tasks
        self.grace = grace

    def start(self) -> int:
        adopted = [p.id for p in self.fabric.plans.values() if p.labels.get("kind") == KIND]
        for conn_id in adopted:
            self.tasks.later(self.grace, functools.partial(self._reap, conn_id), f"orphan:{conn_id}")
        if adopted:
            log.info("event=nsm_connections_adopted count=%d grace=%.0fs", len(adopted), self.grace)
        return len(adopted)

    async def _reap(self, conn_id: str) -> None:
        plan = self.fabric.plans.get(conn_id)
        if conn_id in self.begin.states or plan is None:
            return
        log.info("connection=%s event=orphan_removed a=%s b=%s", conn_id, plan.a.host, plan.b.host)
        for host, key in ((plan.a.host, "a_iface"), (plan.b.host, "b_iface")):
            if plan.labels.get(key):
                try:
                    await self.pool.call(functools.partial(remove_iface, owner=conn_id), host, plan.labels[key])
                except (HostIfaceError, ValueError) as e:
                    log.error("connection=%s netns=%s iface=%s event=remove_failed error=%s", conn_id, host, plan.labels[key], e)
        await self.fabric.disconnect(conn_id)
