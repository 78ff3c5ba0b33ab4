"""The NSM API over real gRPC, driven with hand-built protobuf messages (docs/nsm_contract.md):
path and ids, refresh, expiry, monitor, endpoint selection,
the registries, health, and a burst that is served or refused cleanly.

Two servers: one with the data plane short-circuited (a Recorder in place of the fabric and
host-side elements) for what succeeds, and one with a real Fabric whose switches are never
started, to show that invalid requests never reach it and that a fabric refusal leaves nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.nsm.base import clock
from controller.nsm.base.channels import dial_target
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tokens import TokenSource
from controller.nsm.server import SERVICE_NAMES, NsmServer
from controller.runtime import Controller
from controller.sdk.endpoint import Endpoint
from controller.settings import Settings
from controller.topology import load_topology
from nsm_api import connection_pb2, connection_pb2_grpc, networkservice_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.conformance.nsm_support import (
    DIAMOND,
    NSC,
    Recorder,
    code_of,
    creds,
    nsc_channel,
    nsc_request,
    nsm_settings,
    refresh_of,
    segment,
)
from tests.e2e.nsm_fixtures import Endpoints
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(120)


@dataclasses.dataclass
class Served:
    server: NsmServer
    recorder: Recorder | None
    channel: grpc.aio.Channel

    @property
    def ns(self) -> networkservice_pb2_grpc.NetworkServiceStub:
        return networkservice_pb2_grpc.NetworkServiceStub(self.channel)

    @property
    def monitor(self) -> connection_pb2_grpc.MonitorConnectionStub:
        return connection_pb2_grpc.MonitorConnectionStub(self.channel)

    @property
    def nse_registry(self) -> registry_pb2_grpc.NetworkServiceEndpointRegistryStub:
        return registry_pb2_grpc.NetworkServiceEndpointRegistryStub(self.channel)

    @property
    def ns_registry(self) -> registry_pb2_grpc.NetworkServiceRegistryStub:
        return registry_pb2_grpc.NetworkServiceRegistryStub(self.channel)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return nsm_settings(tmp_path)


@pytest.fixture
def controller(settings):
    """A controller that is never started: its Fabric is real, its switches are never contacted."""
    ctl = Controller(load_topology(DIAMOND), settings)
    yield ctl
    ctl.store.close()


@pytest.fixture
def fabric_calls(controller, monkeypatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    connect = controller.fabric.connect

    async def counting(a: str, b: str, **kw):
        calls.append((a, b))
        return await connect(a, b, **kw)

    monkeypatch.setattr(controller.fabric, "connect", counting)
    return calls


async def _serve(controller: Controller, settings: Settings, recorder: Recorder | None) -> AsyncIterator[Served]:
    server = NsmServer(controller.fabric, settings, dataplane=[recorder] if recorder else None)
    address = await server.start("127.0.0.1:0")
    channel = nsc_channel(dial_target(address))
    try:
        yield Served(server, recorder, channel)
    finally:
        await channel.close()
        await server.stop(0)


@pytest.fixture
async def looped(controller, settings) -> AsyncIterator[Served]:
    async for served in _serve(controller, settings, Recorder()):
        yield served


@pytest.fixture
async def real(controller, settings, fabric_calls) -> AsyncIterator[Served]:
    async for served in _serve(controller, settings, None):
        yield served


MakeEndpoint = Callable[..., Awaitable[Endpoint]]


@pytest.fixture
async def endpoints(settings) -> AsyncIterator[MakeEndpoint]:
    started = Endpoints(settings)

    async def make(served: Served, service: str = "icmp", host: str = "h3", cidr: str = "10.60.0.0/24", **kw) -> Endpoint:
        return await started.start(served.server.address, service, host, cidr, **kw)

    yield make
    await started.stop_all()


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def next_event(stream: object, timeout: float = 5.0) -> connection_pb2.ConnectionEvent:
    return await asyncio.wait_for(stream.read(), timeout)  # type: ignore[attr-defined]


# --- health -------------------------------------------------------------------------------------

async def test_health_marks_the_four_services_serving(looped: Served) -> None:
    stub = health_pb2_grpc.HealthStub(looped.channel)
    for name in ("", *SERVICE_NAMES):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name


# --- path and ids -------------------------------------------------------------------------------

async def test_several_segments_extended_and_answered_at_the_callers_index(looped: Served, endpoints) -> None:
    await endpoints(looped)
    nsc, mgr = str(uuid.uuid4()), str(uuid.uuid4())
    req = nsc_request(segments=[segment("nsc", nsc), segment("nsmgr", mgr)], index=1)
    resp = await looped.ns.Request(req)
    assert resp.path.index == 1 and resp.id == mgr
    names = [s.name for s in resp.path.path_segments]
    assert names[:3] == ["nsc", "nsmgr", "p4nsm"] and len(names) == 4  # + the endpoint's segment
    assert all(clock.is_set(s.expires) and s.token for s in resp.path.path_segments[2:])
    assert all(clock.is_set(s.expires) for s in resp.path.path_segments)
    assert resp.state == connection_pb2.UP
    assert resp.network_service_endpoint_name and resp.payload == "IP"
    assert resp.mechanism.type == "KERNEL" and resp.mechanism.parameters["name"]
    assert list(resp.context.ip_context.src_ip_addrs) == ["10.60.0.2/32"]
    assert list(resp.context.ip_context.dst_ip_addrs) == ["10.60.0.1/32"]


async def test_refresh_with_the_same_path_keeps_every_id_and_changes_nothing(looped: Served, endpoints) -> None:
    nse = await endpoints(looped)
    first = await looped.ns.Request(nsc_request())
    again = await looped.ns.Request(refresh_of(first))
    assert again.id == first.id
    assert [s.id for s in again.path.path_segments] == [s.id for s in first.path.path_segments]
    assert again.context == first.context and again.mechanism == first.mechanism
    assert looped.recorder is not None
    assert looped.recorder.new == [first.path.path_segments[1].id]
    assert looped.recorder.refreshes == [first.path.path_segments[1].id]
    assert len(nse.pool) == 1


async def test_metadata_token_and_expiry_go_into_the_callers_segment(looped: Served, endpoints) -> None:
    await endpoints(looped)
    token, expires = TokenSource("spiffe://p4nsm/nsc/metadata", 30.0).issue()
    resp = await looped.ns.Request(nsc_request(expires_in=None), metadata=Credentials(token, expires).as_metadata())
    caller = resp.path.path_segments[0]
    assert caller.token == token
    assert abs(clock.to_seconds(caller.expires) - expires) < 1e-6


# --- refusals, none of which reaches the fabric ----------------------------------------------------

def _wrong_segment_id():
    req = nsc_request()
    req.connection.id = "not-my-segment"
    return req


def _index_out_of_range():
    return nsc_request(segments=[segment("nsc", "a")], index=3, conn_id="a")


def _oversized():
    return nsc_request(labels={"k": "v" * 10_000})


def _too_long_iface():
    req = nsc_request()
    req.mechanism_preferences[0].parameters["name"] = "a-name-longer-than-15"
    return req


INVALID = {
    "wrong segment id": (_wrong_segment_id, grpc.StatusCode.INVALID_ARGUMENT, "connection.id"),
    "index out of range": (_index_out_of_range, grpc.StatusCode.INVALID_ARGUMENT, "connection.path.index"),
    "missing expires": (lambda: nsc_request(expires_in=None), grpc.StatusCode.INVALID_ARGUMENT, "expires"),
    "expired caller segment": (lambda: nsc_request(expires_in=-5), grpc.StatusCode.INVALID_ARGUMENT, "expires"),
    "no path": (lambda: nsc_request(segments=[]), grpc.StatusCode.INVALID_ARGUMENT, "connection.path"),
    "missing service": (lambda: nsc_request(service=""), grpc.StatusCode.INVALID_ARGUMENT, "connection.network_service"),
    "unknown service": (lambda: nsc_request(service="nope"), grpc.StatusCode.NOT_FOUND, "connection.network_service"),
    "unknown mechanism": (lambda: nsc_request(mechanism="VXLAN"), grpc.StatusCode.INVALID_ARGUMENT, "mechanism_preferences"),
    "malformed label key": (lambda: nsc_request(labels={"bad key": "v"}), grpc.StatusCode.INVALID_ARGUMENT, "connection.labels"),
    "oversized label value": (_oversized, grpc.StatusCode.INVALID_ARGUMENT, "connection.labels"),
    "interface name too long": (_too_long_iface, grpc.StatusCode.INVALID_ARGUMENT, "parameters['name']"),
    "unknown netns": (lambda: nsc_request(netns="h9"), grpc.StatusCode.NOT_FOUND, "inodeURL"),
}


@pytest.mark.parametrize("case", list(INVALID))
async def test_invalid_request_is_refused_naming_the_field_and_never_reaches_the_fabric(
        case: str, real: Served, endpoints, fabric_calls) -> None:
    await endpoints(real)
    build, code, field = INVALID[case]
    err = await refused(real.ns.Request(build()))
    assert err.code() == code, err.details()
    assert field in err.details()
    assert fabric_calls == []
    assert real.server.begin.states == {} and real.server.hub.connections == {}


async def test_malformed_expiry_metadata_is_refused(looped: Served) -> None:
    err = await refused(looped.ns.Request(nsc_request(), metadata=(("nsm-client-token", "t"),
                                                                   ("nsm-client-token-expires", "tomorrow"))))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "nsm-client-token-expires" in err.details()


async def test_fabric_refusal_leaves_no_connection_anywhere(real: Served, endpoints, controller, fabric_calls) -> None:
    nse = await endpoints(real)
    err = await refused(real.ns.Request(nsc_request()))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in err.details()
    assert fabric_calls == [("h1", "h3")]
    assert controller.fabric.plans == {} and controller.store.all() == []
    assert real.server.begin.states == {} and real.server.hub.connections == {}
    assert nse.begin.states == {} and len(nse.pool) == 0  # the endpoint's side was closed again


async def test_a_request_whose_caller_gave_up_leaves_no_connection(controller, tmp_path, endpoints) -> None:
    settings = nsm_settings(tmp_path)
    async for slow in _serve(controller, settings, Recorder(delay=0.5)):
        nse = await endpoints(slow)
        err = await refused(slow.ns.Request(nsc_request(), timeout=0.2))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        recorder = slow.recorder
        assert recorder is not None
        server = slow.server

        def cleaned(recorder: Recorder = recorder, server: NsmServer = server, nse: Endpoint = nse) -> bool:
            return bool(recorder.closes) and not server.begin.states and not nse.begin.states

        await until(cleaned, "the chain to run to its end and close what it made")
        assert [why for _, why in recorder.closes] == ["caller gone"]
        assert server.hub.connections == {} and len(nse.pool) == 0


async def test_close_of_an_unknown_connection_is_ok(looped: Served) -> None:
    conn = nsc_request().connection
    assert await looped.ns.Close(conn) == empty_pb2.Empty()


# --- expiry ---------------------------------------------------------------------------------------

async def test_without_refresh_the_server_closes_at_the_callers_expiry(looped: Served, endpoints) -> None:
    nse = await endpoints(looped)
    asked = time.monotonic()
    resp = await looped.ns.Request(nsc_request(expires_in=1.0))
    own = resp.path.path_segments[1].id
    assert looped.recorder is not None
    await until(lambda: looped.recorder.closes, "the close at expiry")
    assert time.monotonic() - asked >= 0.99  # not before the caller's expiry
    assert looped.recorder.closes == [(own, "expired")]
    await until(lambda: not looped.server.begin.states and not nse.begin.states, "both sides to forget it")
    assert len(nse.pool) == 0


async def test_refresh_replaces_the_expiry_timer(looped: Served, endpoints) -> None:
    await endpoints(looped)
    resp = await looped.ns.Request(nsc_request(expires_in=1.0))
    await looped.ns.Request(refresh_of(resp, expires_in=3.0))
    refreshed = time.monotonic()
    assert resp.path.path_segments[1].id in looped.server.begin.states
    assert looped.recorder is not None
    await until(lambda: looped.recorder.closes, "the close at the refreshed expiry")
    # The first timer (1 s) would have closed it two seconds early.
    assert time.monotonic() - refreshed >= 2.99


async def test_deadline_of_the_request_is_taken_off_the_expiry(looped: Served, endpoints) -> None:
    await endpoints(looped)
    asked = time.monotonic()
    await looped.ns.Request(nsc_request(expires_in=2.0), timeout=1.8)
    assert looped.recorder is not None
    await until(lambda: looped.recorder.closes, "the close at the shortened expiry")
    # 2.0 s minus the ~1.8 s of deadline the request carried; the full 2.0 s would be too late.
    assert time.monotonic() - asked < 1.5 and len(looped.recorder.closes) == 1


# --- monitor --------------------------------------------------------------------------------------

async def test_monitor_initial_state_then_updates_and_deletes_filtered_by_selector(looped: Served, endpoints) -> None:
    await endpoints(looped)
    await endpoints(looped, service="other", cidr="10.61.0.0/24")
    everything = looped.monitor.MonitorConnections(connection_pb2.MonitorScopeSelector())
    first = await next_event(everything)
    assert first.type == connection_pb2.INITIAL_STATE_TRANSFER and len(first.connections) == 0
    only_icmp = looped.monitor.MonitorConnections(connection_pb2.MonitorScopeSelector(network_services=["icmp"]))
    assert (await next_event(only_icmp)).type == connection_pb2.INITIAL_STATE_TRANSFER

    other = await looped.ns.Request(nsc_request(service="other"))
    icmp = await looped.ns.Request(nsc_request())
    own = icmp.path.path_segments[1].id
    seen = await next_event(only_icmp)
    assert seen.type == connection_pb2.UPDATE and list(seen.connections) == [own]
    assert seen.connections[own].state == connection_pb2.UP
    for _ in range(2):
        assert (await next_event(everything)).type == connection_pb2.UPDATE

    by_segment = looped.monitor.MonitorConnections(connection_pb2.MonitorScopeSelector(
        path_segments=[connection_pb2.PathSegment(id=icmp.id, name="nsc"), connection_pb2.PathSegment(name="p4nsm")]))
    initial = await next_event(by_segment)
    assert list(initial.connections) == [own]  # the contiguous run nsc -> p4nsm matches only this one

    await looped.ns.Close(icmp)
    deleted = await next_event(only_icmp)
    assert deleted.type == connection_pb2.DELETE and list(deleted.connections) == [own]
    assert (await next_event(by_segment)).type == connection_pb2.DELETE
    await looped.ns.Close(other)
    assert (await next_event(everything)).type == connection_pb2.DELETE
    with pytest.raises(asyncio.TimeoutError):  # only_icmp is not told about `other`, and stays open
        await next_event(only_icmp, timeout=0.3)
    for stream in (everything, only_icmp, by_segment):
        stream.cancel()


async def test_fabric_down_and_reroute_reach_monitors_as_updates(real: Served) -> None:
    conn = nsc_request().connection
    conn.id = "c1"
    real.server.hub.update(conn, owner=NSC)  # as the ownership element records its maker
    stream = real.monitor.MonitorConnections(connection_pb2.MonitorScopeSelector())
    await next_event(stream)
    plan = type("Plan", (), {"id": "c1", "labels": {"kind": "nsm"}})()
    for listener in real.server.chain.elements[-2].fabric.listeners:  # type: ignore[attr-defined]
        listener(plan, "down")
    event = await next_event(stream)
    assert event.type == connection_pb2.UPDATE and event.connections["c1"].state == connection_pb2.DOWN
    for listener in real.server.chain.elements[-2].fabric.listeners:  # type: ignore[attr-defined]
        listener(plan, "rerouted")
    assert (await next_event(stream)).connections["c1"].state == connection_pb2.UP
    stream.cancel()


async def test_a_lost_endpoint_turns_its_connections_down(looped: Served, endpoints) -> None:
    nse = await endpoints(looped)
    resp = await looped.ns.Request(nsc_request())
    stream = looped.monitor.MonitorConnections(connection_pb2.MonitorScopeSelector())
    await next_event(stream)
    await nse._server.stop(0)  # type: ignore[union-attr]  # the endpoint process dies
    event = await next_event(stream)
    assert event.connections[resp.path.path_segments[1].id].state == connection_pb2.DOWN
    stream.cancel()


# --- endpoint selection ---------------------------------------------------------------------------

async def test_round_robin_over_two_endpoints_of_one_service(looped: Served, endpoints) -> None:
    a = await endpoints(looped, cidr="10.60.0.0/24")
    b = await endpoints(looped, host="h4", cidr="10.62.0.0/24")
    chosen = [(await looped.ns.Request(nsc_request())).network_service_endpoint_name for _ in range(4)]
    assert sorted(chosen) == sorted([a.name, b.name] * 2)
    assert chosen[0] != chosen[1] and chosen[0] == chosen[2]


async def test_reselect_closes_the_old_endpoint_side_and_selects_again(looped: Served, endpoints) -> None:
    a = await endpoints(looped)
    b = await endpoints(looped, host="h4", cidr="10.62.0.0/24")
    first = await looped.ns.Request(nsc_request())
    req = refresh_of(first)
    req.connection.state = connection_pb2.RESELECT_REQUESTED
    req.connection.network_service_endpoint_name = ""
    req.connection.ClearField("mechanism")
    req.mechanism_preferences.extend(nsc_request().mechanism_preferences)
    # With its per-RPC token, as NSM clients send it: begin's close of the old connection is the
    # caller's own Close, and a Close proves its caller by that token.
    second = await looped.ns.Request(req, metadata=creds(NSC))
    assert second.network_service_endpoint_name != first.network_service_endpoint_name
    assert second.id == first.id and second.state == connection_pb2.UP
    assert len(a.pool) + len(b.pool) == 1


async def test_a_failed_endpoint_makes_way_for_the_next_candidate(looped: Served, endpoints) -> None:
    live = await endpoints(looped)
    dead = registry_pb2.NetworkServiceEndpoint(
        name="dead", network_service_names=["icmp"], url="unix:///nonexistent/dead.sock",
        network_service_labels={"icmp": registry_pb2.NetworkServiceLabels(labels={"p4nsm.io/host": "h4"})})
    await looped.nse_registry.Register(dead)
    for _ in range(3):
        assert (await looped.ns.Request(nsc_request())).network_service_endpoint_name == live.name


async def test_an_endpoint_that_keeps_failing_is_ejected(looped: Served, endpoints) -> None:
    """Istio's outlier detection: after 5 failed forwards in a row the dead endpoint is left
    out of selection (it is not even dialled), and only for a while."""
    live = await endpoints(looped)
    dead = registry_pb2.NetworkServiceEndpoint(
        name="dead", network_service_names=["icmp"], url="unix:///nonexistent/dead.sock",
        network_service_labels={"icmp": registry_pb2.NetworkServiceLabels(labels={"p4nsm.io/host": "h4"})})
    await looped.nse_registry.Register(dead)
    outliers = looped.server.outliers
    for _ in range(12):  # round robin hands "dead" every other Request until it is ejected
        assert (await looped.ns.Request(nsc_request())).network_service_endpoint_name == live.name
    assert outliers.ejected("dead") and not outliers.ejected(live.name)
    assert outliers.records["dead"].ejections == 1
    tried = outliers.records["dead"].failures
    for _ in range(4):
        await looped.ns.Request(nsc_request())
    assert outliers.records["dead"].failures == tried  # not tried while ejected
    outliers.records["dead"].until = 0  # its time is up
    assert not outliers.ejected("dead")


async def test_matches_select_endpoints_by_labels(looped: Served, endpoints) -> None:
    # The service first: an endpoint registers it only when absent, and then it is the endpoint's.
    ns = registry_pb2.NetworkService(name="icmp", payload="IP", matches=[registry_pb2.Match(
        source_selector={"want": "gold"}, routes=[registry_pb2.Destination(destination_selector={"tier": "{{.want}}"})])])
    await looped.ns_registry.Register(ns)
    gold = await endpoints(looped, labels={"tier": "gold"})
    await endpoints(looped, host="h4", cidr="10.62.0.0/24", labels={"tier": "silver"})
    for _ in range(3):
        resp = await looped.ns.Request(nsc_request(labels={"want": "gold"}))
        assert resp.network_service_endpoint_name == gold.name
    err = await refused(looped.ns.Request(nsc_request(labels={"want": "bronze"})))
    assert err.code() == grpc.StatusCode.NOT_FOUND


# --- registry -------------------------------------------------------------------------------------

def _nse(name: str = "nse-1", url: str = "unix:///run/x/h3/nse.sock", expires_in: float | None = None,
         services: tuple[str, ...] = ("icmp",)) -> registry_pb2.NetworkServiceEndpoint:
    nse = registry_pb2.NetworkServiceEndpoint(name=name, network_service_names=list(services), url=url,
                                              network_service_labels={s: registry_pb2.NetworkServiceLabels(labels={"app": name}) for s in services})
    if expires_in is not None:
        nse.expiration_time.CopyFrom(clock.timestamp(clock.now() + expires_in))
    return nse


async def _find(stub, query) -> list:
    return [r async for r in stub.Find(query)]


async def test_registry_register_find_unregister(looped: Served) -> None:
    ns = await looped.ns_registry.Register(registry_pb2.NetworkService(name="icmp"))
    assert ns.payload == "IP"
    err = await refused(looped.ns_registry.Register(registry_pb2.NetworkService()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in err.details()
    err = await refused(looped.nse_registry.Register(registry_pb2.NetworkServiceEndpoint(url="tcp://x:1")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("name")

    before = clock.now()
    got = await looped.nse_registry.Register(_nse(expires_in=3600))
    assert before + 59 <= clock.to_seconds(got.expiration_time) <= clock.now() + 60.5  # clamped to the default
    assert clock.is_set(got.initial_registration_time)
    await looped.nse_registry.Register(_nse("nse-2", url="tcp://10.0.0.4:5003", services=("icmp", "other")))

    query = registry_pb2.NetworkServiceEndpointQuery
    find = lambda nse: _find(looped.nse_registry, query(network_service_endpoint=nse))  # noqa: E731
    assert {r.network_service_endpoint.name for r in await find(registry_pb2.NetworkServiceEndpoint())} == {"nse-1", "nse-2"}
    assert [r.network_service_endpoint.name for r in await find(registry_pb2.NetworkServiceEndpoint(url="10.0.0.4"))] == ["nse-2"]
    assert [r.network_service_endpoint.name for r in await find(registry_pb2.NetworkServiceEndpoint(network_service_names=["other"]))] == ["nse-2"]
    by_label = registry_pb2.NetworkServiceEndpoint(network_service_labels={"icmp": registry_pb2.NetworkServiceLabels(labels={"app": "nse-1"})})
    assert [r.network_service_endpoint.name for r in await find(by_label)] == ["nse-1"]
    ns_found = await _find(looped.ns_registry, registry_pb2.NetworkServiceQuery(network_service=registry_pb2.NetworkService(payload="IP")))
    assert [r.network_service.name for r in ns_found] == ["icmp"]

    await looped.nse_registry.Unregister(_nse("nse-2"))
    await looped.nse_registry.Unregister(_nse("never-registered"))
    assert [r.network_service_endpoint.name for r in await find(registry_pb2.NetworkServiceEndpoint())] == ["nse-1"]


async def test_refresh_keeps_the_initial_registration_time(looped: Served) -> None:
    first = await looped.nse_registry.Register(_nse())
    second = await looped.nse_registry.Register(_nse())
    assert second.initial_registration_time == first.initial_registration_time
    assert clock.to_seconds(second.expiration_time) > clock.to_seconds(first.expiration_time)


async def test_registration_expiring_in_the_past_is_refused(looped: Served) -> None:
    err = await refused(looped.nse_registry.Register(_nse(expires_in=-1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("expiration_time")


async def test_registration_expires_with_a_deleted_event(looped: Served) -> None:
    watch = looped.nse_registry.Find(registry_pb2.NetworkServiceEndpointQuery(
        network_service_endpoint=registry_pb2.NetworkServiceEndpoint(name="nse-1"), watch=True))
    got = await looped.nse_registry.Register(_nse(expires_in=0.5))
    assert clock.to_seconds(got.expiration_time) <= clock.now() + 0.5
    event = await asyncio.wait_for(watch.read(), 2)
    assert not event.deleted
    event = await asyncio.wait_for(watch.read(), 2)
    assert event.deleted and event.network_service_endpoint.name == "nse-1"
    assert await _find(looped.nse_registry, registry_pb2.NetworkServiceEndpointQuery()) == []
    watch.cancel()


async def test_peer_token_expiry_bounds_the_registration(looped: Served) -> None:
    expires = clock.now() + 5
    got = await looped.nse_registry.Register(_nse(), metadata=Credentials("tok", expires).as_metadata())
    assert abs(clock.to_seconds(got.expiration_time) - expires) < 1e-3


async def test_find_watch_sends_current_matches_then_changes(looped: Served) -> None:
    await looped.nse_registry.Register(_nse("nse-1"))
    watch = looped.nse_registry.Find(registry_pb2.NetworkServiceEndpointQuery(
        network_service_endpoint=registry_pb2.NetworkServiceEndpoint(network_service_names=["icmp"]), watch=True))
    first = await asyncio.wait_for(watch.read(), 2)
    assert first.network_service_endpoint.name == "nse-1" and not first.deleted
    await looped.nse_registry.Register(_nse("nse-x", services=("unrelated",)))
    await looped.nse_registry.Register(_nse("nse-2"))
    came = await asyncio.wait_for(watch.read(), 2)
    assert came.network_service_endpoint.name == "nse-2" and not came.deleted  # nse-x did not match
    await looped.nse_registry.Unregister(_nse("nse-1"))
    went = await asyncio.wait_for(watch.read(), 2)
    assert went.network_service_endpoint.name == "nse-1" and went.deleted

    ns_watch = looped.ns_registry.Find(registry_pb2.NetworkServiceQuery(network_service=registry_pb2.NetworkService(name="icmp"), watch=True))
    await looped.ns_registry.Register(registry_pb2.NetworkService(name="icmp"))
    assert (await asyncio.wait_for(ns_watch.read(), 2)).network_service.name == "icmp"
    await looped.ns_registry.Unregister(registry_pb2.NetworkService(name="icmp"))
    assert (await asyncio.wait_for(ns_watch.read(), 2)).deleted
    watch.cancel()
    ns_watch.cancel()


async def test_find_without_watch_ends_the_stream(looped: Served) -> None:
    await looped.nse_registry.Register(_nse())
    call = looped.nse_registry.Find(registry_pb2.NetworkServiceEndpointQuery())
    assert len([r async for r in call]) == 1
    assert await call.code() == grpc.StatusCode.OK


async def test_register_echoes_the_registry_path(looped: Served) -> None:
    call = looped.nse_registry.Register(_nse(), metadata=(("path", '{"Index":0,"PathSegments":null}'),))
    got = await call
    headers = dict(await call.initial_metadata())
    assert headers["path"].startswith('{"Index":0,"PathSegments":[')
    assert list(got.path_ids) == ["", "spiffe://p4nsm/controller"]


# --- a burst -------------------------------------------------------------------------------------

async def test_a_burst_of_1000_requests_is_served_or_refused_cleanly(looped: Served, endpoints, settings) -> None:
    nse = await endpoints(looped, cidr="10.64.0.0/16")
    started = time.monotonic()
    results = await asyncio.gather(*(looped.ns.Request(nsc_request(), timeout=30) for _ in range(1000)),
                                   return_exceptions=True)
    took = time.monotonic() - started
    served = [r for r in results if isinstance(r, connection_pb2.Connection)]
    refusals = [r for r in results if not isinstance(r, connection_pb2.Connection)]
    assert {code_of(e) for e in refusals} <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, refusals[:3]
    assert len(served) >= settings.nsm_max_requests_in_progress
    print(f"burst: {len(served)} served, {len(refusals)} refused in {took:.2f}s")
    # Exactly the served ones exist, at every layer.
    own_ids = {r.path.path_segments[1].id for r in served}
    assert set(looped.server.begin.states) == own_ids == set(looped.server.hub.connections)
    assert len(nse.begin.states) == len(served) == len(nse.pool)
    await asyncio.gather(*(looped.ns.Close(r) for r in served))
    assert looped.server.begin.states == {} and looped.server.hub.connections == {}
    assert nse.begin.states == {} and len(nse.pool) == 0


async def test_a_burst_beyond_the_admission_limit_is_refused_at_the_door(controller, tmp_path, endpoints) -> None:
    settings = nsm_settings(tmp_path, nsm_max_requests_in_progress=20)
    async for looped in _serve(controller, settings, Recorder(delay=0.2)):  # a slow data plane
        nse = await endpoints(looped, cidr="10.64.0.0/16")
        results = await asyncio.gather(*(looped.ns.Request(nsc_request(), timeout=30) for _ in range(1000)),
                                       return_exceptions=True)
        served = [r for r in results if isinstance(r, connection_pb2.Connection)]
        refusals = [r for r in results if not isinstance(r, connection_pb2.Connection)]
        assert refusals and {code_of(e) for e in refusals} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert served
        assert len(looped.server.begin.states) == len(served) == len(nse.begin.states) == len(nse.pool)


async def test_a_burst_against_an_unready_fabric_leaves_nothing_behind(real: Served, endpoints, controller) -> None:
    nse = await endpoints(real, cidr="10.64.0.0/16")
    results = await asyncio.gather(*(real.ns.Request(nsc_request(), timeout=30) for _ in range(1000)),
                                   return_exceptions=True)
    assert {code_of(e) for e in results} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert controller.fabric.plans == {} and controller.store.all() == []
    assert real.server.begin.states == {} and nse.begin.states == {} and len(nse.pool) == 0


# --- the SDK against the server -------------------------------------------------------------------

async def test_sdk_client_refreshes_then_heals_onto_another_endpoint(looped: Served, endpoints, settings) -> None:
    from controller.sdk.client import Client

    a = await endpoints(looped)
    b = await endpoints(looped, host="h4", cidr="10.62.0.0/24")
    client = Client(looped.server.address, settings, token_lifetime=2.0)
    try:
        conn = await client.request("icmp", "h1", iface="nsm0", give_up_after=5)
        await until(lambda: client.history.count("refreshed") >= 2, "two refreshes")
        serving = a if conn.network_service_endpoint_name == a.name else b
        await serving.stop()  # the endpoint goes away
        await until(lambda: "healed" in client.history, "the client to heal onto the other endpoint")
        assert client.connection is not None and client.connection.network_service_endpoint_name != serving.name
        assert client.connection.id == conn.id  # the client's own segment survives a reselect
    finally:
        await client.close()
    assert looped.server.begin.states == {}


async def test_sdk_client_does_not_retry_a_malformed_request(looped: Served, settings) -> None:
    from controller.sdk.client import Client

    client = Client(looped.server.address, settings)
    started = time.monotonic()
    err = await refused(client.request("icmp", "h1", iface="name-too-long-for-linux", give_up_after=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and time.monotonic() - started < 5
    await client.close()


async def test_sdk_endpoint_registers_again_when_its_registration_goes(looped: Served, endpoints) -> None:
    nse = await endpoints(looped)
    first = looped.server.endpoints.get(nse.name)
    assert first is not None and looped.server.services.get("icmp") is not None
    await until(lambda: len(looped.server.endpoints.watchers), "the endpoint's watch of its own registration")
    looped.server.endpoints.unregister(nse.name)
    await until(lambda: looped.server.endpoints.get(nse.name) is not None, "the endpoint to register again")
    again = looped.server.endpoints.get(nse.name)
    assert again is not None and again.initial_registration_time != first.initial_registration_time
