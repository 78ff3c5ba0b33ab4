"""Bring a topology up on this machine in Mininet: each host in its own network namespace (also
given the host's name, so `ip netns exec h1 ...` and pyroute2's IPRoute(netns="h1") work), each
link a veth pair named `<switch>-eth<port>`, each switch a softswitch or BMv2 process in the root
namespace listening on its gRPC address.

    with Lab(load_topology("topologies/line3.yaml"), "/tmp/run") as lab:
        lab.switch_pid("s1"); lab.kill_switch("s2"); lab.restart_switch("s2")

Everything the lab creates is removed on stop(), on exceptions, on Ctrl-C and after a failed
start; what a killed lab process leaves behind is removed by cleanup_stale(), which every start
runs first (it touches only labs whose process has died).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from mininet.cli import CLI
from mininet.link import Link as MininetLink
from mininet.net import Mininet
from mininet.node import Host
from pyroute2 import IPRoute, netns

logging.setLoggerClass(logging.Logger)  # undo mininet's process-wide logger class (see lab_switch)

from controller.identity import LabCerts, Svid, init_lab_certs  # noqa: E402
from controller.topology import (  # noqa: E402
    Link,
    Target,
    Topology,
    host_ifname,
    load_topology,
    switch_ifname,
)
from lab import wires  # noqa: E402
from lab.state import LabLock, Manifest, ProcessRecord, cleanup_stale, release  # noqa: E402
from lab.switches import (  # noqa: E402
    FabricSwitch,
    LabError,
    SwitchTls,
    accepts_connections,
    as_target,
    bmv2_offers_thrift,
    bmv2_thrift_port,
    find_command,
    switch_argv,
)

log = logging.getLogger("p4nsm.lab")

SWITCH_START_TIMEOUT_S = 60.0  # until every switch's gRPC port accepts connections
LAB_LOCK_TIMEOUT_S = 300.0  # how long a start waits for another lab on this machine to stop
LISTEN_POLL_S = 0.05
CERTS_DIR = "certs"  # under the run directory
CONTROLLER_CERT = "controller"  # init_lab_certs' name for the controller's certificate

# In each host's netns, before its interface exists, so the interface inherits them: no IPv6
# link-local address, duplicate detection or router solicitation on our links. Hosts then send
# nothing of their own accord, and tests see only the traffic they make.
HOST_SYSCTLS = (
    "net.ipv6.conf.default.addr_gen_mode=1",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.default.dad_transmits=0",
    "net.ipv6.conf.default.router_solicitations=0",
    "net.ipv6.conf.default.accept_ra=0",
    "net.ipv6.conf.all.accept_ra=0",
)
# On the switches' interfaces in the root netns: frames from hosts are for the switch process's
# raw sockets only; the root netns's own stack must neither answer them nor send on our links.
ROOT_IFACE_SYSCTLS = (
    ("ipv6", "disable_ipv6", "1"),
    ("ipv4", "arp_ignore", "8"),
    ("ipv4", "rp_filter", "1"),
)


class Lab:
    def __init__(
        self,
        topology: Topology | str | os.PathLike[str],
        run_dir: str | os.PathLike[str],
        switch_kind: Target | str | None = None,
        *,
        start_timeout: float = SWITCH_START_TIMEOUT_S,
        lock_timeout: float = LAB_LOCK_TIMEOUT_S,
        tls: bool = True,
        controller: Svid | None = None,
    ) -> None:
        topology = topology if isinstance(topology, Topology) else load_topology(topology)
        self.run_dir = Path(run_dir)
        # Mutual TLS by default: start() makes a CA and certificates in <run_dir>/certs (the
        # controller's, and one per switch), and this topology reaches each switch with that CA
        # and its name. The switches trust `controller` (its bundle signs client certificates, its
        # SPIFFE id is on their allow-list), by default the lab's own controller certificate,
        # which `lab.controller_settings()` gives; a controller for the lab takes `lab.topology`.
        self.tls = tls
        self.controller = controller
        self.certs: LabCerts | None = None
        self.topology = topology.with_tls(self.run_dir / CERTS_DIR / "ca.crt") if tls else topology
        self.switch_kind = as_target(switch_kind) if switch_kind else None
        self.start_timeout = start_timeout
        self.lock_timeout = lock_timeout
        self._net: Mininet | None = None
        self._switches: dict[str, FabricSwitch] = {}
        # switch port -> (its wire end, the far wire end), for links built as cables (lab/wires.py)
        self._wires: dict[tuple[str, int], tuple[str, str]] = {}
        self._manifest: Manifest | None = None
        self._lock = LabLock()
        self._state = "new"  # -> "started" -> "stopped"

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Lab:
        if self._state != "new":
            raise LabError("a Lab starts once; make a new one")
        _require_root_and_tools()
        if self.tls:
            self.certs = init_lab_certs(self.run_dir / CERTS_DIR, switches=[s.name for s in self.topology.switches])
            if self.controller is not None:
                self._controller_bundle().write_bytes(self.controller.bundle_pem())
        argvs = self._switch_commands()  # a missing switch binary fails here, before anything exists
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._state = "started"
        atexit.register(self.stop)
        began = time.monotonic()
        topo = self.topology
        try:
            self._lock.acquire(self.lock_timeout, who=f"topology={topo.name} run_dir={self.run_dir}")
            cleanup_stale()
            self._preflight()
            self._manifest = Manifest(topo.name, str(self.run_dir), ProcessRecord.of("lab", os.getpid()), [], [])
            self._manifest.save()
            self._build(argvs)
            self._launch_switches()
        except BaseException:
            log.error("lab start failed topology=%s; removing what was created", topo.name)
            self.stop()
            raise
        log.info("lab up topology=%s switches=%d hosts=%d links=%d seconds=%.1f run_dir=%s", topo.name,
                 len(topo.switches), len(topo.hosts), len(topo.links), time.monotonic() - began, self.run_dir)
        return self

    def stop(self) -> None:
        """Stop switches, remove hosts, links and netns names; idempotent."""
        if self._state != "started":
            return
        self._state = "stopped"
        atexit.unregister(self.stop)
        with _sigint_deferred():
            for switch in self._switches.values():
                switch.request_stop()
            for switch in self._switches.values():
                try:
                    switch.halt()
                except Exception:
                    log.exception("switch stop failed switch=%s", switch.name)
            if self._net is not None:
                try:
                    self._net.stop()
                except Exception:
                    log.exception("mininet stop failed topology=%s; removing leftovers directly", self.topology.name)
            try:
                if self._manifest is not None:
                    leftovers = release(self._manifest)
                    log.debug("lab leftovers removed topology=%s items=%s", self.topology.name, leftovers)
                    self._manifest.discard()
            finally:
                self._lock.release()
        log.info("lab stopped topology=%s", self.topology.name)

    # --- while it runs -----------------------------------------------------------------------

    @property
    def net(self) -> Mininet:
        """The Mininet network, for its CLI and its nodes' cmd()."""
        if self._net is None or self._state != "started":
            raise LabError("the lab is not running")
        return self._net

    def controller_settings(self) -> dict[str, Path]:
        """Settings that make a controller the lab's: its certificate (the identity every switch
        allows) and the CA; empty without TLS. Valid once the lab has started."""
        if self.certs is None or self.controller is not None:
            return {}  # plaintext, or the controller brings its own identity
        return {name: Path(value) for name, value in self.certs.settings(CONTROLLER_CERT).items()}

    def switch_pid(self, name: str) -> int | None:
        """The switch process's pid, None while it is not running."""
        return self._switch(name).datapath_pid

    def switch_log(self, name: str) -> Path:
        return self._switch(name).log_path

    def host_netns(self, name: str) -> str:
        """The name of the host's network namespace (for `ip netns exec` and pyroute2)."""
        self.topology.host(name)
        if self._state != "started":
            raise LabError("the lab is not running")
        return name

    def kill_switch(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the switch process alone, as a crash would; its interfaces stay."""
        switch = self._switch(name)
        pid = switch.datapath_pid
        if pid is None:
            raise LabError(f"switch {name} is not running")
        os.kill(pid, sig)
        log.info("switch signalled switch=%s pid=%d signal=%s", name, pid, signal.Signals(sig).name)

    def restart_switch(self, name: str) -> int:
        """Start the switch process again (after kill_switch) and wait until it listens."""
        switch = self._switch(name)
        switch.halt()
        pid = switch.launch()
        assert self._manifest is not None
        self._manifest.add_process(f"switch {name}", pid)
        self._wait_listening([switch])
        return pid

    def set_port_up(self, switch: str, port: int, up: bool) -> None:
        """Take a switch port's interface down or up: its veth peer loses carrier, like a cut cable.
        A link with a BMv2 end is a cable (lab/wires.py): both wire ends go down, and both switch
        ports lose carrier while staying administratively up."""
        self._switch(switch)
        ifname = switch_ifname(switch, port)
        if (switch, port) in self._wires:
            for end in self._wires[(switch, port)]:
                wires.set_end_up(end, up)
            log.info("port %s switch=%s port=%d iface=%s wire=%s", "up" if up else "down", switch, port, ifname,
                     ",".join(self._wires[(switch, port)]))
            return
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise LabError(f"switch {switch} has no interface for port {port} ({ifname})")
            ipr.link("set", index=found[0], state="up" if up else "down")
        log.info("port %s switch=%s port=%d iface=%s", "up" if up else "down", switch, port, ifname)

    def cli(self) -> None:
        CLI(self.net)

    # --- start, step by step -----------------------------------------------------------------

    def kind_of(self, switch: str) -> Target:
        """What runs switch `switch`: the lab's switch_kind, else the topology's target for it."""
        # From the list, not topology.switch(): a model_copy'd topology's index keeps the old switches.
        spec = next((s for s in self.topology.switches if s.name == switch), None) or self.topology.switch(switch)
        return self.switch_kind or as_target(spec.target)

    def _switch_commands(self) -> dict[str, list[str]]:
        return {s.name: switch_argv(s, self.kind_of(s.name), self._ifnames(s.name), i, self._switch_tls(s.name))
                for i, s in enumerate(self.topology.switches)}

    def _switch_tls(self, switch: str) -> SwitchTls | None:
        certs = self.certs
        if certs is None:
            return None
        if self.controller is not None:
            return SwitchTls(certs.cert(switch), certs.key(switch), self._controller_bundle(), (self.controller.spiffe_id,))
        return SwitchTls(certs.cert(switch), certs.key(switch), certs.ca, (certs.spiffe_id(CONTROLLER_CERT),))

    def _controller_bundle(self) -> Path:
        return self.run_dir / CERTS_DIR / "controller-bundle.crt"

    def _ifnames(self, switch: str) -> dict[int, str]:
        used = self.topology.fabric_ports(switch) + self.topology.edge_ports(switch)
        return {port: switch_ifname(switch, port) for port in sorted(used)}

    def _root_ifaces(self) -> list[str]:
        ends = [end for i, link in enumerate(self.topology.links) if self._wired(link) for end in wires.wire_ends(i)]
        return [ifname for s in self.topology.switches for ifname in self._ifnames(s.name).values()] + ends

    def _wired(self, link: Link) -> bool:
        """A link with a BMv2 end is built as a cable, so that a port failure is a carrier loss."""
        return Target.BMV2 in (self.kind_of(link.a.switch), self.kind_of(link.b.switch))

    def _preflight(self) -> None:
        """Refuse to start over names or ports in use: Mininet would otherwise delete or share them."""
        problems = []
        taken_ns = sorted(set(netns.listnetns()) & {h.name for h in self.topology.hosts})
        if taken_ns:
            problems.append(f"netns names already exist: {', '.join(taken_ns)}")
        with IPRoute() as ipr:
            existing = {link.get("ifname") for link in ipr.link("dump")}
        taken_if = [i for i in self._root_ifaces() if i in existing]
        if taken_if:
            problems.append(f"interfaces already exist: {', '.join(taken_if)}")
        for i, s in enumerate(self.topology.switches):
            if accepts_connections(s.grpc_host, s.grpc_port):
                problems.append(f"switch {s.name}: something already listens on {s.grpc_addr}")
            if (self.kind_of(s.name) is Target.BMV2 and bmv2_offers_thrift(find_command(Target.BMV2))
                    and accepts_connections("127.0.0.1", bmv2_thrift_port(i))):
                problems.append(f"switch {s.name}: thrift port {bmv2_thrift_port(i)} is in use")
        if problems:
            raise LabError("cannot start the lab: " + "; ".join(problems) +
                           ". Another lab may be running, or a crashed one left these: stop it, or remove them "
                           "(`ip netns del NAME`, `ip link del NAME`)")

    def _build(self, argvs: dict[str, list[str]]) -> None:
        topo, manifest = self.topology, self._manifest
        assert manifest is not None
        # Mininet.init() would raise system-wide sysctls (buffers, ARP cache, pty count) that a
        # lab this size does not need; we check for root ourselves.
        Mininet.inited = True
        net = self._net = Mininet(topo=None, controller=None, switch=FabricSwitch, host=Host, link=MininetLink,
                                  build=False, autoSetMacs=False)
        for h in topo.hosts:
            node = net.addHost(h.name, ip=None)
            manifest.add_process(f"host {h.name}", node.pid)
            netns.attach(h.name, node.pid)
            manifest.netns.append(h.name)
            manifest.save()
            _run(node, "sysctl -qw " + " ".join(HOST_SYSCTLS), what=f"host {h.name} sysctls")
        for s in topo.switches:
            node = net.addSwitch(s.name, cls=FabricSwitch, spec=s, argv=argvs[s.name],
                                 log_path=self.run_dir / f"{s.name}.log")
            manifest.add_process(f"shell {s.name}", node.pid)
            self._switches[s.name] = node
        for i, link in enumerate(topo.links):
            a, b = link.a, link.b
            if self._wired(link):
                self._build_wire(i, link)
                continue
            net.addLink(a.switch, b.switch, port1=a.port, port2=b.port,
                        intfName1=switch_ifname(*a), intfName2=switch_ifname(*b),
                        addr1=_port_mac(topo, *a), addr2=_port_mac(topo, *b))
            self._created_ifaces(switch_ifname(*a), switch_ifname(*b))
        for h in topo.hosts:
            sw, port = h.attach
            net.addLink(sw, h.name, port1=port, port2=0, intfName1=switch_ifname(sw, port),
                        intfName2=host_ifname(h.name), addr1=_port_mac(topo, sw, port), addr2=topo.host_mac(h.name))
            self._created_ifaces(switch_ifname(sw, port))
        net.build()
        for h in topo.hosts:
            for addr in h.addresses:
                _run(net[h.name], f"ip addr add {addr} dev {host_ifname(h.name)}", what=f"host {h.name} address {addr}")
            # veth hands the switch frames of up to 64 KiB when segmentation offloads are on; a
            # switch (ours, like BMv2) forwards wire-sized frames only, so hosts must segment.
            if shutil.which("ethtool"):
                _run(net[h.name], f"ethtool -K {host_ifname(h.name)} tso off gso off gro off tx off >/dev/null",
                     what=f"host {h.name} offloads")
        log.info("lab built topology=%s hosts=%d links=%d", topo.name, len(topo.hosts), len(topo.links) + len(topo.hosts))

    def _build_wire(self, index: int, link: Link) -> None:
        a, b = link.a, link.b
        end_a, end_b = wires.wire_ends(index)
        with IPRoute() as ipr:
            for (sw, port), end in ((a, end_a), (b, end_b)):
                ipr.link("add", ifname=switch_ifname(sw, port), kind="veth", peer=end)
                self._created_ifaces(switch_ifname(sw, port), end)
                ipr.link("set", index=ipr.link_lookup(ifname=switch_ifname(sw, port))[0],
                         address=_port_mac(self.topology, sw, port))
            for ifname in (switch_ifname(*a), switch_ifname(*b), end_a, end_b):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        wires.join(end_a, end_b)
        self._wires[(a.switch, a.port)] = (end_a, end_b)
        self._wires[(b.switch, b.port)] = (end_b, end_a)

    def _created_ifaces(self, *ifnames: str) -> None:
        assert self._manifest is not None
        self._manifest.ifaces.extend(ifnames)
        self._manifest.save()
        for ifname in ifnames:
            _isolate_root_iface(ifname)

    def _launch_switches(self) -> None:
        assert self._net is not None and self._manifest is not None
        self._net.start()
        for name, switch in self._switches.items():
            if switch.datapath_pid is not None:
                self._manifest.add_process(f"switch {name}", switch.datapath_pid)
        self._wait_listening(self._switches.values())

    def _wait_listening(self, switches: Iterable[FabricSwitch]) -> None:
        pending = list(switches)
        deadline = time.monotonic() + self.start_timeout
        while pending:
            for switch in list(pending):
                if switch.datapath_pid is None:
                    status = switch.proc.returncode if switch.proc else "unknown"
                    raise LabError(f"switch {switch.name} exited (status {status}) before listening on "
                                   f"{switch.spec.grpc_addr}; {switch.log_path} ends with:\n{switch.log_tail()}")
                if switch.listening():
                    pending.remove(switch)
                    log.info("switch started switch=%s pid=%s grpc=%s ports=%s log=%s", switch.name,
                             switch.datapath_pid, switch.spec.grpc_addr,
                             ",".join(f"{p}@{i}" for p, i in self._ifnames(switch.name).items()), switch.log_path)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise LabError(f"switches {names} did not accept gRPC connections within {self.start_timeout:.0f}s; "
                               f"see their logs in {self.run_dir}")
            if pending:
                time.sleep(LISTEN_POLL_S)

    def _switch(self, name: str) -> FabricSwitch:
        self.topology.switch(name)
        try:
            return self._switches[name]
        except KeyError:
            raise LabError(f"switch {name} is not running: the lab is not started") from None


def _require_root_and_tools() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veth pairs)")
    for tool, package in (("mnexec", "mininet"), ("ifconfig", "net-tools"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            raise LabError(f"the lab needs {tool} on PATH (Debian package {package})")


def _port_mac(topo: Topology, switch: str, port: int) -> str:
    # Locally administered, and apart from the hosts' 02:...: device id and port, readable in captures.
    device = topo.switch(switch).device_id
    return f"06:00:{device >> 8 & 0xFF:02x}:{device & 0xFF:02x}:{port >> 8 & 0xFF:02x}:{port & 0xFF:02x}"


def _isolate_root_iface(ifname: str) -> None:
    for family, key, value in ROOT_IFACE_SYSCTLS:
        try:
            Path(f"/proc/sys/net/{family}/conf/{ifname}/{key}").write_text(value)
        except OSError as exc:
            log.warning("sysctl not set iface=%s key=%s error=%s", ifname, key, exc)


def _run(node: Host | FabricSwitch, command: str, what: str) -> None:
    out = node.cmd(command).strip()
    if out:
        raise LabError(f"{what}: `{command}` failed: {out}")


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C until cleanup is done, then raise it: a half-done cleanup leaves debris."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bring a topology up in Mininet and open the Mininet CLI.")
    parser.add_argument("topology", type=Path, help="topology file, e.g. topologies/line3.yaml")
    parser.add_argument("--run-dir", type=Path, help="switch logs (default: a new dir under /tmp)")
    parser.add_argument("--switch-kind", choices=[Target.SOFTSWITCH.value, Target.BMV2.value])
    parser.add_argument("--cleanup", action="store_true", help="only remove what crashed labs left, then exit")
    parser.add_argument("--plaintext", action="store_true", help="switches without TLS (default: mutual TLS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.cleanup:
        print("\n".join(cleanup_stale()) or "nothing to clean")
        return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # so that stop() runs
    run_dir = args.run_dir or Path(f"/tmp/p4nsm-lab-{args.topology.stem}-{os.getpid()}")
    with Lab(args.topology, run_dir, args.switch_kind, tls=not args.plaintext) as lab:
        lab.cli()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["LAB_LOCK_TIMEOUT_S", "SWITCH_START_TIMEOUT_S", "Lab", "LabError", "cleanup_stale"]
