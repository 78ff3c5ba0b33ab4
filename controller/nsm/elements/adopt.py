"""adopt: a Request for a connection this run of the controller has not seen (begin has no state
of it) whose id the fabric already holds for NSM is that connection's adoption after a restart,
not a new connection: the stored plan is published for later elements (`adopted_of(ctx)`), so
that forward offers the endpoint the interface name its side already has, fabric_connect takes
the plan as it is (no entry is written), and hostside finds both interfaces by their marks in the
kernel and touches nothing when they are as wanted. What an adoption fails to do, it leaves as it
found it: the connection was not made by that call (its stored expiry, in the orphan reaper,
removes it when its client is gone). A reselect of a stored connection (its client found the
endpoint gone) removes it first, as begin closes an established one: interfaces by their marks,
then the fabric's entries (`remove_stored`, which the orphan reaper uses too)."""

from __future__ import annotations

import functools
import logging

from controller.fabric.connections import Fabric
from controller.fabric.model import ConnectionPlan
from controller.host.kernel_iface import HostIfaceError, remove_iface
from controller.nsm.elements.begin import is_refresh
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request
from controller.nsm.elements.host_pool import HostPool
from nsm_api import connection_pb2

log = logging.getLogger("p4nsm.nsm")
KIND = "nsm"  # the `kind` label of the fabric's NSM connections

# The plan labels NSM connections carry (fabric_connect writes them) that adoption reads back.
ENDPOINT = "endpoint"
CLIENT_IFACE = "a_iface"
ENDPOINT_IFACE = "b_iface"

_ADOPTED: Key[ConnectionPlan] = Key("adopt.plan")


def adopted_of(ctx: CallContext) -> ConnectionPlan | None:
    """The stored plan this call adopts; None for a new connection or a refresh."""
    return ctx.values.get(_ADOPTED)


def stored_plan(fabric: Fabric, conn_id: str) -> ConnectionPlan | None:
    """The NSM connection the fabric holds under `conn_id`."""
    plan = fabric.plans.get(conn_id)
    return plan if plan is not None and plan.labels.get("kind") == KIND else None


async def remove_stored(fabric: Fabric, pool: HostPool, plan: ConnectionPlan, reason: str) -> None:
    """Remove a stored connection nobody in this run made: its interfaces (those with its mark
    only), then its entries and store row."""
    log.info("connection=%s event=stored_removed reason=%s a=%s b=%s", plan.id, reason, plan.a.host, plan.b.host)
    for host, key in ((plan.a.host, CLIENT_IFACE), (plan.b.host, ENDPOINT_IFACE)):
        if plan.labels.get(key):
            try:
                await pool.call(functools.partial(remove_iface, owner=plan.id), host, plan.labels[key])
            except (HostIfaceError, ValueError) as e:
                log.error("connection=%s netns=%s iface=%s event=remove_failed error=%s", plan.id, host, plan.labels[key], e)
    await fabric.disconnect(plan.id)


class Adopt(Element):
    def __init__(self, fabric: Fabric, pool: HostPool) -> None:
        self.fabric = fabric
        self.pool = pool

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        if not is_refresh(ctx):
            plan = stored_plan(self.fabric, req.connection.id)
            if plan is not None and req.connection.state == connection_pb2.RESELECT_REQUESTED:
                await remove_stored(self.fabric, self.pool, plan, "reselect")
            elif plan is not None:
                ctx.values[_ADOPTED] = plan
        return await nxt.request(req, ctx)
