"""The composition root: one topology file -> P4Runtime clients, store, fabric, admin socket."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import zlib
from pathlib import Path
from typing import Any

from controller.admin import AdminServer
from controller.fabric.anti_entropy import AntiEntropy
from controller.fabric.graph import FabricGraph, Link, link_name
from controller.fabric.service import Fabric
from controller.heal.link_monitor import LinkMonitor
from controller.heal.reroute import Rerouter
from controller.nsm.server import NsmServer
from controller.p4rt.client import SwitchClient, SwitchTarget
from controller.p4rt.schema import P4Schema
from controller.settings import Settings
from controller.store.sqlite import Store
from controller.targets import device_config
from topologies.schema import Topology

log = logging.getLogger("p4nsm.controller")

# Direct connections (`p4nsm connect`) get a /30 each from this pool: .1 on side a, .2 on b.
DIRECT_POOL = ipaddress.ip_network("10.250.0.0/16")


def fabric_graph(topo: Topology) -> FabricGraph:
    links = [Link(link_name(*l.a, *l.b), *l.a, *l.b) for l in topo.links]
    return FabricGraph([s.name for s in topo.switches], links)


def pipeline_cookie(p4info: bytes, device_configs: list[bytes]) -> int:
    """Same program, same cookie: a restarted controller finds it on the switch and keeps it."""
    crc = zlib.crc32(p4info)
    for cfg in device_configs:
        crc = zlib.crc32(cfg, crc)
    return crc or 1


class Controller:
    def __init__(self, topo: Topology, settings: Settings, admin_path: Path | None = None,
                 nsm_address: str | None = None) -> None:
        self.topo = topo
        self.settings = settings
        self.schema = P4Schema.from_file(settings.p4info_path)
        p4info = self.schema.p4info.SerializeToString(deterministic=True)
        configs = {s.name: device_config(s.target, settings) for s in topo.switches}
        cookie = pipeline_cookie(p4info, sorted(set(configs.values())))
        self.clients = {
            s.name: SwitchClient(SwitchTarget(s.name, s.grpc_addr, s.device_id, p4info, configs[s.name], cookie), self.schema, settings)
            for s in topo.switches
        }
        self.store = Store(settings.store_path)
        hosts = {h.name: (h.attach.switch, h.attach.port) for h in topo.hosts}
        watch_ports = {s.name for s in topo.switches if s.target in ("softswitch", "bmv2")}
        self.fabric = Fabric(
            fabric_graph(topo), hosts, self.clients, self.store, settings,
            fast_failover=frozenset(watch_ports if settings.fast_failover else ()),
            group_watch_unreliable=frozenset(s.name for s in topo.switches if s.target == "bmv2"),
        )
        self.rerouter = Rerouter(self.fabric)
        self.fabric.graph_listeners.append(self.rerouter.kick)
        self.anti_entropy = AntiEntropy(self.fabric, self.rerouter, settings.anti_entropy_interval)
        self.links = LinkMonitor(self.fabric.graph, self.clients, settings, self._on_link)
        self.admin = AdminServer(admin_path, self._admin_handlers()) if admin_path else None
        self.nsm_address = nsm_address
        self.nsm: NsmServer | None = None

    async def _on_link(self, link: Link, up: bool) -> None:
        self.fabric.set_link(link.name, up)

    async def start(self) -> None:
        self.fabric.load()
        self.rerouter.start()
        self.links.start()
        self.fabric.start()
        self.anti_entropy.start()
        if self.admin:
            await self.admin.start()
        if self.nsm_address is not None:
            self.nsm = NsmServer(self.fabric, self.settings)
            await self.nsm.start(self.nsm_address)

    async def stop(self) -> None:
        if self.nsm:
            await self.nsm.stop()
            self.nsm = None
        if self.admin:
            await self.admin.stop()
        await self.links.stop()
        await self.anti_entropy.stop()
        await self.rerouter.stop()
        await self.fabric.stop()
        self.store.close()

    async def wait_ready(self, timeout: float) -> bool:
        """True once every switch is up and reconciled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.fabric.ready_switches >= set(self.clients):
                return True
            await asyncio.sleep(0.05)
        missing = sorted(set(self.clients) - self.fabric.ready_switches)
        log.warning("event=not_ready switches=%s", missing)
        return False

    # --- direct connections with host-side interfaces --------------------------------------------

    def _direct_subnet(self, plan_id: str) -> ipaddress.IPv4Network:
        index = zlib.crc32(plan_id.encode()) % (DIRECT_POOL.num_addresses // 4)
        used = {p.labels.get("subnet") for p in self.fabric.plans.values()}
        subnets = list(DIRECT_POOL.subnets(new_prefix=30))
        for i in range(len(subnets)):
            candidate = subnets[(index + i) % len(subnets)]
            if str(candidate) not in used:
                return candidate  # type: ignore[return-value]
        raise RuntimeError("direct-connection address pool exhausted")

    async def connect_hosts(self, a: str, b: str) -> dict[str, Any]:
        from controller.host.kernel_iface import ensure_vlan_iface, host_parent_iface

        plan = await self.fabric.connect(a, b)
        subnet = self._direct_subnet(plan.id)
        addr_a, addr_b = (f"{h}/30" for h in list(subnet.hosts())[:2])
        name_a, name_b = f"p4nsm{plan.a.vlan}", f"p4nsm{plan.b.vlan}"
        try:
            for host, name, vlan, addr in ((a, name_a, plan.a.vlan, addr_a), (b, name_b, plan.b.vlan, addr_b)):
                parent = await asyncio.to_thread(host_parent_iface, host)
                await asyncio.to_thread(ensure_vlan_iface, host, parent, vlan, name, [addr], [])
        except Exception:
            await self.fabric.disconnect(plan.id)
            raise
        labels = {"kind": "direct", "subnet": str(subnet), "a_iface": name_a, "b_iface": name_b, "a_addr": addr_a, "b_addr": addr_b}
        plan = plan.model_copy(update={"labels": labels})
        self.fabric.plans[plan.id] = plan
        self.store.put(plan)
        return describe(plan)

    async def disconnect(self, conn_id: str) -> bool:
        from controller.host.kernel_iface import remove_iface

        plan = self.fabric.plans.get(conn_id)
        if plan is None:
            return False
        if plan.labels.get("kind") == "direct":
            await asyncio.to_thread(remove_iface, plan.a.host, plan.labels["a_iface"])
            await asyncio.to_thread(remove_iface, plan.b.host, plan.labels["b_iface"])
        return await self.fabric.disconnect(conn_id)

    def _admin_handlers(self) -> dict[str, Any]:
        async def connect(req: dict[str, Any]) -> Any:
            return await self.connect_hosts(req["a"], req["b"])

        async def disconnect(req: dict[str, Any]) -> Any:
            return await self.disconnect(req["id"])

        async def connections(req: dict[str, Any]) -> Any:
            return [describe(p) for p in self.fabric.plans.values()]

        async def switches(req: dict[str, Any]) -> Any:
            return [
                {"name": c.name, "address": c.target.address, "up": c.up.is_set(), "primary": c.primary,
                 "ready": c.name in self.fabric.ready_switches, "sessions": c.sessions}
                for c in self.clients.values()
            ]

        return {"connect": connect, "disconnect": disconnect, "connections": connections, "switches": switches}


def describe(plan: Any) -> dict[str, Any]:
    """A connection as the CLI shows it."""
    return {
        "id": plan.id,
        "state": plan.state,
        "a": f"{plan.a.host} ({plan.a.switch}:{plan.a.port} vlan {plan.a.vlan})",
        "b": f"{plan.b.host} ({plan.b.switch}:{plan.b.port} vlan {plan.b.vlan})",
        "path": " -> ".join(plan.a_to_b.path.switches),
        "backup": " -> ".join(plan.a_to_b_backup.path.switches) if plan.a_to_b_backup else "",
        "labels": f"{plan.a_to_b.label}/{plan.b_to_a.label}",
        **{k: v for k, v in plan.labels.items() if k in ("a_addr", "b_addr", "a_iface", "b_iface")},
    }
