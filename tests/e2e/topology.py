"""Small fabrics for e2e tests: host namespaces, softswitch processes and the links between them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time

from scapy.contrib.mpls import MPLS
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from controller.topology import Topology
from tests.e2e.hosts import Host
from tests.e2e.netns import Lab
from tests.support.fixtures import SoftSwitchProcess, free_port, start_softswitch
from tests.support.p4rt import P4RTTestClient

SRC = "02:00:00:00:0a:01"
DST = "02:00:00:00:0b:02"
# An EtherType of no protocol the kernel handles, so that only the tests look at these frames.
PAYLOAD_TYPE = 0x88B6
FRAME_LEN = 64
MPLS_INITIAL_TTL = 64
CPU_PORT = 255
ELECTION_ID = 10


def padded(marker: bytes, header_len: int) -> bytes:
    return marker + bytes(max(0, FRAME_LEN - header_len - len(marker)))


def tagged(vid: int, marker: bytes, pcp: int = 0, src: str = SRC, dst: str = DST) -> bytes:
    """A host-link frame: Ethernet / 802.1Q(vid) / payload holding the marker."""
    return bytes(Ether(src=src, dst=dst) / Dot1Q(vlan=vid, prio=pcp, type=PAYLOAD_TYPE) / Raw(padded(marker, 18)))


async def crosses(src: Host, src_if: str, dst: Host, dst_if: str, vlan: int, tag: str, timeout: float = 8.0) -> None:
    """A tagged frame from `src` reaches `dst`, resent every 100 ms while the path may still be
    moving; AssertionError when none has crossed within `timeout`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    n = 0
    while loop.time() < end:
        n += 1
        marker = f"{tag}-{n}-".encode()
        await asyncio.to_thread(src.send, src_if, [tagged(vlan, marker)])
        if await asyncio.to_thread(dst.take, dst_if, marker, 1, 0.1):
            return
    raise AssertionError(f"no frame crossed {src_if} -> {dst_if} within {timeout:.0f} s")


def labelled(label: int, ttl: int, inner: bytes) -> bytes:
    """A fabric-link frame carrying a host frame: its 802.1Q header stays behind the label."""
    host = Ether(inner)
    tag = host[Dot1Q]
    return bytes(Ether(src=host.src, dst=host.dst, type=0x8847) / MPLS(label=label, cos=tag.prio, s=1, ttl=ttl) / tag)


class Switch:
    """A running softswitch and its primary client, with the nsm_fabric pipeline committed."""

    def __init__(self, process: SoftSwitchProcess, client: P4RTTestClient, ports: dict[int, str]) -> None:
        self.process = process
        self.client = client
        self.ports = ports

    def fabric_port(self, port: int) -> None:
        c = self.client
        c.insert(c.table_entry("fabric_ports", {"ingress_port": port}, "mark_fabric"))

    def edge(self, port: int, vid: int, label: int) -> None:
        c = self.client
        c.insert(c.table_entry("edge_classify", {"ingress_port": port, "vlan_id": vid}, "push_label", {"label": label}))

    def label(self, value: int, action: str, /, **params: int) -> None:
        """A label_fwd entry; params may name the action's own `label`."""
        c = self.client
        c.insert(c.table_entry("label_fwd", {"label": value}, action, params))

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 5.0) -> str:
        """The count-th log line matching pattern, once there is one; fails with the whole log."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.process.log().splitlines() if regex.search(line)]
            if len(lines) >= count:
                return lines[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r}:\n{self.process.log()}")
            time.sleep(0.05)


class Net:
    """Everything one test (or module) builds; `close` tears it all down."""

    def __init__(self) -> None:
        self.lab = Lab()
        self.stack = contextlib.ExitStack()
        self.stack.callback(self.lab.close)
        self.hosts: dict[str, Host] = {}
        self._root: Host | None = None

    def host(self, name: str) -> Host:
        """A namespace with a scapy agent (interfaces come with `attach`)."""
        netns = self.lab.namespace(name)
        host = self.hosts[name] = Host(name, netns)
        self.stack.callback(host.close)
        return host

    @property
    def root(self) -> Host:
        """An agent in the root namespace, to watch links between switches."""
        if self._root is None:
            self._root = Host("root", None)
            self.stack.callback(self._root.close)
        return self._root

    def attach(self, host: Host, iface: str) -> str:
        """Link a host's `iface` to a new switch-side interface, returned."""
        local, _ = self.lab.veth(host.netns, iface)
        return local

    def link(self) -> tuple[str, str]:
        return self.lab.veth()

    def wire(self, hosts: dict[str, tuple[str, int]], links: list[tuple[str, int, str, int]]
             ) -> tuple[dict[str, Host], dict[tuple[str, int], str]]:
        """Hosts (name -> switch, port; each listening on its eth0) and links between switch
        ports: the hosts, and each switch port's interface."""
        ifnames: dict[tuple[str, int], str] = {}
        made = {}
        for name, (sw, port) in hosts.items():
            host = made[name] = self.host(name)
            ifnames[(sw, port)] = self.attach(host, "eth0")
            host.listen("eth0")
        for a, ap, b, bp in links:
            ifnames[(a, ap)], ifnames[(b, bp)] = self.link()
        return made, ifnames

    def switch(self, device_id: int, ports: dict[int, str]) -> Switch:
        process = self.stack.enter_context(
            start_softswitch(device_id, CPU_PORT, [f"{n}@{name}" for n, name in ports.items()])
        )
        client = P4RTTestClient(process.address, device_id=device_id, election_id=ELECTION_ID)
        self.stack.callback(client.close)
        client.set_pipeline()
        return Switch(process, client, ports)

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_free_ports(topo: Topology) -> Topology:
    """The topology with every switch on a free loopback port: labs of other worktrees may hold
    the ports its file names. Validated again, as lab.p4c.with_switch_kind does."""
    data = topo.model_dump(mode="json")
    data["switches"] = [{**s, "grpc_addr": f"127.0.0.1:{free_port()}"} for s in data["switches"]]
    return Topology.model_validate(data)
