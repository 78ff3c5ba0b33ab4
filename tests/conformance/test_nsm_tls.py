"""The NSM API over mTLS on real sockets: the SDK client, the controller and an SDK endpoint each
with a certificate of one lab CA (`init_lab_certs`), the data plane short-circuited. With
certificates TLS is required (a plaintext client, one without a certificate and one of another
CA are refused before any call); without them and without `plaintext`, nothing starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controller.identity import IdentityError, LabCerts, channel_credentials, init_lab_certs, lab_settings, load_svid
from controller.nsm.base.channels import dial_target
from controller.nsm.elements.chain import CallContext, Connection, Next, Request
from controller.nsm.server import NsmServer
from controller.runtime import Controller
from controller.sdk.client import Client
from controller.sdk.endpoint import Endpoint, EndpointConfig
from controller.settings import Settings
from controller.topology import load_topology
from nsm_api import networkservice_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.conformance.nsm_support import DIAMOND, Recorder, nsc_request, nsm_settings

pytestmark = pytest.mark.timeout(120)


class CallerRecorder(Recorder):
    """The recording data plane, also noting who each Request came from."""

    def __init__(self) -> None:
        super().__init__()
        self.callers: list[tuple[str, bytes]] = []

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        self.callers.append((ctx.peer_identity, ctx.peer_cert))
        return await super().request(req, ctx, nxt)


@pytest.fixture
def lab(tmp_path: Path) -> LabCerts:
    return init_lab_certs(tmp_path / "certs", extra={"alice": "nsc/alice"})


def as_role(tmp: Path, lab: LabCerts, role: str, **more: object) -> Settings:
    return nsm_settings(tmp, **lab_settings(lab.dir, role), **more)


@pytest.fixture
def controller(tmp_path: Path, lab: LabCerts):
    ctl = Controller(load_topology(DIAMOND), as_role(tmp_path, lab, "controller"))
    yield ctl
    ctl.store.close()


@pytest.fixture
async def served(controller: Controller, tmp_path: Path, lab: LabCerts) -> AsyncIterator[tuple[NsmServer, CallerRecorder]]:
    recorder = CallerRecorder()
    server = NsmServer(controller.fabric, as_role(tmp_path, lab, "controller"), dataplane=[recorder])
    await server.start("127.0.0.1:0")
    yield server, recorder
    await server.stop(0)


@pytest.fixture
async def endpoint(served, tmp_path: Path, lab: LabCerts) -> AsyncIterator[Endpoint]:
    server, _ = served
    nse = Endpoint(EndpointConfig(service="icmp", host="h3", cidr="10.60.0.0/24", nsm_url=server.address),
                   as_role(tmp_path, lab, "nse"))
    await nse.start(register_within=10)  # registered over mTLS
    yield nse
    await nse.stop()


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_sdk_client_controller_and_endpoint_over_mtls(served, endpoint: Endpoint, tmp_path: Path, lab: LabCerts) -> None:
    server, recorder = served
    assert server.svid is not None and server.svid.spiffe_id == "spiffe://p4nsm/controller"
    assert server.endpoints.get(endpoint.name) is not None
    client = Client(server.address, as_role(tmp_path, lab, "alice"), refresh=False, heal=False)
    try:
        conn = await client.request("icmp", "h1", iface="nsm0", give_up_after=10)
        # the controller forwarded it to the endpoint, which serves mTLS only
        assert conn.network_service_endpoint_name == endpoint.name
        assert conn.context.ip_context.src_ip_addrs
    finally:
        await client.close()
    alice = load_svid(as_role(tmp_path, lab, "alice"))
    assert alice is not None
    # what the server took the caller for: the SPIFFE id and certificate of its handshake
    assert recorder.callers == [("spiffe://p4nsm/nsc/alice", alice.cert_chain_pem())]


async def test_plaintext_client_refused(served) -> None:
    server, recorder = served
    async with grpc.aio.insecure_channel(dial_target(server.address)) as channel:
        err = await refused(networkservice_pb2_grpc.NetworkServiceStub(channel).Request(nsc_request(), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        err = await refused(registry_pb2_grpc.NetworkServiceEndpointRegistryStub(channel).Register(
            registry_pb2.NetworkServiceEndpoint(name="intruder", network_service_names=["icmp"], url="tcp://127.0.0.1:1"),
            timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert recorder.new == [] and server.endpoints.get("intruder") is None


async def test_endpoint_refuses_plaintext(endpoint: Endpoint) -> None:
    """The endpoint serves mTLS only: nobody without a certificate of the CA reaches it."""
    assert endpoint.svid is not None and endpoint.svid.spiffe_id == "spiffe://p4nsm/nse"
    async with grpc.aio.insecure_channel(dial_target(endpoint.url)) as channel:
        err = await refused(networkservice_pb2_grpc.NetworkServiceStub(channel).Request(nsc_request(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_of_another_ca_refused(served, tmp_path: Path, lab: LabCerts) -> None:
    server, recorder = served
    other = init_lab_certs(tmp_path / "other-ca")
    # it trusts the controller's CA, but its own certificate comes from another one
    stranger = load_svid(nsm_settings(tmp_path, tls_cert_file=other.cert("nsc"), tls_key_file=other.key("nsc"),
                                      tls_ca_file=lab.ca))
    assert stranger is not None
    async with grpc.aio.secure_channel(dial_target(server.address), channel_credentials(stranger)) as channel:
        err = await refused(networkservice_pb2_grpc.NetworkServiceStub(channel).Request(nsc_request(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # and a client with a certificate of the right CA that does not trust the server's is refused by itself
    async with grpc.aio.secure_channel(dial_target(server.address), channel_credentials(
            load_svid(nsm_settings(tmp_path, **other.settings("nsc"))))) as channel:  # type: ignore[arg-type]
        err = await refused(networkservice_pb2_grpc.NetworkServiceStub(channel).Request(nsc_request(), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert recorder.new == []


async def test_without_certificates_or_plaintext_nothing_starts(controller: Controller, tmp_path: Path) -> None:
    bare = nsm_settings(tmp_path, plaintext=False)
    with pytest.raises(IdentityError, match=r"NSM server: no certificate configured.*plaintext=true"):
        NsmServer(controller.fabric, bare)
    with pytest.raises(IdentityError, match="NSM server"):  # `p4nsm run`: before any switch is dialled
        Controller(load_topology(DIAMOND), bare, nsm_address="127.0.0.1:0")
    with pytest.raises(IdentityError, match="NSM client"):
        Client("unix:///nowhere.sock", bare)
    with pytest.raises(IdentityError, match="NSM endpoint"):
        Endpoint(EndpointConfig(service="icmp", host="h3", cidr="10.60.0.0/24", nsm_url="unix:///nowhere.sock"), bare)
    # plaintext is a choice: then the server starts and serves without TLS
    server = NsmServer(controller.fabric, nsm_settings(tmp_path, plaintext=True))
    assert server.svid is None
