"""controller/identity over real TLS sockets: lab certificates load, a server with an SVID sees the
caller's SPIFFE id and refuses plaintext, clients of another CA and clients without a
certificate; the Workload API source reads an SVID from a real gRPC Workload API server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from spiffe._proto import workload_pb2, workload_pb2_grpc

from controller.identity import (
    IdentityError,
    Svid,
    channel_credentials,
    init_lab_certs,
    load_svid,
    peer_certificate_pem,
    peer_spiffe_id,
    require_svid,
    server_credentials,
    verify_svid,
)
from tests.support.settings import settings_for_test
from tests.support.tls import make_certs


class Recording(HealthServicer):
    """Health that remembers who called: the identity the server saw."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[tuple[str, bytes]] = []

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        self.peers.append((peer_spiffe_id(context), peer_certificate_pem(context)))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def svid_of(lab_dir: Path, name: str) -> Svid:
    svid = load_svid(settings_for_test(lab_settings_of(lab_dir, name), env=False))
    assert svid is not None
    return svid


def lab_settings_of(lab_dir: Path, name: str) -> dict[str, str]:
    return {"tls_cert_file": str(lab_dir / f"{name}.crt"), "tls_key_file": str(lab_dir / f"{name}.key"),
            "tls_ca_file": str(lab_dir / "ca.crt")}


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    init_lab_certs(tmp_path / "lab", switches=["s1"])
    return tmp_path / "lab"


@pytest.fixture
async def tls_server(lab: Path) -> AsyncIterator[tuple[str, Recording]]:
    server = grpc.aio.server()
    health = Recording()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(svid_of(lab, "controller")))
    await server.start()
    yield f"127.0.0.1:{port}", health
    await server.stop(0)


async def check(channel: grpc.aio.Channel) -> None:
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


def test_lab_certificates_carry_spiffe_ids(lab: Path) -> None:
    assert svid_of(lab, "controller").spiffe_id == "spiffe://p4nsm/controller"
    assert svid_of(lab, "nsc").spiffe_id == "spiffe://p4nsm/nsc"
    assert svid_of(lab, "operator").spiffe_id == "spiffe://p4nsm/operator"
    s1 = svid_of(lab, "s1")
    assert s1.spiffe_id == "spiffe://p4nsm/switch/s1"
    assert verify_svid(s1.cert_chain_pem(), s1.bundle_pem()) == "spiffe://p4nsm/switch/s1"
    assert (lab / "ca.key").stat().st_mode & 0o077 == 0
    # P-256: the same key signs ES256 tokens
    assert svid_of(lab, "nse").private_key.curve.name == "secp256r1"  # type: ignore[union-attr]


async def test_server_sees_the_callers_spiffe_id(lab: Path, tls_server: tuple[str, Recording]) -> None:
    address, health = tls_server
    nsc = svid_of(lab, "nsc")
    async with grpc.aio.secure_channel(address, channel_credentials(nsc)) as channel:
        await check(channel)
    assert health.peers == [("spiffe://p4nsm/nsc", nsc.cert_chain_pem())]


async def test_plaintext_client_refused(tls_server: tuple[str, Recording]) -> None:
    address, health = tls_server
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await check(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health.peers == []


async def test_client_of_another_ca_refused(tmp_path: Path, tls_server: tuple[str, Recording]) -> None:
    address, health = tls_server
    init_lab_certs(tmp_path / "other")
    # trusts the server's CA, but its own certificate comes from another one
    other = svid_of(tmp_path / "other", "nsc")
    lab_bundle = svid_of(tmp_path / "lab", "nsc").trust_bundle
    stranger = Svid(other.spiffe_id, other.cert_chain, other.private_key, lab_bundle)
    async with grpc.aio.secure_channel(address, channel_credentials(stranger)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await check(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health.peers == []
    with pytest.raises(IdentityError, match="does not chain"):
        verify_svid(other.cert_chain_pem(), stranger.bundle_pem())


async def test_client_without_certificate_refused(lab: Path, tls_server: tuple[str, Recording]) -> None:
    address, health = tls_server
    credentials = grpc.ssl_channel_credentials(root_certificates=(lab / "ca.crt").read_bytes())
    async with grpc.aio.secure_channel(address, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await check(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert health.peers == []


def test_settings_select_the_source(lab: Path) -> None:
    assert load_svid(settings_for_test(env=False)) is None
    with pytest.raises(IdentityError, match="missing: tls_key_file"):
        load_svid(settings_for_test({"tls_cert_file": str(lab / "nsc.crt"), "tls_ca_file": str(lab / "ca.crt")}, env=False))
    with pytest.raises(IdentityError, match="plaintext=true"):
        require_svid(settings_for_test(plaintext=False, env=False), "nsm server")
    assert require_svid(settings_for_test({"plaintext": True}, env=False), "nsm server") is None
    with pytest.raises(IdentityError, match="does not match"):
        load_svid(settings_for_test({**lab_settings_of(lab, "nsc"), "tls_key_file": str(lab / "nse.key")}, env=False))
    plain = make_certs(lab.parent / "plain")  # a server certificate with DNS and IP SANs only
    with pytest.raises(IdentityError, match="no spiffe:// URI SAN"):
        load_svid(settings_for_test({**lab_settings_of(lab, "nsc"), "tls_cert_file": str(plain.cert),
                                     "tls_key_file": str(plain.key)}, env=False))


class WorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """A SPIRE agent's Workload API as far as FetchX509SVID goes, handing out one lab SVID."""

    def __init__(self, svid: Svid) -> None:
        self.svid = svid

    async def FetchX509SVID(self, request: workload_pb2.X509SVIDRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[workload_pb2.X509SVIDResponse]:
        if dict(context.invocation_metadata()).get("workload.spiffe.io") != "true":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing")
        der = serialization.Encoding.DER
        yield workload_pb2.X509SVIDResponse(svids=[workload_pb2.X509SVID(
            spiffe_id=self.svid.spiffe_id,
            x509_svid=b"".join(c.public_bytes(der) for c in self.svid.cert_chain),
            x509_svid_key=self.svid.private_key.private_bytes(der, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()),
            bundle=b"".join(c.public_bytes(der) for c in self.svid.trust_bundle))])
        await asyncio.Event().wait()  # a real agent keeps the stream open for rotations


async def test_workload_api_source(lab: Path, tmp_path: Path) -> None:
    nse = svid_of(lab, "nse")
    server = grpc.aio.server()
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(WorkloadApi(nse), server)
    socket = tmp_path / "agent.sock"
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    try:
        # the spiffe package's client blocks: off the loop, which serves the agent meanwhile
        svid = await asyncio.to_thread(load_svid, settings_for_test({"spiffe_endpoint_socket": str(socket)}, env=False))
    finally:
        await server.stop(0)
    assert svid is not None
    assert svid.spiffe_id == "spiffe://p4nsm/nse"
    assert svid.cert_chain_pem() == nse.cert_chain_pem()
    assert svid.bundle_pem() == nse.bundle_pem()
    assert svid.key_pem() == nse.key_pem()


def test_workload_api_without_agent(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="spiffe_endpoint_socket"):
        load_svid(settings_for_test({"spiffe_endpoint_socket": str(tmp_path / "none.sock")}, env=False))


async def test_certs_init_command_output_loads_and_works(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    command = [sys.executable, "-m", "controller.commands.cli", "certs", "init", str(directory),
               "--switch", "s1", "--identity", "alice=nsc/alice"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ca = (directory / "ca.crt").read_bytes()
    assert svid_of(directory, "alice").spiffe_id == "spiffe://p4nsm/nsc/alice"
    s1 = x509.load_pem_x509_certificate((directory / "s1.crt").read_bytes())
    assert "s1" in s1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    # run again: the CA stays, so what it issued before stays trusted
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    assert (directory / "ca.crt").read_bytes() == ca
    server = grpc.aio.server()
    health = Recording()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(svid_of(directory, "controller")))
    await server.start()
    try:
        async with grpc.aio.secure_channel(f"localhost:{port}", channel_credentials(svid_of(directory, "alice"))) as channel:
            await check(channel)
    finally:
        await server.stop(0)
    assert [peer for peer, _ in health.peers] == ["spiffe://p4nsm/nsc/alice"]
