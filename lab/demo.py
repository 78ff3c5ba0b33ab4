"""The lab demo: a topology in Mininet, the controller serving the NSM API, an NSE and an NSC
(the same SDK classes as `p4nsm nse` / `p4nsm nsc request`), ping across the connection; then
a heal under traffic: the primary path's link is cut silently while a 100 packets/s stream runs,
and the demo shows when the controller saw it, when the switch-over was acknowledged and what
the stream lost; the link is mended, the entries read back, everything closed and cleaned up."""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from controller.identity import LabCerts, load_svid
from controller.runtime import Controller
from controller.settings import Settings
from controller.topology import Topology, switch_ifname
from lab import faults
from lab.certs import as_role, lab_tls

log = logging.getLogger("p4nsm.demo")

STREAM_INTERVAL_S = 0.01  # ping's own pacing: one lost reply stands for 10 ms of traffic
STREAM_COUNT = 300
CUT_AFTER_S = 1.0
WAIT_S = 10.0


async def _ping(netns: str, address: str, count: int = 3, interval: float = 0.2) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", str(interval), "-W", "1", address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode == 0, out.decode(errors="replace")


async def _demo(ctl: Controller, topo: Topology, console: Console, settings: Settings, certs: LabCerts | None) -> bool:
    from controller.sdk.client import Client
    from controller.sdk.endpoint import Endpoint, EndpointConfig

    hosts = [h.name for h in topo.hosts]
    client_host, endpoint_host = hosts[0], hosts[-1]
    service = "demo-service"
    await ctl.start()
    console.print(f"[bold]1.[/bold] controller up, NSM API on {ctl.nsm.address if ctl.nsm else '?'}; "
                  f"waiting for {len(ctl.clients)} switches to arbitrate, take the pipeline and reconcile")
    if certs is not None:
        console.print(f"   NSM over mTLS: certificates of a lab CA in {certs.dir} (p4nsm certs init); controller "
                      f"{certs.spiffe_id('controller')}, NSE {certs.spiffe_id('nse')}, NSC {certs.spiffe_id('nsc')}")
    else:
        console.print("   NSM TLS as the settings say: " + ("plaintext" if settings.plaintext else "their certificates"))
    if ctl.web_url:
        console.print(f"   web view (while the demo runs): {ctl.web_url}")
    if ctl.metrics_url:
        console.print(f"   metrics: {ctl.metrics_url}")
    if not await ctl.wait_ready(60):
        console.print("[red]switches did not come up[/red]")
        return False
    assert ctl.nsm is not None
    console.print(f"[bold]2.[/bold] NSE on {endpoint_host} registers {service!r} (addresses from 10.60.0.0/24); "
                  f"NSC on {client_host} requests it")
    nse = Endpoint(EndpointConfig(service=service, host=endpoint_host, cidr="10.60.0.0/24", nsm_url=ctl.nsm.address),
                   as_role(settings, certs, "nse"))
    await nse.start()
    nsc = Client(ctl.nsm.address, as_role(settings, certs, "nsc"))
    ok = False
    labels: set[int] = set()
    try:
        conn = await nsc.request(service, client_host, iface="nsm0", give_up_after=30)
        ip = conn.context.ip_context
        plan = ctl.fabric.plans[conn.path.path_segments[1].id]
        labels = {leg.label for leg in plan.legs()}
        table = Table("field", "value", title="connection (as the NSC got it)")
        table.add_row("path segments", " -> ".join(seg.name for seg in conn.path.path_segments))
        table.add_row("endpoint", conn.network_service_endpoint_name)
        table.add_row("mechanism", f"{conn.mechanism.type} {dict(conn.mechanism.parameters)}")
        table.add_row("client / endpoint addresses", f"{list(ip.src_ip_addrs)} / {list(ip.dst_ip_addrs)}")
        table.add_row("fabric path", " -> ".join(plan.a_to_b.path.switches))
        table.add_row("backup path", " -> ".join(plan.a_to_b_backup.path.switches) if plan.a_to_b_backup else "none")
        table.add_row("VLANs / labels", f"{plan.a.vlan}/{plan.b.vlan}, labels {sorted(labels)}")
        console.print(table)
        target = ip.dst_ip_addrs[0].split("/")[0]
        console.print(f"[bold]3.[/bold] ping {target} (the endpoint) from {client_host} over nsm0 and the fabric")
        ok, out = await _ping(client_host, target)
        lines = out.strip().splitlines()
        console.print("   " + (lines[-2] if len(lines) >= 2 else out.strip()))
        healed = await _heal_under_traffic(ctl, console, plan.id, client_host, target)
        ok = ok and healed
        console.print("[bold]6.[/bold] entries of this connection, read back from the switches")
        rows = Table("switch", "table", "match", "action", "packets")
        for sw in ctl.clients:
            for entry in await ctl.clients[sw].read_table_entries(counters=True):
                d = ctl.schema.describe_entry(entry)
                match = d["match"]
                params = d.get("params", {})
                if match.get("label") in labels or params.get("label") in labels:
                    rows.add_row(sw, str(d["table"]).rsplit(".", 1)[-1], str(match),
                                 f"{str(d.get('action', 'group')).rsplit('.', 1)[-1]} {params}", str(d.get("packets", "")))
        console.print(rows)
    finally:
        console.print("[bold]7.[/bold] the NSC closes the connection; the NSE unregisters")
        await nsc.close()
        await nse.stop()
    left = 0
    for sw in ctl.clients:
        for entry in await ctl.clients[sw].read_table_entries():
            d = ctl.schema.describe_entry(entry)
            if d["match"].get("label") in labels:
                left += 1
    iface_left = "nsm0" in (await _run("ip", "netns", "exec", client_host, "ip", "-o", "link"))
    console.print(f"   entries of the connection left on switches: {left}; nsm0 left in {client_host}: {iface_left}")
    verdict = ok and left == 0 and not iface_left
    console.print(f"[bold {'green' if verdict else 'red'}]demo {'passed' if verdict else 'FAILED'}[/]: "
                  f"ping {'ok' if ok else 'failed'}, cleanup {'complete' if left == 0 and not iface_left else 'incomplete'}")
    return verdict


async def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _heal_under_traffic(ctl: Controller, console: Console, conn_id: str, client_host: str, target: str) -> bool:
    """Cut the primary path's first fabric link silently (carrier stays up, so only the probes can
    tell) while a ping stream runs; report detection, switch-over and loss; mend it again."""
    plan = ctl.fabric.plans[conn_id]
    graph = ctl.fabric.graph
    link = graph.links[plan.a_to_b.path.links[0]]
    seen: dict[str, int] = {}

    def on_graph_change() -> None:
        if link.name in graph.down_links:
            seen.setdefault("detected", time.monotonic_ns())

    def on_switchover(heads: int, acked_ns: int) -> None:
        seen.setdefault("acked", acked_ns)

    ctl.fabric.graph_listeners.append(on_graph_change)
    ctl.rerouter.switchover_listeners.append(on_switchover)
    cutter = faults.SilentCut([switch_ifname(link.a, link.a_port), switch_ifname(link.b, link.b_port)])
    # pyroute2's IPRoute runs an event loop of its own, which cannot nest in ours
    await asyncio.to_thread(cutter.install)
    try:
        console.print(f"[bold]4.[/bold] a {int(1 / STREAM_INTERVAL_S)} packets/s stream from {client_host}; after "
                      f"{CUT_AFTER_S:.0f} s the link {link.name} of the primary path is cut silently (carrier up)")
        stream = asyncio.create_task(_ping(client_host, target, STREAM_COUNT, STREAM_INTERVAL_S))
        await asyncio.sleep(CUT_AFTER_S)  # traffic before the failure, so that its loss shows
        cut_ns = time.monotonic_ns()
        await asyncio.to_thread(cutter.set, True)
        await _wait_for(lambda: "acked" in seen, WAIT_S)
        _, out = await stream
        sent, received = _ping_counts(out)
        now = ctl.fabric.plans[conn_id]
        for name, key in (("detected (link declared down)", "detected"), ("switch-over acknowledged", "acked")):
            at = seen.get(key)
            console.print(f"   {name}: " + (f"{(at - cut_ns) / 1e6:.0f} ms after the cut" if at else "not within "
                                           f"{WAIT_S:.0f} s"))
        console.print(f"   stream: {received} of {sent} replies, {sent - received} lost "
                      f"(about {(sent - received) * STREAM_INTERVAL_S * 1000:.0f} ms of traffic)")
        console.print(f"   path now {' -> '.join(now.a_to_b.path.switches)} "
                      f"(was {' -> '.join(plan.a_to_b.path.switches)})")
        ping_ok, _ = await _ping(client_host, target)
        console.print(f"   ping over the new path: {'ok' if ping_ok else 'FAILED'}")
        console.print("[bold]5.[/bold] the link is mended; waiting for its probes to bring it back")
        await asyncio.to_thread(cutter.set, False)
        back = await _wait_for(lambda: link.name not in graph.down_links, WAIT_S)
        console.print(f"   link {link.name} {'up again' if back else 'still down'}")
        return "detected" in seen and "acked" in seen and ping_ok and back and now.a_to_b != plan.a_to_b
    finally:
        await asyncio.to_thread(cutter.remove)
        ctl.fabric.graph_listeners.remove(on_graph_change)
        ctl.rerouter.switchover_listeners.remove(on_switchover)


def _ping_counts(out: str) -> tuple[int, int]:
    found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


def run_demo(topo: Topology, console: Console) -> bool:
    from lab.harness import Lab, cleanup_stale

    cleanup_stale()
    run_dir = Path(tempfile.mkdtemp(prefix="p4nsm-demo-"))
    settings = Settings.load({"store_path": str(run_dir / "store.sqlite"), "nsm_run_dir": str(run_dir / "nsm")})
    certs = lab_tls(settings, run_dir, topo)
    controller = as_role(settings, certs, "controller")
    svid = load_svid(controller)  # the switches trust it; None: plaintext, switches too
    lab = Lab(topo, run_dir, tls=svid is not None, controller=svid)
    console.print(f"[bold]0.[/bold] starting the {topo.name} lab in Mininet ({len(topo.switches)} switches, {len(topo.hosts)} hosts); logs in {run_dir}")
    try:
        lab.start()

        async def main() -> bool:
            # The lab's switches serve mutual TLS to this identity: lab.topology names their CA.
            ctl = Controller(lab.topology, controller, nsm_address=f"unix://{run_dir / 'nsm.sock'}")
            try:
                return await _demo(ctl, topo, console, settings, certs)
            finally:
                await ctl.stop()

        return asyncio.run(main())
    finally:
        lab.stop()
        console.print("[bold]8.[/bold] lab stopped: switches, hosts and links removed")
