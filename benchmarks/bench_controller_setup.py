"""Connection set-up rate and Request-to-installed latency of the controller on a Mininet lab.

    sudo .venv/bin/python benchmarks/bench_controller_setup.py [--topologies diamond fattree4 fattree4@relaxed]
        [--connections 1000] [--concurrency 50 [200 ...]] [--set name=value ...]

For each topology: the real lab (Mininet, one `p4nsm-softswitch` per switch) and the real
Controller (default settings unless --set or a NAME@preset says otherwise; link probes and
keepalives running; its SQLite store in a temp dir). Connections go between host pairs on
different switches, taken round robin, so VLANs (one per connection on each host port) spread
over every host. Each mode starts from an empty fabric:
  * sequential: one `fabric.connect()` at a time; the latency of each, from the call to its
    return, i.e. until every switch acknowledged every entity (Request-to-installed);
  * concurrent: CONCURRENCY connects in flight at once: throughput, and the latency of each
    from its own call.
After each mode every switch is read back (from a separate process) and must hold exactly what
the controller wants; then every connection is disconnected (timed too) and every switch's
tables must read back exactly as before the first connection. Failed connects, false link or
switch failures and failed checks are reported, not hidden; the exit status is 1 if any.
Prints a markdown table and writes benchmarks/results/controller_setup.md. Labs are stopped and
switches killed on any exit, a stuck phase included (PHASE_TIMEOUT_S).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from finsy.proto import p4r, p4r_grpc  # noqa: E402

from controller.fabric import entries as E  # noqa: E402
from controller.fabric.codec import OWNED_TABLES  # noqa: E402
from controller.fabric.connections import ConnectError  # noqa: E402
from controller.fabric.model import ConnectionPlan  # noqa: E402
from controller.p4rt.errors import SwitchError  # noqa: E402
from controller.p4rt.schema import P4Schema  # noqa: E402
from controller.runtime import Controller  # noqa: E402
from controller.settings import Settings  # noqa: E402
from controller.topology import Topology, load_topology  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "controller_setup.md"
READY_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 60.0
# A phase takes seconds; far longer means the controller is stuck, and the benchmark must end.
PHASE_TIMEOUT_S = 300.0
CLEANUP_TIMEOUT_S = 120.0
# Targets from the issue.
P99_TARGET_MS = 20.0
RATE_TARGET = 500.0

# `--topologies fattree4@relaxed`: liveness checked 5-10x less often and less strictly. Link
# probes every 10 ms out of every fabric port and 150 ms switch keepalives are sized for real
# switches; 20 Python softswitches on a 2-CPU machine cannot answer within them, the controller
# then sees switches and links fail that did not, and no connection can be made.
PRESETS = {
    "relaxed": {"probe_interval": "0.1", "keepalive_interval": "0.2", "keepalive_timeout": "1.0"},
}

log = logging.getLogger("bench")


class Stuck(Exception):
    """A phase that did not end: the rest of that topology is skipped, the lab still stopped."""


@dataclass
class Phase:
    mode: str
    connections: int
    seconds: float
    latencies: list[float]  # seconds, one per connection
    disconnect_seconds: float = 0.0
    entries: int = 0  # table entries the connections needed, all switches together
    writes: int = 0  # Write RPCs the switches received while connecting
    controller_cpu: float = 0.0  # CPU seconds of the controller process while connecting
    switches_cpu: float = 0.0  # CPU seconds of all switch processes while connecting
    link_downs: int = 0  # links declared down while connecting (false alarms)
    switch_downs: int = 0  # switch sessions the controller lost from connecting to disconnected (false alarms)
    failed: list[str] = field(default_factory=list)  # connects that raised, with the reason
    problems: list[str] = field(default_factory=list)  # read-back checks that failed

    @property
    def rate(self) -> float:
        """Connections made per second (failed ones do not count)."""
        return (self.connections - len(self.failed)) / self.seconds

    @property
    def disconnect_rate(self) -> str:
        made = self.connections - len(self.failed)
        return f"{made / self.disconnect_seconds:,.0f}" if made and self.disconnect_seconds else "–"

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


@dataclass
class TopoResult:
    name: str
    switches: int
    hosts: int
    links: int
    lab_start_s: float
    phases: list[Phase] = field(default_factory=list)
    aborted: str = ""
    load_at_start: float = 0.0  # 1-minute load average when its lab was up
    path_lengths: Counter[int] = field(default_factory=Counter)


def host_pairs(topo: Topology) -> list[tuple[str, str]]:
    """Every pair of hosts on different switches, ordered so that consecutive pairs share no host
    where possible (offset d walks every host i to host i+d)."""
    hosts = [h.name for h in topo.hosts]
    switch_of = {h.name: h.attach.switch for h in topo.hosts}
    seen: set[frozenset[str]] = set()
    out = []
    for d in range(1, len(hosts)):
        for i, a in enumerate(hosts):
            b = hosts[(i + d) % len(hosts)]
            key = frozenset((a, b))
            if switch_of[a] != switch_of[b] and key not in seen:
                seen.add(key)
                out.append((a, b))
    if not out:
        raise SystemExit(f"{topo.name}: no two hosts sit on different switches")
    return out


class Reader:
    """Reads the switches over channels of its own, in a process of its own (ReaderProcess).

    Not through the controller: decoding tens of thousands of entities on its event loop stalls
    the loop for a good part of a second, long enough for the controller to miss its switches'
    keepalive answers and declare them down; and not in a thread either, whose share of the GIL
    would slow the loop down just as the verification starts."""

    def __init__(self, topo: Topology, schema: P4Schema) -> None:
        self.schema = schema
        self.profile_id = schema.profile(E.PROFILE).id
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        self.channels = {s.name: grpc.insecure_channel(s.grpc_addr, options=options) for s in topo.switches}
        self.device_ids = {s.name: s.device_id for s in topo.switches}

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    def _read(self, sw: str) -> list[p4r.Entity]:
        request = p4r.ReadRequest(device_id=self.device_ids[sw], entities=[
            p4r.Entity(table_entry=p4r.TableEntry()),
            p4r.Entity(action_profile_member=p4r.ActionProfileMember(action_profile_id=self.profile_id)),
            p4r.Entity(action_profile_group=p4r.ActionProfileGroup(action_profile_id=self.profile_id)),
        ])
        stub = p4r_grpc.P4RuntimeStub(self.channels[sw])
        return [e for reply in stub.Read(request, timeout=60) for e in reply.entities]

    def raw(self) -> dict[str, Counter[bytes]]:
        """Every entity of every switch, serialized: for "exactly as before"."""
        return {sw: Counter(e.SerializeToString(deterministic=True) for e in self._read(sw)) for sw in self.channels}

    def specs(self, sw: str) -> set[E.Spec]:
        """The switch's entities of the controller's tables, as the controller's specs (what
        Fabric.read_back makes of them)."""
        out: set[E.Spec] = set()
        for ent in self._read(sw):
            kind = ent.WhichOneof("entity")
            if kind == "table_entry":
                d = self.schema.describe_entry(ent.table_entry)
                if d["table"] in OWNED_TABLES:
                    out.add(E.EntrySpec(sw, str(d["table"]), tuple(d["match"].items()),  # type: ignore[union-attr]
                                        str(d.get("action", "")), tuple(d.get("params", {}).items()),  # type: ignore[union-attr]
                                        d.get("group")))  # type: ignore[arg-type]
            elif kind == "action_profile_member":
                m = ent.action_profile_member
                act = self.schema.actions_by_id[m.action.action_id]
                names = {p.id: p.name for p in act.params}
                out.add(E.MemberSpec(sw, m.member_id, act.name,
                                     tuple((names[p.param_id], int.from_bytes(p.value, "big")) for p in m.action.params)))
            elif kind == "action_profile_group":
                g = ent.action_profile_group
                out.add(E.GroupSpec(sw, g.group_id, tuple(
                    (m.member_id, int.from_bytes(m.watch_port, "big") if m.watch_port else None) for m in g.members)))
        return out


_reader: Reader | None = None  # in the reader process


def _reader_init(topo_path: str, p4info_path: str) -> None:
    global _reader
    _reader = Reader(load_topology(topo_path), P4Schema.from_file(p4info_path))


def _reader_raw() -> dict[str, Counter[bytes]]:
    assert _reader is not None
    return _reader.raw()


def _reader_specs(sw: str) -> set[E.Spec]:
    assert _reader is not None
    return _reader.specs(sw)


class ReaderProcess:
    def __init__(self, topo_path: Path, p4info_path: Path) -> None:
        # spawn, not fork: this process runs gRPC threads, which a fork does not survive.
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_reader_init, initargs=(str(topo_path), str(p4info_path)))

    async def raw(self) -> dict[str, Counter[bytes]]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, _reader_raw)

    async def specs(self, sw: str) -> set[E.Spec]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, _reader_specs, sw)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def wanted(ctl: Controller, plans: list[ConnectionPlan]) -> dict[str, set[E.Spec]]:
    """Each switch's fabric-port entries and the connections' entities (in a worker thread;
    `plans` is a snapshot taken on the loop)."""
    want: dict[str, set[E.Spec]] = {sw: set(E.fabric_port_entries(sw, ctl.fabric.graph.fabric_ports(sw))) for sw in ctl.clients}
    for plan in plans:
        for spec in ctl.fabric.specs(plan):
            want[spec.switch].add(spec)
    return want


async def check_installed(ctl: Controller, reader: ReaderProcess) -> list[str]:
    """Every switch holds exactly what the controller wants, read back."""
    want = await asyncio.to_thread(wanted, ctl, list(ctl.fabric.plans.values()))
    problems = []
    for sw in ctl.clients:
        have = await reader.specs(sw)
        if want[sw] != have:
            missing, extra = want[sw] - have, have - want[sw]
            problems.append(f"after connecting, switch {sw}: {len(missing)} entities missing, {len(extra)} unexpected, "
                            f"e.g. {next(iter(missing or extra))}")
    return problems


def link_down_counter(ctl: Controller) -> list[int]:
    """Counts links the controller declares down. Nothing fails in this benchmark, so any is a
    false alarm (probes late on a starved machine) and its heal round disturbs the figures."""
    count = [0]
    original = ctl.fabric.set_link

    def counted(link: str, up: bool) -> None:
        if not up and link not in ctl.fabric.graph.down_links:
            count[0] += 1
        original(link, up)

    ctl.fabric.set_link = counted  # type: ignore[method-assign]
    return count


def switch_down_counter(ctl: Controller) -> list[int]:
    count = [0]

    def listener(client: object, up: bool, reason: str) -> None:
        if not up:
            count[0] += 1

    for client in ctl.clients.values():
        client.state_listeners.append(listener)
    return count


def cpu_seconds(pids: list[int]) -> float:
    """user+system CPU of processes (switches), from /proc."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rpc_counter(ctl: Controller) -> list[int]:
    """Counts the Write RPCs each client sends, by wrapping its _write_rpc (benchmark only)."""
    count = [0]
    for client in ctl.clients.values():
        original = client._write_rpc

        async def counted(updates, _original=original):  # type: ignore[no-untyped-def]
            count[0] += 1
            return await _original(updates)

        client._write_rpc = counted  # type: ignore[method-assign]
    return count


async def connect_phase(ctl: Controller, pairs: list[tuple[str, str]], n: int, concurrency: int,
                        rpcs: list[int], downs: list[int], switch_pids: list[int]) -> tuple[Phase, list[ConnectionPlan]]:
    plans: list[ConnectionPlan] = []
    latencies: list[float] = []
    failed: list[str] = []
    before, downs_before = rpcs[0], downs[0]
    cpu_before, switches_before = time.process_time(), cpu_seconds(switch_pids)

    async def one(i: int) -> None:
        a, b = pairs[i % len(pairs)]
        t0 = time.perf_counter()
        try:
            plans.append(await ctl.fabric.connect(a, b))
        except (ConnectError, SwitchError) as e:  # reported, not fatal: the other figures still hold
            failed.append(f"{a}<->{b}: {e}")
            return
        latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    if concurrency <= 1:
        for i in range(n):
            await one(i)
    else:
        sem = asyncio.Semaphore(concurrency)

        async def limited(i: int) -> None:
            async with sem:
                await one(i)

        await asyncio.gather(*(limited(i) for i in range(n)))
    seconds = time.perf_counter() - start
    mode = "sequential" if concurrency <= 1 else f"concurrent ({concurrency} in flight)"
    phase = Phase(mode, n, seconds, latencies, writes=rpcs[0] - before, controller_cpu=time.process_time() - cpu_before,
                  switches_cpu=cpu_seconds(switch_pids) - switches_before, link_downs=downs[0] - downs_before, failed=failed)
    phase.entries = sum(len(ctl.fabric.specs(p)) for p in plans)
    return phase, plans


async def links_settled(ctl: Controller, timeout: float) -> bool:
    """Until no link is held down (a false alarm of the previous phase must not leak into the next)."""
    deadline = time.monotonic() + timeout
    while ctl.fabric.graph.down_links:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def disconnect_all(ctl: Controller, plans: list[ConnectionPlan], concurrency: int) -> float:
    start = time.perf_counter()
    if concurrency <= 1:
        for p in plans:
            await ctl.fabric.disconnect(p.id)
    else:
        sem = asyncio.Semaphore(concurrency)

        async def one(p: ConnectionPlan) -> None:
            async with sem:
                await ctl.fabric.disconnect(p.id)

        await asyncio.gather(*(one(p) for p in plans))
    return time.perf_counter() - start


async def measure(topo: Topology, topo_path: Path, settings: Settings, n: int, concurrency: list[int],
                  switch_pids: list[int], result: TopoResult) -> None:
    ctl = Controller(topo, settings)
    reader = ReaderProcess(topo_path, settings.p4info_path)
    await ctl.start()
    try:
        if not await ctl.wait_ready(READY_TIMEOUT_S):
            raise SystemExit(f"{topo.name}: switches not ready within {READY_TIMEOUT_S:.0f}s: "
                             f"{sorted(set(ctl.clients) - ctl.fabric.ready_switches)}")
        pairs = host_pairs(topo)
        baseline = await reader.raw()
        rpcs = rpc_counter(ctl)
        downs = link_down_counter(ctl)
        switch_downs = switch_down_counter(ctl)
        # A few connections first, so that the first measured one does not pay for warm-up
        # (gRPC channels' first Writes, lazily built code paths).
        _, warm_plans = await asyncio.wait_for(connect_phase(ctl, pairs, min(20, n), 1, rpcs, downs, switch_pids), PHASE_TIMEOUT_S)
        await asyncio.wait_for(disconnect_all(ctl, warm_plans, 1), PHASE_TIMEOUT_S)
        for conc in (1, *concurrency):
            if not await links_settled(ctl, SETTLE_TIMEOUT_S):
                log.warning("links still down before the %s phase: %s", conc, sorted(ctl.fabric.graph.down_links))
            mode = "sequential" if conc <= 1 else f"concurrent ({conc} in flight)"
            downs_before = switch_downs[0]
            try:
                phase, plans = await asyncio.wait_for(connect_phase(ctl, pairs, n, conc, rpcs, downs, switch_pids), PHASE_TIMEOUT_S)
            except TimeoutError:
                raise Stuck(f"{topo.name} {mode}: {n} connects did not finish within {PHASE_TIMEOUT_S:.0f} s "
                            f"(switch sessions lost meanwhile: {switch_downs[0] - downs_before})") from None
            phase.problems += await check_installed(ctl, reader)
            for p in plans:
                result.path_lengths[len(p.a_to_b.path.hops)] += 1
            try:
                phase.disconnect_seconds = await asyncio.wait_for(disconnect_all(ctl, plans, conc), PHASE_TIMEOUT_S)
            except TimeoutError:
                raise Stuck(f"{topo.name} {mode}: disconnecting did not finish within {PHASE_TIMEOUT_S:.0f} s "
                            f"(switch sessions lost meanwhile: {switch_downs[0] - downs_before})") from None
            after = await reader.raw()
            if after != baseline:
                diff = {sw: (sum((after[sw] - baseline[sw]).values()), sum((baseline[sw] - after[sw]).values()))
                        for sw in baseline if after[sw] != baseline[sw]}
                phase.problems.append(f"after disconnecting all, tables differ from the start, switch: (extra, missing) {diff}")
                # The next phase must start from the same tables: have the controller put them right.
                for sw in diff:
                    await ctl.fabric.reconcile(sw)
            left = len(ctl.fabric.plans) + len(ctl.store.all())
            if left:
                phase.problems.append(f"after disconnecting all, {left} connections left in the controller or its store")
            phase.switch_downs = switch_downs[0] - downs_before
            if phase.switch_downs:
                phase.problems.append(f"the controller lost {phase.switch_downs} switch sessions during the phase "
                                      "(keepalive answers late on a loaded machine)")
            result.phases.append(phase)
            print(f"{result.name:16} {phase.mode:26} {phase.rate:8.0f} conn/s  p50 {phase.pct(0.5):6.2f} ms  "
                  f"p99 {phase.pct(0.99):6.2f} ms  max {phase.pct(1.0):7.2f} ms  "
                  f"disconnect {phase.disconnect_rate}/s  {phase.entries / n:.1f} entities/conn  "
                  f"{phase.writes / n:.2f} Writes/conn  CPU ms/conn: controller {phase.controller_cpu / n * 1000:.2f} "
                  f"switches {phase.switches_cpu / n * 1000:.2f}  false link-downs {phase.link_downs}  "
                  f"failed {len(phase.failed)}", flush=True)
            for problem in phase.problems + phase.failed[:5]:
                print(f"  PROBLEM: {problem}", flush=True)
    except Stuck as e:
        result.aborted = str(e)
        print(f"  ABORTED: {e}", flush=True)
    finally:
        reader.close()
        try:
            await asyncio.wait_for(cleanup(ctl), CLEANUP_TIMEOUT_S)
        except TimeoutError:
            log.warning("cleanup did not finish within %.0f s; the lab is stopped anyway", CLEANUP_TIMEOUT_S)
        await ctl.stop()


async def cleanup(ctl: Controller) -> None:
    for conn_id in list(ctl.fabric.plans):
        try:
            await ctl.fabric.disconnect(conn_id)
        except Exception as e:  # the lab goes away anyway; keep stopping
            log.warning("cleanup disconnect %s failed: %s", conn_id, e)


async def run_topology(case: str, n: int, concurrency: list[int], overrides: dict[str, str], work: Path,
                 lock_timeout: float) -> TopoResult:
    from lab.harness import Lab  # Mininet is imported only when a lab is wanted

    name, _, preset = case.partition("@")
    if preset and preset not in PRESETS:
        raise SystemExit(f"{case}: no preset {preset!r} (have {', '.join(PRESETS)})")
    topo_path = REPO / "topologies" / f"{name}.yaml"
    topo = load_topology(topo_path)
    run_dir = work / case.replace("@", "-")
    settings = Settings.load({"metrics_address": "127.0.0.1:0", "web_address": "127.0.0.1:0", **overrides, **PRESETS.get(preset, {}), "store_path": str(run_dir / "store.sqlite")})
    began = time.perf_counter()
    lab = Lab(topo, run_dir / "lab", lock_timeout=lock_timeout, tls=False)  # plaintext switches: the recorded figures predate the lab's TLS
    # In a thread: pyroute2, under the lab, runs an event loop of its own, which cannot nest.
    await asyncio.to_thread(lab.start)
    try:
        result = TopoResult(case, len(topo.switches), len(topo.hosts), len(topo.links), time.perf_counter() - began)
        result.load_at_start = os.getloadavg()[0]
        pids = [pid for s in topo.switches if (pid := lab.switch_pid(s.name)) is not None]
        await measure(topo, topo_path, settings, n, concurrency, pids, result)
    finally:
        await asyncio.shield(asyncio.to_thread(lab.stop))
    return result


async def run_all(args: argparse.Namespace, overrides: dict[str, str], work: Path, results: list[TopoResult]) -> None:
    # One event loop for every topology: grpc.aio keeps state per process that outlives a loop.
    for case in args.topologies:
        results.append(await run_topology(case, args.connections, args.concurrency, overrides, work, args.lock_timeout))


def report(results: list[TopoResult], args: argparse.Namespace, began: str, load: tuple[float, float]) -> str:
    command = "sudo .venv/bin/python benchmarks/bench_controller_setup.py " + shlex.join(sys.argv[1:])
    settings_note = ", ".join(f"`{o}`" for o in args.set) if args.set else "defaults (`p4nsm settings`)"
    preset_notes = []
    for key, preset in PRESETS.items():
        if any(r.name.endswith("@" + key) for r in results):
            preset_notes += ["", f"`NAME@{key}` runs NAME with " + ", ".join(f"`{n}={v}`" for n, v in preset.items())
                             + " on top of the settings above: liveness checked less often and less strictly, so that "
                             "a machine too small for the topology does not make the controller see failures that did "
                             "not happen."]
    lines = [
        "# Controller: connection set-up rate and Request-to-installed latency",
        "",
        f"Measured by `{command.strip()}`",
        f"on {platform.node()}: {os.cpu_count()} CPUs (nproc), {platform.machine()}, Python {platform.python_version()}, "
        f"{began}; load average {load[0]:.2f} before, {load[1]:.2f} after (others may share the machine).",
        "",
        f"Real Mininet lab with one `p4nsm-softswitch` per switch and the real `Controller` (settings: {settings_note}; "
        "link probes and keepalives on; SQLite store written before and after each install). "
        f"{args.connections:,} connections per mode, between host pairs on different switches taken round robin; each "
        "connection is a primary and a disjoint backup path in both directions: a label_fwd entry on every hop of the "
        "4 legs, at each head end a protection group (2 members, the group, a label_group entry) when `fast_failover` "
        "is on, and the 2 head-end VLAN->label entries, written in 3 ordered phases. Latency: from `fabric.connect()` "
        "to its return, i.e. every entity acknowledged by every switch. After each mode every switch was read back "
        "and compared with what the controller wants; then all connections were disconnected and every switch's "
        "tables read back and compared with the tables before the first connection.",
        *preset_notes,
        "",
        "| topology | switches / hosts | mode | connections/s | p50 (ms) | p99 (ms) | max (ms) | disconnects/s "
        "| entities per connection | Write RPCs per connection | CPU ms per connection: controller / switches "
        "| false link / switch downs | failed connects | read-back checks |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for p in r.phases:
            lines.append(
                f"| {r.name} | {r.switches} / {r.hosts} | {p.mode} | {p.rate:,.0f} | {p.pct(0.5):.2f} | {p.pct(0.99):.2f} "
                f"| {p.pct(1.0):.2f} | {p.disconnect_rate} | {p.entries / p.connections:.1f} "
                f"| {p.writes / p.connections:.2f} | {p.controller_cpu / p.connections * 1000:.2f} / "
                f"{p.switches_cpu / p.connections * 1000:.2f} | {p.link_downs} / {p.switch_downs} | {len(p.failed)} "
                f"| {'passed' if not p.problems else f'**{len(p.problems)} failed**'} |"
            )
    lines += ["", "Targets (from the issue):", ""]
    for r in results:
        seq = next((p for p in r.phases if p.mode == "sequential"), None)
        best = max(r.phases, key=lambda p: p.rate, default=None)
        if seq is not None and r.name.partition("@")[0] == "diamond":
            ok = seq.pct(0.99) <= P99_TARGET_MS
            lines.append(f"* {r.name}: p99 set-up ≤ {P99_TARGET_MS:.0f} ms (sequential): **{'met' if ok else 'NOT met'}** "
                         f"({seq.pct(0.99):.2f} ms)")
        if best is not None:
            ok = best.rate >= RATE_TARGET
            lines.append(f"* {r.name}: ≥ {RATE_TARGET:.0f} connections/s: **{'met' if ok else 'NOT met'}** "
                         f"({best.rate:,.0f}/s, {best.mode})")
    problems = [f"* {r.name}, {p.mode}: {x}" for r in results for p in r.phases for x in p.problems + p.failed[:5]]
    problems += [f"* {r.name}: ABORTED: {r.aborted}" for r in results if r.aborted]
    if problems:
        lines += ["", "Problems seen (the run is not clean):", "", *problems]
    lines += ["", "Primary path lengths (switches) of the measured connections: " + "; ".join(
        f"{r.name}: " + ", ".join(f"{k} hops × {v}" for k, v in sorted(r.path_lengths.items())) for r in results) + ".",
        "Lab start-up, including any wait for another lab on the machine (not measured above): " + ", ".join(f"{r.name} {r.lab_start_s:.1f} s" for r in results) + ".",
        "1-minute load average when each lab was up (2 CPUs; other people's tests and benchmarks share this machine): "
        + ", ".join(f"{r.name} {r.load_at_start:.1f}" for r in results) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topologies", nargs="+", default=["diamond", "fattree4"])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50],
                        help="connects in flight in the concurrent mode(s); each value is one more mode")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="controller setting override")
    parser.add_argument("--lock-timeout", type=float, default=3600.0,
                        help="seconds to wait for another lab on this machine to stop (one lab at a time)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (switch logs, store) for a look afterwards")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: the lab makes network namespaces and veth pairs")
    # So that a `timeout` or `kill` unwinds through the lab's context manager and stops it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides = dict(o.split("=", 1) for o in args.set)
    began = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="p4nsm-bench-setup-"))
    results = []
    try:
        asyncio.run(run_all(args, overrides, work, results))
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results, args, began, (load_before, os.getloadavg()[0]))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    print(text)
    if any(r.aborted for r in results) or any(p.problems or p.failed for r in results for p in r.phases):
        sys.exit(1)


if __name__ == "__main__":
    main()
