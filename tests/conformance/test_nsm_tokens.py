"""Signed path tokens over real gRPC: a server with a trust bundle refuses forged, unsigned,
expired and non-JWT tokens (PERMISSION_DENIED, before anything is made) and accepts tokens signed
with an SVID of its trust domain; the SDK client and endpoint sign theirs, and the SDK endpoint
checks the controller's (signature and chain); a caller's expiry is cut to the setting.

The upstream NSM client's token (no `x5c`, verified with the mTLS peer's certificate) is checked
through the authorize element in tests/unit/test_tokens.py while the server does not yet see the
peer's certificate."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controller.nsm.base import clock
from controller.nsm.base.channels import dial_target
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tokens import TokenSource
from controller.nsm.server import NsmServer
from controller.runtime import Controller
from controller.sdk.client import Client
from controller.sdk.endpoint import Endpoint, EndpointConfig
from controller.settings import Settings
from controller.topology import load_topology
from nsm_api import networkservice_pb2_grpc
from tests.conformance.nsm_support import DIAMOND, Recorder, code_of, nsc_request, nsm_settings
from tests.support.svids import TrustDomain

pytestmark = pytest.mark.timeout(120)


@dataclasses.dataclass
class Signed:
    server: NsmServer
    recorder: Recorder
    domain: TrustDomain
    stub: networkservice_pb2_grpc.NetworkServiceStub


@pytest.fixture
def settings(tmp_path) -> Settings:
    return nsm_settings(tmp_path, nsm_max_token_lifetime=300.0)


@pytest.fixture
async def signed(settings, tmp_path) -> AsyncIterator[Signed]:
    """The controller's NSM server with an SVID of a trust domain (and that domain's bundle)."""
    controller = Controller(load_topology(DIAMOND), settings)
    domain = TrustDomain.make(tmp_path / "ca")
    recorder = Recorder()
    server = NsmServer(controller.fabric, settings, dataplane=[recorder], svid=domain.svid(settings.nsm_spiffe_id))
    address = await server.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(dial_target(address))
    try:
        yield Signed(server, recorder, domain, networkservice_pb2_grpc.NetworkServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(0)
        controller.store.close()


@pytest.fixture
async def endpoint(signed: Signed, settings) -> AsyncIterator[Endpoint]:
    nse = Endpoint(EndpointConfig("icmp", "h3", "10.60.0.0/24", signed.server.address, name="nse-signed"), settings,
                   svid=signed.domain.svid("spiffe://p4nsm/nse/nse-signed"))
    await nse.start(register_within=10)
    yield nse
    await nse.stop()


def _tokens(domain: TrustDomain, audience: str, elsewhere: Path) -> dict[str, tuple[str, float]]:
    nsc = "spiffe://p4nsm/nsc/test"
    return {
        "unsigned": TokenSource(nsc, 60.0).issue(audience),
        "forged": TrustDomain.make(elsewhere).tokens(nsc).issue(audience),
        "expired": domain.tokens(nsc, -5.0).issue(audience),
        "for another hop": domain.tokens(nsc).issue("spiffe://p4nsm/other"),
        "not a JWT": ("caller-token", clock.now() + 60),
    }


@pytest.mark.parametrize("kind", ["unsigned", "forged", "expired", "for another hop", "not a JWT"])
async def test_a_token_that_does_not_verify_is_refused_before_anything_is_made(signed: Signed, settings, kind,
                                                                              tmp_path) -> None:
    token, expires = _tokens(signed.domain, settings.nsm_spiffe_id, tmp_path / "evil")[kind]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await signed.stub.Request(nsc_request(), metadata=Credentials(token, max(expires, clock.now() + 60)).as_metadata())
    assert code_of(info.value) == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details().startswith("connection.path.path_segments[0].token: ")
    assert signed.recorder.new == [] and signed.server.begin.states == {}


async def test_a_token_signed_with_an_svid_of_the_trust_domain_is_accepted(signed: Signed, settings, endpoint) -> None:
    token, expires = signed.domain.tokens("spiffe://p4nsm/nsc/test").issue(settings.nsm_spiffe_id)
    resp = await signed.stub.Request(nsc_request(), metadata=Credentials(token, expires).as_metadata())
    assert signed.recorder.new == [resp.path.path_segments[1].id]
    assert resp.path.path_segments[0].token == token


async def test_a_callers_far_expiry_is_cut_to_the_setting(signed: Signed, settings, endpoint) -> None:
    token, _ = signed.domain.tokens("spiffe://p4nsm/nsc/test", 10**9).issue(settings.nsm_spiffe_id)
    far = clock.parse_rfc3339("9999-12-31T23:59:59Z")
    resp = await signed.stub.Request(nsc_request(), metadata=Credentials(token, far).as_metadata())
    assert clock.to_seconds(resp.path.path_segments[0].expires) <= clock.now() + settings.nsm_max_token_lifetime


async def test_the_sdk_signs_and_its_endpoint_checks_the_controllers_token(signed: Signed, settings, endpoint) -> None:
    client = Client(signed.server.address, settings, svid=signed.domain.svid("spiffe://p4nsm/nsc/sdk"))
    try:
        conn = await client.request("icmp", "h1", iface="nsm0", give_up_after=10)
        assert [s.name for s in conn.path.path_segments] == [client.name, settings.nsm_name, endpoint.name]
        # the endpoint holds the connection: it accepted the controller's token, made for it
        assert len(endpoint.pool) == 1
    finally:
        await client.close()
    assert signed.server.begin.states == {}


async def test_an_unsigned_sdk_client_is_refused_at_once(signed: Signed, settings) -> None:
    client = Client(signed.server.address, settings)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.request("icmp", "h1", iface="nsm0", give_up_after=30)
    assert code_of(info.value) == grpc.StatusCode.PERMISSION_DENIED and "not signed with ES256" in info.value.details()
    await client.close()


async def test_an_endpoint_trusting_another_ca_refuses_the_controllers_token(signed: Signed, settings, tmp_path) -> None:
    other = TrustDomain.make(tmp_path / "other").svid("spiffe://p4nsm/verifier")
    own = signed.domain.svid("spiffe://p4nsm/nse/nse-other")
    nse = Endpoint(EndpointConfig("icmp", "h3", "10.60.0.0/24", signed.server.address, name="nse-other"), settings,
                   svid=dataclasses.replace(own, trust_bundle=other.trust_bundle))
    await nse.start(register_within=10)
    client = Client(signed.server.address, settings, svid=signed.domain.svid("spiffe://p4nsm/nsc/sdk"))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.request("icmp", "h1", iface="nsm0", give_up_after=10)
        assert code_of(info.value) == grpc.StatusCode.PERMISSION_DENIED
        assert "trust bundle does not vouch" in info.value.details()
        assert len(nse.pool) == 0
    finally:
        await client.close()
        await nse.stop()
