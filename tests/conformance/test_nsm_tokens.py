"""Signed path tokens over real mTLS sockets (lab certificates): the server refuses forged,
unsigned, expired, misaddressed and non-JWT tokens with PERMISSION_DENIED before anything is
made, and accepts an upstream NSM client's token (ES256, no `x5c`), verified with the caller's
certificate; the SDK client and endpoint sign theirs and the SDK endpoint checks the
controller's (signature and chain); a caller's expiry is cut to the setting."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controller.identity import Svid, lab_settings, load_svid
from controller.nsm.base import clock
from controller.nsm.base.channels import dial
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tokens import Signer, TokenSource
from controller.nsm.server import NsmServer
from controller.runtime import Controller
from controller.sdk.client import Client
from controller.sdk.endpoint import Endpoint, EndpointConfig
from controller.settings import Settings
from controller.topology import load_topology
from nsm_api import networkservice_pb2_grpc
from tests.conformance.nsm_support import DIAMOND, Recorder, code_of, nsc_request, nsm_settings
from tests.support.svids import TrustDomain, upstream_token

pytestmark = pytest.mark.timeout(120)

NSC = "spiffe://p4nsm/nsc"  # the lab's nsc certificate


@dataclasses.dataclass
class Signed:
    server: NsmServer
    recorder: Recorder
    domain: TrustDomain
    nsc: Svid  # the caller's SVID, the one its channel presents
    stub: networkservice_pb2_grpc.NetworkServiceStub

    def tokens(self, lifetime: float = 60.0) -> TokenSource:
        return TokenSource.of("", lifetime, Signer.of(self.nsc))


@pytest.fixture
def domain(tmp_path: Path) -> TrustDomain:
    return TrustDomain.make(tmp_path / "certs")


def as_role(tmp: Path, domain: TrustDomain, role: str) -> Settings:
    return nsm_settings(tmp, nsm_max_token_lifetime=300.0, **lab_settings(domain.dir, role))


@pytest.fixture
async def signed(tmp_path: Path, domain: TrustDomain) -> AsyncIterator[Signed]:
    """The controller's NSM server over mTLS with its lab SVID, and a channel of the lab's nsc."""
    settings = as_role(tmp_path, domain, "controller")
    controller = Controller(load_topology(DIAMOND), settings)
    recorder = Recorder()
    server = NsmServer(controller.fabric, settings, dataplane=[recorder])
    address = await server.start("127.0.0.1:0")
    nsc = load_svid(as_role(tmp_path, domain, "nsc"))
    assert nsc is not None and nsc.spiffe_id == NSC
    channel = dial(address, nsc)
    try:
        yield Signed(server, recorder, domain, nsc, networkservice_pb2_grpc.NetworkServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(0)
        controller.store.close()


@pytest.fixture
async def endpoint(signed: Signed, tmp_path: Path) -> AsyncIterator[Endpoint]:
    nse = Endpoint(EndpointConfig("icmp", "h3", "10.60.0.0/24", signed.server.address, name="nse-signed"),
                   as_role(tmp_path, signed.domain, "nse"))
    await nse.start(register_within=10)
    yield nse
    await nse.stop()


CONTROLLER = "spiffe://p4nsm/controller"


def _bad_tokens(signed: Signed, elsewhere: Path) -> dict[str, tuple[str, float]]:
    return {
        "unsigned": TokenSource(NSC, 60.0).issue(CONTROLLER),
        # the caller's SPIFFE id, signed by another CA's certificate for it
        "forged": TrustDomain.make(elsewhere).tokens(NSC).issue(CONTROLLER),
        # a token of another identity of the same CA, replayed by this caller
        "someone else's": signed.domain.tokens("spiffe://p4nsm/nsc/victim").issue(CONTROLLER),
        "expired": signed.tokens(-5.0).issue(CONTROLLER),
        "for another hop": signed.tokens().issue("spiffe://p4nsm/other"),
        "not a JWT": ("caller-token", clock.now() + 60),
    }


@pytest.mark.parametrize("kind", ["unsigned", "forged", "someone else's", "expired", "for another hop", "not a JWT"])
async def test_a_token_that_does_not_verify_is_refused_before_anything_is_made(signed: Signed, kind, tmp_path) -> None:
    token, expires = _bad_tokens(signed, tmp_path / "evil")[kind]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await signed.stub.Request(nsc_request(), metadata=Credentials(token, max(expires, clock.now() + 60)).as_metadata())
    assert code_of(info.value) == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details().startswith("connection.path.path_segments[0].token: ")
    assert signed.recorder.new == [] and signed.server.begin.states == {}


async def test_an_upstream_client_token_is_verified_with_its_certificate(signed: Signed, endpoint) -> None:
    signer = Signer.of(signed.nsc)
    assert signer is not None
    token, expires = upstream_token(signer, CONTROLLER)
    resp = await signed.stub.Request(nsc_request(), metadata=Credentials(token, expires).as_metadata())
    assert signed.recorder.new == [resp.path.path_segments[1].id]
    assert resp.path.path_segments[0].token == token


async def test_a_callers_far_expiry_is_cut_to_the_setting(signed: Signed, endpoint) -> None:
    token, _ = signed.tokens(10**9).issue(CONTROLLER)
    far = clock.parse_rfc3339("9999-12-31T23:59:59Z")
    resp = await signed.stub.Request(nsc_request(), metadata=Credentials(token, far).as_metadata())
    assert clock.to_seconds(resp.path.path_segments[0].expires) <= clock.now() + 300.0


async def test_the_sdk_signs_and_its_endpoint_checks_the_controllers_token(signed: Signed, endpoint, tmp_path) -> None:
    client = Client(signed.server.address, as_role(tmp_path, signed.domain, "nsc"))
    try:
        conn = await client.request("icmp", "h1", iface="nsm0", give_up_after=10)
        assert [s.name for s in conn.path.path_segments] == [client.name, "p4nsm", endpoint.name]
        # the endpoint holds the connection: it accepted the controller's token, made for it
        assert len(endpoint.pool) == 1
    finally:
        await client.close()
    assert signed.server.begin.states == {}
