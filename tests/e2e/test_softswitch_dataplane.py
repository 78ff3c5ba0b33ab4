"""The softswitch's data plane end to end: namespaces, veth pairs, `p4nsm-softswitch` processes
programmed over P4Runtime, and scapy sending and capturing inside the host namespaces.

Frames carry a marker of their test so that a capture ignores whatever else crosses a link.

Softswitch only: its subject is the softswitch's data plane; BMv2's is exercised by the fabric,
heal and NSM suites, which run on both.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import time
from collections.abc import Callable, Iterable

import pytest
from scapy.contrib.mpls import MPLS
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from tests.e2e.hosts import Host
from tests.e2e.netns import ip
from tests.e2e.topology import (
    DST,
    PAYLOAD_TYPE,
    SRC,
    Net,
    Switch,
    labelled,
    padded,
    tagged,
)

pytestmark = pytest.mark.root

# How long a frame that must be dropped is given to show up anyway.
MISS_WAIT = 0.7
ARRIVAL_TIMEOUT = 3.0
PROBE_TYPE = 0x88B5


def nothing_arrives(watch: Iterable[tuple[Host, str]], marker: bytes) -> None:
    """No frame holding marker reaches any of the (host, iface) captures."""
    wait = MISS_WAIT
    for host, iface in watch:
        got = host.take(iface, marker, count=1, timeout=wait)
        assert got == [], f"{host.name}/{iface} received {[Ether(f).summary() for f in got]}"
        wait = 0.05  # the others had the same time to arrive


def arrives_at(host: Host, ifaces: Iterable[str], marker: bytes, timeout: float = ARRIVAL_TIMEOUT) -> dict[str, list[bytes]]:
    """Where frames holding marker arrive among the host's ifaces: {iface: frames} (empty ones left out)."""
    ifaces = list(ifaces)
    deadline = time.monotonic() + timeout
    while True:
        got = {i: host.take(i, marker, count=1, timeout=0.05) for i in ifaces}
        found = {i: f for i, f in got.items() if f}
        if found or time.monotonic() > deadline:
            return found


def resend_until_seen(
    send: Callable[[], None], host: Host, ifaces: Iterable[str], marker: bytes, tries: int = 10
) -> dict[str, list[bytes]]:
    """arrives_at for a capture whose interface just came back: the host's capture socket
    reopens a moment after the switch sees the link, so a single frame could pass unseen."""
    ifaces = list(ifaces)
    for _ in range(tries):
        send()
        found = arrives_at(host, ifaces, marker, timeout=0.3)
        if found:
            return found
    return {}


def drain(switch: Switch) -> None:
    while True:
        try:
            switch.client.packets.get_nowait()
        except queue.Empty:
            return


# -- one switch: h1 (port 1) and h2 (port 2) on VLANs, a fabric neighbour on port 3 ------------


@dataclasses.dataclass
class OneSwitch:
    sw: Switch
    h1: Host
    h2: Host
    nbr: Host


@pytest.fixture(scope="module")
def one(module_net: Net) -> OneSwitch:
    net = module_net
    h1, h2, nbr = net.host("h1"), net.host("h2"), net.host("nbr")
    ports = {1: net.attach(h1, "eth0"), 2: net.attach(h2, "eth0"), 3: net.attach(nbr, "eth0")}
    sw = net.switch(1, ports)
    # One connection: h1 VLAN 100 <-> h2 VLAN 200, one label per direction.
    sw.edge(1, 100, 1000)
    sw.label(1000, "pop_to_edge", port=2, vlan_id=200)
    sw.edge(2, 200, 1001)
    sw.label(1001, "pop_to_edge", port=1, vlan_id=100)
    # The neighbour is a fabric switch: its label 3000 ends at h2 on VLAN 201.
    sw.fabric_port(3)
    sw.label(3000, "pop_to_edge", port=2, vlan_id=201)
    for host in (h1, h2, nbr):
        host.listen("eth0")
    return OneSwitch(sw, h1, h2, nbr)


def edge_counter(sw: Switch, port: int, vid: int) -> tuple[int, int]:
    for entry in sw.client.read_table("edge_classify", counters=True):
        values = [int.from_bytes(m.exact.value, "big") for m in entry.match]
        if values == [port, vid]:
            return entry.counter_data.packet_count, entry.counter_data.byte_count
    raise AssertionError(f"no edge_classify entry for port {port} vlan {vid}")


def test_one_switch_rewrites_vlan_both_ways_and_counts(one: OneSwitch) -> None:
    before = edge_counter(one.sw, 1, 100)
    there = tagged(100, b"one-there", pcp=3)
    one.h1.send("eth0", [there])
    assert one.h2.take("eth0", b"one-there", timeout=ARRIVAL_TIMEOUT) == [tagged(200, b"one-there", pcp=3)]

    back = tagged(200, b"one-back", src=DST, dst=SRC)
    one.h2.send("eth0", [back])
    assert one.h1.take("eth0", b"one-back", timeout=ARRIVAL_TIMEOUT) == [tagged(100, b"one-back", src=DST, dst=SRC)]

    after = edge_counter(one.sw, 1, 100)
    assert (after[0] - before[0], after[1] - before[1]) == (1, len(there))


def test_packet_out_leaves_on_the_requested_port(one: OneSwitch) -> None:
    frame = bytes(Ether(src=SRC, dst=DST, type=PAYLOAD_TYPE) / Raw(padded(b"pkt-out-2", 14)))
    one.sw.client.packet_out(frame, egress_port=2)
    assert one.h2.take("eth0", b"pkt-out-2", timeout=ARRIVAL_TIMEOUT) == [frame]
    nothing_arrives([(one.h1, "eth0"), (one.nbr, "eth0")], b"pkt-out-2")

    tagged_frame = tagged(4000, b"pkt-out-3")
    one.sw.client.packet_out(tagged_frame, egress_port=3)
    assert one.nbr.take("eth0", b"pkt-out-3", timeout=ARRIVAL_TIMEOUT) == [tagged_frame]


def test_probe_reaches_the_controller_with_its_port_and_is_not_forwarded(one: OneSwitch) -> None:
    drain(one.sw)
    from_h1 = bytes(Ether(src=SRC, dst=DST, type=PROBE_TYPE) / Raw(padded(b"probe-p1", 14)))
    from_nbr = bytes(Ether(src=DST, dst=SRC, type=PROBE_TYPE) / Raw(padded(b"probe-p3", 14)))
    sent_us = time.monotonic_ns() // 1000
    one.h1.send("eth0", [from_h1])
    one.nbr.send("eth0", [from_nbr])
    punted = {}
    for _ in range(2):
        payload, metadata = one.sw.client.packet_in(timeout=ARRIVAL_TIMEOUT)
        punted[payload] = metadata
    read_us = time.monotonic_ns() // 1000
    # ingress_ts: when the frame reached the port, on CLOCK_MONOTONIC (the kernel's receive time)
    stamps = {payload: meta.pop("ingress_ts") for payload, meta in punted.items()}
    assert all(sent_us <= ts <= read_us for ts in stamps.values()), (sent_us, stamps, read_us)
    assert punted == {from_h1: {"ingress_port": 1, "_pad": 0}, from_nbr: {"ingress_port": 3, "_pad": 0}}
    nothing_arrives([(one.h2, "eth0"), (one.h1, "eth0"), (one.nbr, "eth0")], b"probe-p")


def test_probe_survives_a_data_queue_overflow_and_arrives_once(one: OneSwitch) -> None:
    """Control frames have a queue of their own: a probe that arrives behind more data than the
    port's data queue holds still reaches the controller (sharing that queue, it was dropped
    with the overflow, and a busy link looked dead), exactly once, and the data that fitted is
    still forwarded. Its ingress_ts is when it reached the port, not when the switch got to it
    (it could not, frozen until after the probe was sent)."""
    drain(one.sw)
    burst = [labelled(3000, 64, tagged(100, b"OVF-bulk-%05d" % i, src=DST, dst=SRC)) for i in range(12000)]
    probe = bytes(Ether(src=DST, dst=SRC, type=PROBE_TYPE) / Raw(padded(b"probe-behind", 14)))
    pid = one.sw.process.process.pid
    os.kill(pid, signal.SIGSTOP)  # nothing is read: the burst overflows the data queue, then the probe
    try:
        one.nbr.send("eth0", [*burst, probe])
    finally:
        continued_us = time.monotonic_ns() // 1000
        os.kill(pid, signal.SIGCONT)
    payload, metadata = one.sw.client.packet_in(timeout=ARRIVAL_TIMEOUT)
    assert payload == probe and metadata["ingress_port"] == 3
    assert metadata["ingress_ts"] < continued_us
    with pytest.raises(queue.Empty):
        one.sw.client.packet_in(timeout=MISS_WAIT)
    forwarded = one.h2.take("eth0", b"OVF-bulk-", count=len(burst), timeout=2)
    assert 0 < len(forwarded) < len(burst), f"{len(forwarded)} of {len(burst)}: the data queue did not overflow"


def test_a_backlog_of_probes_reaches_the_controller_in_arrival_order(one: OneSwitch) -> None:
    """Probes that waited on two ports (the switch frozen) go to the controller in the order they
    reached the switch, across ports, even where one port holds more than the switch reads of
    it at a time: the controller takes a probe it reads as proof that every probe that reached
    the switch before it has been passed on. Port 1's 150 arrive before port 3's 150."""
    drain(one.sw)
    count = 150  # more than one read of a port takes (softswitch/ports.py RX_BUDGET)
    first = [bytes(Ether(src=SRC, dst=DST, type=PROBE_TYPE) / Raw(padded(b"order-p1-%03d" % i, 14))) for i in range(count)]
    then = [bytes(Ether(src=DST, dst=SRC, type=PROBE_TYPE) / Raw(padded(b"order-p3-%03d" % i, 14))) for i in range(count)]
    pid = one.sw.process.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        one.h1.send("eth0", first)
        one.nbr.send("eth0", then)
    finally:
        os.kill(pid, signal.SIGCONT)
    got = [one.sw.client.packet_in(timeout=ARRIVAL_TIMEOUT) for _ in range(2 * count)]
    stamps = [metadata["ingress_ts"] for _, metadata in got]
    assert stamps == sorted(stamps), "a probe was passed on after one that reached the switch later"
    assert [payload for payload, _ in got] == first + then


def test_frame_too_short_is_dropped_and_forwarding_goes_on(one: OneSwitch) -> None:
    # The source MAC is the marker: these frames end before any payload could hold one.
    marker_mac = "02:5e:0f:00:00:01"
    marker = bytes.fromhex(marker_mac.replace(":", ""))
    full = labelled(3000, 64, tagged(100, b"short-ok", src=marker_mac))
    one.nbr.send("eth0", [full[:14], full[:18], full[:20]])  # no label, no 802.1Q, half an 802.1Q
    nothing_arrives([(one.h2, "eth0"), (one.h1, "eth0")], marker)
    one.nbr.send("eth0", [full])
    assert one.h2.take("eth0", b"short-ok", timeout=ARRIVAL_TIMEOUT) == [tagged(201, b"short-ok", src=marker_mac)]
    assert one.sw.process.process.poll() is None


# -- a chain: h1, h3 - s1 - s2 - s3 - h2, h4 -----------------------------------------------------


@dataclasses.dataclass
class Chain:
    s1: Switch
    s2: Switch
    s3: Switch
    h1: Host
    h2: Host
    h3: Host
    h4: Host
    root: Host
    s1_s2: str  # s2's end of the s1-s2 link
    s2_s3: str  # s3's end of the s2-s3 link


@pytest.fixture(scope="module")
def chain(module_net: Net) -> Chain:
    net = module_net
    h1, h2, h3, h4 = (net.host(n) for n in ("c1", "c2", "c3", "c4"))
    a12, b12 = net.link()
    a23, b23 = net.link()
    s1 = net.switch(11, {1: net.attach(h1, "eth0"), 2: a12, 3: net.attach(h3, "eth0")})
    s2 = net.switch(12, {1: b12, 2: a23})
    s3 = net.switch(13, {1: b23, 2: net.attach(h2, "eth0"), 3: net.attach(h4, "eth0")})
    # Connection A: h1 VLAN 100 -> h2 VLAN 300. Connection B: h3 VLAN 100 (the same VID on
    # another port) -> h4 VLAN 400. Labels are swapped in the middle.
    s1.edge(1, 100, 1000)
    s1.edge(3, 100, 1001)
    s1.label(1000, "forward", port=2)
    s1.label(1001, "forward", port=2)
    for port in (1, 2):
        s2.fabric_port(port)
    s2.label(1000, "swap_forward", label=2000, port=2)
    s2.label(1001, "swap_forward", label=2001, port=2)
    s3.fabric_port(1)
    s3.label(2000, "pop_to_edge", port=2, vlan_id=300)
    s3.label(2001, "pop_to_edge", port=3, vlan_id=400)
    for host in (h1, h2, h3, h4):
        host.listen("eth0")
    net.root.listen(b12)
    net.root.listen(b23)
    return Chain(s1, s2, s3, h1, h2, h3, h4, net.root, b12, b23)


def test_chain_carries_the_label_and_pops_it_at_the_far_edge(chain: Chain) -> None:
    frame = tagged(100, b"chain-a", pcp=2)
    chain.h1.send("eth0", [frame])
    assert chain.h2.take("eth0", b"chain-a", timeout=ARRIVAL_TIMEOUT) == [tagged(300, b"chain-a", pcp=2)]
    first = chain.root.take(chain.s1_s2, b"chain-a", timeout=ARRIVAL_TIMEOUT)
    middle = chain.root.take(chain.s2_s3, b"chain-a", timeout=ARRIVAL_TIMEOUT)
    assert first == [labelled(1000, 63, frame)]
    assert middle == [labelled(2000, 62, frame)]
    hop = Ether(middle[0])
    # scapy guesses IPv4 behind MPLS; the 802.1Q header sits there.
    assert (hop[MPLS].label, hop[MPLS].s, Dot1Q(middle[0][18:]).vlan) == (2000, 1, 100)


def test_two_connections_stay_isolated(chain: Chain) -> None:
    chain.h1.send("eth0", [tagged(100, b"iso-a")])
    chain.h3.send("eth0", [tagged(100, b"iso-b")])
    assert chain.h2.take("eth0", b"iso-a", timeout=ARRIVAL_TIMEOUT) == [tagged(300, b"iso-a")]
    assert chain.h4.take("eth0", b"iso-b", timeout=ARRIVAL_TIMEOUT) == [tagged(400, b"iso-b")]
    nothing_arrives([(chain.h4, "eth0"), (chain.h1, "eth0"), (chain.h3, "eth0")], b"iso-a")
    nothing_arrives([(chain.h2, "eth0"), (chain.h1, "eth0"), (chain.h3, "eth0")], b"iso-b")


def test_unmatched_frames_are_dropped(chain: Chain) -> None:
    untagged = bytes(Ether(src=SRC, dst=DST, type=PAYLOAD_TYPE) / Raw(padded(b"drop-untagged", 14)))
    injected = labelled(1000, 64, tagged(100, b"drop-mpls"))  # a label s1 knows, from a host port
    chain.h1.send("eth0", [tagged(999, b"drop-vlan"), untagged, injected])
    chain.h3.send("eth0", [tagged(200, b"drop-vlan")])  # known VLAN numbers, wrong port
    watch = [(chain.h2, "eth0"), (chain.h4, "eth0"), (chain.root, chain.s1_s2), (chain.h3, "eth0")]
    nothing_arrives(watch, b"drop-")
    chain.h1.send("eth0", [tagged(100, b"after-drops")])
    assert chain.h2.take("eth0", b"after-drops", timeout=ARRIVAL_TIMEOUT) == [tagged(300, b"after-drops")]


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["peer-carrier", "local-admin"])
def test_watch_port_failover_without_the_controller(net: Net, how: str) -> None:
    h1, nbr = net.host("f1"), net.host("fnbr")
    ports = {1: net.attach(h1, "eth0"), 2: net.attach(nbr, "up2"), 3: net.attach(nbr, "up3")}
    sw = net.switch(21, ports)
    c = sw.client
    c.insert([
        c.member("next_hop_selector", 1, "swap_forward", {"label": 2002, "port": 2}),
        c.member("next_hop_selector", 2, "swap_forward", {"label": 2003, "port": 3}),
    ])
    c.insert(c.group("next_hop_selector", 1, [(1, 1, 2), (2, 1, 3)]))
    c.insert(c.table_entry("label_group", {"label": 1000}, group_id=1))
    sw.edge(1, 100, 1000)
    nbr_iface = {2: "up2", 3: "up3"}
    for iface in nbr_iface.values():
        nbr.listen(iface)

    h1.send("eth0", [tagged(100, b"fo-before")])
    found = arrives_at(nbr, nbr_iface.values(), b"fo-before")
    assert len(found) == 1 and all(len(f) == 1 for f in found.values()), found
    chosen = next(p for p, i in nbr_iface.items() if i in found)
    other = 5 - chosen
    assert Ether(found[nbr_iface[chosen]][0])[MPLS].label == 2000 + chosen

    if how == "peer-carrier":
        ip("link", "set", nbr_iface[chosen], "down", netns=nbr.netns)
    else:
        ip("link", "set", ports[chosen], "down")
    sw.wait_log(rf"event=port_down device=21 port={chosen}\b")
    h1.send("eth0", [tagged(100, b"fo-during")])
    found = arrives_at(nbr, nbr_iface.values(), b"fo-during")
    assert list(found) == [nbr_iface[other]] and len(found[nbr_iface[other]]) == 1, found
    assert Ether(found[nbr_iface[other]][0])[MPLS].label == 2000 + other

    if how == "peer-carrier":
        ip("link", "set", nbr_iface[chosen], "up", netns=nbr.netns)
    else:
        ip("link", "set", ports[chosen], "up")
    sw.wait_log(rf"event=port_up device=21 port={chosen}\b", count=2)
    found = resend_until_seen(lambda: h1.send("eth0", [tagged(100, b"fo-after")]), nbr, nbr_iface.values(), b"fo-after")
    assert list(found) == [nbr_iface[chosen]], found


def test_interface_deleted_while_running_is_reported_and_the_rest_keeps_working(net: Net) -> None:
    h1, h2, h3 = net.host("d1"), net.host("d2"), net.host("d3")
    ports = {1: net.attach(h1, "eth0"), 2: net.attach(h2, "eth0"), 3: net.attach(h3, "eth0")}
    sw = net.switch(31, ports)
    sw.edge(1, 100, 1000)
    sw.label(1000, "pop_to_edge", port=2, vlan_id=200)
    for host in (h1, h2, h3):
        host.listen("eth0")

    ip("link", "delete", ports[3])
    sw.wait_log(rf"event=interface_removed device=31 port=3\b.*ifname={ports[3]}")
    h1.send("eth0", [tagged(100, b"del-still")])
    assert h2.take("eth0", b"del-still", timeout=ARRIVAL_TIMEOUT) == [tagged(200, b"del-still")]
    assert sw.process.process.poll() is None
    assert len(sw.client.read_table("label_fwd")) == 1

    # An interface of the same name comes back: the port is attached to it again.
    net.lab.veth(h3.netns, "eth0", local_name=ports[3])
    sw.wait_log(r"event=port_attached device=31 port=3\b", count=2)
    sw.wait_log(r"event=port_up device=31 port=3\b", count=2)
    frame = tagged(7, b"del-back")
    found = resend_until_seen(lambda: sw.client.packet_out(frame, egress_port=3), h3, ["eth0"], b"del-back")
    assert list(found) == ["eth0"] and set(found["eth0"]) == {frame}, found
