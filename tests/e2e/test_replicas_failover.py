"""Replicas under faults, as a user runs them: two `p4nsm run` processes on one etcd cluster (3
members), a diamond of softswitches in Mininet on ports of its own, an SDK endpoint and client
given both replicas' addresses, a sequence-numbered UDP stream over the NSM connection.

- The leader SIGKILLed under traffic: the follower takes over, every switch's primary is its
  term's election id, no packet sent before a link cut is lost, and that silent cut (made shortly
  after the death) is healed by the new leader. The client's monitor stream comes back with
  INITIAL_STATE_TRANSFER and its refreshes succeed against the new leader.
- The leader SIGSTOPped for longer than the lease, then continued: it finds it lost its term, its
  writes are refused (by the switches, counted, and by etcd), it becomes a follower, and nothing
  it tried to write survives (read back from the switches).

Softswitch only: the switch-side refusal is tested on both kinds in test_p4rt_fencing.py; here
the subject is the replicas' takeover, which is the same over either kind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.admin import call
from controller.identity import LabCerts
from controller.sdk.client import Client
from controller.settings import Settings
from controller.topology import Topology, switch_ifname
from lab import faults
from lab.certs import as_role, lab_certs
from tests.e2e.lab_fixtures import softswitch_or_skip
from tests.e2e.nsm_fixtures import Endpoints, nsm_test_settings
from tests.e2e.replica_process import REPLICA_SETTINGS, Replica, following, free_port_diamond, leading
from tests.support.etcd_cluster import EtcdCluster, needs_etcd

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet, network namespaces)"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)"),
    pytest.mark.timeout(1200),
]

LAB_WAIT_S = 900.0
RATE = 500  # packets/s of the stream
UDP_PORT = 5599


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path, LabCerts, Path]]:
    from lab.harness import Lab

    softswitch_or_skip()
    run_dir = tmp_path_factory.mktemp("replicas-lab")
    with Lab(free_port_diamond(), run_dir, lock_timeout=LAB_WAIT_S) as running:
        topo_file = run_dir / "topology.yaml"
        topo_file.write_text(yaml.safe_dump(running.topology.model_dump(mode="json", exclude_defaults=True)))
        yield running, run_dir, lab_certs(run_dir, running.topology), topo_file


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One cluster for the module's lab: a switch remembers the highest election id it has seen
    while it runs, and a fresh cluster's revisions (the terms) would start below it again."""
    needs_etcd()
    cluster = EtcdCluster.make(tmp_path_factory.mktemp("etcd"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@contextlib.contextmanager
def replicas(lab: tuple[Any, Path, LabCerts, Path], cluster: EtcdCluster, *names: str) -> Iterator[list[Replica]]:
    _, run_dir, certs, topo_file = lab
    fabric = f"f{uuid.uuid4().hex[:6]}"
    settings = {**REPLICA_SETTINGS, **certs.settings("controller"), "store": cluster.url, "store_fabric_id": fabric}
    made = [Replica(n, run_dir / fabric, topo_file, settings) for n in names]
    (run_dir / fabric).mkdir()
    try:
        yield made
    finally:
        for r in made:
            r.stop()


async def until(check: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str] = lambda: "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}\n{logs()[-4000:]}")
        await asyncio.sleep(0.05)


# --- the stream ---------------------------------------------------------------------------------

RECEIVER = textwrap.dedent("""
    import json, socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.settimeout(float(sys.argv[3]))
    print("ready", flush=True)
    got = []
    try:
        while True:
            data = s.recv(64)
            got.append((int.from_bytes(data[:8], "big"), time.monotonic()))
    except socket.timeout:
        pass
    print(json.dumps(got), flush=True)
""")
SENDER = textwrap.dedent("""
    import json, socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 0))
    rate, count = int(sys.argv[4]), int(sys.argv[5])
    start = time.monotonic()
    for i in range(count):
        at = start + i / rate
        pause = at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        s.sendto(i.to_bytes(8, "big") + b"p4nsm-replicas", (sys.argv[2], int(sys.argv[3])))
    print(json.dumps({"start": start}), flush=True)
""")


async def in_netns(netns: str, script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec("ip", "netns", "exec", netns, sys.executable, "-c", script, *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@contextlib.asynccontextmanager
async def nsm_users(lab: tuple[Any, Path, LabCerts, Path], urls: str) -> AsyncIterator[tuple[Endpoints, Settings]]:
    _, run_dir, certs, _ = lab
    base = nsm_test_settings(run_dir, **certs.settings("controller"))
    endpoints = Endpoints(as_role(base, certs, "nse"))
    try:
        yield endpoints, as_role(base, certs, "nsc")
    finally:
        await endpoints.stop_all()


def link_between(topo: Topology, a: str, b: str) -> tuple[str, str]:
    for link in topo.links:
        if {link.a.switch, link.b.switch} == {a, b}:
            return switch_ifname(link.a.switch, link.a.port), switch_ifname(link.b.switch, link.b.port)
    raise AssertionError(f"no link between {a} and {b}")


async def test_leader_sigkill_under_traffic_the_follower_takes_over_and_heals_a_cut(lab, etcd_cluster):
    running, _, _, _ = lab
    with replicas(lab, etcd_cluster, "r1", "r2") as (r1, r2):
        r1.start()
        one = await until(r1.status, 60, "r1 answers", r1.log)
        one = await until(lambda: _ready(r1, leading), 60, "r1 leads every switch", r1.log)
        r2.start()
        await until(lambda: _ready(r2, lambda s: following(s, one["election_id"])), 60, "r2 follows with backup streams",
                    r2.log)
        urls = f"{r1.nsm},{r2.nsm}"
        async with nsm_users(lab, urls) as (endpoints, nsc_settings):
            await endpoints.start(urls, "replica-udp", "h4", "10.71.0.0/24")
            # tokens of 6 s: a refresh every 2 s, so that several land on the new leader
            client = Client(urls, nsc_settings, token_lifetime=6.0)
            try:
                conn = await client.request("replica-udp", "h1", iface="nsm0", give_up_after=20)
                src = conn.context.ip_context.src_ip_addrs[0].split("/")[0]
                dst = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
                path = (await r1.connections())[0]["path"].split(" -> ")
                cut = faults.SilentCut(link_between(running.topology, path[0], path[1]))
                await asyncio.to_thread(cut.install)
                duration = 16.0
                receiver = await in_netns("h4", RECEIVER, dst, str(UDP_PORT), "6")
                assert receiver.stdout is not None
                assert (await receiver.stdout.readline()).strip() == b"ready"
                sender = await in_netns("h1", SENDER, src, dst, str(UDP_PORT), str(RATE), str(int(RATE * duration)))
                await asyncio.sleep(3.0)  # traffic before the failure, so that a loss would show

                r1.signal(signal.SIGKILL)
                killed = time.monotonic()
                await until(lambda: time.monotonic() - killed >= 0.3, 2, "")
                await asyncio.to_thread(cut.set, True)
                cut_at = time.monotonic()
                two = await until(lambda: _ready(r2, leading), 30, "r2 leads every switch", r2.log)
                took_over = time.monotonic()
                assert two["term"] > one["term"] and two["election_id"] > one["election_id"]

                async def healed() -> bool:
                    conns = await r2.connections()
                    return bool(conns) and conns[0]["path"].split(" -> ")[:2] != path[:2]

                await until(healed, 20, "the new leader moved the connection off the cut link", r2.log)
                healed_at = time.monotonic()
                sent_info, sent_err = await sender.communicate()
                got_raw, got_err = await receiver.communicate()
                # the sender fails (network unreachable) when the client's interface went away
                assert sender.returncode == 0 and receiver.returncode == 0, (
                    sent_err.decode(), got_err.decode(), client.history, r2.log()[-3000:])
                await asyncio.to_thread(cut.remove)
                start = json.loads(sent_info)["start"]
                got = {seq: at for seq, at in json.loads(got_raw)}
                before_cut = [i for i in range(int(RATE * duration)) if start + i / RATE < cut_at - 0.05]
                lost_before = [i for i in before_cut if i not in got]
                after_heal = [i for i in range(int(RATE * duration)) if start + i / RATE > healed_at + 0.5]
                lost_after = [i for i in after_heal if i not in got]
                print(f"takeover {took_over - killed:.2f}s after SIGKILL; cut healed {healed_at - cut_at:.2f}s after the cut;"
                      f" {len(lost_before)} of {len(before_cut)} lost before the cut, {len(lost_after)} of"
                      f" {len(after_heal)} after the heal")
                assert lost_before == [], f"{len(lost_before)} packets lost through the failover: {lost_before[:20]}"
                assert after_heal and lost_after == [], f"{len(lost_after)} lost after the heal: {lost_after[:20]}"

                # the client: its monitor came back on the new leader, and a refresh succeeded there
                await until(lambda: any(h.startswith("monitor resumed") for h in client.history), 10,
                            f"the client's monitor resumed (history {client.history})")
                refreshes = client.history.count("refreshed")
                await until(lambda: client.history.count("refreshed") > refreshes, 10, "a refresh against r2")
                assert client.replicas.url == r2.nsm
                status = await r2.status()
                assert status is not None and all(sw["refused_writes"] == 0 for sw in status["switches"])
            finally:
                with contextlib.suppress(Exception):
                    await client.close()


async def _ready(replica: Replica, check: Callable[[dict[str, Any] | None], bool]) -> dict[str, Any] | None:
    status = await replica.status()
    return status if check(status) else None


async def switch_entries(topo: Topology, certs: LabCerts) -> dict[str, set[bytes]]:
    """Every table entry of every switch, read straight from the switches (a Read needs no
    arbitration) with the controller's certificate, which the switches' allow-list names."""
    from finsy.proto import p4r, p4r_grpc

    from controller.identity import load_svid
    from controller.p4rt.client import open_channel, switch_tls

    svid = load_svid(Settings.load({**certs.settings("controller")}))
    out: dict[str, set[bytes]] = {}
    for sw in topo.switches:
        channel = open_channel(sw.grpc_addr, switch_tls(sw, svid), options=[])
        try:
            request = p4r.ReadRequest(device_id=sw.device_id, entities=[p4r.Entity(table_entry=p4r.TableEntry())])
            found: set[bytes] = set()
            async for reply in p4r_grpc.P4RuntimeStub(channel).Read(request, timeout=10):
                found |= {e.SerializeToString(deterministic=True) for e in reply.entities}
            out[sw.name] = found
        finally:
            await channel.close()
    return out


def counted(log: str, pattern: str) -> int:
    """The sum of the numbers the log lines matching `pattern` (a regex with one group) carry."""
    return sum(int(m.group(1)) for m in re.finditer(pattern, log))


async def test_leader_sigstopped_past_its_lease_is_fenced_and_becomes_a_follower(lab, etcd_cluster):
    running, _, certs, _ = lab
    with replicas(lab, etcd_cluster, "r1", "r2") as (r1, r2):
        r1.start()
        one = await until(lambda: _ready(r1, leading), 60, "r1 leads every switch", r1.log)
        r2.start()
        await until(lambda: _ready(r2, lambda s: following(s, one["election_id"])), 60, "r2 follows", r2.log)
        urls = f"{r1.nsm},{r2.nsm}"
        async with nsm_users(lab, urls) as (endpoints, nsc_settings):
            await endpoints.start(urls, "replica-stop", "h4", "10.72.0.0/24")
            baseline = await switch_entries(running.topology, certs)
            stop_churn = asyncio.Event()
            made = [0]

            async def churn(index: int) -> None:
                # connections made and closed back to back: writes are in flight whenever r1 stops
                while not stop_churn.is_set():
                    client = Client(urls, nsc_settings, refresh=False, heal=False)
                    try:
                        await client.request("replica-stop", "h1", iface=f"nsm{index}", give_up_after=5)
                        made[0] += 1
                    except Exception:  # refused while the replicas change hands: try again
                        pass
                    finally:
                        with contextlib.suppress(Exception):
                            await client.close()

            churners = [asyncio.create_task(churn(i)) for i in (1, 2, 3)]
            try:
                await until(lambda: made[0] >= 3, 60, "the churn makes connections", r1.log)
                r1.signal(signal.SIGSTOP)
                await until(lambda: _ready(r2, leading), 30, "r2 leads every switch while r1 is stopped", r2.log)
                r1.signal(signal.SIGCONT)
                await until(lambda: "event=stepped_down" in r1.log(), 20, "r1 finds it lost its term", r1.log)
                two = await r2.status()
                assert two is not None
                back = await until(lambda: _ready(r1, lambda s: following(s, two["election_id"])), 30,
                                   "r1 is a follower again, a backup of r2's term on every switch", r1.log)
                assert back["term"] == 0
            finally:
                stop_churn.set()
                await asyncio.gather(*churners, return_exceptions=True)
            # What r2 holds is the fabric's (r1 made some before it stopped): r2 removes them, and then
            # only what was there before the churn may remain. Read back at once, long before
            # anti-entropy (two sweeps of 30 s) could mend anything r1 left.
            for conn in await r2.connections():
                await call(r2.admin, "disconnect", id=conn["id"])
            after = await switch_entries(running.topology, certs)
            log = r1.log()
            by_switch = counted(log, r"event=write_refused updates=(\d+)")
            by_etcd = counted(log, r"event=writes_refused ops=(\d+)") + len(re.findall(r"event=write_refused reason=not_leading", log))
            print(f"r1 after SIGCONT: {by_switch} updates refused by the switches, {by_etcd} writes refused by etcd;"
                  f" {made[0]} connections churned")
            assert by_switch + by_etcd > 0, "r1 attempted no write after SIGCONT: the test proved nothing"
            assert re.search(r"event=stepped_down", log) and "event=leader term" in log
            assert after == baseline, {n: (len(after[n] - baseline[n]), len(baseline[n] - after[n])) for n in after}
            status = await r2.status()
            assert status is not None and leading(status)
