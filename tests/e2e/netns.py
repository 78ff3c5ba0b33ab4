"""Network namespaces and veth pairs for e2e tests, with names no parallel run can share.

Every name starts with `p4t{pid}-` (namespaces) or `p4t{pid}` (interfaces, which have 15
characters at most), so a run only ever deletes what it made, and `sweep_stale` can remove
what a killed run left behind without touching a live one.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path

PREFIX = "p4t"
IFNAMSIZ = 15
_STALE = re.compile(rf"^{PREFIX}(\d+)")


def can_run() -> str | None:
    """None when e2e tests can run here, else why not."""
    if os.geteuid() != 0:
        return "e2e tests need root (network namespaces, veth pairs, raw sockets)"
    if shutil.which("ip") is None:
        return "e2e tests need iproute2's `ip`"
    return None


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result


def disable_ipv6(ifname: str, netns: str | None = None) -> None:
    """Keep the kernel's own IPv6 chatter (ND, MLD) off the test links."""
    if netns is None:
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")
    else:
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1"],
                       check=True, capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> None:
    """Delete namespaces and interfaces of e2e runs whose process is gone."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _STALE.match(name)
        if m and not _alive(int(m.group(1))):
            ip("netns", "delete", name, check=False)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _STALE.match(name)
        if m and not _alive(int(m.group(1))):
            ip("link", "delete", name, check=False)


class Lab:
    """Namespaces and links of one test; `close` removes them all, whatever happened."""

    _counter = itertools.count(1)

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.namespaces: list[str] = []
        self.links: list[str] = []

    def ifname(self) -> str:
        name = f"{PREFIX}{self.pid}-{next(self._counter)}"
        if len(name) > IFNAMSIZ:
            raise RuntimeError(f"interface name {name!r} longer than {IFNAMSIZ} characters")
        return name

    def namespace(self, label: str) -> str:
        name = f"{PREFIX}{self.pid}-{label}-{next(self._counter)}"
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("link", "set", "lo", "up", netns=name)
        return name

    def veth(
        self, peer_netns: str | None = None, peer_name: str | None = None, local_name: str | None = None
    ) -> tuple[str, str]:
        """A veth pair, both ends up: (end in this namespace, peer end, in peer_netns if given).

        local_name re-creates an interface this lab made before (and will delete at close).
        """
        local = local_name or self.ifname()
        peer = peer_name or self.ifname()
        ip("link", "add", local, "type", "veth", "peer", "name", peer, *(["netns", peer_netns] if peer_netns else []))
        if local not in self.links:
            self.links.append(local)
        disable_ipv6(local)
        disable_ipv6(peer, peer_netns)
        ip("link", "set", local, "up")
        ip("link", "set", peer, "up", netns=peer_netns)
        return local, peer

    def close(self) -> None:
        for name in reversed(self.namespaces):
            ip("netns", "delete", name, check=False)
        for name in self.links:
            ip("link", "delete", name, check=False)
        self.namespaces.clear()
        self.links.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

