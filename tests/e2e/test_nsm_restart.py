"""A restart of the controller as a user sees it (issue 10, "Restart without loss"): the diamond
lab over mTLS, `p4nsm run` as a real process on free ports, an SDK endpoint
(`p4nsm nse --service S --netns h4`) and client (`p4nsm nsc request --service S --netns h1`), and a
sequence-numbered UDP stream of 500 packets/s between h1 and h4 over their connection. The
controller is killed (SIGKILL, or SIGTERM) and started again on the same store:

- not one packet of the stream is lost;
- the client's monitor stream shows no DOWN for the connection (it breaks, and the client
  requests again with the same path, NSM's way, since its liveness check still gets answers);
- the restarted controller writes no entity to any switch (its reconcile finds every desired
  entry; its write counters stay 0 through the adoption and the refresh after it), and the
  entries read back from the switches are those of before;
- that Request adopts the same connection: same id in the store, the same kernel interfaces
  (same ifindex: none re-created), and the client's next refresh succeeds too.

Softswitch only: the subject is the controller's restart, which is the same whatever the
target; the target's side of a restart (pipeline kept by cookie) has its own suites.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from controller.commands.inspect import read_entries
from controller.fabric.store import Store
from controller.identity import LabCerts
from controller.nsm.base import clock
from controller.nsm.elements.timeout import EXPIRY_KIND, StoredExpiry
from controller.runtime import Controller
from controller.sdk.client import Client
from controller.sdk.liveness import ping_liveness
from controller.settings import REPO_ROOT, Settings
from controller.topology import Topology, load_topology
from lab.certs import as_role, lab_certs
from nsm_api import networkservice_pb2
from tests.e2e.controller_process import P4NSM, ControllerProcess, LoggedProcess, on_free_ports, write_topology
from tests.e2e.nsm_fixtures import (
    DIAMOND,
    LAB_KEEPALIVE_TIMEOUT_S,
    LAB_WAIT_S,
    Endpoints,
    iface_addresses,
    nsm_test_settings,
    ping,
    switch_entries,
)
from tests.e2e.switch_kinds import SOFTSWITCH, require
from tests.support.settings import settings_for_test

pytestmark = [pytest.mark.root, pytest.mark.timeout(420)]

SERVICE = "restart-svc"
CIDR = "10.60.0.0/24"
PORT = 5555
RATE = 500  # packets per second
STREAM_S = 14.0  # 7,000 packets, as in the trials
KILL_AFTER_S = 2.0  # of streaming, before the controller is killed
DOWN_FOR_S = 2.0  # between the controller's death and its new start
# Long enough that a connection outlives the controller's absence by far (it is refreshed at a
# third of it); short enough that the test sees a refresh after the restart.
TOKEN_LIFETIME_S = 24.0
WAIT_S = 90.0  # for anything to come up on a loaded two-core machine
SHORT_LIFETIME_S = 12.0  # a connection whose client goes away: its deadline comes within the test
REQUESTS_OK = 'p4nsm_nsm_requests_total{code="OK"}'


@dataclass
class RestartLab:
    topo: Topology
    topology_path: Path
    certs: LabCerts


@pytest.fixture(scope="module")
def restart_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartLab]:
    # Imported here: Mininet is wanted only where a lab is.
    from lab.harness import Lab

    require(SOFTSWITCH)
    run_dir = tmp_path_factory.mktemp("nsm-restart-lab")
    # Free switch ports: the default ones (50001-50004) belong to other labs on this machine.
    with Lab(on_free_ports(load_topology(DIAMOND)), run_dir, lock_timeout=LAB_WAIT_S) as lab:
        yield RestartLab(lab.topology, write_topology(lab.topology, run_dir / "diamond-free-ports.yaml"),
                         lab_certs(run_dir, lab.topology))


def ifindex(netns: str, name: str) -> int:
    out = subprocess.run(["ip", "-j", "-n", netns, "link", "show", "dev", name], check=True, capture_output=True, text=True)
    return int(json.loads(out.stdout)[0]["ifindex"])


async def entries(lab: RestartLab) -> dict[str, set[tuple[str, str, str]]]:
    """Every table entry of every switch, read from the switches (counters left out)."""
    settings = settings_for_test(lab.certs.settings("controller"))
    out = {}
    for sw in lab.topo.switches:
        rows = await read_entries(lab.topo, settings, sw.name)
        out[sw.name] = {(str(r["table"]), str(r["match"]), str(r.get("params", ""))) for r in rows}
    return out


async def metrics(url: str, certs: LabCerts) -> dict[str, float]:
    """The controller's Prometheus samples, name{labels} -> value, over its HTTPS."""
    context = ssl.create_default_context(cafile=str(certs.dir / "ca.crt"))
    context.check_hostname = False  # the certificate names a SPIFFE id, not 127.0.0.1
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as resp:
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


def stored_ids(store_path: Path) -> set[str]:
    store = Store(store_path)
    try:
        return {p.id for p in store.all()}
    finally:
        store.close()


def stored_label(store_path: Path, conn_id: str, key: str) -> str:
    store = Store(store_path)
    try:
        plan = store.get(conn_id)
        assert plan is not None, f"connection {conn_id} is not stored"
        return plan.labels[key]
    finally:
        store.close()


async def streaming_for(send: LoggedProcess, seconds: float) -> None:
    """The scenario's own timing (how long the stream runs before the fault, how long the
    controller stays down), not a wait for something to happen: the stream must still run."""
    await asyncio.sleep(seconds)
    assert send.pid is not None, "the stream ended before the scenario's next step"


async def refreshed_after_adoption(ctl: ControllerProcess, certs: LabCerts) -> dict[str, float]:
    """The restarted controller's samples once it answered a second Request OK (the client's
    heal Request that adopted the connection, then its refresh)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TOKEN_LIFETIME_S + WAIT_S
    while True:
        samples = await metrics(ctl.metrics_url, certs)
        ok = samples.get(REQUESTS_OK, 0)
        if ok >= 2:
            return samples
        assert loop.time() < deadline, f"no refresh after the adoption: {ok:.0f} Requests answered OK"
        await asyncio.sleep(0.5)


def address_after(log: list[str], label: str) -> str:
    """An address the NSC's table shows in the row `label`."""
    for line in log:
        if m := re.search(rf"\b{label}\b\W+(\d+\.\d+\.\d+\.\d+)", line):
            return m[1]
    raise AssertionError(f"no {label!r} in the client's output:\n{''.join(log)}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_restart_loses_no_packet_writes_nothing_and_adopts(restart_lab: RestartLab, sig: int, tmp_path: Path) -> None:
    lab = restart_lab
    nsm_run = tmp_path / "nsm"
    env = {"P4NSM_NSM_RUN_DIR": str(nsm_run), "P4NSM_NSM_TOKEN_LIFETIME": str(TOKEN_LIFETIME_S)}
    # The subject is the restart, not the link rule: a packet path starved for a moment on a
    # loaded machine must not take links down here (as in the other NSM suites).
    ctl = ControllerProcess(lab.topology_path, tmp_path, env=env, sets={
        **lab.certs.settings("controller"), "nsm_run_dir": nsm_run,
        "keepalive_timeout": LAB_KEEPALIVE_TIMEOUT_S, "probe_keepalive_proof_delay": LAB_KEEPALIVE_TIMEOUT_S})
    certs = ["--nsm-address", ctl.nsm_address, "--certs", str(lab.certs.dir)]
    nse, nsc = LoggedProcess("nse", tmp_path, env), LoggedProcess("nsc", tmp_path, env)
    streams = {"PYTHONPATH": str(REPO_ROOT)}
    recv, send = LoggedProcess("recv", tmp_path, streams), LoggedProcess("send", tmp_path, streams)
    try:
        await ctl.start()
        nse.launch([str(P4NSM), "nse", "--service", SERVICE, "--netns", "h4", "--cidr", CIDR, *certs])
        await nse.wait_for(lambda: bool(nse.logged("Ctrl-C to stop")), WAIT_S, "registered")
        nsc.launch([str(P4NSM), "nsc", "request", "--service", SERVICE, "--netns", "h1", "--name", "nsm0", *certs])
        await nsc.wait_for(lambda: bool(nsc.logged("kept refreshed")), WAIT_S, "connected")
        (conn_id,) = stored_ids(ctl.store_path)
        endpoint_addr = address_after(nsc.lines, "endpoint address")
        endpoint_iface = stored_label(ctl.store_path, conn_id, "b_iface")
        before = {"h1": ifindex("h1", "nsm0"), "h4": ifindex("h4", endpoint_iface)}
        entries_before = await entries(lab)

        recv.launch(["ip", "netns", "exec", "h4", sys.executable, "-m", "tests.e2e.udp_stream", "recv", endpoint_addr,
                     str(PORT)], stdin=True)
        await recv.wait_for(lambda: bool(recv.logged("ready")), WAIT_S, "bound")
        send.launch(["ip", "netns", "exec", "h1", sys.executable, "-m", "tests.e2e.udp_stream", "send", endpoint_addr,
                     str(PORT), "--rate", str(RATE), "--seconds", str(STREAM_S)])
        await streaming_for(send, KILL_AFTER_S)

        assert await ctl.kill(sig) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        await nsc.wait_for(lambda: bool(nsc.logged("down: monitor")), WAIT_S, "told its monitor stream broke")
        await streaming_for(send, DOWN_FOR_S)
        await ctl.start()
        assert ctl.reconciled == {sw.name: (0, 0, 0) for sw in lab.topo.switches}, ctl.reconciled
        await nsc.wait_for(lambda: bool(nsc.logged("event=healed")), WAIT_S, "healed")

        await send.wait_for(lambda: bool(send.logged('"sent"')), STREAM_S + WAIT_S, "done sending")
        recv.close_stdin()
        await recv.wait_for(lambda: bool(recv.logged('"received"')), WAIT_S, "done counting")
        sent = json.loads(send.logged('"sent"')[-1])
        received = json.loads(recv.logged('"received"')[-1])
        samples = await refreshed_after_adoption(ctl, lab.certs)

        assert sent == {"sent": int(RATE * STREAM_S), "errors": 0}
        assert received["received"] == sent["sent"], f"lost {sent['sent'] - received['received']} packets: {received}"
        assert not nsc.logged("with state DOWN"), "".join(nsc.lines)
        assert nsc.logged("reselect=False") and not nsc.logged("reselect=True"), "".join(nsc.lines)
        assert total(samples, "p4nsm_switch_writes_total") == 0, {k: v for k, v in samples.items() if "writes" in k}
        assert await entries(lab) == entries_before
        assert stored_ids(ctl.store_path) == {conn_id}
        assert {"h1": ifindex("h1", "nsm0"), "h4": ifindex("h4", endpoint_iface)} == before
        assert ctl.logged(f"connection={conn_id} event=host_side_adopted")
        print(f"signal={signal.Signals(sig).name} sent={sent['sent']} received={received['received']} "
              f"max_gap_ms={received['max_gap_ms']} reconcile={ctl.reconciled} "
              f"writes={total(samples, 'p4nsm_switch_writes_total'):.0f}")
    finally:
        for proc in (send, recv, ctl):
            if proc is ctl:  # the client closes its connection and the endpoint unregisters, on Ctrl-C
                if ctl.pid is None and nsc.pid is not None:
                    # failed while it was down: up again, or the client's Close reaches nobody and
                    # its interfaces are left to fail the next tests
                    with contextlib.suppress(Exception):
                        await ctl.start()
                await nsc.stop(signal.SIGINT)
                await nse.stop(signal.SIGINT)
            await proc.stop()


# --- in-process controllers over the same store: what the restarted one does with what it finds ---

@dataclass
class Run:
    """Two controllers in turn over one store and one NSM socket, with SDK parts in this process."""

    lab: RestartLab
    settings: Settings
    ctl: Controller | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.settings.nsm_run_dir / 'nsm.sock'}"

    def as_role(self, role: str, **overrides: object) -> Settings:
        return as_role(self.settings, self.lab.certs, role).model_copy(update=overrides)

    async def start(self) -> Controller:
        self.ctl = Controller(self.lab.topo, self.settings, nsm_address=self.address)
        await self.ctl.start()
        assert await self.ctl.wait_ready(WAIT_S), "switches did not come up"
        return self.ctl

    async def stop(self) -> None:
        ctl, self.ctl = self.ctl, None
        if ctl is not None:
            await ctl.stop()


@pytest.fixture
async def run(restart_lab: RestartLab, tmp_path: Path) -> AsyncIterator[Run]:
    settings = nsm_test_settings(tmp_path, keepalive_timeout=LAB_KEEPALIVE_TIMEOUT_S,
                                 probe_keepalive_proof_delay=LAB_KEEPALIVE_TIMEOUT_S,
                                 **restart_lab.certs.settings("controller"))
    made = Run(restart_lab, settings)
    try:
        yield made
    finally:
        if made.ctl is not None:  # whatever a failed test left
            for conn_id in list(made.ctl.fabric.plans):
                await made.ctl.fabric.disconnect(conn_id)
        await made.stop()


async def connected(run: Run, endpoints: Endpoints, *, lifetime: float = TOKEN_LIFETIME_S, heal: bool = False,
                    liveness: bool = False) -> tuple[Client, str]:
    await endpoints.start(run.address, SERVICE, "h4", CIDR, name="nse-h4")
    client = Client(run.address, run.as_role("nsc"), refresh=heal, heal=heal, token_lifetime=lifetime,
                    liveness=ping_liveness("h1") if liveness else None)
    conn = await client.request(SERVICE, "h1", iface="nsm0", give_up_after=WAIT_S)
    assert run.ctl is not None
    (conn_id,) = run.ctl.fabric.plans
    assert await ping("h1", conn.context.ip_context.dst_ip_addrs[0].split("/")[0])
    return client, conn_id


async def test_a_failed_request_for_an_adopted_connection_removes_nothing(run: Run) -> None:
    """After a restart, a Request for the stored connection that fails in the host side (its
    interface name is another, whose VLAN the stored interface holds) leaves the connection as
    the earlier run made it: interfaces, entries, store row; traffic flows on."""
    endpoints = Endpoints(run.as_role("nse"))
    await run.start()
    client, conn_id = await connected(run, endpoints)
    try:
        await run.stop()
        ctl = await run.start()
        plan = ctl.fabric.plans[conn_id]
        ifaces = {"h1": ifindex("h1", "nsm0"), "h4": ifindex("h4", plan.labels["b_iface"])}
        before = await switch_entries(ctl)
        assert client.connection is not None
        req = networkservice_pb2.NetworkServiceRequest(connection=client.connection)
        req.connection.mechanism.parameters["name"] = "other0"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stub.Request(req, timeout=client.call_timeout, metadata=client._metadata())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
        assert ctl.fabric.plans.get(conn_id) == plan and ctl.store.get(conn_id) is not None
        assert {"h1": ifindex("h1", "nsm0"), "h4": ifindex("h4", plan.labels["b_iface"])} == ifaces
        assert iface_addresses("h1", "other0") is None
        assert await switch_entries(ctl) == before
        assert await ping("h1", client.connection.context.ip_context.dst_ip_addrs[0].split("/")[0])
        # and the client's own Request, as it was, adopts it
        # (the call's deadline as the SDK's own: the server closes at token expiry minus it)
        adopted = await client.stub.Request(networkservice_pb2.NetworkServiceRequest(connection=client.connection),
                                            timeout=client.call_timeout, metadata=client._metadata())
        assert adopted.id == client.connection.id and conn_id in ctl.nsm.begin.states  # type: ignore[union-attr]
        assert {"h1": ifindex("h1", "nsm0"), "h4": ifindex("h4", plan.labels["b_iface"])} == ifaces
        assert await switch_entries(ctl) == before
    finally:
        await client.close()
        await endpoints.stop_all()


async def test_a_client_gone_while_down_expires_at_its_stored_deadline_and_is_removed_everywhere(run: Run) -> None:
    """Nobody re-requests the stored connection after the restart: it is closed at the deadline
    its last Request had (the expiry of the path's tokens), not a guess from the restart, and
    nothing of it is left: entries read back from the switches, interfaces, store row, record."""
    endpoints = Endpoints(run.as_role("nse"))
    ctl = await run.start()
    empty = await switch_entries(ctl)
    client, conn_id = await connected(run, endpoints, lifetime=SHORT_LIFETIME_S)
    plan = ctl.fabric.plans[conn_id]
    deadline = StoredExpiry.model_validate_json(ctl.store.get_record(EXPIRY_KIND, conn_id) or "").expires
    try:
        await run.stop()
        await client.replicas.close()  # gone: it never refreshes or closes
        ctl = await run.start()
        assert conn_id in ctl.fabric.plans, "removed before its deadline"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (deadline - clock.now()) + WAIT_S
        while conn_id in ctl.fabric.plans:
            assert loop.time() < give_up, "the stored connection outlived its deadline"
            await asyncio.sleep(0.1)
        assert clock.now() >= deadline - 0.5, "removed before its stored deadline"
        assert clock.now() < deadline + 0.5 * SHORT_LIFETIME_S + 5, "removed long after its stored deadline"
        assert ctl.store.get(conn_id) is None and ctl.store.get_record(EXPIRY_KIND, conn_id) is None
        assert iface_addresses("h1", "nsm0") is None and iface_addresses("h4", plan.labels["b_iface"]) is None
        assert await switch_entries(ctl) == empty
    finally:
        await endpoints.stop_all()


async def test_an_endpoint_gone_while_down_makes_the_client_reselect_another(run: Run) -> None:
    """The endpoint died while the controller was down; its registration is still stored (not
    yet expired). The client's Requests with the same path are refused by a controller that
    serves (the endpoint does not answer), so the SDK reselects, NSM's way: the stored
    connection is removed first (its interface on the dead endpoint's host with it) and the new
    one goes to the other endpoint; traffic flows again."""
    endpoints = Endpoints(run.as_role("nse"))
    await run.start()
    dying = await endpoints.start(run.address, SERVICE, "h4", CIDR, name="nse-h4")
    await endpoints.start(run.address, SERVICE, "h3", "10.61.0.0/24", name="nse-h3")
    client = Client(run.address, run.as_role("nsc"), token_lifetime=TOKEN_LIFETIME_S, liveness=ping_liveness("h1"))
    try:
        conn = await client.request(SERVICE, "h1", iface="nsm0", endpoint="nse-h4", give_up_after=WAIT_S)
        assert run.ctl is not None
        (conn_id,) = run.ctl.fabric.plans
        old_iface = run.ctl.fabric.plans[conn_id].labels["b_iface"]
        assert await ping("h1", conn.context.ip_context.dst_ip_addrs[0].split("/")[0])
        await run.stop()
        await dying.stop()  # its Unregister fails: the controller is down, the registration stays stored
        ctl = await run.start()
        assert "nse-h4" in ctl.nsm.endpoints.entries  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while client.connection is None or client.connection.network_service_endpoint_name != "nse-h3" \
                or "healed" not in client.history:
            assert loop.time() < deadline, f"the client did not reselect: {client.history}"
            await asyncio.sleep(0.1)
        healed = client.connection
        assert ctl.fabric.plans[conn_id].b.host == "h3"
        assert iface_addresses("h4", old_iface) is None, "the dead endpoint's side was left behind"
        assert await ping("h1", healed.context.ip_context.dst_ip_addrs[0].split("/")[0])
    finally:
        await client.close()
        await endpoints.stop_all()
