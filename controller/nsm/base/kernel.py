"""The KERNEL mechanism (docs/nsm_contract.md §4.2): its parameters, its interface names, and which network
namespace a netns URL names.

A netns URL is `file:///var/run/netns/<name>` (or /run/netns/<name>). Any other `file://` path
or `inode://<dev>/<ino>` is resolved by comparing its inode with the named namespaces, so a
`file:///proc/<pid>/ns/net` of a process inside a lab host resolves to that host too.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from urllib.parse import unquote, urlparse

from controller.host.kernel_iface import IFNAME_MAX, validate_ifname
from controller.nsm.base.errors import invalid
from nsm_api import connection_pb2

KERNEL = "KERNEL"
LOCAL = "LOCAL"
NETNS_URL_KEY = "inodeURL"
NAME_KEY = "name"
VLAN_KEY = "vlan"
NETNS_NAME_KEY = "netnsName"  # p4nsm's own: the netns by name, for callers that cannot send a URL
NETNS_DIRS = (Path("/var/run/netns"), Path("/run/netns"))
_NAME_ALPHABET = string.ascii_letters + string.digits


def netns_url(name: str) -> str:
    return f"file://{NETNS_DIRS[0] / name}"


def mechanism(netns: str = "", name: str = "") -> connection_pb2.Mechanism:
    params = {}
    if netns:
        params[NETNS_URL_KEY] = netns_url(netns)
    if name:
        params[NAME_KEY] = name
    return connection_pb2.Mechanism(cls=LOCAL, type=KERNEL, parameters=params)


def check_parameters(field: str, params: dict[str, str]) -> None:
    name = params.get(NAME_KEY, "")
    if name:
        try:
            validate_ifname(f"{field}[{NAME_KEY!r}]", name)
        except ValueError as e:
            raise invalid(f"{field}[{NAME_KEY!r}]", str(e).split(": ", 1)[-1]) from None
    url = params.get(NETNS_URL_KEY, "")
    if url and urlparse(url).scheme not in ("file", "inode"):
        raise invalid(f"{field}[{NETNS_URL_KEY!r}]", f"{url!r} is not a file:// or inode:// netns URL")
    vlan = params.get(VLAN_KEY, "")
    if vlan and (not vlan.isdigit() or int(vlan) > 4094):
        raise invalid(f"{field}[{VLAN_KEY!r}]", f"{vlan!r} is not a VLAN id (0..4094)")


def default_ifname(service: str) -> str:
    """`<service[:10]>-<random>`, 15 characters, as the SDK names kernel interfaces."""
    prefix = "".join(c if c.isalnum() or c in "-_." else "-" for c in service[:10]).lstrip("-.") or "nsm"
    suffix = "".join(secrets.choice(_NAME_ALPHABET) for _ in range(IFNAME_MAX - len(prefix) - 1))
    return f"{prefix}-{suffix}"


def netns_of_url(url: str) -> str | None:
    """The name of the named netns that `url` designates; None when it is none of them."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        if path.parent in NETNS_DIRS:
            return path.name
        try:
            st = os.stat(path)
        except OSError:
            return None
        return _netns_by_inode(st.st_dev, st.st_ino)
    if parsed.scheme == "inode":
        try:
            dev, ino = int(parsed.netloc), int(parsed.path.strip("/"))
        except ValueError:
            return None
        return _netns_by_inode(dev, ino)
    return None


def _netns_by_inode(dev: int, ino: int) -> str | None:
    for directory in NETNS_DIRS:
        try:
            entries = list(directory.iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            if st.st_ino == ino and st.st_dev == dev:
                return entry.name
    return None
