"""fabric_connect: the connection between the client's host and the endpoint's host becomes
fabric entries (controller.fabric); a refresh changes nothing. A connection the fabric cannot
make (no path, a switch failing) is no fault of the endpoint's: it fails as CandidateFailed,
which selection does not count against the endpoint. Fabric events about the
connection reach monitor subscribers as UPDATEs: DOWN while no path is left, UP again after a
reroute or a return."""

from __future__ import annotations

import logging

import grpc

from controller.fabric.connections import ConnectError, Fabric
from controller.fabric.model import ConnectionPlan
from controller.fabric.store import StoreUnavailable
from controller.nsm.base import kernel
from controller.nsm.base.errors import CandidateFailed, NsmError, invalid, not_found
from controller.nsm.elements.begin import is_refresh
from controller.nsm.elements.chain import CallContext, Connection, Element, Key, Next, Request
from controller.nsm.elements.client_mechanism import client_host_of
from controller.nsm.elements.forward import answer_of, endpoint_host_of
from controller.nsm.elements.monitor import MonitorHub
from controller.nsm.elements.ownership import owner_of
from controller.p4rt.errors import SwitchError
from nsm_api import connection_pb2

log = logging.getLogger("p4nsm.nsm")

_PLAN: Key[ConnectionPlan] = Key("fabric_connect.plan")
KIND = "nsm"
OWNER = "owner"  # the label that keeps who made the connection across a restart (ownership)
_STATES = {"down": connection_pb2.DOWN, "removed": connection_pb2.DOWN, "up": connection_pb2.UP,
           "rerouted": connection_pb2.UP}


def plan_of(ctx: CallContext) -> ConnectionPlan:
    """The fabric's plan of this connection: the hosts' VLANs are in it."""
    return ctx.values[_PLAN]


def set_plan(ctx: CallContext, plan: ConnectionPlan) -> None:
    ctx.values[_PLAN] = plan


def stored_owner(fabric: Fabric, conn_id: str) -> str | None:
    """Who made a connection the fabric holds; None when it holds none, or one stored before
    owners were (anyone may then adopt it, as before)."""
    plan = fabric.plans.get(conn_id)
    return plan.labels.get(OWNER) if plan is not None and plan.labels.get("kind") == KIND else None


def _switch_error(e: SwitchError) -> CandidateFailed:
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if any(u.table_full for u in e.failed) else grpc.StatusCode.UNAVAILABLE
    return CandidateFailed(code, "connection.network_service_endpoint_name", f"fabric: {e}")


class FabricConnect(Element):
    def __init__(self, fabric: Fabric, hub: MonitorHub) -> None:
        self.fabric = fabric
        self.hub = hub
        fabric.listeners.append(self._on_fabric_event)

    def _on_fabric_event(self, plan: ConnectionPlan, event: str) -> None:
        state = _STATES.get(event)
        if plan.labels.get("kind") == KIND and state is not None:
            self.hub.set_state(plan.id, state, f"fabric {event}")

    def _labels(self, req: Request, ctx: CallContext) -> dict[str, str]:
        conn = req.connection
        answer = answer_of(ctx)
        ip = conn.context.ip_context
        return {
            "kind": KIND, "service": conn.network_service, "endpoint": conn.network_service_endpoint_name,
            "a_iface": conn.mechanism.parameters[kernel.NAME_KEY],
            "b_iface": answer.mechanism.parameters[kernel.NAME_KEY],
            "a_addr": ",".join(ip.src_ip_addrs), "b_addr": ",".join(ip.dst_ip_addrs),
            OWNER: owner_of(ctx),
        }

    async def _connect(self, conn_id: str, client: str, server: str, labels: dict[str, str]) -> ConnectionPlan:
        try:
            return await self.fabric.connect(client, server, conn_id=conn_id, labels=labels)
        except ConnectError as e:
            if e.field == "a":
                raise (not_found if e.not_found else invalid)("connection.mechanism.parameters", f"client side: {e}") from None
            code = grpc.StatusCode.NOT_FOUND if e.not_found else grpc.StatusCode.UNAVAILABLE
            raise CandidateFailed(code, "connection.network_service_endpoint_name", f"fabric: {e}") from None
        except SwitchError as e:
            raise _switch_error(e) from None
        except StoreUnavailable as e:
            # Not the endpoint's fault, and no other candidate fares better: the caller retries.
            raise NsmError(grpc.StatusCode.UNAVAILABLE, "", str(e)) from None

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        conn = req.connection
        client, server = client_host_of(ctx), endpoint_host_of(ctx)
        existing = self.fabric.plans.get(conn.id)
        if existing is not None and (existing.a.host, existing.b.host) != (client, server):
            if is_refresh(ctx):
                raise invalid("connection.mechanism.parameters",
                              f"connection {conn.id} joins {existing.a.host} and {existing.b.host}, not {client} and {server}")
            # Left by an earlier run of the controller for another endpoint: replace it.
            await self._disconnect(conn.id)
            existing = None
        plan = await self._connect(conn.id, client, server, self._labels(req, ctx))
        set_plan(ctx, plan)
        conn.mechanism.parameters[kernel.VLAN_KEY] = str(plan.a.vlan)
        try:
            return await nxt.request(req, ctx)
        except BaseException:
            if existing is None or not is_refresh(ctx):
                await self._disconnect(conn.id)
            raise

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        try:
            await nxt.close(conn, ctx)
        finally:
            await self._disconnect(conn.id)

    async def _disconnect(self, conn_id: str) -> None:
        try:
            await self.fabric.disconnect(conn_id)
        except SwitchError as e:
            log.error("connection=%s switch=%s event=disconnect_failed error=%s", conn_id, e.switch, e)
            raise NsmError(grpc.StatusCode.UNAVAILABLE, "", f"fabric: {e}") from None
        except StoreUnavailable as e:
            log.error("connection=%s event=disconnect_failed error=%s", conn_id, e)
            raise NsmError(grpc.StatusCode.UNAVAILABLE, "", str(e)) from None
