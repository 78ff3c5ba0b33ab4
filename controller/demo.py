"""The lab demo: a topology in Mininet, the controller, one connection, ping across it, its path,
its entries read back from the switches, then everything removed and cleaned up."""

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
    hosts = [h.name for h in topo.hosts]
    a, b = hosts[0], hosts[-1]
    await ctl.start()
    console.print(f"[bold]1.[/bold] controller up; waiting for {len(ctl.clients)} switches to arbitrate, take the pipeline and reconcile")
    if not await ctl.wait_ready(60):
        console.print("[red]switches did not come up[/red]")
        return False
    console.print(f"[bold]2.[/bold] connecting {a} and {b}")
    conn = await ctl.connect_hosts(a, b)
    table = Table("field", "value", title="connection")
    for k, v in conn.items():
        table.add_row(k, str(v))
    console.print(table)
    console.print(f"[bold]3.[/bold] ping {conn['b_addr'].split('/')[0]} from {a} across the fabric")
    ok, out = await _ping(a, conn["b_addr"].split("/")[0])
    console.print(out.strip().splitlines()[-2] if out.strip() else out)
    plan = ctl.fabric.plans[conn["id"]]
    console.print("[bold]4.[/bold] entries of this connection, read back from each switch on its path")
    rows = Table("switch", "table", "match", "action", "packets")
    labels = {leg.label for leg in plan.legs()}
    for sw in dict.fromkeys(plan.a_to_b.path.switches + (plan.a_to_b_backup.path.switches if plan.a_to_b_backup else ())):
        for entry in await ctl.clients[sw].read_table_entries(counters=True):
            d = ctl.schema.describe_entry(entry)
            match = d["match"]
            mine = match.get("label") in labels or (  # type: ignore[union-attr]
                d["table"].endswith("edge_classify") and d.get("params", {}).get("label") in labels)  # type: ignore[union-attr,operator]
            if mine:
                rows.add_row(sw, str(d["table"]).rsplit(".", 1)[-1], str(match), f"{d.get('action', '').rsplit('.', 1)[-1]} {d.get('params', '')}",
                             str(d.get("packets", "")))
    console.print(rows)
    console.print(f"[bold]5.[/bold] closing the connection")
    await ctl.disconnect(conn["id"])
    left = 0
    for sw in ctl.clients:
        for entry in await ctl.clients[sw].read_table_entries():
            d = ctl.schema.describe_entry(entry)
            if d["match"].get("label") in labels:  # type: ignore[union-attr]
                left += 1
    console.print(f"   entries of the connection left on switches: {left}")
    verdict = ok and left == 0
    console.print(f"[bold {'green' if verdict else 'red'}]demo {'passed' if verdict else 'FAILED'}[/]: ping {'ok' if ok else 'failed'}, cleanup {'complete' if left == 0 else 'incomplete'}")
    return verdict


def run_demo(topo: Topology, console: Console) -> bool:
    from topologies.lab import Lab, cleanup_stale

    cleanup_stale()
    run_dir = Path(tempfile.mkdtemp(prefix="p4nsm-demo-"))
    settings = Settings.load({"store_path": str(run_dir / "store.sqlite")})
    lab = Lab(topo, run_dir)
    console.print(f"[bold]0.[/bold] starting the {topo.name} lab in Mininet ({len(topo.switches)} switches, {len(topo.hosts)} hosts); logs in {run_dir}")
    try:
        lab.start()

        async def main() -> bool:
            ctl = Controller(topo, settings)
            try:
                return await _demo(ctl, topo, console)
            finally:
                await ctl.stop()

        return asyncio.run(main())
    finally:
        lab.stop()
        console.print("[bold]6.[/bold] lab stopped: switches, hosts and links removed")
