"""The controller's P4Runtime client towards a softswitch that requires a client certificate
(mTLS, simple_switch_grpc's --grpc-server-with-client-auth) and trusts only the controller's
SPIFFE id: the controller's SVID gets it a session, its absence or another identity does not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r

from controller.identity import LabCerts, Svid, init_lab_certs, load_svid
from controller.p4rt.client import SwitchClient, SwitchTarget, TlsConfig
from controller.p4rt.schema import P4Schema
from controller.pipeline.revisions import pipeline_cookie
from controller.settings import Settings
from controller.targets import device_config
from tests.support.fixtures import SoftSwitchProcess, start_softswitch


@pytest.fixture
def lab_certs(tmp_path: Path) -> LabCerts:
    return init_lab_certs(tmp_path / "certs", switches=["s1"])


def svid(certs: LabCerts, name: str) -> Svid:
    loaded = load_svid(Settings.model_validate(certs.settings(name)))
    assert loaded is not None
    return loaded


@pytest.fixture
def mtls_switch(lab_certs: LabCerts) -> Iterator[SoftSwitchProcess]:
    c = lab_certs
    args = ["--grpc-server-ssl", "--grpc-server-cert", str(c.cert("s1")), "--grpc-server-key", str(c.key("s1")),
            "--grpc-server-with-client-auth", "--grpc-server-cacert", str(c.ca),
            "--grpc-server-allow", c.spiffe_id("controller")]

    def channel(address: str) -> grpc.Channel:
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(
            c.ca.read_bytes(), c.key("controller").read_bytes(), c.cert("controller").read_bytes()))

    with start_softswitch(extra_args=args, channel=channel) as running:
        yield running


async def started(switch: SoftSwitchProcess, tls: TlsConfig) -> AsyncIterator[SwitchClient]:
    settings = Settings()
    schema = P4Schema.from_file(settings.p4info_path)
    p4info = schema.p4info.SerializeToString(deterministic=True)
    config = device_config("softswitch", settings)
    target = SwitchTarget("s1", switch.address, switch.device_id, p4info, config,
                          pipeline_cookie(p4info, [config]), tls)
    client = SwitchClient(target, schema, settings)
    client.start()
    try:
        yield client
    finally:
        await client.stop()


async def test_the_controller_svid_gets_a_session_on_a_switch_that_requires_client_certificates(
        mtls_switch: SoftSwitchProcess, lab_certs: LabCerts) -> None:
    async for client in started(mtls_switch, TlsConfig(lab_certs.ca, "s1", svid(lab_certs, "controller"))):
        assert await client.wait_up(10), "the controller never became primary over mTLS"
        update = client.schema.table_update(p4r.Update.INSERT, "FabricIngress.fabric_ports", {"ingress_port": 1},
                                            "FabricIngress.mark_fabric", {})
        await client.write([update])
        assert len(await client.read_table_entries("FabricIngress.fabric_ports")) == 1


async def test_without_a_client_certificate_the_switch_refuses_the_controller(
        mtls_switch: SoftSwitchProcess, lab_certs: LabCerts) -> None:
    async for client in started(mtls_switch, TlsConfig(lab_certs.ca, "s1")):
        assert not await client.wait_up(3), "a switch requiring client certificates served one without"
        assert client.sessions == 0  # refused in the handshake: no stream was ever opened


async def test_an_identity_off_the_allow_list_is_refused_arbitration(
        mtls_switch: SoftSwitchProcess, lab_certs: LabCerts) -> None:
    async for client in started(mtls_switch, TlsConfig(lab_certs.ca, "s1", svid(lab_certs, "nsc"))):
        assert not await client.wait_up(3), "an identity the switch does not trust became primary"
        assert client.sessions >= 1  # TLS let it in (the CA signed it); arbitration did not
    assert "PERMISSION_DENIED" in mtls_switch.log() and "spiffe://p4nsm/nsc" in mtls_switch.log()
