"""Read-only looks at switches, without arbitration: Read and Capabilities need no primary."""

from __future__ import annotations

import asyncio

import grpc
from finsy.proto import p4r, p4r_grpc

from controller.identity import Svid, load_svid
from controller.p4rt.client import open_channel, switch_tls
from controller.p4rt.schema import P4Schema
from controller.settings import Settings
from controller.topology import Topology


async def probe_switches(topo: Topology, timeout: float = 1.0, client: Svid | None = None) -> list[dict]:
    """Capabilities of each switch, over TLS where the topology names its CA (offering `client`)."""
    async def probe(sw) -> dict:
        row = {"name": sw.name, "device_id": sw.device_id, "address": sw.grpc_addr, "target": str(sw.target),
               "fabric_ports": topo.fabric_ports(sw.name), "edge_ports": topo.edge_ports(sw.name)}
        async with open_channel(sw.grpc_addr, switch_tls(sw, client), []) as channel:
            try:
                caps = await p4r_grpc.P4RuntimeStub(channel).Capabilities(p4r.CapabilitiesRequest(), timeout=timeout)
                row["p4runtime"] = caps.p4runtime_api_version
            except grpc.aio.AioRpcError as e:
                row["p4runtime"] = f"unreachable ({e.code().name})"
        return row

    return list(await asyncio.gather(*(probe(s) for s in topo.switches)))


async def read_entries(topo: Topology, settings: Settings, switch: str, timeout: float = 5.0) -> list[dict]:
    sw = topo.switch(switch)
    schema = P4Schema.from_file(settings.p4info_path)
    request = p4r.ReadRequest(device_id=sw.device_id, entities=[p4r.Entity(table_entry=p4r.TableEntry(counter_data=p4r.CounterData()))])
    rows = []
    async with open_channel(sw.grpc_addr, switch_tls(sw, load_svid(settings)), []) as channel:
        async for reply in p4r_grpc.P4RuntimeStub(channel).Read(request, timeout=timeout):
            for entity in reply.entities:
                d = schema.describe_entry(entity.table_entry)
                row: dict[str, object] = dict(d)  # the same keys, match and params flattened to text
                row["table"] = d["table"].rsplit(".", 1)[-1]
                row["match"] = " ".join(f"{k}={v}" for k, v in d["match"].items())
                if "params" in d:
                    row["params"] = " ".join(f"{k}={v}" for k, v in d["params"].items())
                rows.append(row)
    return rows
