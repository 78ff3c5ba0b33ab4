"""Fixtures of the NSM end-to-end tests: the diamond lab in Mininet, a controller serving the NSM
API on a unix socket, and SDK endpoints and clients that are all stopped after each test.

    from tests.e2e.nsm_fixtures import diamond_lab, nsm_controller, make_endpoint, make_client  # noqa: F401
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from controller.identity import LabCerts
from controller.runtime import Controller
from controller.sdk.client import Client
from controller.sdk.endpoint import Endpoint, EndpointConfig
from controller.settings import REPO_ROOT, Settings
from controller.topology import Topology, load_topology
from lab.certs import as_role, lab_certs
from tests.e2e.switch_kinds import SWITCH_KINDS, controller_overrides, on_kind, require
from tests.support.settings import settings_for_test

DIAMOND = REPO_ROOT / "topologies" / "diamond.yaml"
LAB_WAIT_S = 900.0  # other labs on a shared machine hold the lab lock for minutes


def nsm_test_settings(run_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "store_path": run_dir / f"store-{uuid.uuid4().hex[:6]}.sqlite",
        "nsm_run_dir": run_dir / f"nsm-{uuid.uuid4().hex[:6]}",
        "nsm_endpoint_timeout": 2.0,
        "nsm_retry_interval": 0.1,
    }
    values.update(overrides)
    return settings_for_test({k: str(v) for k, v in values.items()})


class Endpoints:
    """SDK endpoints a test starts; stop_all() after it (conformance uses this too)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.made: list[Endpoint] = []

    async def start(self, nsm_url: str, service: str, host: str, cidr: str, **kw: object) -> Endpoint:
        nse = Endpoint(EndpointConfig(service=service, host=host, cidr=cidr, nsm_url=nsm_url, **kw), self.settings)  # type: ignore[arg-type]
        await nse.start(register_within=10)
        self.made.append(nse)
        return nse

    async def stop_all(self) -> None:
        for nse in self.made:
            await nse.stop()


@pytest.fixture(scope="module", params=SWITCH_KINDS)
def diamond_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, object, Path]]:
    """Diamond of softswitches, or of real BMv2 switches running p4c's build of the program."""
    # Imported here: Mininet is wanted only where a lab is.
    from lab.harness import Lab

    kind = request.param
    require(kind)
    topo = on_kind(load_topology(DIAMOND), kind)
    run_dir = tmp_path_factory.mktemp(f"nsm-lab-{kind}")
    with Lab(topo, run_dir, lock_timeout=LAB_WAIT_S) as lab:
        lab.overrides = controller_overrides(kind, run_dir)  # type: ignore[attr-defined]
        # The switches serve mutual TLS to the lab's controller certificate (nsm_settings gives
        # it); lab.topology names their CA.
        yield lab.topology, lab, run_dir


# The subject here is the NSM API, not failure detection: a switch starved for more than the
# default 150 ms on a loaded machine must not be declared down and take every path with it.
LAB_KEEPALIVE_TIMEOUT_S = 1.0


def nsm_certs(diamond_lab) -> LabCerts:
    """The lab's CA and certificates (as `p4nsm lab` makes them, once per lab): every case
    runs over mTLS, the controller, the endpoints and the clients each with its own."""
    return lab_certs(diamond_lab[2], diamond_lab[0])


@pytest.fixture
def nsm_settings(diamond_lab) -> Settings:
    # These suites are about NSM, not the link rule (tests/e2e/test_heal.py judges that at the
    # defaults): a packet path starved for a moment on a loaded machine must not take links down
    # here, so keepalives prove a switch's ends as long as they prove the switch itself.
    return nsm_test_settings(diamond_lab[2], keepalive_timeout=LAB_KEEPALIVE_TIMEOUT_S,
                             probe_keepalive_proof_delay=LAB_KEEPALIVE_TIMEOUT_S,
                             **nsm_certs(diamond_lab).settings("controller"), **getattr(diamond_lab[1], "overrides", {}))


@pytest.fixture
async def nsm_controller(diamond_lab, nsm_settings: Settings) -> AsyncIterator[Controller]:
    topo, _, _ = diamond_lab
    ctl = Controller(topo, nsm_settings, nsm_address=f"unix://{nsm_settings.nsm_run_dir / 'nsm.sock'}")
    await ctl.start()
    assert await ctl.wait_ready(30), "switches did not come up"
    try:
        yield ctl
    finally:
        for conn_id in list(ctl.fabric.plans):  # whatever a failed test left
            await ctl.fabric.disconnect(conn_id)
        await ctl.stop()


MakeEndpoint = Callable[..., Awaitable[Endpoint]]
MakeClient = Callable[..., Client]


@pytest.fixture
async def make_endpoint(diamond_lab, nsm_controller: Controller, nsm_settings: Settings) -> AsyncIterator[MakeEndpoint]:
    endpoints = Endpoints(as_role(nsm_settings, nsm_certs(diamond_lab), "nse"))
    assert nsm_controller.nsm is not None
    address = nsm_controller.nsm.address

    async def make(service: str, host: str, cidr: str, **kw: object) -> Endpoint:
        return await endpoints.start(address, service, host, cidr, **kw)

    yield make
    await endpoints.stop_all()


@pytest.fixture
async def make_client(diamond_lab, nsm_controller: Controller, nsm_settings: Settings) -> AsyncIterator[MakeClient]:
    made: list[Client] = []
    client_settings = as_role(nsm_settings, nsm_certs(diamond_lab), "nsc")

    def make(**kw: object) -> Client:
        assert nsm_controller.nsm is not None
        settings = kw.pop("settings", client_settings)
        client = Client(nsm_controller.nsm.address, settings, **kw)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        if "closed" not in client.history:
            try:
                await client.close()  # of an expired connection: the server answers OK
            except Exception:  # the test may have broken it on purpose
                pass


async def ping(netns: str, address: str, count: int = 3) -> bool:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", address,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait() == 0


async def ping_before(netns: str, address: str, deadline: float) -> bool:
    """One echo answered before `deadline` (event-loop time), trying again until then: for a
    connection that lives only so long, a fixed count of pings would race its end."""
    loop = asyncio.get_running_loop()
    while (left := deadline - loop.time()) > 0.05:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", netns, "ping", "-c", "1", "-W", str(max(1, int(left))), address,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        if await proc.wait() == 0:
            return loop.time() < deadline
    return False


def iface_addresses(netns: str, name: str) -> list[str] | None:
    """The addresses of `name` in `netns`, or None when there is no such interface."""
    out = subprocess.run(["ip", "-n", netns, "-br", "addr", "show", "dev", name], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    fields = out.stdout.split()
    return [f for f in fields[2:] if "/" in f]


async def switch_entries(ctl: Controller) -> dict[str, set[bytes]]:
    """Every table entry of every switch, read from the switches."""
    out = {}
    for name, client in ctl.clients.items():
        out[name] = {e.SerializeToString(deterministic=True) for e in await client.read_table_entries()}
    return out
