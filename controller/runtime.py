"""The composition root: one topology file -> P4Runtime clients, store, fabric, admin socket."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import zlib
from pathlib import Path
from typing import Any

from controller.admin import AdminServer
from controller.aio import within
from controller.fabric.anti_entropy import AntiEntropy
from controller.fabric.connections import Fabric
from controller.fabric.etcd_store import EtcdStore
from controller.fabric.graph import FabricGraph, Link, link_name
from controller.fabric.store_backend import open_store
from controller.gnmi.port_state import PortStateClient
from controller.heal.link_monitor import LinkMonitor
from controller.heal.port_state import PortStateJudge
from controller.heal.reroute import Rerouter
from controller.identity import https_context, load_svid, require_svid
from controller.nsm.follower import FollowerNsm
from controller.nsm.server import NsmServer
from controller.operators.metrics import ControllerMetrics
from controller.operators.web import WebView
from controller.p4rt.client import SwitchClient, SwitchTarget, switch_tls
from controller.p4rt.schema import P4Schema
from controller.pipeline.revisions import RevisionBook, make_revision
from controller.pipeline.rollout import Rollout
from controller.replication import Replication
from controller.settings import Settings
from controller.targets import profile
from controller.topology import Topology

log = logging.getLogger("p4nsm.controller")

# Direct connections (`p4nsm connect`) get a /30 each from this pool: .1 on side a, .2 on b.
DIRECT_POOL = ipaddress.IPv4Network("10.250.0.0/16")
STOP_STEP_S = 10.0  # longest wait for one part's stop (the NSM server's gets its calls' deadline more)


def fabric_graph(topo: Topology, only: set[str] | None = None) -> FabricGraph:
    """The topology's switches and links; with `only`, those switches and the links between them."""
    keep = {s.name for s in topo.switches} if only is None else only
    links = [Link(link_name(*l.a, *l.b), *l.a, *l.b) for l in topo.links if l.a.switch in keep and l.b.switch in keep]
    return FabricGraph([s.name for s in topo.switches if s.name in keep], links)


class Controller:
    def __init__(self, topo: Topology, settings: Settings, admin_path: Path | None = None,
                 nsm_address: str | None = None) -> None:
        self.topo = topo
        self.settings = settings
        # One SVID for the NSM server and the operators' HTTPS; with the NSM API served and neither
        # certificates nor plaintext configured, refused here, before anything is made.
        self.svid = require_svid(settings, "NSM server") if nsm_address is not None else load_svid(settings)
        settings_schema = P4Schema.from_file(settings.p4info_path)
        profiles = {s.name: profile(s.target) for s in topo.switches}
        # Bad input is refused here, before any RPC: a P4Info of the wrong port width, build
        # outputs missing or of the wrong kind (the device config builders).
        for kind_profile in {p.kind: p for p in profiles.values()}.values():
            kind_profile.check_p4info(settings_schema.p4info, str(settings.p4info_path))
        kind_configs = {p.kind.value: p.device_config(settings) for p in profiles.values()}
        self.store = open_store(settings, topo, nsm_address)
        # The program the switches get: the settings' on a fresh store (revision 1), else the
        # fabric's revision in the store (pipeline/revisions.py), an unfinished rollout settled.
        self.revisions = RevisionBook(self.store)
        self._profiles = profiles
        self._settings_revision = lambda: make_revision(settings_schema, kind_configs, "settings", "settings",
                                                        self.revisions.next_number())
        from_settings = self._settings_revision()
        # On etcd the records are read once this replica leads (_settle_pipeline): before its store
        # has started there is nothing to read, and a follower may not write. Its backup streams
        # push no program meanwhile, so the settings' program is only provisional.
        revision = from_settings if isinstance(self.store, EtcdStore) else self.revisions.start(from_settings, set(profiles))
        self.schema = settings_schema if revision.id == from_settings.id else revision.p4_schema()
        p4info = revision.p4info_bytes()
        # The same SVID is the client certificate towards every switch that asks for one: a
        # switch's allow-list names the controller's SPIFFE id, whichever switch it is.
        tls = {s.name: switch_tls(s, self.svid) for s in topo.switches}
        for name in sorted(n for n, p in profiles.items() if p.needs_tls and tls[n] is None):
            log.warning("switch=%s event=no_tls target=%s: its P4Runtime server speaks TLS by default; give the "
                        "switch tls_ca in the topology, or start it insecure (infrap4d --grpc_open_insecure_mode=true)",
                        name, profiles[name].kind)
        self.clients = {
            s.name: SwitchClient(SwitchTarget(s.name, s.grpc_addr, s.device_id, p4info, revision.config(profiles[s.name].kind.value),
                                              revision.cookie, tls[s.name]),
                                 self.schema, settings)
            for s in topo.switches
        }
        hosts = {h.name: (h.attach.switch, h.attach.port) for h in topo.hosts}
        watch_ports = {name for name, p in profiles.items() if p.honours_watch_ports}
        self.fabric = Fabric(
            fabric_graph(topo), hosts, self.clients, self.store, settings,
            fast_failover=frozenset(watch_ports if settings.fast_failover else ()),
            group_watch_unreliable=frozenset(name for name, p in profiles.items() if not p.group_read_back_reliable),
        )
        self.pipeline = Rollout(self.fabric, self.clients, self.revisions, profiles, self.schema)
        self.rerouter = Rerouter(self.fabric)
        self.fabric.graph_listeners.append(self.rerouter.kick)
        self.anti_entropy = AntiEntropy(self.fabric, lambda: not self.rerouter.idle, settings.anti_entropy_interval)
        # Probes need packet I/O at both ends; links to a switch without it are not probed (its
        # liveness is the keepalive's). probe_interval 0 turns probes off: then gNMI port state
        # alone judges links.
        probing = {name for name, p in profiles.items() if p.has_packet_io} if settings.probe_interval > 0 else set()
        self.links = LinkMonitor(fabric_graph(topo, probing), {n: c for n, c in self.clients.items() if n in probing},
                                 settings, self._on_link, store=self.store)
        # gNMI port state, where the target serves it: a port down takes its link down at once
        # (heal/port_state.py joins it with the probes' verdicts).
        self.port_state = {
            s.name: PortStateClient(s.name, s.grpc_addr, tls[s.name], settings)
            for s in topo.switches if profiles[s.name].has_gnmi_port_state
        }
        self.port_judge = PortStateJudge(self.fabric, self.links, settings)
        for port_client in self.port_state.values():
            port_client.port_listeners.append(self.port_judge.on_port)
            port_client.known_listeners.append(self.port_judge.on_known)
        self.admin = AdminServer(admin_path, self._admin_handlers()) if admin_path else None
        self.nsm_address = nsm_address
        self._started_at = 0.0  # loop time of start(): how warm a takeover is
        self.nsm: NsmServer | None = None
        # With replicas (the etcd store, made at start): a follower until the election makes this
        # one the leader (controller/replication.py); without, the one controller leads from the start.
        self.replication: Replication | None = None
        self.follower_nsm: FollowerNsm | None = None
        https = https_context(self.svid) if self.svid is not None and (settings.metrics_address or settings.web_address) else None
        # Prometheus metrics at http(s)://<metrics_address>/metrics; an empty address turns them off.
        self.metrics: ControllerMetrics | None = None
        if settings.metrics_address:
            self.metrics = ControllerMetrics(settings.metrics_address, fabric=self.fabric, clients=self.clients, links=self.links,
                                             rerouter=self.rerouter, anti_entropy=self.anti_entropy, store=self.store, tls=https)
        # The live web view and its JSON API at http(s)://<web_address>/; an empty address turns it off.
        self.web: WebView | None = None
        if settings.web_address:
            self.web = WebView(topo, self.fabric, self.rerouter, self.links, settings.web_address, tls=https)

    @property
    def metrics_url(self) -> str | None:
        """http://host:port/metrics with the port resolved once started; None when off."""
        return self.metrics.url if self.metrics is not None else None

    @property
    def web_url(self) -> str | None:
        """http://host:port of the web view with the port resolved once started; None when off."""
        return self.web.url if self.web is not None else None

    async def _on_link(self, link: Link, up: bool) -> None:
        await self.port_judge.on_probe_verdict(link, up)

    async def start(self) -> None:
        self._started_at = asyncio.get_running_loop().time()
        await self.store.start()
        if isinstance(self.store, EtcdStore):
            # Replicas: a follower until the election names a term of this one (controller/replication.py).
            assert self.store.election is not None
            self.replication = Replication(self.clients, self.store.election, self._lead)
        if self.replication is None:
            self._start_fabric()
        if self.admin:
            await self.admin.start()
        if self.replication is None:
            await self._start_nsm()
        else:
            # A follower: backup streams to every switch, and an NSM address that names the leader.
            for client in self.clients.values():
                client.start()
            if self.nsm_address is not None:
                self.follower_nsm = FollowerNsm(self.replication.election.replica, self._leader_text, self.svid)
                await self.follower_nsm.start(self.nsm_address)
        if self.metrics is not None:
            await self.metrics.start()
        if self.web is not None:
            await self.web.start()
            log.info("event=web_view url=%s/", self.web.url)
        if self.replication is not None:
            self.replication.start()

    def _start_fabric(self, probe_grace: float | None = None) -> None:
        self.fabric.load()
        self.rerouter.start()
        # the stored verdicts first: no path is placed over a link the last run saw dead
        self.port_judge.restore(self.links.down_links())
        self.links.start(probe_grace)
        for port_client in self.port_state.values():
            port_client.start()
        self.fabric.start()
        self.anti_entropy.start()

    async def _start_nsm(self) -> None:
        if self.nsm_address is None:
            return
        if self.follower_nsm is not None:
            await self.follower_nsm.stop()
            self.follower_nsm = None
        self.nsm = NsmServer(self.fabric, self.settings, svid=self.svid, store=self.store)
        await self.nsm.start(self.nsm_address)
        if self.metrics is not None:
            # no await since the NSM server started: no call has ended unseen
            self.metrics.watch_nsm(self.nsm)

    async def _lead(self, term: int) -> None:
        """This replica won `term`: what a sole controller starts with, on state that followed etcd."""
        await self._settle_pipeline()
        # A takeover by a replica that has followed for a while starts warm (link_monitor.py):
        # the shorter grace; a replica that wins as it starts has its own start-up load to meet.
        warm = asyncio.get_running_loop().time() - self._started_at >= self.settings.probe_startup_grace
        self._start_fabric(self.settings.probe_takeover_grace if warm else None)
        await self._start_nsm()

    async def _settle_pipeline(self) -> None:
        """The fabric's revision as etcd holds it (a rollout the last leader left unfinished is
        settled here), taken by every switch client before it arbitrates as primary."""
        self.revisions.reload()
        revision = self.revisions.start(self._settings_revision(), set(self.clients))
        await self.revisions.durable()
        if all(c.target.cookie == revision.cookie for c in self.clients.values()):
            return
        self.schema = revision.p4_schema()
        for name, client in self.clients.items():
            client.adopt(dataclasses.replace(client.target, p4info=revision.p4info_bytes(), cookie=revision.cookie,
                                             device_config=revision.config(self._profiles[name].kind.value)), self.schema)
        log.info("event=pipeline_from_store revision=%s cookie=%#x", revision.id, revision.cookie)

    def _leader_text(self) -> str:
        seen = self.replication.election.leader if self.replication is not None else None
        if not seen:
            return "none elected yet"
        return f"replica {seen.get('replica', '?')} at {seen.get('nsm_address') or 'an unknown address'}"

    async def stop(self) -> None:
        # Each step bounded (aio.within): a part stuck in its stop is logged and left, and the
        # rest still stop; the switches keep forwarding whatever this process does.
        step = STOP_STEP_S
        if self.replication is not None:
            await within(self.replication.stop(), step, "replication")
        if self.web is not None:
            await within(self.web.stop(), step, "web")
        if self.metrics is not None:
            await within(self.metrics.stop(), step, "metrics")
        if self.follower_nsm is not None:
            await within(self.follower_nsm.stop(), step, "follower_nsm")
            self.follower_nsm = None
        if self.nsm:
            # its calls get the endpoints' deadline to end (NsmServer.stop)
            await within(self.nsm.stop(), step + self.settings.nsm_endpoint_timeout, "nsm")
            self.nsm = None
        if self.admin:
            await within(self.admin.stop(), step, "admin")
        await within(self.links.stop(), step, "links")
        for name, port_client in self.port_state.items():
            await within(port_client.stop(), step, f"gnmi:{name}")
        self.port_judge.stop()
        await within(self.anti_entropy.stop(), step, "anti_entropy")
        await within(self.rerouter.stop(), step, "rerouter")
        await within(self.fabric.stop(), step, "fabric")
        await within(self.store.stop(), step, "store")
        log.info("event=stopped")

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
                return candidate
        raise RuntimeError("direct-connection address pool exhausted")

    async def connect_hosts(self, a: str, b: str) -> dict[str, Any]:
        from controller.host.kernel_iface import (
            ensure_vlan_iface,
            host_parent_iface,
            remove_iface,
        )

        plan = await self.fabric.connect(a, b)
        subnet = self._direct_subnet(plan.id)
        addr_a, addr_b = (f"{h}/30" for h in list(subnet.hosts())[:2])
        name_a, name_b = f"p4nsm{plan.a.vlan}", f"p4nsm{plan.b.vlan}"
        try:
            for host, name, vlan, addr in ((a, name_a, plan.a.vlan, addr_a), (b, name_b, plan.b.vlan, addr_b)):
                parent = await asyncio.to_thread(host_parent_iface, host)
                await asyncio.to_thread(ensure_vlan_iface, host, parent, vlan, name, [addr], [], owner=plan.id)
        except Exception:
            await self.fabric.disconnect(plan.id)
            raise
        labels = {"kind": "direct", "subnet": str(subnet), "a_iface": name_a, "b_iface": name_b, "a_addr": addr_a, "b_addr": addr_b}
        # The plan as it is now: a heal may have moved the connection while the interfaces were made.
        relabelled = await self.fabric.relabel(plan.id, labels)
        if relabelled is None:
            for host, name in ((a, name_a), (b, name_b)):
                await asyncio.to_thread(remove_iface, host, name, owner=plan.id)
            raise RuntimeError(f"connection {plan.id} was removed while its host interfaces were made")
        return describe(relabelled)

    async def disconnect(self, conn_id: str) -> bool:
        from controller.host.kernel_iface import remove_iface

        plan = self.fabric.plans.get(conn_id)
        if plan is None:
            return False
        if plan.labels.get("kind") == "direct":
            # each connection's interfaces carry its own mark: only they are removed
            await asyncio.to_thread(remove_iface, plan.a.host, plan.labels["a_iface"], owner=conn_id)
            await asyncio.to_thread(remove_iface, plan.b.host, plan.labels["b_iface"], owner=conn_id)
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

        def leading(op: str) -> None:
            if self.replication is not None and self.replication.role != "leader":
                raise ValueError(f"{op}: this replica is a {self.replication.role}; ask the leader ({self._leader_text()})")

        async def pipeline_apply(req: dict[str, Any]) -> Any:
            leading("pipeline apply")
            return await self.pipeline.apply(req.get("p4info"), req.get("configs"), req.get("caller", "unknown"))

        async def pipeline_revisions(req: dict[str, Any]) -> Any:
            return self.pipeline.view()

        async def pipeline_delete(req: dict[str, Any]) -> Any:
            leading("pipeline delete")
            return await self.pipeline.delete(str(req.get("revision", "")))

        async def replica(req: dict[str, Any]) -> Any:
            return self.replica_status()

        return {"connect": connect, "disconnect": disconnect, "connections": connections, "switches": switches,
                "pipeline_apply": pipeline_apply, "pipeline_revisions": pipeline_revisions, "pipeline_delete": pipeline_delete,
                "replica": replica}

    def replica_status(self) -> dict[str, Any]:
        """This replica's part and each switch as its client sees it (`p4nsm cluster`)."""
        if self.replication is not None:
            me = dataclasses.asdict(self.replication.status())
        else:
            me = {"replica_id": "", "role": "leader", "term": 0, "election_id": self.settings.election_id,
                  "leader": "", "leader_nsm_address": ""}
        me["nsm_address"] = self.nsm.address if self.nsm is not None else (
            self.follower_nsm.address if self.follower_nsm is not None else "")
        me["switches"] = [
            {"name": c.name, "primary": c.primary, "up": c.up.is_set(), "election_id": c.election_id,
             "primary_election_id": c.primary_election_id, "refused_writes": c.refused_writes}
            for c in self.clients.values()
        ]
        return me


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
