"""The Mininet lab (real softswitch processes, namespaces and veth pairs) and the host-side
interface helpers of the controller (real VLAN subinterfaces in real namespaces)."""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from controller.host import (
    HostIfaceError,
    ensure_vlan_iface,
    host_parent_iface,
    remove_iface,
    vlan_emu,
)
from controller.topology import Target, load_topology
from lab.harness import Lab, cleanup_stale
from lab.state import STATE_DIR, process_start_time
from lab.switches import (
    SWITCH_NICE,
    LabError,
    accepts_connections,
    bmv2_offers_thrift,
    bmv2_thrift_port,
    find_command,
    switch_argv,
)
from tests.e2e.lab_fixtures import (  # noqa: F401 (fixtures are found by name)
    TOPOLOGIES,
    lab_run_dir,
    line3_lab,
    require_root,
    scratch_netns,
    softswitch_or_skip,
    veth_pair,
)
from tests.e2e.switch_kinds import require

LINE3 = load_topology(TOPOLOGIES / "line3.yaml")
LINE3_HOSTS = {h.name for h in LINE3.hosts}
LINE3_IFACE = re.compile(r"^s[123]-eth\d+$")


def _root_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get("ifname") for link in ipr.link("dump")}


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def _wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _wait_gone(pid: int) -> bool:
    return _wait_until(lambda: process_start_time(pid) is None)


def _assert_line3_gone(pids: list[int]) -> None:
    assert not LINE3_HOSTS & set(netns.listnetns())
    assert not {i for i in _root_links() if LINE3_IFACE.match(i)}
    assert all(_wait_gone(pid) for pid in pids), "a switch process outlived the lab"


# --- the lab -----------------------------------------------------------------------------------

@pytest.mark.root
def test_line3_up_then_nothing_left(lab_run_dir: Path) -> None:
    softswitch_or_skip()
    with Lab(TOPOLOGIES / "line3.yaml", lab_run_dir) as lab:
        pids = [lab.switch_pid(s.name) for s in LINE3.switches]
        assert all(pids)
        for s, pid in zip(LINE3.switches, pids, strict=True):
            assert "p4nsm-softswitch" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert accepts_connections(s.grpc_host, s.grpc_port), f"{s.name} does not listen on {s.grpc_addr}"
            assert lab.switch_log(s.name).exists()
        assert set(netns.listnetns()) >= LINE3_HOSTS
        assert lab.host_netns("h1") == "h1"
        assert "h1-eth0" in _ip("-n", "h1", "link")
        assert "link/ether 02:00:00:00:00:01" in _ip("-n", "h1", "link", "show", "h1-eth0")
        assert "10.0.0.1/24" in _ip("-n", "h1", "-br", "addr", "show", "h1-eth0")
        # Quiet hosts: no IPv6 link-local, so nothing is sent that a test did not send.
        assert "inet6" not in _ip("-n", "h1", "addr", "show", "h1-eth0")
        assert {"s1-eth1", "s1-eth2", "s2-eth1", "s2-eth2", "s2-eth3", "s3-eth1", "s3-eth2"} <= _root_links()
        assert Path("/proc/sys/net/ipv6/conf/s1-eth1/disable_ipv6").read_text().strip() == "1"
        assert any(p.name.startswith("line3-") for p in STATE_DIR.glob("*.json"))
    _assert_line3_gone(pids)  # type: ignore[arg-type]
    assert not any(p.name == f"line3-{os.getpid()}.json" for p in STATE_DIR.glob("*.json"))
    lab.stop()  # idempotent


@pytest.mark.root
def test_kill_and_restart_switch(line3_lab: Lab) -> None:
    lab = line3_lab
    grpc_port = LINE3.switch("s2").grpc_port
    old = lab.switch_pid("s2")
    assert old is not None
    lab.kill_switch("s2", signal.SIGKILL)
    assert _wait_until(lambda: lab.switch_pid("s2") is None)
    assert not accepts_connections("127.0.0.1", grpc_port)
    with pytest.raises(LabError, match="not running"):
        lab.kill_switch("s2")
    new = lab.restart_switch("s2")
    assert new != old and lab.switch_pid("s2") == new
    assert accepts_connections("127.0.0.1", grpc_port)
    assert lab.switch_pid("s1") is not None and lab.switch_pid("s3") is not None  # the others never noticed


@pytest.mark.root
def test_switches_run_ahead_in_their_own_sessions(line3_lab: Lab) -> None:
    # A process's niceness alone would not do: under autogroup scheduling sessions share the CPUs
    # equally, and every switch leads a session of its own.
    for switch in LINE3.switches:
        pid = line3_lab.switch_pid(switch.name)
        assert pid is not None
        assert os.getpriority(os.PRIO_PROCESS, pid) == SWITCH_NICE, switch.name
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():
            assert autogroup.read_text().split()[-1] == str(SWITCH_NICE), (switch.name, autogroup.read_text())


@pytest.mark.root
def test_port_down_cuts_the_link(line3_lab: Lab) -> None:
    line3_lab.set_port_up("s1", 2, False)
    assert "NO-CARRIER" in _ip("link", "show", "s2-eth2")
    line3_lab.set_port_up("s1", 2, True)
    assert "NO-CARRIER" not in _ip("link", "show", "s2-eth2")


@pytest.mark.root
def test_failed_start_leaves_nothing(lab_run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    fake = tmp_path / "bin" / "p4nsm-softswitch"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'cannot open the ports' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with pytest.raises(LabError, match=r"exited \(status 3\)(.|\n)*cannot open the ports"):
        Lab(TOPOLOGIES / "line3.yaml", lab_run_dir, start_timeout=10).start()
    _assert_line3_gone([])


@pytest.mark.root
def test_bmv2_without_simple_switch_fails_before_anything(lab_run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    if subprocess.run(["sh", "-c", "command -v simple_switch_grpc"], capture_output=True).returncode == 0:
        pytest.skip("simple_switch_grpc is installed here")
    with pytest.raises(LabError, match="simple_switch_grpc"):
        Lab(TOPOLOGIES / "line3.yaml", lab_run_dir, switch_kind="bmv2").start()
    assert not LINE3_HOSTS & set(netns.listnetns())


@pytest.mark.root
@pytest.mark.bmv2
def test_bmv2_lab_and_a_port_down_is_a_carrier_loss(lab_run_dir: Path) -> None:
    """The lab starts the installed simple_switch_grpc (Thrift options only if its --help offers
    them), and a port down on a BMv2 link takes carrier from both switch ports while both stay
    administratively up: a BMv2 with one of its own interfaces down receives on none."""
    require("bmv2")
    command = find_command(Target.BMV2)
    with Lab(TOPOLOGIES / "line3.yaml", lab_run_dir, switch_kind="bmv2") as lab:
        for s in LINE3.switches:
            argv = Path(f"/proc/{lab.switch_pid(s.name)}/cmdline").read_bytes().decode().split("\0")
            assert Path(argv[0]).name == "simple_switch_grpc"
            assert ("--thrift-port" in argv) == bmv2_offers_thrift(command)
            assert accepts_connections(s.grpc_host, s.grpc_port)
        lab.set_port_up("s1", 2, False)
        for ifname in ("s1-eth2", "s2-eth2"):
            flags = _ip("link", "show", ifname)
            assert "NO-CARRIER" in flags and ",UP" in flags, flags
        assert "NO-CARRIER" not in _ip("link", "show", "s2-eth3")
        lab.set_port_up("s1", 2, True)
        for ifname in ("s1-eth2", "s2-eth2"):
            assert _wait_until(lambda ifname=ifname: "NO-CARRIER" not in _ip("link", "show", ifname))
    _assert_line3_gone([])
    assert not {i for i in _root_links() if i.startswith("p4w")}, "wire ends outlived the lab"


def test_thrift_port_only_when_offered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A simple_switch_grpc whose --help lists --thrift-port gets one per switch; one built
    without Thrift (it refuses the option) gets none."""
    spec = LINE3.switches[1]
    for offers in (True, False):
        fake = tmp_path / ("with" if offers else "without") / "simple_switch_grpc"
        fake.parent.mkdir()
        usage = "  --thrift-port arg   TCP port for the Thrift server" if offers else "  --no-p4"
        fake.write_text(f"#!/bin/sh\necho 'Usage: SWITCH_NAME [options]'\necho '{usage}'\n")
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
        argv = switch_argv(spec, "bmv2", {2: "s2-eth2"}, index=1)
        assert argv[0] == str(fake)
        assert (argv[argv.index("--thrift-port") + 1] == str(bmv2_thrift_port(1))) if offers else "--thrift-port" not in argv


@pytest.mark.root
def test_cleanup_after_a_crashed_lab(tmp_path: Path) -> None:
    softswitch_or_skip()
    script = textwrap.dedent(f"""
        import sys, time
        from lab.harness import Lab
        Lab({str(TOPOLOGIES / "line3.yaml")!r}, {str(tmp_path / "run")!r}).start()
        print("up", flush=True)
        time.sleep(120)
    """)
    crashed = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert crashed.stdout is not None and crashed.stdout.readline().strip() == "up"
    finally:
        crashed.kill()  # SIGKILL: no cleanup of its own
        crashed.wait()
    assert set(netns.listnetns()) >= LINE3_HOSTS
    removed = cleanup_stale("line3")
    assert any(item.startswith("netns h1") for item in removed)
    assert any(item.startswith("process switch s1") for item in removed)
    _assert_line3_gone([])
    assert not any(p.name.startswith(f"line3-{crashed.pid}") for p in STATE_DIR.glob("*.json"))


# --- host-side interfaces ----------------------------------------------------------------------

def _link(netns_name: str, ifname: str):  # type: ignore[no-untyped-def]
    with IPRoute(netns=netns_name, flags=0) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        return ipr.link("get", index=found[0])[0] if found else None


def _vlan_of(netns_name: str, ifname: str) -> tuple[str, int]:
    """(parent, VLAN id) of a native or emulated VLAN subinterface, read back from the kernel."""
    with IPRoute(netns=netns_name, flags=0) as ipr:
        link = ipr.link("get", index=ipr.link_lookup(ifname=ifname)[0])[0]
        if link.get(("linkinfo", "kind")) == "vlan":
            parent = ipr.link("get", index=link.get("link"))[0].get("ifname")
            return parent, link.get(("linkinfo", "data", "vlan_id"))
        match = re.fullmatch(r"p4nsm-vlan parent=(\S+) vid=(\d+) p4nsm:.*", link.get("ifalias") or "")
        assert match, f"{ifname} is neither a VLAN nor an emulated one"
        parent, vid = match.group(1), int(match.group(2))
        filters = _ingress_filter_names(ipr, ipr.link_lookup(ifname=parent)[0])
        assert filters.get(vid) == f"p4nsm:{ifname}", "the parent has no program for this VLAN"
        return parent, vid


def _addresses(netns_name: str, ifname: str) -> set[str]:
    with IPRoute(netns=netns_name, flags=0) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return {f"{a.get('address')}/{a['prefixlen']}" for a in ipr.addr("dump") if a["index"] == index
                and not ipaddress.ip_address(a.get("address")).is_link_local}


def _static_routes(netns_name: str, ifname: str) -> set[tuple[str, str | None]]:
    with IPRoute(netns=netns_name, flags=0) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return {(f"{r.get('dst')}/{r['dst_len']}", r.get("gateway")) for r in ipr.route("dump")
                if r.get("oif") == index and r.get("proto") == 4}


def _mode_or_skip(mode: str, ns: str, parent: str) -> None:
    if mode != "native":
        return
    try:
        ensure_vlan_iface(ns, parent, 4000, "probe4000", [], [], mode="native")
    except HostIfaceError as exc:
        if "not supported" in str(exc).lower():
            pytest.skip(f"this kernel has no 802.1Q driver: {exc}")
        raise
    remove_iface(ns, "probe4000")


@pytest.mark.root
@pytest.mark.parametrize("mode", ["native", "emulated"])
def test_vlan_iface_is_idempotent(veth_pair: tuple[str, str, str, str], mode: str) -> None:
    ns, parent, _, _ = veth_pair
    _mode_or_skip(mode, ns, parent)
    args = (ns, parent, 100, "nsm100", ["172.16.0.2/30", "fd00::2/64"], [("10.9.0.0/16", "172.16.0.1"), ("fd09::/64", None)])
    first = ensure_vlan_iface(*args, mtu=1400, mode=mode)  # type: ignore[arg-type]
    with IPRoute(netns=ns, flags=0) as ipr:
        links_after_first = {link.get("ifname") for link in ipr.link("dump")}
    second = ensure_vlan_iface(*args, mtu=1400, mode=mode)  # type: ignore[arg-type]
    with IPRoute(netns=ns, flags=0) as ipr:
        assert {link.get("ifname") for link in ipr.link("dump")} == links_after_first
    assert first == second
    link = _link(ns, "nsm100")
    assert link is not None and link.get("state") == "up" and link.get("mtu") == 1400
    assert _vlan_of(ns, "nsm100") == (parent, 100)
    assert _addresses(ns, "nsm100") == {"172.16.0.2/30", "fd00::2/64"}
    assert _static_routes(ns, "nsm100") == {("10.9.0.0/16", "172.16.0.1"), ("fd09::/64", None)}
    assert host_parent_iface(ns) == parent  # the subinterface is not a candidate

    # A changed request converges: addresses and routes replaced, the VLAN moved.
    ensure_vlan_iface(ns, parent, 200, "nsm100", ["172.16.0.6/30"], [], mode=mode)  # type: ignore[arg-type]
    assert _vlan_of(ns, "nsm100") == (parent, 200)
    assert _addresses(ns, "nsm100") == {"172.16.0.6/30"}
    assert _static_routes(ns, "nsm100") == set()

    assert remove_iface(ns, "nsm100") is True
    assert _link(ns, "nsm100") is None
    assert remove_iface(ns, "nsm100") is False
    with IPRoute(netns=ns, flags=0) as ipr:
        assert not _ingress_filter_names(ipr, ipr.link_lookup(ifname=parent)[0])
        assert {link.get("ifname") for link in ipr.link("dump")} == {"lo", parent}


@pytest.mark.root
def test_vlan_traffic_is_tagged_on_the_wire(veth_pair: tuple[str, str, str, str]) -> None:
    ns_a, if_a, ns_b, if_b = veth_pair
    ensure_vlan_iface(ns_a, if_a, 100, "nsm100", ["172.16.0.1/30"], [])
    ensure_vlan_iface(ns_b, if_b, 100, "nsm100", ["172.16.0.2/30"], [])
    ensure_vlan_iface(ns_b, if_b, 200, "nsm200", ["172.16.0.2/30"], [])  # same address, other VLAN: must stay apart
    # Each listener prints "ready" once it can receive (the sniffer's socket is open, the server
    # is bound); the client sends only after both lines have come.
    sniff = subprocess.Popen(
        ["ip", "netns", "exec", ns_b, sys.executable, "-c",
         "from scapy.all import AsyncSniffer, Dot1Q, UDP\n"
         f"s = AsyncSniffer(iface={if_b!r}, count=1, lfilter=lambda p: UDP in p and p[UDP].dport == 9999,\n"
         "                 started_callback=lambda: print('ready', flush=True))\n"
         "s.start(); s.join(15); p = s.stop() if s.running else s.results\n"
         "print(p[0][Dot1Q].vlan if p and Dot1Q in p[0] else 'untagged' if p else 'none')"],
        stdout=subprocess.PIPE, text=True)
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns_b, sys.executable, "-c",
         "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('172.16.0.2', 9999));"
         "print('ready', flush=True); s.settimeout(15); d, a = s.recvfrom(64); s.sendto(d.upper(), a)"],
        stdout=subprocess.PIPE, text=True)
    try:
        for listener in (sniff, server):
            assert listener.stdout is not None and _ready_within(listener, 30), "a listener did not start"
        client = subprocess.run(
            ["ip", "netns", "exec", ns_a, sys.executable, "-c",
             "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5);"
             "s.sendto(b'ping', ('172.16.0.2', 9999)); print(s.recvfrom(64)[0].decode())"],
            capture_output=True, text=True, timeout=30)
        server.wait(20)
        assert client.stdout.strip() == "PING", client.stderr
        assert sniff.communicate(timeout=20)[0].strip() == "100"
    finally:
        for listener in (sniff, server):
            if listener.poll() is None:
                listener.kill()
            listener.wait()


def _ready_within(proc: subprocess.Popen[str], timeout: float) -> bool:
    """True once the process has printed its "ready" line; False if it exits or stays silent."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return bool(ready) and proc.stdout.readline().strip() == "ready"


@pytest.mark.root
def test_parent_discovery(veth_pair: tuple[str, str, str, str], scratch_netns: Callable[[], str]) -> None:
    ns_a, if_a, _, _ = veth_pair
    assert host_parent_iface(ns_a) == if_a
    ensure_vlan_iface(ns_a, if_a, 7, "nsm7", [], [])
    assert host_parent_iface(ns_a) == if_a
    with pytest.raises(HostIfaceError, match="none"):
        host_parent_iface(scratch_netns())


def test_missing_netns_is_reported_or_ignored() -> None:
    with pytest.raises(HostIfaceError, match="does not exist"):
        ensure_vlan_iface(f"p4nsm-absent-{os.getpid()}", "eth0", 10, "nsm10", [], [])
    assert remove_iface(f"p4nsm-absent-{os.getpid()}", "nsm10") is False


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "a-name-of-16-chr"}, r"^name: interface name 'a-name-of-16-chr' has 16 characters; Linux allows 15"),
    ({"parent": "eth/0"}, r"^parent: 'eth/0' is not a valid interface name"),
    ({"vlan_id": 4095}, r"^vlan_id: 4095 is not a VLAN id"),
    ({"addresses": ["172.16.0.1"]}, r"^addresses\[0\]: '172.16.0.1' is not an address with a prefix length"),
    ({"addresses": ["172.16.0.1/24", "172.16.300.1/24"]}, r"^addresses\[1\]: "),
    ({"routes": [("10.0.0.0/8", None), ("10.0.0.1/8", None)]}, r"^routes\[1\]: .*host bits set"),
    ({"routes": [("10.0.0.0/8", "fd00::1")]}, r"^routes\[0\]: gateway fd00::1 is not of the destination's family"),
    ({"mtu": 10}, r"^mtu: 10 is not an MTU"),
])
def test_bad_arguments_name_the_field(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"netns": "h1", "parent": "h1-eth0", "vlan_id": 10, "name": "nsm10",
                               "addresses": [], "routes": []}
    with pytest.raises(ValueError, match=message):
        ensure_vlan_iface(**{**args, **kwargs})  # type: ignore[arg-type]


def _ingress_filter_names(ipr: IPRoute, index: int) -> dict[int, str]:
    """prio -> program name of the bpf filters on the ingress hook of `index`."""
    names: dict[int, str] = {}
    try:
        for msg in ipr.get_filters(index=index, parent=vlan_emu.TC_INGRESS):
            options = msg.get_attr("TCA_OPTIONS")
            if msg.get_attr("TCA_KIND") == "bpf" and options is not None:
                names[msg["info"] >> 16] = options.get_attr("TCA_BPF_NAME") or ""
    except NetlinkError as exc:
        if exc.code not in (errno.EINVAL, errno.ENOENT, errno.ENODEV):  # no ingress qdisc, or link gone
            raise
    return names
