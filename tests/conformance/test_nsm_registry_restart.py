"""The registries survive a restart of the controller, over real gRPC and a real store: what was
registered is found by the next server over the same store, still its registrant's; a
registration whose deadline passed while no server ran is gone; the others expire at their stored
deadline, not a fresh one; an Unregister is as lasting as a Register."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from controller.fabric.store import Store
from controller.nsm.base import clock
from controller.nsm.base.channels import dial_target
from controller.nsm.server import NsmServer
from controller.runtime import Controller
from controller.settings import Settings
from controller.topology import load_topology
from nsm_api import registry_pb2, registry_pb2_grpc
from tests.conformance.nsm_support import DIAMOND, Recorder, creds, nsm_settings

pytestmark = pytest.mark.timeout(60)

OWNER = "spiffe://test/endpoint"
OTHER = "spiffe://test/other"


class Registries:
    def __init__(self, server: NsmServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.nse = registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel)
        self.ns = registry_pb2_grpc.NetworkServiceRegistryStub(channel)

    async def endpoints(self, name: str = "") -> list[registry_pb2.NetworkServiceEndpoint]:
        query = registry_pb2.NetworkServiceEndpointQuery(network_service_endpoint=registry_pb2.NetworkServiceEndpoint(name=name))
        return [r.network_service_endpoint async for r in self.nse.Find(query)]

    async def services(self) -> list[registry_pb2.NetworkService]:
        query = registry_pb2.NetworkServiceQuery(network_service=registry_pb2.NetworkService())
        return [r.network_service async for r in self.ns.Find(query)]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return nsm_settings(tmp_path)


@pytest.fixture
def controller(settings: Settings):
    ctl = Controller(load_topology(DIAMOND), settings)  # for its fabric; no switch is dialled
    yield ctl
    ctl.store.close()


@pytest.fixture
def store(tmp_path: Path):
    made = Store(tmp_path / "registry.sqlite")
    yield made
    made.close()


@asynccontextmanager
async def serving(controller: Controller, settings: Settings, store: Store) -> AsyncIterator[Registries]:
    """One run of the NSM server over `store`; leaving the block stops it (a restart is two)."""
    server = NsmServer(controller.fabric, settings, dataplane=[Recorder()], store=store)
    address = await server.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(dial_target(address))
    try:
        yield Registries(server, channel)
    finally:
        await channel.close()
        await server.stop(0)


def _nse(name: str, expires_in: float | None = None) -> registry_pb2.NetworkServiceEndpoint:
    nse = registry_pb2.NetworkServiceEndpoint(
        name=name, network_service_names=["icmp"], url=f"unix:///tmp/{name}.sock",
        network_service_labels={"icmp": registry_pb2.NetworkServiceLabels(labels={"p4nsm.io/host": "h4"})})
    if expires_in is not None:
        nse.expiration_time.CopyFrom(clock.timestamp(clock.now() + expires_in))
    return nse


async def test_registrations_and_their_owners_survive_a_restart(controller, settings, store) -> None:
    async with serving(controller, settings, store) as first:
        await first.ns.Register(registry_pb2.NetworkService(name="icmp"), metadata=creds(OWNER))
        registered = await first.nse.Register(_nse("nse-a"), metadata=creds(OWNER))
    assert set(store.records("nse")) == {"nse-a"} and set(store.records("ns")) == {"icmp"}
    async with serving(controller, settings, store) as second:
        found = await second.endpoints("nse-a")
        assert [(e.name, e.url, e.expiration_time, e.initial_registration_time) for e in found] == \
            [(registered.name, registered.url, registered.expiration_time, registered.initial_registration_time)]
        assert [s.name for s in await second.services()] == ["icmp"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await second.nse.Register(_nse("nse-a"), metadata=creds(OTHER))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
        refreshed = await second.nse.Register(_nse("nse-a"), metadata=creds(OWNER))
        assert refreshed.initial_registration_time == registered.initial_registration_time


async def test_a_registration_whose_deadline_passed_while_down_is_dropped_at_load(controller, settings, store) -> None:
    async with serving(controller, settings, store) as first:
        short = await first.nse.Register(_nse("short", expires_in=1.0), metadata=creds(OWNER))
        await first.nse.Register(_nse("long"), metadata=creds(OWNER))
    deadline = clock.to_seconds(short.expiration_time)
    while clock.now() <= deadline:  # the controller is down past the short one's deadline
        await asyncio.sleep(0.05)
    # At load, not by a timer armed for a past deadline: the next server never holds it.
    loading = NsmServer(controller.fabric, settings, dataplane=[Recorder()], store=store)
    assert loading.endpoints.load() == (1, 1) and set(loading.endpoints.entries) == {"long"}
    assert set(store.records("nse")) == {"long"}
    await loading.stop(0)
    async with serving(controller, settings, store) as second:
        assert [e.name for e in await second.endpoints()] == ["long"]


async def test_expiry_continues_from_the_stored_deadline(controller, settings, store) -> None:
    async with serving(controller, settings, store) as first:
        registered = await first.nse.Register(_nse("brief", expires_in=3.0), metadata=creds(OWNER))
    deadline = clock.to_seconds(registered.expiration_time)
    async with serving(controller, settings, store) as second:
        assert [e.name for e in await second.endpoints()] == ["brief"]
        while await second.endpoints():
            assert clock.now() < deadline + 2.0, "still registered well past its stored deadline"
            await asyncio.sleep(0.05)
        assert clock.now() >= deadline - 0.1, "expired before its stored deadline (a timer armed afresh would be later)"
        assert store.records("nse") == {}


async def test_an_unregister_lasts_across_a_restart(controller, settings, store) -> None:
    async with serving(controller, settings, store) as first:
        await first.nse.Register(_nse("gone"), metadata=creds(OWNER))
        await first.nse.Unregister(_nse("gone"), metadata=creds(OWNER))
    async with serving(controller, settings, store) as second:
        assert await second.endpoints() == []
