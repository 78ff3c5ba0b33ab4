"""The lab runs its switches with mutual TLS by default, softswitch and real BMv2 alike
(simple_switch_grpc's --grpc-server-ssl ... --grpc-server-with-client-auth): certificates made in
the run directory, a plaintext client or one without a certificate refused, and a controller on
`lab.topology` with `lab.controller_settings()` comes up. The softswitch also refuses arbitration
to an identity its CA signed but its allow-list does not name; BMv2 has no allow-list."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc

from controller.runtime import Controller
from controller.topology import load_topology
from tests.e2e.switch_kinds import SOFTSWITCH, SWITCH_KINDS, controller_overrides, on_kind, require
from tests.support.p4rt import P4RTTestClient
from tests.support.settings import settings_for_test

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=SWITCH_KINDS)
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object, Path]]:
    from lab.harness import Lab

    kind = request.param
    require(kind)
    run_dir = tmp_path_factory.mktemp(f"lab-tls-{kind}")
    with Lab(on_kind(load_topology(REPO_ROOT / "topologies" / "line3.yaml"), kind), run_dir) as running:
        yield kind, running, run_dir


def channel(lab_obj, name: str | None, address: str) -> grpc.Channel:
    certs = lab_obj.certs
    credentials = grpc.ssl_channel_credentials(
        certs.ca.read_bytes(),
        certs.key(name).read_bytes() if name else None,
        certs.cert(name).read_bytes() if name else None)
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "s1")])


def capabilities(ch: grpc.Channel) -> str:
    return p4r_grpc.P4RuntimeStub(ch).Capabilities(p4r.CapabilitiesRequest(), timeout=3).p4runtime_api_version


def test_switches_serve_mutual_tls_with_certificates_in_the_run_directory(lab) -> None:
    kind, lab_obj, run_dir = lab
    s1 = lab_obj.topology.switch("s1")
    assert (run_dir / "certs" / "ca.crt").exists() and (run_dir / "certs" / "s1.crt").exists()
    assert s1.tls_ca == run_dir / "certs" / "ca.crt" and s1.tls_server_name == "s1"
    with channel(lab_obj, "controller", s1.grpc_addr) as mutual:
        assert capabilities(mutual)
    for refused in (channel(lab_obj, None, s1.grpc_addr), grpc.insecure_channel(s1.grpc_addr)):
        with refused, pytest.raises(grpc.RpcError) as info:
            capabilities(refused)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, kind


async def test_a_controller_on_the_lab_topology_and_settings_comes_up(lab) -> None:
    kind, lab_obj, run_dir = lab
    settings = settings_for_test({**controller_overrides(kind, run_dir), **lab_obj.controller_settings(),
                                  "store_path": str(run_dir / f"{uuid.uuid4().hex[:6]}.sqlite")})
    ctl = Controller(lab_obj.topology, settings)
    await ctl.start()
    try:
        assert await ctl.wait_ready(30), f"{kind} switches did not come up over mutual TLS"
    finally:
        await ctl.stop()


def test_the_softswitch_refuses_arbitration_to_an_identity_off_its_allow_list(lab) -> None:
    kind, lab_obj, _ = lab
    if kind != SOFTSWITCH:
        pytest.skip("BMv2 has no allow-list: every certificate its CA signed may arbitrate")
    s1 = lab_obj.topology.switch("s1")
    client = P4RTTestClient(s1.grpc_addr, device_id=s1.device_id, arbitrate=False,
                            channel=channel(lab_obj, "nsc", s1.grpc_addr))
    client.send_arbitration(2**127)
    end = client.wait_stream_end()
    assert end is not None and end.code() == grpc.StatusCode.PERMISSION_DENIED
    client.close()
