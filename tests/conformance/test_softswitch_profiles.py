"""`p4nsm-softswitch --profile stratum|infrap4d` over real gRPC: each rule those targets follow
(softswitch/profiles.py), TLS, and the gNMI port-state subset (softswitch/gnmi.py).

The carrier test needs a veth pair (root); the rest runs anywhere.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from finsy.proto import U128, gnmi, gnmi_grpc, p4r, p4r_grpc, rpc_code

from tests.e2e.netns import disable_ipv6
from tests.support.fixtures import SOFTSWITCH_BIN, SoftSwitchProcess, start_softswitch
from tests.support.p4rt import P4RTTestClient, WriteError
from tests.support.tls import Certs, make_certs

SVC = p4r.SetForwardingPipelineConfigRequest
SEL = "next_hop_selector"
PROBE_TYPE = 0x88B5  # what nsm_fabric punts to the controller
OPEN = {"stratum": [], "infrap4d": ["--grpc-open-insecure-mode"], "softswitch": []}


@contextlib.contextmanager
def switch(profile: str, *extra: str, interfaces: tuple[str, ...] = ()) -> Iterator[SoftSwitchProcess]:
    with start_softswitch(1, interfaces=interfaces, extra_args=["--profile", profile, *OPEN[profile], *extra]) as sw:
        yield sw


@pytest.fixture(params=["stratum", "infrap4d"])
def target(request) -> Iterator[tuple[str, SoftSwitchProcess]]:
    with switch(request.param) as sw:
        yield request.param, sw


def stream_end(client: P4RTTestClient) -> grpc.RpcError:
    end = client.wait_stream_end()
    assert isinstance(end, grpc.RpcError), end
    return end


def members_and_group(c: P4RTTestClient, watch: bool) -> p4r.ActionProfileGroup:
    c.insert([c.member(SEL, i, "swap_forward", {"label": 100 + i, "port": i}) for i in (1, 2)])
    return c.group(SEL, 10, [(1, 1, 1), (2, 1, 2)] if watch else [1, 2])


# -- ids --------------------------------------------------------------------------------------


def test_device_id_zero_is_refused_on_the_stream(target) -> None:
    _, sw = target
    client = P4RTTestClient(sw.address, device_id=0, election_id=10, arbitrate=False)
    try:
        client.send_arbitration()
        end = stream_end(client)
        assert end.code() == grpc.StatusCode.INVALID_ARGUMENT and end.details() == "Invalid device ID."
    finally:
        client.close()


def test_election_id_zero_is_refused_on_the_stream_and_in_writes(target) -> None:
    _, sw = target
    zero = P4RTTestClient(sw.address, device_id=1, election_id=0, arbitrate=False)
    try:
        zero.send_arbitration()
        end = stream_end(zero)
        assert end.code() == grpc.StatusCode.INVALID_ARGUMENT and end.details() == "Invalid election ID."
    finally:
        zero.close()
    with P4RTTestClient(sw.address, device_id=1, election_id=10) as c:
        c.set_pipeline()
        request = c.write_request([])
        request.election_id.CopyFrom(U128.encode(0))
        with pytest.raises(grpc.RpcError) as info:
            c.stub.Write(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "Invalid election ID."


def test_the_default_profile_takes_election_id_zero() -> None:
    """The contrast: the softswitch's own behaviour (the spec lets a client arbitrate with 0)."""
    with switch("softswitch") as sw, P4RTTestClient(sw.address, device_id=1, election_id=0) as c:
        assert c.arbitration is not None and c.arbitration.status.code == rpc_code.OK


def test_a_profile_refuses_to_start_as_device_zero() -> None:
    run = subprocess.run([str(SOFTSWITCH_BIN), "--profile", "stratum", "--device-id", "0"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "device id 0" in run.stderr


# -- pipeline ---------------------------------------------------------------------------------


def test_reconcile_and_commit_is_unimplemented(target) -> None:
    _, sw = target
    with P4RTTestClient(sw.address, device_id=1, election_id=10) as c:
        with pytest.raises(grpc.RpcError) as info:
            c.set_pipeline(action=SVC.RECONCILE_AND_COMMIT)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert not c.get_pipeline().HasField("p4info")  # nothing was committed
        c.set_pipeline(action=SVC.VERIFY_AND_COMMIT, cookie=5)
        assert c.get_pipeline().cookie.cookie == 5


# -- watch ports ------------------------------------------------------------------------------


def test_stratum_refuses_watch_ports() -> None:
    with switch("stratum") as sw, P4RTTestClient(sw.address, device_id=1, election_id=10) as c:
        c.set_pipeline()
        with pytest.raises(WriteError) as info:
            c.insert(members_and_group(c, watch=True))
        [(_, error)] = info.value.failed
        assert error.canonical_code == rpc_code.INVALID_ARGUMENT and error.message == "Watch ports are not supported."
        assert c.read(c.group(SEL, 0)) == []
        plain = c.group(SEL, 10, [1, 2])
        c.insert(plain)
        assert [e.action_profile_group for e in c.read(c.group(SEL, 0))] == [plain]


def test_infrap4d_takes_watch_ports_and_does_not_honour_them() -> None:
    with switch("infrap4d") as sw, P4RTTestClient(sw.address, device_id=1, election_id=10) as c:
        c.set_pipeline()
        c.insert(members_and_group(c, watch=True))
        [group] = [e.action_profile_group for e in c.read(c.group(SEL, 0))]
        assert [(m.member_id, m.WhichOneof("watch_kind")) for m in group.members] == [(1, None), (2, None)]


# -- packet I/O -------------------------------------------------------------------------------


def unknown_metadata_packet_out() -> p4r.PacketOut:
    packet = p4r.PacketOut(payload=b"marker")
    packet.metadata.add(metadata_id=99, value=b"\x01")
    return packet


def test_infrap4d_takes_32_bit_packet_out_ports_and_drops_the_packets() -> None:
    with switch("infrap4d") as sw, P4RTTestClient(sw.address, device_id=1, election_id=10) as c:
        c.set_pipeline()
        header = c.names.packet_metadata["packet_out"]
        packet = p4r.PacketOut(payload=b"x" * 60)
        for m in header.metadata:
            packet.metadata.add(metadata_id=m.id, value=(2**20 if m.name == "egress_port" else 0).to_bytes(4, "big"))
        c.send_packet_out(packet)
        # Stream errors come in order: the first one belongs to the bad packet-out sent second,
        # so the wide one before it was accepted.
        c.send_packet_out(unknown_metadata_packet_out())
        error = c.stream_error(timeout=5)
        assert error.packet_out.packet_out.payload == b"marker", error
        assert "event=packet_out_dropped" in sw.log() and "reason=no_packet_io" in sw.log()


def test_stratum_checks_packet_out_ports_at_their_p4info_width() -> None:
    with switch("stratum") as sw, P4RTTestClient(sw.address, device_id=1, election_id=10) as c:
        c.set_pipeline()
        header = c.names.packet_metadata["packet_out"]
        packet = p4r.PacketOut(payload=b"wide")
        for m in header.metadata:
            packet.metadata.add(metadata_id=m.id, value=(2**20 if m.name == "egress_port" else 0).to_bytes(4, "big"))
        c.send_packet_out(packet)
        error = c.stream_error(timeout=5)
        assert error.canonical_code == rpc_code.INVALID_ARGUMENT and error.packet_out.packet_out.payload == b"wide"


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_infrap4d_will_not_start_without_certificates() -> None:
    run = subprocess.run([str(SOFTSWITCH_BIN), "--profile", "infrap4d", "--device-id", "1"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "--grpc-open-insecure-mode" in run.stderr


def test_stratum_tls_serves_a_client_that_trusts_the_ca_only(certs: Certs) -> None:
    with start_softswitch(1, extra_args=["--profile", "stratum", *certs.server_args()], channel=certs.channel) as sw:
        with certs.channel(sw.address) as secure:
            reply = p4r_grpc.P4RuntimeStub(secure).Capabilities(p4r.CapabilitiesRequest(), timeout=5)
            assert reply.p4runtime_api_version
        with grpc.insecure_channel(sw.address) as plain:
            with pytest.raises(grpc.RpcError) as info:
                p4r_grpc.P4RuntimeStub(plain).Capabilities(p4r.CapabilitiesRequest(), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_infrap4d_requires_a_client_certificate_of_its_ca(certs: Certs) -> None:
    # TLS by default (no --grpc-server-ssl), and REQUIRE_CLIENT_CERT_AND_VERIFY: the CA is given.
    client = certs.client("spiffe://p4nsm/controller", "infrap4d-client")
    extra = [*certs.server_args()[1:], "--grpc-server-cacert", str(certs.ca)]
    with start_softswitch(1, extra_args=["--profile", "infrap4d", *extra],
                          channel=lambda addr: certs.channel(addr, client)) as sw:
        with certs.channel(sw.address, client) as mutual:
            assert p4r_grpc.P4RuntimeStub(mutual).Capabilities(p4r.CapabilitiesRequest(), timeout=5).p4runtime_api_version
        with certs.channel(sw.address) as server_only:
            with pytest.raises(grpc.RpcError) as info:
                p4r_grpc.P4RuntimeStub(server_only).Capabilities(p4r.CapabilitiesRequest(), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    run = subprocess.run([str(SOFTSWITCH_BIN), "--profile", "infrap4d", "--device-id", "1", *certs.server_args()[1:]],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "--grpc-server-cacert" in run.stderr


# -- gNMI -------------------------------------------------------------------------------------


def oper_status_path(name: str = "*") -> gnmi.Path:
    return gnmi.Path(elem=[gnmi.PathElem(name="interfaces"), gnmi.PathElem(name="interface", key={"name": name}),
                           gnmi.PathElem(name="state"), gnmi.PathElem(name="oper-status")])


def leaves(notification: gnmi.Notification) -> dict[tuple[str, str], object]:
    out: dict[tuple[str, str], object] = {}
    for u in notification.update:
        name = u.path.elem[1].key["name"]
        kind = u.val.WhichOneof("value")
        out[(name, u.path.elem[-1].name)] = getattr(u.val, kind)
    return out


def test_gnmi_capabilities_and_get() -> None:
    ports = ("3@absent-if-a", "7@absent-if-b")
    with switch("stratum", interfaces=ports) as sw, grpc.insecure_channel(sw.address) as channel:
        stub = gnmi_grpc.gNMIStub(channel)
        caps = stub.Capabilities(gnmi.CapabilityRequest(), timeout=5)
        assert caps.gNMI_version and any(m.name == "openconfig-interfaces" for m in caps.supported_models)
        state = gnmi.Path(elem=[gnmi.PathElem(name="interfaces"), gnmi.PathElem(name="interface", key={"name": "*"}),
                                gnmi.PathElem(name="state")])
        [note] = stub.Get(gnmi.GetRequest(path=[state]), timeout=5).notification
        assert leaves(note) == {("absent-if-a", "oper-status"): "NOT_PRESENT", ("absent-if-a", "ifindex"): 3,
                                ("absent-if-b", "oper-status"): "NOT_PRESENT", ("absent-if-b", "ifindex"): 7}
        [note] = stub.Get(gnmi.GetRequest(path=[oper_status_path("absent-if-b")]), timeout=5).notification
        assert leaves(note) == {("absent-if-b", "oper-status"): "NOT_PRESENT"}
        for path, code in ((oper_status_path("nosuch"), grpc.StatusCode.NOT_FOUND),
                           (gnmi.Path(elem=[gnmi.PathElem(name="system")]), grpc.StatusCode.UNIMPLEMENTED)):
            with pytest.raises(grpc.RpcError) as info:
                stub.Get(gnmi.GetRequest(path=[path]), timeout=5)
            assert info.value.code() == code


class Subscription:
    """A gNMI STREAM subscription read on a thread: responses in a queue."""

    def __init__(self, address: str, paths: list[gnmi.Path]) -> None:
        self.channel = grpc.insecure_channel(address)
        request = gnmi.SubscribeRequest(subscribe=gnmi.SubscriptionList(
            mode=gnmi.SubscriptionList.STREAM,
            subscription=[gnmi.Subscription(path=p, mode=gnmi.ON_CHANGE) for p in paths]))
        self.call = gnmi_grpc.gNMIStub(self.channel).Subscribe(iter([request]))
        self.responses: queue.Queue[gnmi.SubscribeResponse | Exception] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError as err:
            self.responses.put(err)

    def next(self, timeout: float = 5.0) -> gnmi.SubscribeResponse:
        item = self.responses.get(timeout=timeout)
        assert not isinstance(item, Exception), item
        return item

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def wait_oper_status(address: str, name: str, status: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        while True:
            [note] = gnmi_grpc.gNMIStub(channel).Get(gnmi.GetRequest(path=[oper_status_path(name)]), timeout=5).notification
            if leaves(note)[(name, "oper-status")] == status:
                return
            assert time.monotonic() < deadline, f"{name} never became {status}"
            time.sleep(0.02)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("a carrier change needs a veth pair (root)")
    tag = uuid.uuid4().hex[:6]
    a, b = f"p4g{tag}a", f"p4g{tag}b"
    ip("link", "add", a, "type", "veth", "peer", "name", b)
    try:
        for end in (a, b):
            disable_ipv6(end)  # no kernel chatter on the pair: the test's frames are the only ones
        ip("link", "set", a, "up")
        ip("link", "set", b, "up")
        yield a, b
    finally:
        subprocess.run(["ip", "link", "delete", a], capture_output=True)


@pytest.mark.root
def test_gnmi_subscribe_sends_the_state_then_sync_then_each_carrier_change(veth) -> None:
    mine, peer = veth
    with switch("stratum", interfaces=(f"2@{mine}", "5@absent-if-c")) as sw:
        wait_oper_status(sw.address, mine, "UP")  # the carrier of a veth just set up may lag
        sub = Subscription(sw.address, [oper_status_path()])
        try:
            first = sub.next()
            assert leaves(first.update) == {(mine, "oper-status"): "UP", ("absent-if-c", "oper-status"): "NOT_PRESENT"}
            assert sub.next().sync_response
            ip("link", "set", peer, "down")  # the peer's carrier loss is this end's: LOWER_UP goes
            assert leaves(sub.next().update) == {(mine, "oper-status"): "DOWN"}
            ip("link", "set", peer, "up")
            assert leaves(sub.next().update) == {(mine, "oper-status"): "UP"}
        finally:
            sub.close()


def send_probe(ifname: str) -> None:
    """A frame of the probes' EtherType into the switch port's peer: nsm_fabric punts it."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        sock.send(bytes.fromhex("020000000b02020000000a01") + PROBE_TYPE.to_bytes(2, "big") + b"probe".ljust(50, b"\0"))


def wait_rx(sw: SoftSwitchProcess, ifname: str, timeout: float = 5.0) -> None:
    """Until the switch's counters (logged on SIGUSR1) show a frame received on ifname."""
    deadline = time.monotonic() + timeout
    while f"ifname={ifname} up=True rx=1 " not in sw.log():
        assert time.monotonic() < deadline, sw.log()
        sw.process.send_signal(signal.SIGUSR1)
        time.sleep(0.05)


@pytest.mark.root
@pytest.mark.parametrize("profile", ["softswitch", "infrap4d"])
def test_infrap4d_sends_no_packet_in(veth, profile: str) -> None:
    mine, peer = veth
    with switch(profile, interfaces=(f"2@{mine}",)) as sw, P4RTTestClient(sw.address, device_id=1, election_id=10) as c:
        c.set_pipeline()
        wait_oper_status(sw.address, mine, "UP")
        send_probe(peer)
        wait_rx(sw, mine)
        # The frame was handled before the counters were logged; a packet-in for it would be on
        # the stream before the error answering this later bad packet-out.
        c.send_packet_out(unknown_metadata_packet_out())
        c.stream_error(timeout=5)
        if profile == "softswitch":
            assert c.packet_in(timeout=0)[1]["ingress_port"] == 2  # the control: it is punted
        else:
            assert c.packets.empty()
