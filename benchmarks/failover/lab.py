"""The failover benchmark's bench: the diamond of softswitches in Mininet on free ports, a
3-member etcd cluster on loopback, and `p4nsm run` replicas of a fresh fabric per row, started,
watched and read back (roles by the admin socket, events by their logs, entries by the switches)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from controller.admin import call
from controller.commands.inspect import read_entries
from controller.fabric.graph import Link
from controller.identity import LabCerts
from controller.runtime import fabric_graph
from controller.settings import Settings
from controller.topology import Topology, host_ifname
from lab.certs import lab_certs
from lab.harness import Lab
from tests.e2e.replica_process import REPLICA_SETTINGS, Replica, following, leading
from tests.support.etcd_cluster import EtcdCluster

T = TypeVar("T")
Entries = dict[str, set[tuple[str, str, str]]]  # switch -> its table entries (table, match, params)
HOST_IFACE_PREFIX = "p4nsm"  # controller.runtime.connect_hosts names a direct connection's interfaces p4nsm<vlan>
STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) ")
READY_S = 60.0


def stamps(log: str, needle: str) -> list[float]:
    """Seconds since midnight (local wall clock, as the logs print it) of the lines with `needle`."""
    out = []
    for line in log.splitlines():
        m = STAMP.match(line)
        if m and needle in line:
            h, mi, s, ms = (int(g) for g in m.groups())
            out.append(h * 3600 + mi * 60 + s + ms / 1000)
    return out


def seconds_of_day(t: float) -> float:
    """A time.time() on the logs' clock (seconds since local midnight)."""
    d = dt.datetime.fromtimestamp(t)
    return d.hour * 3600 + d.minute * 60 + d.second + d.microsecond / 1e6


async def until(check: Callable[[], Awaitable[T | None]], timeout: float, what: str,
                logs: Callable[[], str] = lambda: "") -> T:
    """Poll `check` until it returns something true; TimeoutError naming `what` (with the tail
    of `logs`) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f}s: {what}\n{logs()[-3000:]}")
        await asyncio.sleep(0.05)


async def status_if(r: Replica, check: Callable[[dict[str, Any] | None], bool]) -> dict[str, Any] | None:
    st = await r.status()
    return st if check(st) else None


async def leads(r: Replica, timeout: float = READY_S) -> dict[str, Any]:
    """r's status once it leads and is every switch's primary."""
    return await until(lambda: status_if(r, leading), timeout, f"{r.name} leads every switch", r.log)


async def follows(r: Replica, leader_id: int, timeout: float = READY_S) -> dict[str, Any]:
    return await until(lambda: status_if(r, lambda s: following(s, leader_id)), timeout,
                       f"{r.name} follows election id {leader_id}", r.log)


class Bench:
    """The lab, etcd and certificates, made once for every row: a switch remembers the highest
    election id it has seen, so one etcd cluster (whose revisions are the terms) serves all."""

    def __init__(self, run_dir: Path, lab: Lab, cluster: EtcdCluster, topo_file: Path, certs: LabCerts) -> None:
        self.run_dir = run_dir
        self.lab = lab
        self.cluster = cluster
        self.topo_file = topo_file
        self.certs = certs
        self.started: list[Replica] = []
        self.extra: dict[str, str] = {}  # every replica's settings over REPLICA_SETTINGS (--set)

    @property
    def topo(self) -> Topology:
        return self.lab.topology

    @property
    def links(self) -> dict[str, Link]:
        return fabric_graph(self.topo).links

    @classmethod
    @contextlib.contextmanager
    def open(cls, run_dir: Path, topology: Topology, lock_timeout: float = 900.0) -> Iterator[Bench]:
        # The lab outside the event loop: pyroute2's IPRoute runs a loop of its own, which cannot nest.
        cluster = EtcdCluster.make(run_dir / "etcd")
        cluster.start()
        try:
            with Lab(topology, run_dir / "lab", lock_timeout=lock_timeout) as lab:
                topo_file = run_dir / "topology.yaml"
                topo_file.write_text(yaml.safe_dump(lab.topology.model_dump(mode="json", exclude_defaults=True)))
                bench = cls(run_dir, lab, cluster, topo_file, lab_certs(run_dir / "lab", lab.topology))
                try:
                    yield bench
                finally:
                    bench.stop_all()  # before the lab goes: a replica outliving it would meet the next lab's hosts
        finally:
            cluster.close()

    def replicas(self, *names: str, etcd: bool = True, **extra: str) -> list[Replica]:
        """Replicas (not started) of a fabric of their own: on the etcd cluster, or with
        `etcd=False` one controller on its sqlite file."""
        fabric_dir = self.run_dir / f"f{uuid.uuid4().hex[:6]}"
        fabric_dir.mkdir()
        settings = {**REPLICA_SETTINGS, **self.certs.settings("controller"), "store_fabric_id": fabric_dir.name, **self.extra, **extra}
        if etcd:
            settings["store"] = self.cluster.url
        made = [Replica(n, fabric_dir, self.topo_file, settings) for n in names]
        self.started += made
        return made

    def stop_all(self) -> None:
        for r in self.started:
            r.stop()
        self.started.clear()

    async def end_row(self, notes: list[str], before: Entries | None = None) -> dict[str, int]:
        """Every connection of the row disconnected by its leader, the replicas stopped, and the
        hosts cleared of interfaces no connection owns any more (the next row's VLANs would meet
        them), each noted; with `before`, the entries left on the switches beyond it (returned)."""
        leader = None
        for r in self.started:
            if r.process is not None and r.process.poll() is None and await status_if(r, leading):
                leader = r
                break
        if leader is not None:
            for c in await leader.connections():
                try:
                    await call(leader.admin, "disconnect", id=c["id"])
                except RuntimeError as e:
                    notes.append(f"disconnect of connection {c['id'][:8]} at the row's end failed: {e}")
        left = orphans(before, await self.entries()) if before is not None and leader is not None else {}
        if left:
            notes.append(f"entries left on the switches once every connection was disconnected: {left}")
        self.stop_all()
        stray = await asyncio.to_thread(self._remove_stray_interfaces)
        if stray:
            notes.append(f"host interfaces left once every connection was disconnected (removed): {stray}")
        return left

    def clear_hosts(self, notes: list[str]) -> None:
        """Before a row: hosts with only their fabric interface (a direct connection's parent must
        be the only candidate), anything else noted and removed."""
        stray = self._remove_stray_interfaces(everything=True)
        if stray:
            notes.append(f"interfaces found on the hosts before the row (removed): {stray}")

    def _remove_stray_interfaces(self, everything: bool = False) -> list[str]:
        stray = []
        for h in self.topo.hosts:
            out = subprocess.run(["ip", "-n", h.name, "-j", "link", "show"], capture_output=True, text=True, check=True)
            for link in json.loads(out.stdout):
                name = link["ifname"]
                if name.startswith(HOST_IFACE_PREFIX) or (everything and name not in ("lo", host_ifname(h.name))):
                    stray.append(f"{h.name}:{name}")
                    subprocess.run(["ip", "-n", h.name, "link", "del", name], check=False)
        return stray

    async def entries(self) -> Entries:
        """Every table entry of every switch, read from the switches (counters left out)."""
        settings = Settings.load(self.certs.settings("controller"))
        out = {}
        for sw in self.topo.switches:
            rows = await read_entries(self.topo, settings, sw.name)
            out[sw.name] = {(str(r["table"]), str(r["match"]), str(r.get("params", ""))) for r in rows}
        return out


def orphans(before: Entries, after: Entries) -> dict[str, int]:
    """Entries on each switch now that were not there before the row's connections (0s left out)."""
    return {sw: len(after[sw] - before.get(sw, set())) for sw in after if after[sw] - before.get(sw, set())}
