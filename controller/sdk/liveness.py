"""The data-plane liveness check of an NSC (docs/nsm_contract.md §8.4, step 5), the Go SDK's
default kind: an ICMP echo from the client's netns to each of the connection's destination
addresses, answered by the endpoint side's kernel. With it, a client whose monitor stream broke
(the controller restarted) but whose traffic still flows requests again with the same path, and
the controller adopts the connection instead of the client reselecting and making a new one."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from nsm_api import connection_pb2

log = logging.getLogger("p4nsm.sdk")

TRIES = 3  # echoes per address before it counts as unreachable
TIMEOUT_S = 1  # ping's own wait for each answer (whole seconds)


def ping_liveness(netns: str) -> Callable[[connection_pb2.Connection], Awaitable[bool]]:
    """A check that every destination address of the connection answers an echo from `netns`."""

    async def alive(conn: connection_pb2.Connection) -> bool:
        targets = [str(ipaddress.ip_interface(a).ip) for a in conn.context.ip_context.dst_ip_addrs]
        if not targets:
            return False
        for target in targets:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", str(TRIES), "-i", "0.2", "-W", str(TIMEOUT_S),
                "-w", str(TRIES * TIMEOUT_S + 1), target,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            # ping exits 0 when at least one echo was answered
            if await proc.wait() != 0:
                log.info("connection=%s event=liveness_failed netns=%s target=%s", conn.id, netns, target)
                return False
        return True

    return alive
