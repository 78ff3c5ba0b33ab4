"""The NSM API end to end on the diamond lab (Mininet, softswitches, the real controller): an SDK
endpoint in h3 (and h4), SDK clients in h1 (and h2), kernel interfaces, ping.

- ping works across the kernel interfaces the controller made;
- Close removes both interfaces and every entry (read back from every switch);
- refresh keeps a connection alive past its caller's token expiry;
- without refresh it expires, and its interfaces and entries vanish;
- Find with watch sees registrations come and go;
- two endpoints of one service are both used (round robin), and a client heals onto the other
  when its endpoint goes away.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import os
import shutil

import pytest

from controller.nsm.base import clock
from controller.nsm.base.channels import dial, dial_target
from nsm_api import networkservice_pb2, networkservice_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.e2e.nsm_fixtures import (  # noqa: F401
    diamond_lab,
    iface_addresses,
    make_client,
    make_endpoint,
    nsm_controller,
    nsm_settings,
    nsm_test_settings,
    ping,
    ping_before,
    switch_entries,
)

SHORT_TOKEN_S = 6.0

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet, network namespaces)"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)"),
    pytest.mark.timeout(1200)  # includes waiting for another lab on this machine (LAB_WAIT_S),
]


async def eventually(check, timeout: float = 5.0, interval: float = 0.1) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(interval)
    return False


async def test_ping_across_kernel_interfaces_and_close_removes_everything(nsm_controller, make_endpoint, make_client) -> None:
    before = await switch_entries(nsm_controller)
    await make_endpoint("icmp", "h3", "10.60.0.0/24")
    client = make_client()
    conn = await client.request("icmp", "h1", iface="nsm0", give_up_after=10)
    plan = nsm_controller.fabric.plans[conn.path.path_segments[1].id]
    ip = conn.context.ip_context
    # a pair of the endpoint's pool (the first, unless a Request outlived its deadline and was retried)
    assert [ipaddress.ip_interface(a) in ipaddress.ip_network("10.60.0.0/24") for a in (*ip.src_ip_addrs, *ip.dst_ip_addrs)] == [True, True]
    assert iface_addresses("h1", "nsm0") == list(ip.src_ip_addrs)
    assert iface_addresses("h3", plan.labels["b_iface"]) == list(ip.dst_ip_addrs)
    assert await ping("h1", ip.dst_ip_addrs[0].split("/")[0])
    assert await switch_entries(nsm_controller) != before

    await client.close()
    assert nsm_controller.fabric.plans == {}
    assert iface_addresses("h1", "nsm0") is None
    assert iface_addresses("h3", plan.labels["b_iface"]) is None
    assert await switch_entries(nsm_controller) == before


async def test_over_mtls_by_default_and_a_plaintext_client_is_refused(nsm_controller, make_endpoint, make_client) -> None:
    import grpc

    nsm = nsm_controller.nsm
    assert nsm.svid is not None and nsm.svid.spiffe_id == "spiffe://p4nsm/controller"
    await make_endpoint("icmp", "h3", "10.60.0.0/24")  # registers over mTLS, is dialled over mTLS
    async with grpc.aio.insecure_channel(dial_target(nsm.address)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await networkservice_pb2_grpc.NetworkServiceStub(channel).Request(networkservice_pb2.NetworkServiceRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    client = make_client()
    assert client.svid is not None and client.svid.spiffe_id == "spiffe://p4nsm/nsc"
    conn = await client.request("icmp", "h1", iface="nsm0", give_up_after=10)
    assert await ping("h1", conn.context.ip_context.dst_ip_addrs[0].split("/")[0])
    await client.close()
    assert nsm_controller.fabric.plans == {}


async def test_refresh_keeps_the_connection_past_its_expiry(nsm_controller, make_endpoint, make_client) -> None:
    loop = asyncio.get_running_loop()
    await make_endpoint("icmp", "h3", "10.60.0.0/24")
    client = make_client(token_lifetime=3.0)  # the server closes at 3 s - 1 s (request deadline) without refresh
    conn = await client.request("icmp", "h1", iface="nsm0", give_up_after=10)
    first_close = loop.time() + clock.to_seconds(conn.path.path_segments[0].expires) - client.call_timeout - clock.now()
    # past the point where the first Request's connection would have been closed, three refreshes later
    assert await eventually(lambda: client.history.count("refreshed") >= 3 and loop.time() > first_close + 1.0, timeout=15)
    assert conn.path.path_segments[1].id in nsm_controller.fabric.plans
    target = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    assert await eventually(lambda: ping("h1", target), timeout=10)


async def test_without_refresh_it_expires_and_its_entries_vanish(nsm_controller, make_endpoint, make_client) -> None:
    """The server closes an unrefreshed connection at its caller's expiry minus the Request's
    deadline (§7.2): 4 s after the Request was sent with a 6 s token (the deadline is a third of
    it). The ping that shows the path works is made before then, to the address the connection
    was given."""
    loop = asyncio.get_running_loop()
    before = await switch_entries(nsm_controller)
    await make_endpoint("icmp", "h3", "10.60.0.0/24")
    client = make_client(token_lifetime=SHORT_TOKEN_S, refresh=False, heal=False)
    conn = await client.request("icmp", "h1", iface="nsm0", give_up_after=10)
    closes_at = loop.time() + clock.to_seconds(conn.path.path_segments[0].expires) - client.call_timeout - clock.now()
    own = conn.path.path_segments[1].id
    endpoint_side = nsm_controller.fabric.plans[own].labels["b_iface"]
    left = closes_at - loop.time()
    # the endpoint's address as this connection has it: a Request retried after its deadline
    # (a loaded machine) may get another pair than the first of the pool
    peer = conn.context.ip_context.dst_ip_addrs[0].split("/")[0]
    assert await ping_before("h1", peer, closes_at - 0.1), f"no echo from {peer} in the {left:.2f} s the connection had"
    assert own in nsm_controller.fabric.plans  # the echo crossed this connection, not a later one
    assert await eventually(lambda: own not in nsm_controller.fabric.plans, timeout=closes_at - loop.time() + 5)
    assert iface_addresses("h1", "nsm0") is None and iface_addresses("h3", endpoint_side) is None
    assert await switch_entries(nsm_controller) == before


async def test_find_watch_sees_registrations_come_and_go(nsm_controller, make_endpoint) -> None:

    channel = dial(nsm_controller.nsm.address, nsm_controller.nsm.svid)
    stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
    watch = stub.Find(registry_pb2.NetworkServiceEndpointQuery(
        network_service_endpoint=registry_pb2.NetworkServiceEndpoint(network_service_names=["watched"]), watch=True))
    nse = await make_endpoint("watched", "h3", "10.63.0.0/24")
    came = await asyncio.wait_for(watch.read(), 5)
    assert came.network_service_endpoint.name == nse.name and not came.deleted
    assert came.network_service_endpoint.network_service_labels["watched"].labels["p4nsm.io/host"] == "h3"
    await nse.stop()
    went = await asyncio.wait_for(watch.read(), 5)
    assert went.network_service_endpoint.name == nse.name and went.deleted
    watch.cancel()
    await channel.close()


async def test_two_endpoints_are_both_used_and_a_client_heals_onto_the_other(nsm_controller, make_endpoint, make_client) -> None:
    a = await make_endpoint("rr", "h3", "10.60.0.0/24")
    b = await make_endpoint("rr", "h4", "10.61.0.0/24")
    first, second = make_client(), make_client()
    c1 = await first.request("rr", "h1", iface="nsm0", give_up_after=10)
    c2 = await second.request("rr", "h2", iface="nsm0", give_up_after=10)
    assert {c1.network_service_endpoint_name, c2.network_service_endpoint_name} == {a.name, b.name}
    for netns, conn in (("h1", c1), ("h2", c2)):
        assert await ping(netns, conn.context.ip_context.dst_ip_addrs[0].split("/")[0])

    gone = a if c1.network_service_endpoint_name == a.name else b
    await gone.stop()  # the endpoint goes away: its connection goes DOWN, its client reselects
    assert await eventually(lambda: "healed" in first.history, timeout=10), first.history
    healed = first.connection
    assert healed is not None and healed.network_service_endpoint_name != gone.name
    assert await ping("h1", healed.context.ip_context.dst_ip_addrs[0].split("/")[0])
    assert len(nsm_controller.fabric.plans) == 2
