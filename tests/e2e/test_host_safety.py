"""The host side never touches what it did not make (issue 12, item 4), on real namespaces.

The host layer (controller.host.kernel_iface, called in this process on scratch namespaces):
- an existing interface that p4nsm did not make, or made for another connection, is refused
  and left as it was, and remove_iface leaves it alone too;
- the owner's mark survives a restart: another process recognises the interface as its own;
- a call that fails at any step (the kernel's own refusals, or the test seam for the steps
  the kernel has no natural refusal for) leaves the namespace as it was: read back with
  pyroute2, no link, address, route or filter added or lost;
- with `exclusive`, an address or route overlapping another interface's is refused.

Through the controller's NSM API on the diamond lab (Mininet, softswitches, SDK endpoints):
- a Request naming the host's uplink, or another connection's interface, is ALREADY_EXISTS
  naming it, and the uplink or the victim's connection is intact;
- an endpoint answering a default route or a route outside the service is refused, and so is
  one overlapping the host's own subnet; nothing is left in either namespace or on a switch;
- a Request that fails while routes are being set leaves nothing in either namespace.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.host import kernel_iface, vlan_emu
from controller.identity import lab_settings, load_svid
from controller.nsm.base.channels import dial
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tokens import Signer, TokenSource
from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request
from controller.settings import Settings
from nsm_api import connectioncontext_pb2, networkservice_pb2_grpc
from tests.conformance.nsm_support import nsc_request
from tests.e2e.lab_fixtures import scratch_netns, veth_pair  # noqa: F401
from tests.e2e.nsm_fixtures import (  # noqa: F401
    diamond_lab,
    make_client,
    make_endpoint,
    nsm_controller,
    nsm_settings,
    ping,
    switch_entries,
)

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

Snapshot = tuple[frozenset[Any], ...]


def snapshot(ns: str) -> Snapshot:
    """Everything of the netns a host-side change could add or take: links (name, alias, flags,
    MTU), addresses, main-table routes, and the bpf filters on every link's ingress hook. Read
    with iproute2: pyroute2 would fork this process, and a fork where gRPC threads run aborts."""
    def ip_json(*args: str) -> list[dict[str, Any]]:
        out = subprocess.run(["ip", "-j", "-n", ns, *args], check=True, capture_output=True, text=True).stdout
        return json.loads(out or "[]")

    links = ip_json("link", "show")
    names = [link["ifname"] for link in links]
    return (
        frozenset((link["ifname"], link.get("ifalias"), "UP" in link["flags"], link["mtu"]) for link in links),
        frozenset((a["ifname"], f"{i['local']}/{i['prefixlen']}") for a in ip_json("addr", "show") for i in a["addr_info"]),
        frozenset((r.get("dev"), r["dst"], r.get("gateway"), r.get("protocol"))
                  for family in ("-4", "-6") for r in ip_json(family, "route", "show", "table", "main")),
        frozenset((name, line.strip()) for name in names for line in subprocess.run(
            ["tc", "-n", ns, "filter", "show", "dev", name, "ingress"], capture_output=True, text=True).stdout.splitlines()
            if line.strip().startswith("filter")),
    )


async def snapshots(*namespaces: str) -> list[Snapshot]:
    return [await asyncio.to_thread(snapshot, ns) for ns in namespaces]


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


def _link_names(ns: str) -> set[str]:
    return {link[0] for link in snapshot(ns)[0]}


def _refused(call: Callable[[], object]) -> BaseException:
    """What `call` raised; the test fails when it raised nothing (it went ahead)."""
    with pytest.raises((kernel_iface.HostIfaceError, ValueError)) as caught:
        call()
    return caught.value


# --- the host layer -----------------------------------------------------------------------------

def test_an_interface_the_host_has_is_refused_and_kept(veth_pair: tuple[str, str, str, str]) -> None:
    ns, uplink, _, _ = veth_pair
    _ip(ns, "addr", "add", "10.0.0.4/24", "dev", uplink)
    _ip(ns, "link", "add", "victim0", "type", "veth", "peer", "name", "victim1")
    _ip(ns, "addr", "add", "192.168.7.1/24", "dev", "victim0")
    before = snapshot(ns)
    for name in (uplink, "victim0"):  # the uplink is also the parent: the defect deleted it
        exc = _refused(functools.partial(kernel_iface.ensure_vlan_iface, ns, uplink, 100, name, ["10.60.0.2/32"], []))
        assert type(exc).__name__ == "IfaceExists" and repr(name) in str(exc) and "host's own" in str(exc)
        assert kernel_iface.remove_iface(ns, name) is False
    assert snapshot(ns) == before


def test_another_connections_interface_is_refused_and_kept(veth_pair: tuple[str, str, str, str]) -> None:
    ns, uplink, _, _ = veth_pair
    kernel_iface.ensure_vlan_iface(ns, uplink, 100, "nsm0", ["10.60.0.2/32"], [("10.60.0.1/32", None)], owner="victim")
    before = snapshot(ns)
    exc = _refused(lambda: kernel_iface.ensure_vlan_iface(ns, uplink, 200, "nsm0", ["10.61.0.2/32"], [],
                                                          owner="attacker"))
    assert type(exc).__name__ == "IfaceExists" and "another connection's" in str(exc)
    assert kernel_iface.remove_iface(ns, "nsm0", owner="attacker") is False
    assert kernel_iface.remove_iface(ns, "nsm0") is False  # the controller's direct connections' mark is not it either
    assert snapshot(ns) == before
    assert kernel_iface.remove_iface(ns, "nsm0", owner="victim") is True
    assert "nsm0" not in _link_names(ns) and vlan_emu.inner_name("nsm0") not in _link_names(ns)


def test_the_mark_is_recognised_by_another_process(veth_pair: tuple[str, str, str, str]) -> None:
    """A controller that restarts finds its own interface by the mark in the kernel, and only
    that one: another process makes it, this one converges it (same link) and removes it."""
    ns, uplink, _, _ = veth_pair
    made = subprocess.run(
        [sys.executable, "-c", "import sys; from controller.host.kernel_iface import ensure_vlan_iface as e;"
         f"print(e({ns!r}, {uplink!r}, 100, 'nsm0', ['10.60.0.2/32'], [('10.60.0.1/32', None)], owner='conn-1'))"],
        capture_output=True, text=True, check=True, cwd=os.getcwd())
    index = int(made.stdout.strip())
    assert kernel_iface.ensure_vlan_iface(ns, uplink, 100, "nsm0", ["10.60.0.4/32"], [("10.60.0.3/32", None)],
                                          owner="conn-1") == index
    assert kernel_iface.remove_iface(ns, "nsm0", owner="conn-1") is True


FRESH_STEPS = ["link", "mark", "filters", "mtu", "address", "up", "route"]
REFRESH_STEPS = ["mtu", "address", "up", "route"]


@pytest.mark.parametrize("step", FRESH_STEPS)
def test_a_new_interface_failing_at_any_step_leaves_nothing(veth_pair: tuple[str, str, str, str], step: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    ns, uplink, _, _ = veth_pair
    before = snapshot(ns)
    monkeypatch.setattr(kernel_iface, "fail_step", step)
    exc = _refused(lambda: kernel_iface.ensure_vlan_iface(
        ns, uplink, 100, "nsm0", ["10.60.0.2/32", "fd60::2/128"], [("10.60.0.1/32", None), ("10.61.0.0/24", "10.60.0.1")],
        mtu=1400, owner="conn-1", mode="emulated"))
    assert f"injected failure at {step}" in str(exc)
    assert snapshot(ns) == before


@pytest.mark.parametrize("step", REFRESH_STEPS)
def test_a_refresh_failing_at_any_step_puts_back_what_was_there(veth_pair: tuple[str, str, str, str], step: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ns, uplink, _, _ = veth_pair
    kernel_iface.ensure_vlan_iface(ns, uplink, 100, "nsm0", ["10.60.0.2/32"], [("10.60.0.1/32", None)],
                                   mtu=1400, owner="conn-1", mode="emulated")
    _ip(ns, "link", "set", "nsm0", "down")  # so that "up" has something to change
    before = snapshot(ns)
    monkeypatch.setattr(kernel_iface, "fail_step", step)
    exc = _refused(lambda: kernel_iface.ensure_vlan_iface(
        ns, uplink, 100, "nsm0", ["10.60.0.4/32"], [("10.60.0.3/32", None)], mtu=1300, owner="conn-1", mode="emulated"))
    assert f"injected failure at {step}" in str(exc)
    assert snapshot(ns) == before


@pytest.mark.parametrize(("addresses", "routes", "kernel_says"), [
    # the defect of the issue: the first route stayed, with its interface
    (["10.60.0.2/32"], [("10.60.0.0/25", None), ("10.61.0.0/24", "10.99.9.9")], "unreachable"),
    (["10.60.0.2/32", "10.60.0.2/32"], [], "exists"),
], ids=["route-without-a-way", "address-twice"])
def test_a_kernel_refusal_part_way_leaves_nothing(veth_pair: tuple[str, str, str, str], addresses: list[str],
                                                  routes: list[tuple[str, str | None]], kernel_says: str) -> None:
    ns, uplink, _, _ = veth_pair
    before = snapshot(ns)
    exc = _refused(lambda: kernel_iface.ensure_vlan_iface(ns, uplink, 100, "nsm0", addresses, routes))
    assert kernel_says in str(exc).lower()
    assert snapshot(ns) == before


def test_a_route_another_interface_has_is_not_taken_over(veth_pair: tuple[str, str, str, str]) -> None:
    ns, uplink, _, _ = veth_pair
    _ip(ns, "route", "add", "10.62.0.0/24", "dev", uplink)
    before = snapshot(ns)
    exc = _refused(lambda: kernel_iface.ensure_vlan_iface(ns, uplink, 100, "nsm0", ["10.60.0.2/32"],
                                                          [("10.62.0.0/24", None)]))
    assert "exists" in str(exc).lower()
    assert snapshot(ns) == before


@pytest.mark.parametrize(("addresses", "routes", "field"), [
    (["10.60.0.2/32"], [("10.0.0.0/24", None)], "routes[0]"),  # the host's own subnet through the connection
    (["10.0.0.9/32"], [], "addresses[0]"),
    (["10.60.0.2/32"], [("10.60.0.3/32", None)], "routes[0]"),  # another connection's address
    (["10.60.0.2/32"], [("10.63.1.0/24", None)], "routes[0]"),  # more specific than a route of the host
])
def test_exclusive_refuses_what_overlaps_the_hosts_addresses_and_routes(
        veth_pair: tuple[str, str, str, str], addresses: list[str], routes: list[tuple[str, str | None]],
        field: str) -> None:
    ns, uplink, _, _ = veth_pair
    _ip(ns, "addr", "add", "10.0.0.4/24", "dev", uplink)
    _ip(ns, "route", "add", "10.63.0.0/16", "dev", uplink)
    _ip(ns, "route", "add", "default", "dev", uplink)  # a default route overlaps everything and is no conflict
    kernel_iface.ensure_vlan_iface(ns, uplink, 100, "other0", ["10.60.0.3/32"], [("10.60.0.4/32", None)], owner="other")
    before = snapshot(ns)
    exc = _refused(lambda: kernel_iface.ensure_vlan_iface(ns, uplink, 200, "nsm0", addresses, routes,
                                                          owner="conn-1", exclusive=True))
    assert type(exc).__name__ == "AddressConflict" and str(exc).startswith(f"{field}: ")
    assert snapshot(ns) == before
    # the SDK's pairs: one per connection, apart from every other
    kernel_iface.ensure_vlan_iface(ns, uplink, 200, "nsm0", ["10.60.0.6/32"], [("10.60.0.5/32", None)],
                                   owner="conn-1", exclusive=True)
    # and a refresh of the same connection is no conflict with itself
    kernel_iface.ensure_vlan_iface(ns, uplink, 200, "nsm0", ["10.60.0.6/32"], [("10.60.0.5/32", None)],
                                   owner="conn-1", exclusive=True)


# --- through the NSM API on the diamond lab -------------------------------------------------------

lab = pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)")


class Hostile(Element):
    """What a hostile endpoint answers: its SDK answer with routes of its own choosing."""

    def __init__(self, src_routes: list[connectioncontext_pb2.Route] | None = None,
                 dst_routes: list[connectioncontext_pb2.Route] | None = None) -> None:
        self.src_routes = src_routes or []
        self.dst_routes = dst_routes or []

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        ip = req.connection.context.ip_context
        ip.src_routes.extend(self.src_routes)
        ip.dst_routes.extend(self.dst_routes)
        return await nxt.request(req, ctx)


async def _hostile_endpoint(make_endpoint, host: str, **routes: list[connectioncontext_pb2.Route]) -> None:
    nse = await make_endpoint("icmp", host, "10.60.0.0/24")
    # after the SDK's own elements (its address pair): the answer the controller reads
    nse.chain.elements = (*nse.chain.elements, Hostile(**routes))


async def _request(ctl, iface: str = "", netns: str = "h1") -> grpc.aio.AioRpcError:
    """A hand-made Request from the lab's NSC, over mTLS with its certificate and a token it
    signed, as a real client sends: what it is refused with is the host side's answer."""
    req = nsc_request("icmp", netns)
    if iface:
        req.mechanism_preferences[0].parameters["name"] = iface
    certs = Path(ctl.settings.tls_cert_file).parent  # the lab's certificate directory
    nsc = load_svid(Settings.model_validate({**ctl.settings.model_dump(), **lab_settings(certs, "nsc")}))
    assert nsc is not None
    token = TokenSource.of("", 60.0, Signer.of(nsc)).issue(ctl.settings.nsm_spiffe_id)
    async with dial(ctl.nsm.address, nsc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await networkservice_pb2_grpc.NetworkServiceStub(channel).Request(
                req, timeout=20, metadata=Credentials(*token).as_metadata())
    return caught.value


def _route(prefix: str, next_hop: str = "") -> connectioncontext_pb2.Route:
    return connectioncontext_pb2.Route(prefix=prefix, nextHop=next_hop)


@lab
async def test_a_request_naming_the_hosts_uplink_is_refused_and_the_uplink_kept(nsm_controller, make_endpoint) -> None:
    await make_endpoint("icmp", "h3", "10.60.0.0/24")
    before, entries = await snapshots("h1", "h3"), await switch_entries(nsm_controller)
    err = await _request(nsm_controller, iface="h1-eth0")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
    assert err.details().startswith("connection.mechanism.parameters['name']: ") and "'h1-eth0'" in err.details()
    assert await snapshots("h1", "h3") == before
    assert nsm_controller.fabric.plans == {} and await switch_entries(nsm_controller) == entries


@lab
async def test_a_second_connection_cannot_take_a_victims_interface(nsm_controller, make_endpoint, make_client) -> None:
    await make_endpoint("icmp", "h3", "10.60.0.0/24")
    victim = make_client()
    conn = await victim.request("icmp", "h1", iface="nsm0", give_up_after=10)
    peer = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    before = await snapshots("h1")
    err = await _request(nsm_controller, iface="nsm0")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "'nsm0'" in err.details(), err.details()
    assert await snapshots("h1") == before and list(nsm_controller.fabric.plans) == [conn.path.path_segments[1].id]
    assert await ping("h1", peer)


@lab
@pytest.mark.parametrize(("routes", "code", "field"), [
    # [0] is the SDK's own route to the peer; the endpoint's additions follow
    ({"src_routes": [_route("0.0.0.0/0")]}, grpc.StatusCode.PERMISSION_DENIED, "src_routes[1].prefix"),
    ({"src_routes": [_route("0.0.0.0/1"), _route("128.0.0.0/1")]}, grpc.StatusCode.PERMISSION_DENIED, "src_routes[1].prefix"),
    ({"dst_routes": [_route("192.0.2.0/24")]}, grpc.StatusCode.PERMISSION_DENIED, "dst_routes[1].prefix"),
    ({"src_routes": [_route("10.0.0.0/24")]}, grpc.StatusCode.FAILED_PRECONDITION, "src_routes[1]"),  # h1's own subnet
], ids=["default", "two-halves", "outside", "host-subnet"])
async def test_an_endpoint_answer_the_service_does_not_allow_leaves_nothing(
        nsm_controller, make_endpoint, routes, code, field) -> None:
    await _hostile_endpoint(make_endpoint, "h3", **routes)
    before, entries = await snapshots("h1", "h3"), await switch_entries(nsm_controller)
    err = await _request(nsm_controller)
    assert err.code() == code, err.details()
    assert f"{field}" in err.details() and "icmp-h3-" in err.details()  # the field, and the endpoint that answered it
    assert await snapshots("h1", "h3") == before
    assert nsm_controller.fabric.plans == {} and await switch_entries(nsm_controller) == entries


@lab
@pytest.mark.parametrize("side", ["src_routes", "dst_routes"])
async def test_a_request_failing_while_routes_are_set_leaves_nothing_in_either_namespace(
        nsm_controller, make_endpoint, side) -> None:
    """A route the kernel refuses (its next hop is on no link), after one it took, on either
    side: the side that failed and the side that worked are both undone."""
    await _hostile_endpoint(make_endpoint, "h3", **{side: [_route("10.60.8.0/24"), _route("10.60.9.0/24", "10.60.200.1")]})
    before, entries = await snapshots("h1", "h3"), await switch_entries(nsm_controller)
    err = await _request(nsm_controller)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert await snapshots("h1", "h3") == before
    assert nsm_controller.fabric.plans == {} and await switch_entries(nsm_controller) == entries



@lab
async def test_a_direct_connection_carries_its_own_mark_and_leaves_nothing(nsm_controller) -> None:
    """`p4nsm connect`: the interfaces of a direct connection are marked as that connection's
    (not as the controller's in general), carry traffic, and go with it."""
    before = await snapshots("h1", "h3")
    made = await nsm_controller.connect_hosts("h1", "h3")
    for ns, iface in (("h1", made["a_iface"]), ("h3", made["b_iface"])):
        aliases = [alias or "" for name, alias, *_ in snapshot(ns)[0] if name == iface]
        assert aliases and aliases[0].endswith(kernel_iface.mark(made["id"])), (ns, iface, aliases)
    assert await ping("h1", made["b_addr"].split("/")[0])
    assert await nsm_controller.disconnect(made["id"])
    assert await snapshots("h1", "h3") == before
