"""The controller against softswitches that behave as Stratum and infrap4d do (`--profile`), over
TLS: it connects (device ids 1.., election id 10, VERIFY_AND_COMMIT), heals a port down through
gNMI port state, and a restarted controller writes nothing.

- `--profile stratum` with TLS: port down healed with probes on and with probes off
  (`probe_interval=0`: gNMI alone);
- `--profile infrap4d` (TLS by default with a client certificate required, no packet I/O:
  PacketOut dropped, no PacketIn): the controller offers its SVID; probes could not work there,
  so it runs with `probe_interval=0` and heals through gNMI.

The controller's topology says `target: softswitch` (the device config is the softswitch's):
what differs is what the switch refuses (ids 0, watch ports on Stratum, RECONCILE_AND_COMMIT),
TLS, and where link liveness comes from.

Fabric: diamond in the root namespace, s1 - s2|s3 - s4, h1 on s1:1 and h4 on s4:1 in namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import uuid
from pathlib import Path

import pytest

from controller.runtime import Controller
from controller.topology import Topology
from tests.e2e.hosts import Host
from tests.e2e.test_heal import exactly_desired, wait_for
from tests.e2e.topology import Net, crosses
from tests.support.fixtures import start_softswitch
from tests.support.settings import settings_for_test
from tests.support.tls import Certs, ClientCert, make_certs

pytestmark = [pytest.mark.root]

CPU_PORT = 255
# (switch, port, switch, port): the diamond
LINKS = [("s1", 2, "s2", 1), ("s2", 2, "s4", 2), ("s1", 3, "s3", 1), ("s3", 2, "s4", 3)]
HOSTS = {"h1": ("s1", 1), "h4": ("s4", 1)}
# Stratum refuses watch ports and infrap4d does not honour them (nor read them back): the
# controller's profiles for those targets write no protection groups, and neither does this one.
SETTINGS = {"keepalive_interval": 0.1, "keepalive_timeout": 1.0, "probe_interval": 0.02, "anti_entropy_interval": 0,
            "fast_failover": False}


@dataclasses.dataclass
class Fabric:
    profile: str
    topo: Topology
    client: ClientCert  # the controller's certificate (infrap4d asks for one)
    ifnames: dict[tuple[str, int], str]  # switch port -> its interface
    hosts: dict[str, Host]
    run_dir: Path


def start_fabric(net: Net, profile: str, certs: Certs, run_dir: Path) -> Fabric:
    hosts, ifnames = net.wire(HOSTS, LINKS)
    client = certs.client("spiffe://p4nsm/controller", f"controller-{profile}")
    # infrap4d: TLS by default, and a client certificate of its CA required
    tls_args = certs.server_args() if profile == "stratum" else [*certs.server_args()[1:], "--grpc-server-cacert",
                                                                   str(certs.ca)]
    switches = []
    for i, name in enumerate(("s1", "s2", "s3", "s4"), start=1):
        ports = sorted(p for (s, p) in ifnames if s == name)
        process = net.stack.enter_context(start_softswitch(
            i, CPU_PORT, [f"{p}@{ifnames[(name, p)]}" for p in ports],
            extra_args=["--profile", profile, *tls_args], channel=lambda addr: certs.channel(addr, client)))
        switches.append({"name": name, "device_id": i, "grpc_addr": process.address, "cpu_port": CPU_PORT,
                         "ports": ports, "tls_ca": str(certs.ca), "tls_server_name": certs.server_name})
    topo = Topology.model_validate({
        "name": f"diamond-{profile}", "switches": switches,
        "links": [{"a": f"{a}:{ap}", "b": f"{b}:{bp}"} for a, ap, b, bp in LINKS],
        "hosts": [{"name": h, "attach": f"{sw}:{p}"} for h, (sw, p) in HOSTS.items()],
    })
    return Fabric(profile, topo, client, ifnames, hosts, run_dir)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module", params=["stratum", "infrap4d"])
def fabric(request, module_net: Net, certs: Certs, tmp_path_factory) -> Fabric:
    return start_fabric(module_net, request.param, certs, tmp_path_factory.mktemp(request.param))


@contextlib.asynccontextmanager
async def controller(fabric: Fabric, store: Path, **overrides):
    identity = {"tls_cert_file": str(fabric.client.cert), "tls_key_file": str(fabric.client.key),
                "tls_ca_file": str(fabric.topo.switches[0].tls_ca)}
    ctl = Controller(fabric.topo, settings_for_test({**SETTINGS, **identity, "store_path": str(store), **overrides}))
    writes: list[int] = []
    for client in ctl.clients.values():
        client.write_listeners.append(lambda c, n, failed, took: writes.append(n))
    ctl.writes = writes  # type: ignore[attr-defined]
    await ctl.start()
    try:
        assert await ctl.wait_ready(30), "switches did not come up over TLS"
        await wait_for(lambda: all(c.known for c in ctl.port_state.values()), 10, "every switch's gNMI sync")
        yield ctl
    finally:
        await ctl.stop()


async def flows(fabric: Fabric, plan, timeout: float = 8.0) -> None:
    """A frame from h1 reaches h4."""
    await crosses(fabric.hosts["h1"], "eth0", fabric.hosts["h4"], "eth0", plan.a.vlan,
                  f"{fabric.profile}-{uuid.uuid4().hex[:6]}", timeout)


def set_up(ifname: str, up: bool) -> None:
    subprocess.run(["ip", "link", "set", ifname, "up" if up else "down"], check=True, capture_output=True)


@pytest.mark.parametrize("probes", [pytest.param(True, id="probes"), pytest.param(False, id="gnmi-only")])
async def test_port_down_heals_through_gnmi_and_a_restart_writes_nothing(fabric: Fabric, probes: bool, caplog) -> None:
    if probes and fabric.profile == "infrap4d":
        pytest.skip("infrap4d has no packet I/O: no probes to run")
    store = fabric.run_dir / f"{uuid.uuid4().hex[:6]}.sqlite"
    overrides = {} if probes else {"probe_interval": 0}
    async with controller(fabric, store, **overrides) as ctl:
        assert bool(ctl.links.links) == probes  # probe_interval 0: nothing probed
        plan = await ctl.fabric.connect("h1", "h4")
        await flows(fabric, plan)
        hop = plan.a_to_b.path.hops[0]
        link = plan.a_to_b.path.links[0]
        ifname = fabric.ifnames[(hop.switch, hop.out_port)]
        await asyncio.to_thread(set_up, ifname, False)
        try:
            await wait_for(lambda: not ctl.fabric.plans[plan.id].crosses(link=link)
                           and ctl.fabric.plans[plan.id].state == "up", 8, "the connection to move off the link")
            assert [r for r in caplog.records if "event=port_down source=gnmi" in r.getMessage()
                    and f"link={link}" in r.getMessage()], "gNMI did not report the port down"
            await flows(fabric, plan)
            assert ctl.fabric.graph.down_links == {link}
        finally:
            await asyncio.to_thread(set_up, ifname, True)
        await wait_for(lambda: link not in ctl.fabric.graph.down_links, 10, "the link to come back")
        await flows(fabric, plan)
        await exactly_desired(ctl)
    # a restarted controller finds the pipeline by cookie and every entry in place: no Write
    async with controller(fabric, store, **overrides) as again:
        assert {sw: c.pipeline_pushes for sw, c in again.clients.items()} == dict.fromkeys(again.clients, 0)
        assert again.fabric.last_reconcile == dict.fromkeys(again.clients, (0, 0, 0))
        assert again.writes == []  # type: ignore[attr-defined]
        await flows(fabric, plan)
        await again.fabric.disconnect(plan.id)
