"""The etcd client of a replica: `etcd://host:port,...` -> one aetcd client over every member.

aetcd dials one `host:port`; gRPC's own `ipv4:`/`ipv6:` target takes a list of addresses and
moves to the next member when the one it uses goes away, so the members' names are resolved
once here and handed over as that list. Keepalive pings make a stopped (SIGSTOPped, cut off)
member's connection fail within seconds instead of hanging until TCP gives up."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import aetcd

SCHEME = "etcd://"


class EtcdUrlError(ValueError):
    """A `store` setting that does not name etcd members."""


@dataclass(frozen=True)
class Member:
    host: str
    port: int


def parse_url(url: str) -> list[Member]:
    if not url.startswith(SCHEME):
        raise EtcdUrlError(f"store: {url!r} is not etcd://host:port,host:port,...")
    members = []
    for part in url[len(SCHEME):].split(","):
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise EtcdUrlError(f"store: member {part!r} of {url!r} is not host:port")
        members.append(Member(host, int(port)))
    return members


async def _resolve(members: list[Member]) -> list[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    out: list[tuple[str, int]] = []
    for m in members:
        infos = await loop.getaddrinfo(m.host, m.port, type=socket.SOCK_STREAM)
        if not infos:
            raise EtcdUrlError(f"store: etcd member {m.host} does not resolve")
        out.append((str(infos[0][4][0]), m.port))
    return out


async def grpc_target(members: list[Member]) -> tuple[str, int]:
    """aetcd's (host, port) that it joins into the gRPC target `ipv4:a:p,b:p,c:p`."""
    addrs = await _resolve(members)
    v6 = {ipaddress.ip_address(a).version == 6 for a, _ in addrs}
    if len(v6) > 1:
        raise EtcdUrlError("store: etcd members resolve to both IPv4 and IPv6 addresses; name them by address")
    if v6 == {True}:
        listed = ",".join(f"[{a}]:{p}" for a, p in addrs)
        scheme = "ipv6:"
    else:
        listed = ",".join(f"{a}:{p}" for a, p in addrs)
        scheme = "ipv4:"
    head, _, last_port = listed.rpartition(":")
    return scheme + head, int(last_port)


CHANNEL_OPTIONS = {
    "grpc.keepalive_time_ms": 1000,
    "grpc.keepalive_timeout_ms": 1000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    # a member that went away is retried soon, not after gRPC's default backoff of up to 2 min
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


def reraise_cancel() -> None:
    """aetcd reports a call cancelled under it as a ClientError (gRPC's CANCELLED): a loop that
    retries on errors calls this first, so that it does not swallow its own task's cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def connect(url: str, timeout: float) -> aetcd.Client:
    """A client of the members `url` names; `timeout` bounds each of its calls (not watches)."""
    host, port = await grpc_target(parse_url(url))
    client = aetcd.Client(host=host, port=port, timeout=timeout, options=dict(CHANNEL_OPTIONS))
    await client.connect()
    return client
