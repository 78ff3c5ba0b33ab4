"""The lab demo: a topology in Mininet, the controller serving the NSM API, an NSE and an NSC
(the same SDK classes as `p4nsm nse` / `p4nsm nsc request`), ping across the connection, its
path and entries read back from the switches, then everything closed and cleaned up."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from controller.runtime import Controller, describe
from controller.settings import Settings
from topologies.schema import Topology

log = logging.getLogger("p4nsm.demo")


async def _ping(netns: str, address: str, count: int = 3) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode == 0, out.decode(errors="replace")


async def _demo(ctl: Controller, topo: Topology, console: Console) -> bool:
    from controller.sdk.client import Client
    from controller.sdk.endpoint import Endpoint, EndpointConfig

    hosts = [h.name for h in topo.hosts]
    client_host, endpoint_host = hosts[0], hosts[-1]
    service = "demo-service"
    await ctl.start()
    console.print(f"[bold]1.[/bold] controller up, NSM API on {ctl.nsm.address if ctl.nsm else '?'}; "
                  f"waiting for {len(ctl.clients)} switches to arbitrate, take the pipeline and reconcile")
    if not await ctl.wait_ready(60):
        console.print("[red]switches did not come up[/red]")
        return False
    assert ctl.nsm is not None
    console.print(f"[bold]2.[/bold] NSE on {endpoint_host} registers {service!r} (addresses from 10.60.0.0/24); "
                  f"NSC on {client_host} requests it")
    nse = Endpoint(EndpointConfig(service=service, host=endpoint_host, cidr="10.60.0.0/24", nsm_url=ctl.nsm.address), ctl.settings)
    await nse.start()
    nsc = Client(ctl.nsm.address, ctl.settings)
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
        console.print("[bold]4.[/bold] entries of this connection, read back from the switches")
        rows = Table("switch", "table", "match", "action", "packets")
        for sw in ctl.clients:
            for entry in await ctl.clients[sw].read_table_entries(counters=True):
                d = ctl.schema.describe_entry(entry)
                match = d["match"]
                params = d.get("params", {})
                if match.get("label") in labels or params.get("label") in labels:  # type: ignore[union-attr,operator]
                    rows.add_row(sw, str(d["table"]).rsplit(".", 1)[-1], str(match),
                                 f"{str(d.get('action', 'group')).rsplit('.', 1)[-1]} {params}", str(d.get("packets", "")))
        console.print(rows)
    finally:
        console.print("[bold]5.[/bold] the NSC closes the connection; the NSE unregisters")
        await nsc.close()
        await nse.stop()
    left = 0
    for sw in ctl.clients:
        for entry in await ctl.clients[sw].read_table_entries():
            d = ctl.schema.describe_entry(entry)
            if d["match"].get("label") in labels:  # type: ignore[union-attr]
                left += 1
    iface_left = "nsm0" in (await _run("ip", "netns", "exec", client_host, "ip", "-o", "link"))
    console.print(f"   entries of the connection left on switches: {left}; nsm0 left in {client_host}: {iface_left}")
    verdict = ok and left == 0 and not iface_left
    console.print(f"[bold {'green' if verdict else 'red'}]demo {'passed' if verdict else 'FAILED'}[/]: "
                  f"ping {'ok' if ok else 'failed'}, cleanup {'complete' if left == 0 and not iface_left else 'incomplete'}")
    return verdict


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


def run_demo(topo: Topology, console: Console) -> bool:
    from topologies.lab import Lab, cleanup_stale

    cleanup_stale()
    run_dir = Path(tempfile.mkdtemp(prefix="p4nsm-demo-"))
    settings = Settings.load({"store_path": str(run_dir / "store.sqlite"), "nsm_run_dir": str(run_dir / "nsm")})
    lab = Lab(topo, run_dir)
    console.print(f"[bold]0.[/bold] starting the {topo.name} lab in Mininet ({len(topo.switches)} switches, {len(topo.hosts)} hosts); logs in {run_dir}")
    try:
        lab.start()

        async def main() -> bool:
            ctl = Controller(topo, settings, nsm_address=f"unix://{run_dir / 'nsm.sock'}")
            try:
                return await _demo(ctl, topo, console)
            finally:
                await ctl.stop()

        return asyncio.run(main())
    finally:
        lab.stop()
        console.print("[bold]6.[/bold] lab stopped: switches, hosts and links removed")
