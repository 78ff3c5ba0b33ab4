"""Connection set-up rate and Request-to-installed latency of the controller on a Mininet lab.

    sudo .venv/bin/python benchmarks/bench_controller_setup.py [--topologies diamond fattree4]
        [--connections 1000] [--concurrency 50] [--set name=value ...]

For each topology: the real lab (Mininet, one `p4nsm-softswitch` per switch) and the real
Controller (default settings, link probes and keepalives running, its SQLite store in a temp
dir). Connections go between host pairs on different switches, taken round robin, so VLANs
(one per connection on each host port) spread over every host. Two modes, each from an empty
fabric:
  * sequential: one `fabric.connect()` at a time; the latency of each, from the call to its
    return, i.e. until every switch acknowledged every entry (Request-to-installed);
  * concurrent: CONCURRENCY connects in flight at once: throughput, and the latency of each
    from its own call.
After each mode a Read of every switch must show each connection's entries; then every
connection is disconnected (timed too) and every switch's tables must read back exactly as they
were before the first connection. Prints a markdown table and writes
benchmarks/results/controller_setup.md. Labs are stopped and switches killed on any exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.fabric import entries as E  # noqa: E402
from controller.fabric.model import ConnectionPlan  # noqa: E402
from controller.runtime import Controller  # noqa: E402
from controller.settings import Settings  # noqa: E402
from topologies.schema import Topology, load_topology  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "controller_setup.md"
READY_TIMEOUT_S = 120.0
# Targets from the issue.
P99_TARGET_MS = 20.0
RATE_TARGET = 500.0

log = logging.getLogger("bench")


@dataclass
class Phase:
    mode: str
    connections: int
    seconds: float
    latencies: list[float]  # seconds, one per connection
    disconnect_seconds: float = 0.0
    entries: int = 0  # table entries the connections needed, all switches together
    writes: int = 0  # Write RPCs the switches received while connecting

    @property
    def rate(self) -> float:
        return self.connections / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


@dataclass
class TopoResult:
    name: str
    switches: int
    hosts: int
    links: int
    lab_start_s: float
    phases: list[Phase] = field(default_factory=list)
    restored: bool = False
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


async def read_all(ctl: Controller) -> dict[str, Counter[bytes]]:
    """Every table entry of every switch (all tables, not only the controller's)."""
    async def one(name: str) -> tuple[str, Counter[bytes]]:
        entries = await ctl.clients[name].read_table_entries()
        return name, Counter(e.SerializeToString(deterministic=True) for e in entries)

    return dict(await asyncio.gather(*(one(n) for n in ctl.clients)))


async def check_installed(ctl: Controller, plans: list[ConnectionPlan]) -> int:
    """Every entry of every plan is on its switch, read back; returns how many there are."""
    want = [spec for plan in plans for spec in E.all_entries(plan)]
    have: dict[str, set[E.EntrySpec]] = {}
    for sw in {s.switch for s in want}:
        have[sw] = set(await ctl.fabric.read_back(sw))
    missing = [s for s in want if s not in have[s.switch]]
    if missing:
        raise SystemExit(f"{len(missing)} of {len(want)} entries are not on their switches, e.g. {missing[0]}")
    return len(want)


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
                        rpcs: list[int]) -> tuple[Phase, list[ConnectionPlan]]:
    plans: list[ConnectionPlan | None] = [None] * n
    latencies = [0.0] * n
    before = rpcs[0]

    async def one(i: int) -> None:
        a, b = pairs[i % len(pairs)]
        t0 = time.perf_counter()
        plans[i] = await ctl.fabric.connect(a, b)
        latencies[i] = time.perf_counter() - t0

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
    done = [p for p in plans if p is not None]
    return Phase(mode, n, seconds, latencies, writes=rpcs[0] - before), done


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


async def measure(topo: Topology, settings: Settings, n: int, concurrency: int, result: TopoResult) -> None:
    ctl = Controller(topo, settings)
    await ctl.start()
    try:
        if not await ctl.wait_ready(READY_TIMEOUT_S):
            raise SystemExit(f"{topo.name}: switches not ready within {READY_TIMEOUT_S:.0f}s: "
                             f"{sorted(set(ctl.clients) - ctl.fabric.ready_switches)}")
        pairs = host_pairs(topo)
        baseline = await read_all(ctl)
        rpcs = rpc_counter(ctl)
        # A few connections first, so that the first measured one does not pay for warm-up
        # (gRPC channels' first Writes, lazily built code paths).
        warm, warm_plans = await connect_phase(ctl, pairs, min(20, n), 1, rpcs)
        await disconnect_all(ctl, warm_plans, 1)
        for conc in (1, concurrency):
            phase, plans = await connect_phase(ctl, pairs, n, conc, rpcs)
            phase.entries = await check_installed(ctl, plans)
            for p in plans:
                result.path_lengths[len(p.a_to_b.path.hops)] += 1
            phase.disconnect_seconds = await disconnect_all(ctl, plans, conc)
            after = await read_all(ctl)
            if after != baseline:
                diff = {sw: (sum((after[sw] - baseline[sw]).values()), sum((baseline[sw] - after[sw]).values()))
                        for sw in baseline if after[sw] != baseline[sw]}
                raise SystemExit(f"{topo.name} {phase.mode}: tables differ from the start after disconnecting "
                                 f"(switch: (extra, missing)) {diff}")
            if ctl.fabric.plans or ctl.store.all():
                raise SystemExit(f"{topo.name} {phase.mode}: connections left after disconnecting all")
            result.phases.append(phase)
            print(f"{topo.name:9} {phase.mode:26} {phase.rate:8.0f} conn/s  p50 {phase.pct(0.5):6.2f} ms  "
                  f"p99 {phase.pct(0.99):6.2f} ms  max {phase.pct(1.0):7.2f} ms  "
                  f"disconnect {n / phase.disconnect_seconds:6.0f}/s  {phase.entries / n:.1f} entries/conn  "
                  f"{phase.writes / n:.2f} Writes/conn", flush=True)
        result.restored = True
    finally:
        for conn_id in list(ctl.fabric.plans):
            try:
                await ctl.fabric.disconnect(conn_id)
            except Exception as e:  # the lab goes away anyway; keep stopping
                log.warning("cleanup disconnect %s failed: %s", conn_id, e)
        await ctl.stop()


def run_topology(name: str, n: int, concurrency: int, overrides: dict[str, str], work: Path) -> TopoResult:
    from topologies.lab import Lab  # Mininet is imported only when a lab is wanted

    topo = load_topology(REPO / "topologies" / f"{name}.yaml")
    run_dir = work / name
    settings = Settings.load({**overrides, "store_path": str(run_dir / "store.sqlite")})
    began = time.perf_counter()
    with Lab(topo, run_dir / "lab") as lab:
        del lab
        result = TopoResult(name, len(topo.switches), len(topo.hosts), len(topo.links), time.perf_counter() - began)
        asyncio.run(measure(topo, settings, n, concurrency, result))
    return result


def report(results: list[TopoResult], args: argparse.Namespace, began: str, load: tuple[float, float]) -> str:
    command = "sudo .venv/bin/python benchmarks/bench_controller_setup.py " + shlex.join(sys.argv[1:])
    settings_note = ", ".join(f"`{o}`" for o in args.set) if args.set else "defaults (`p4nsm settings`)"
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
        "connection is a primary and a disjoint backup path in both directions (label entries on every hop of 4 legs, "
        "then the 2 head-end VLAN->label entries). Latency: from `fabric.connect()` to its return, i.e. every entry "
        "acknowledged by every switch. After each mode every entry was read back from the switches, then all "
        "connections were disconnected and every switch's tables read back identical to before the first connection.",
        "",
        "| topology | switches / hosts | mode | connections/s | p50 (ms) | p99 (ms) | max (ms) | disconnects/s "
        "| entries per connection | Write RPCs per connection | tables restored |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for p in r.phases:
            lines.append(
                f"| {r.name} | {r.switches} / {r.hosts} | {p.mode} | {p.rate:,.0f} | {p.pct(0.5):.2f} | {p.pct(0.99):.2f} "
                f"| {p.pct(1.0):.2f} | {p.connections / p.disconnect_seconds:,.0f} | {p.entries / p.connections:.1f} "
                f"| {p.writes / p.connections:.2f} | {'yes' if r.restored else 'NO'} |"
            )
    lines += ["", "Targets (from the issue):", ""]
    for r in results:
        seq = next((p for p in r.phases if p.mode == "sequential"), None)
        best = max(r.phases, key=lambda p: p.rate, default=None)
        if seq is not None and r.name == "diamond":
            ok = seq.pct(0.99) <= P99_TARGET_MS
            lines.append(f"* {r.name}: p99 set-up ≤ {P99_TARGET_MS:.0f} ms (sequential): **{'met' if ok else 'NOT met'}** "
                         f"({seq.pct(0.99):.2f} ms)")
        if best is not None:
            ok = best.rate >= RATE_TARGET
            lines.append(f"* {r.name}: ≥ {RATE_TARGET:.0f} connections/s: **{'met' if ok else 'NOT met'}** "
                         f"({best.rate:,.0f}/s, {best.mode})")
    lines += ["", "Primary path lengths (switches) of the measured connections: " + "; ".join(
        f"{r.name}: " + ", ".join(f"{k} hops × {v}" for k, v in sorted(r.path_lengths.items())) for r in results) + ".",
        "Lab start-up (not measured above): " + ", ".join(f"{r.name} {r.lab_start_s:.1f} s" for r in results) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topologies", nargs="+", default=["diamond", "fattree4"])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="controller setting override")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (switch logs, store) for a look afterwards")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: the lab makes network namespaces and veth pairs")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides = dict(o.split("=", 1) for o in args.set)
    began = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="p4nsm-bench-setup-"))
    results = []
    try:
        for name in args.topologies:
            results.append(run_topology(name, args.connections, args.concurrency, overrides, work))
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


if __name__ == "__main__":
    main()
