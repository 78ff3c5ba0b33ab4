"""gNMI port state without root: the controller's PortStateClient against the softswitch's own
gNMI server (in-process grpc.aio, over ports whose carrier the test sets), and the rules of
heal/port_state.py on a fabric of fake switches."""

from __future__ import annotations

import asyncio
import socket

import pytest

from controller.fabric.connections import ConnectError
from controller.gnmi.port_state import PortStateClient
from controller.heal.port_state import PortStateJudge
from softswitch.gnmi import GnmiServer
from softswitch.ports import Ports
from softswitch.server import SoftSwitchServer
from tests.support.fixtures import free_port
from tests.support.settings import settings_for_test
from tests.support.waiting import until
from tests.unit.fabric_rig import Rig
from tests.unit.test_web_view import rig  # noqa: F401 (the fixture: diamond, heal rounds on)

FAST = {"reconnect_backoff_min": 0.05, "reconnect_backoff_max": 0.2, "rpc_timeout": 2.0, "gnmi_up_hold_down": 0.2}


class Switch:
    """A softswitch gRPC server (P4Runtime + gNMI) over ports with no interfaces behind them."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ports = Ports(1, [(2, "eth-two"), (3, "eth-three")])
        self.gnmi = GnmiServer(self.ports)
        self.server = SoftSwitchServer(1, 255, on_commit=lambda *_: None, on_packet_out=lambda *_: None)

    async def start(self) -> None:
        await self.server.start(self.address, None, self.gnmi.add_to)

    async def stop(self) -> None:
        self.gnmi.close()
        await self.server.stop(0)
        for port in self.ports.by_number.values():
            if port.sock is not None:
                port.sock.close()

    def carrier(self, number: int, up: bool) -> None:
        port = self.ports.by_number[number]
        # as ports.py does when netlink reports the change
        port.sock = port.sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        port.up = up
        self.ports._carrier_changed(port)


async def test_client_syncs_reports_changes_and_is_unknown_while_the_stream_is_broken() -> None:
    address = f"127.0.0.1:{free_port()}"
    sw = Switch(address)
    await sw.start()
    sw.carrier(2, True)
    client = PortStateClient("s1", address, None, settings_for_test(FAST, env=False))
    reports: list[tuple[str, int, bool]] = []
    known: list[bool] = []
    client.port_listeners.append(lambda s, p, up: reports.append((s, p, up)))
    client.known_listeners.append(lambda s, k: known.append(k))
    client.start()
    try:
        await until(lambda: client.known, "the initial sync")
        # every port once, mapped by ifindex; the one without an interface is not UP
        assert sorted(reports) == [("s1", 2, True), ("s1", 3, False)] and known == [True]
        reports.clear()
        sw.carrier(2, False)
        await until(lambda: reports, "the DOWN")
        assert reports == [("s1", 2, False)]
        await sw.stop()
        await until(lambda: not client.known, "the broken stream to make the state unknown")
        assert known == [True, False]
        reports.clear()
        sw = Switch(address)
        await sw.start()
        sw.carrier(2, True)
        await until(lambda: client.known, "a new sync after the retry")
        assert sorted(reports) == [("s1", 2, True), ("s1", 3, False)] and known == [True, False, True]
    finally:
        await client.stop()
        await sw.stop()


class FakeProbes:
    """What the judge uses of the link monitor (LinkMonitor.links, LinkMonitor.mark_down)."""

    def __init__(self, probed: set[str]) -> None:
        self.links = dict.fromkeys(probed)
        self.marked: list[str] = []

    async def mark_down(self, name: str, reason: str) -> None:
        self.marked.append(name)


def judge(rig: Rig, probed: set[str]) -> tuple[PortStateJudge, FakeProbes]:
    """The judge over the rig's fabric (diamond of fake switches, heal rounds running)."""
    probes = FakeProbes(probed)
    rig.settings = rig.settings.model_copy(update=FAST)
    j = PortStateJudge(rig.fabric, probes, rig.settings)  # type: ignore[arg-type]
    return j, probes


async def test_a_port_down_takes_its_link_down_at_once_and_a_probeless_link_returns_after_the_hold(rig) -> None:
    j, probes = judge(rig, probed=set())
    link = rig.link("s1", "s2")
    j.on_port("s1", 2, False)
    assert link in rig.graph.down_links and probes.marked == []
    j.on_port("s1", 2, True)
    assert link in rig.graph.down_links  # held down
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await until(lambda: link not in rig.graph.down_links, "the hold-down to end")
    assert loop.time() - t0 >= rig.settings.gnmi_up_hold_down * 0.9
    # a DOWN during the hold starts it again
    j.on_port("s1", 2, False)
    j.on_port("s1", 2, True)
    j.on_port("s1", 2, False)
    await asyncio.sleep(rig.settings.gnmi_up_hold_down * 1.5)  # the fault: longer than one hold
    assert link in rig.graph.down_links
    j.stop()


async def test_on_a_probed_link_gnmi_down_tells_the_probes_and_they_decide_the_return(rig) -> None:
    link = rig.link("s1", "s2")
    j, probes = judge(rig, probed={link})
    j.on_port("s2", 1, False)
    await until(lambda: probes.marked == [link], "the link monitor to be told")
    assert link in rig.graph.down_links
    await j.on_probe_verdict(rig.graph.links[link], False)  # what mark_down makes the monitor say
    j.on_port("s2", 1, True)
    await asyncio.sleep(rig.settings.gnmi_up_hold_down * 1.5)  # no hold-down on a probed link...
    assert link in rig.graph.down_links  # ...the probes have not said so
    await j.on_probe_verdict(rig.graph.links[link], True)
    assert link not in rig.graph.down_links


async def test_unknown_port_state_places_no_new_path_and_tears_nothing_down(rig) -> None:
    j, _ = judge(rig, probed=set())
    plan = await rig.fabric.connect("h1", "h4")
    via = plan.a_to_b.path.switches[1]
    other = "s3" if via == "s2" else "s2"
    j.on_known(via, False)
    j.on_known(other, False)
    await rig.rerouter.settled()
    assert rig.fabric.plans[plan.id].a_to_b.path == plan.a_to_b.path  # kept
    with pytest.raises(ConnectError):
        await rig.fabric.connect("h1", "h4")  # both middles unknown: no new path
    j.on_known(other, True)
    second = await rig.fabric.connect("h1", "h4")
    assert other in second.a_to_b.path.switches
    j.on_known(via, True)
    assert not rig.graph.unknown_links
