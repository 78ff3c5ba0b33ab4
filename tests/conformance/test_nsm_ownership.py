"""Authorization per client over real gRPC: a connection belongs to the identity that made it
(Close, refresh and reselect from another identity are PERMISSION_DENIED and leave it as it
was; MonitorConnections shows a caller its own connections, an operator all of them, even
after a restart of the controller), a registry name to its registrant (no hijack, no
Unregister by another identity), and NetworkService registrations expire and are bounded.

Identities are what a plaintext NSM client sends (the `sub` of its per-RPC token) or, where a
test serves over TLS, the SPIFFE id of its certificate, which wins over any token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.fabric.connections import Fabric
from controller.identity import Svid, channel_credentials, init_lab_certs, load_svid, server_credentials
from controller.nsm.base.channels import dial_target
from controller.nsm.base.tokens import TokenSource
from controller.nsm.elements.fabric_connect import OWNER, FabricConnect
from controller.nsm.elements.monitor import MonitorHub, MonitorServicer
from controller.nsm.server import NsmServer
from controller.runtime import Controller
from controller.settings import Settings
from controller.topology import load_topology
from nsm_api import (
    connection_pb2,
    connection_pb2_grpc,
    networkservice_pb2,
    networkservice_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from tests.conformance.nsm_support import DIAMOND, Recorder, creds, nsc_request, nsm_settings, refresh_of
from tests.e2e.nsm_fixtures import Endpoints
from tests.support.settings import settings_for_test
from tests.unit.fabric_rig import Rig

pytestmark = pytest.mark.timeout(120)

VICTIM = "spiffe://test/victim"
ATTACKER = "spiffe://test/attacker"
OPERATOR = "spiffe://test/operator"
QUIET = 1.0  # how long a stream must stay silent to show nothing was sent to it (s)


class Served:
    def __init__(self, server: NsmServer, recorder: Recorder | None, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.recorder = recorder
        self.ns = networkservice_pb2_grpc.NetworkServiceStub(channel)
        self.monitor = connection_pb2_grpc.MonitorConnectionStub(channel)
        self.nse_registry = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
        self.ns_registry = registry_pb2_grpc.NetworkServiceRegistryStub(channel)


async def serve(fabric: Fabric, settings: Settings, dataplane: list | None) -> AsyncIterator[Served]:
    server = NsmServer(fabric, settings, dataplane=dataplane)
    address = await server.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(dial_target(address))
    try:
        yield Served(server, dataplane[0] if dataplane and isinstance(dataplane[0], Recorder) else None, channel)
    finally:
        await channel.close()
        await server.stop(0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return nsm_settings(tmp_path, nsm_operator_ids=f" {OPERATOR} ,spiffe://test/other-operator")


@pytest.fixture
def controller(settings: Settings):
    ctl = Controller(load_topology(DIAMOND), settings)
    yield ctl
    ctl.store.close()


@pytest.fixture
async def looped(controller: Controller, settings: Settings) -> AsyncIterator[Served]:
    async for served in serve(controller.fabric, settings, [Recorder()]):
        yield served


@pytest.fixture
async def endpoints(settings: Settings) -> AsyncIterator[Endpoints]:
    started = Endpoints(settings)
    yield started
    await started.stop_all()


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


class Events:
    """A server stream read with deadlines; a read that timed out stays pending for the next
    one (cancelling it would cancel the call)."""

    def __init__(self, call: object) -> None:
        self.call = call
        self._pending: asyncio.Future | None = None

    async def next(self, timeout: float = 5.0) -> Any:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.call.read())
        event = await asyncio.wait_for(asyncio.shield(self._pending), timeout)
        self._pending = None
        return event

    async def silent(self, seconds: float = QUIET) -> None:
        """Nothing arrives for `seconds`."""
        try:
            event = await self.next(seconds)
        except TimeoutError:
            return
        pytest.fail(f"unexpected event {event}")

    def cancel(self) -> None:
        self.call.cancel()


def reselect_of(conn: connection_pb2.Connection) -> networkservice_pb2.NetworkServiceRequest:
    req = refresh_of(conn)
    req.connection.state = connection_pb2.RESELECT_REQUESTED
    req.connection.network_service_endpoint_name = ""
    req.connection.ClearField("mechanism")
    req.mechanism_preferences.extend(nsc_request().mechanism_preferences)
    return req


def forged_of(conn: connection_pb2.Connection) -> networkservice_pb2.NetworkServiceRequest:
    """A Request that names the victim's ids on a path of the attacker's own making."""
    req = nsc_request(conn_id=conn.id)
    req.connection.path.path_segments[0].id = conn.id
    req.connection.path.path_segments.add(name="p4nsm", id=conn.path.path_segments[1].id)
    req.connection.path.path_segments[0].token = TokenSource(ATTACKER, 60).issue()[0]
    return req


# --- connections ----------------------------------------------------------------------------------

async def test_another_identity_cannot_close_refresh_or_reselect_a_connection(looped: Served, endpoints: Endpoints) -> None:
    a = await endpoints.start(looped.server.address, "icmp", "h3", "10.60.0.0/24")
    b = await endpoints.start(looped.server.address, "icmp", "h4", "10.62.0.0/24")  # a reselect would find it
    victim = await looped.ns.Request(nsc_request(expires_in=None), metadata=creds(VICTIM))
    own = victim.path.path_segments[1].id
    watch = Events(looped.monitor.MonitorConnections(connection_pb2.MonitorScopeSelector(), metadata=creds(VICTIM)))
    initial = await watch.next()
    assert list(initial.connections) == [own]

    attacks = {
        "close": lambda: looped.ns.Close(victim, metadata=creds(ATTACKER)),
        "close without a token": lambda: looped.ns.Close(victim),
        "refresh with a 0.5 s expiry": lambda: looped.ns.Request(refresh_of(victim), metadata=creds(ATTACKER, 0.5)),
        "reselect": lambda: looped.ns.Request(reselect_of(victim), metadata=creds(ATTACKER)),
        "a forged path": lambda: looped.ns.Request(forged_of(victim)),
    }
    for name, attack in attacks.items():
        err = await refused(attack())
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (name, err.details())
        assert err.details().startswith("connection.id") and VICTIM in err.details(), err.details()

    # Intact: never closed, still at its endpoint, and its expiry is still the victim's own (the
    # refused 0.5 s refresh would have closed it by now): its monitor stream saw nothing at all.
    await watch.silent()
    assert looped.recorder is not None and looped.recorder.closes == []
    assert looped.recorder.refreshes == []
    assert own in looped.server.begin.states and len(a.begin.states) + len(b.begin.states) == 1
    again = await looped.ns.Request(refresh_of(victim), metadata=creds(VICTIM))
    assert again.network_service_endpoint_name == victim.network_service_endpoint_name
    assert (await watch.next()).type == connection_pb2.UPDATE
    await looped.ns.Close(again, metadata=creds(VICTIM))
    assert (await watch.next()).type == connection_pb2.DELETE
    assert looped.recorder.closes == [(own, "")]
    watch.cancel()


async def test_the_owner_reselects_and_an_operator_may_close(looped: Served, endpoints: Endpoints) -> None:
    await endpoints.start(looped.server.address, "icmp", "h3", "10.60.0.0/24")
    await endpoints.start(looped.server.address, "icmp", "h4", "10.62.0.0/24")
    first = await looped.ns.Request(nsc_request(expires_in=None), metadata=creds(VICTIM))
    second = await looped.ns.Request(reselect_of(first), metadata=creds(VICTIM))
    assert second.id == first.id and second.network_service_endpoint_name != first.network_service_endpoint_name
    await looped.ns.Close(second, metadata=creds(OPERATOR))
    assert looped.server.begin.states == {}


# --- monitor --------------------------------------------------------------------------------------

async def test_monitor_shows_a_caller_only_its_own_connections_and_an_operator_all(looped: Served, endpoints: Endpoints) -> None:
    await endpoints.start(looped.server.address, "icmp", "h3", "10.60.0.0/24")
    theirs = await looped.ns.Request(nsc_request(expires_in=None), metadata=creds(VICTIM))
    mine = await looped.ns.Request(nsc_request(expires_in=None), metadata=creds(ATTACKER))
    everything = connection_pb2.MonitorScopeSelector()
    by_their_ids = connection_pb2.MonitorScopeSelector(path_segments=[connection_pb2.PathSegment(id=theirs.id)])

    attacker = Events(looped.monitor.MonitorConnections(everything, metadata=creds(ATTACKER)))
    initial = await attacker.next()
    assert list(initial.connections) == [mine.path.path_segments[1].id]
    aimed = Events(looped.monitor.MonitorConnections(by_their_ids, metadata=creds(ATTACKER)))
    assert len((await aimed.next()).connections) == 0
    anonymous = Events(looped.monitor.MonitorConnections(everything))
    assert len((await anonymous.next()).connections) == 0
    operator = Events(looped.monitor.MonitorConnections(everything, metadata=creds(OPERATOR)))
    assert len((await operator.next()).connections) == 2

    # Later events: the victim's refresh and Close reach the operator, never the attacker.
    await looped.ns.Request(refresh_of(theirs), metadata=creds(VICTIM))
    assert (await operator.next()).type == connection_pb2.UPDATE
    await looped.ns.Close(theirs, metadata=creds(VICTIM))
    assert (await operator.next()).type == connection_pb2.DELETE
    await looped.ns.Request(refresh_of(mine), metadata=creds(ATTACKER))
    seen = await attacker.next()
    assert seen.type == connection_pb2.UPDATE and list(seen.connections) == [mine.path.path_segments[1].id]
    await attacker.silent(0.3)
    await aimed.silent(0.3)
    for stream in (attacker, aimed, anonymous, operator):
        stream.cancel()


# --- after a restart ------------------------------------------------------------------------------

async def test_a_stored_connection_is_still_its_makers_after_a_restart(tmp_path: Path, settings: Settings,
                                                                        endpoints: Endpoints) -> None:
    """The owner travels in the plan's labels through the store: a new controller over the same
    store refuses another identity's claim on the connection and gives it back to its maker."""
    rig = Rig([("s1", 2, "s2", 1), ("s2", 2, "s4", 2)], {"h1": ("s1", 1), "h3": ("s4", 1)})
    await rig.start()
    async for first in serve(rig.fabric, settings, [FabricConnect(rig.fabric, MonitorHub("p4nsm"))]):
        await endpoints.start(first.server.address, "icmp", "h3", "10.60.0.0/24", name="nse-h3")
        victim = await first.ns.Request(nsc_request(expires_in=None), metadata=creds(VICTIM))
        own = victim.path.path_segments[1].id
        assert rig.store.get(own).labels[OWNER] == VICTIM  # type: ignore[union-attr]
        await endpoints.stop_all()
    restarted = Fabric(rig.graph, {"h1": ("s1", 1), "h3": ("s4", 1)}, rig.clients, rig.store, rig.settings)
    restarted.load()
    assert restarted.plans[own].labels[OWNER] == VICTIM
    endpoints.made.clear()
    async for second in serve(restarted, settings, [Recorder()]):
        await endpoints.start(second.server.address, "icmp", "h3", "10.60.0.0/24", name="nse-h3")
        for attack in (second.ns.Request(refresh_of(victim), metadata=creds(ATTACKER)),
                       second.ns.Request(forged_of(victim))):
            err = await refused(attack)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
        assert own not in second.server.begin.states
        adopted = await second.ns.Request(refresh_of(victim), metadata=creds(VICTIM))
        assert adopted.id == victim.id and own in second.server.begin.states
        err = await refused(second.ns.Close(adopted, metadata=creds(ATTACKER)))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


# --- registry: names --------------------------------------------------------------------------------

def _nse(name: str, url: str) -> registry_pb2.NetworkServiceEndpoint:
    return registry_pb2.NetworkServiceEndpoint(
        name=name, network_service_names=["icmp"], url=url,
        network_service_labels={"icmp": registry_pb2.NetworkServiceLabels(labels={"p4nsm.io/host": "h3"})})


async def _find_nse(served: Served, name: str) -> list[registry_pb2.NetworkServiceEndpoint]:
    query = registry_pb2.NetworkServiceEndpointQuery(network_service_endpoint=registry_pb2.NetworkServiceEndpoint(name=name))
    return [r.network_service_endpoint async for r in served.nse_registry.Find(query)]


async def test_an_endpoint_name_cannot_be_hijacked_or_unregistered_by_another_identity(looped: Served,
                                                                                      endpoints: Endpoints) -> None:
    real = await endpoints.start(looped.server.address, "icmp", "h3", "10.60.0.0/24")
    hijack = _nse(real.name, "unix:///tmp/attacker.sock")
    err = await refused(looped.nse_registry.Register(hijack, metadata=creds(ATTACKER)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and err.details().startswith("name")
    assert real.tokens.subject in err.details()
    err = await refused(looped.nse_registry.Register(hijack))  # no token at all
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await refused(looped.nse_registry.Unregister(hijack, metadata=creds(ATTACKER)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [n.url for n in await _find_nse(looped, real.name)] == [real.url]
    # Requests still go to the real endpoint.
    resp = await looped.ns.Request(nsc_request(expires_in=None), metadata=creds(VICTIM))
    assert resp.network_service_endpoint_name == real.name

    # A name of one's own is one's own to refresh and remove; an operator may remove any.
    await looped.nse_registry.Register(_nse("mine", "unix:///tmp/mine.sock"), metadata=creds(ATTACKER))
    await looped.nse_registry.Register(_nse("mine", "unix:///tmp/mine2.sock"), metadata=creds(ATTACKER))
    await looped.nse_registry.Unregister(_nse("mine", ""), metadata=creds(ATTACKER))
    assert await _find_nse(looped, "mine") == []
    await looped.nse_registry.Unregister(_nse(real.name, ""), metadata=creds(OPERATOR))
    assert await _find_nse(looped, real.name) == []


async def test_a_network_service_cannot_be_replaced_or_removed_by_another_identity(looped: Served) -> None:
    ns = registry_pb2.NetworkService(name="icmp", payload="ETHERNET")
    await looped.ns_registry.Register(ns, metadata=creds(VICTIM))
    evil = registry_pb2.NetworkService(name="icmp", payload="IP", matches=[registry_pb2.Match(
        routes=[registry_pb2.Destination(destination_selector={"app": "attacker"})])])
    for call in (looped.ns_registry.Register(evil, metadata=creds(ATTACKER)),
                 looped.ns_registry.Unregister(evil, metadata=creds(ATTACKER))):
        err = await refused(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and VICTIM in err.details()
    kept = looped.server.services.entries["icmp"]
    assert kept.payload == "ETHERNET" and not kept.matches


async def test_over_mtls_the_certificate_names_the_caller_whatever_token_it_sends(tmp_path: Path,
                                                                               settings: Settings,
                                                                               controller: Controller) -> None:
    """The registry and the monitor take the caller from its certificate: a client holding an
    attacker's certificate gets nothing by sending the victim's token."""
    lab = init_lab_certs(tmp_path / "lab", extra={"victim": "victim", "attacker": "attacker"})

    def svid(name: str) -> Svid:
        loaded = load_svid(settings_for_test(lab.settings(name), env=False))
        assert loaded is not None
        return loaded

    nsm = NsmServer(controller.fabric, settings, dataplane=[Recorder()])
    server = grpc.aio.server()
    registry_pb2_grpc.add_NetworkServiceEndpointRegistryServicer_to_server(nsm.endpoints, server)
    connection_pb2_grpc.add_MonitorConnectionServicer_to_server(MonitorServicer(nsm.hub, nsm.access), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(svid("controller")))
    await server.start()
    victim_token = creds(lab.spiffe_id("victim"))
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(svid("victim"))) as channel:
            stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
            await stub.Register(_nse("nse-v", "unix:///tmp/v.sock"))
        assert nsm.endpoints.owners["nse-v"] == lab.spiffe_id("victim")
        conn = nsc_request().connection
        conn.id = "c1"
        nsm.hub.update(conn, lab.spiffe_id("victim"))
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(svid("attacker"))) as channel:
            stub = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
            err = await refused(stub.Register(_nse("nse-v", "unix:///tmp/a.sock"), metadata=victim_token))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED and lab.spiffe_id("attacker") in err.details()
            monitor = connection_pb2_grpc.MonitorConnectionStub(channel)
            stream = Events(monitor.MonitorConnections(connection_pb2.MonitorScopeSelector(), metadata=victim_token))
            assert len((await stream.next()).connections) == 0
            stream.cancel()
        assert nsm.endpoints.entries["nse-v"].url == "unix:///tmp/v.sock"
    finally:
        await server.stop(0)
        await nsm.stop(0)


# --- registry: expiry and bounds --------------------------------------------------------------------

def ns_watch(served: Served, name: str) -> Events:
    return Events(served.ns_registry.Find(registry_pb2.NetworkServiceQuery(
        network_service=registry_pb2.NetworkService(name=name), watch=True)))


async def refreshing(served: Served, nse: registry_pb2.NetworkServiceEndpoint) -> None:
    """Register `nse` again and again, as the SDK does, well within the expiration."""
    while True:
        await served.nse_registry.Register(nse, metadata=creds(VICTIM))
        await asyncio.sleep(0.15)


async def test_network_services_expire_unless_an_endpoint_offers_them(controller: Controller, tmp_path: Path) -> None:
    settings = nsm_settings(tmp_path, nsm_registry_default_expiration=0.5)
    async for served in serve(controller.fabric, settings, [Recorder()]):
        icmp, lonely = ns_watch(served, "icmp"), ns_watch(served, "lonely")
        await served.ns_registry.Register(registry_pb2.NetworkService(name="icmp"), metadata=creds(VICTIM))
        await served.ns_registry.Register(registry_pb2.NetworkService(name="lonely"), metadata=creds(ATTACKER))

        refresher = asyncio.create_task(refreshing(served, _nse("nse-1", "unix:///x")))
        try:
            for stream in (icmp, lonely):
                assert not (await stream.next()).deleted
            went = await lonely.next()
            assert went.deleted and went.network_service.name == "lonely"  # no endpoint offers it
            await icmp.silent(3 * 0.5)  # three expirations: its endpoint keeps it
        finally:
            refresher.cancel()
        went = await icmp.next()
        assert went.deleted and went.network_service.name == "icmp"  # the endpoint expired, then it
        assert served.server.services.entries == {} and served.server.services.owners == {}
        assert served.server.endpoints.entries == {}
        for stream in (icmp, lonely):
            stream.cancel()


async def test_registrations_are_bounded_in_count_and_size(controller: Controller, tmp_path: Path) -> None:
    settings = nsm_settings(tmp_path, nsm_registry_max_entries=3, nsm_registry_max_bytes=4096)
    async for served in serve(controller.fabric, settings, [Recorder()]):
        for i in range(3):
            await served.ns_registry.Register(registry_pb2.NetworkService(name=f"s{i}"), metadata=creds(VICTIM))
        err = await refused(served.ns_registry.Register(registry_pb2.NetworkService(name="s3"), metadata=creds(VICTIM)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and err.details().startswith("name")
        await served.ns_registry.Register(registry_pb2.NetworkService(name="s0", payload="ETHERNET"), metadata=creds(VICTIM))
        for i in range(3):
            await served.nse_registry.Register(_nse(f"n{i}", "unix:///x"), metadata=creds(VICTIM))
        err = await refused(served.nse_registry.Register(_nse("n3", "unix:///x"), metadata=creds(VICTIM)))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # Each field within its own limits, the whole far beyond the registration's.
        big = registry_pb2.NetworkService(name="s1", matches=[registry_pb2.Match(
            source_selector={f"k{j}": "v" * 200 for j in range(30)}) for _ in range(10)])
        assert big.ByteSize() > 4096
        err = await refused(served.ns_registry.Register(big, metadata=creds(VICTIM)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("network_service")
        assert not served.server.services.entries["s1"].matches
        assert len(served.server.services.entries) == len(served.server.endpoints.entries) == 3


def test_operator_ids_and_the_any_policy_come_from_settings(tmp_path: Path) -> None:
    from controller.nsm.base.access import Access, operator_ids

    settings = nsm_settings(tmp_path, nsm_operator_ids=f"{OPERATOR}, ,x")
    assert operator_ids(settings) == {OPERATOR, "x"}
    conn = connection_pb2.Connection()
    owner = Access.of(settings)
    assert owner.connection(VICTIM, VICTIM, conn) and owner.connection(OPERATOR, VICTIM, conn)
    assert not owner.connection(ATTACKER, VICTIM, conn) and not owner.monitor("", VICTIM, conn)
    anyone = Access.of(nsm_settings(tmp_path, nsm_ownership_policy="any"))
    assert anyone.connection(ATTACKER, VICTIM, conn) and anyone.registration(ATTACKER, VICTIM, conn)

