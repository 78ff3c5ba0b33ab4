"""The controller's NSM address as an SDK user gives it: one, or every replica's, comma-separated.
Calls go to one; an UNAVAILABLE answer (a replica gone, or a follower naming the leader:
controller/nsm/follower.py) or none within the deadline (a replica frozen) moves them to the next. Why the client finds the leader rather than a
follower passing calls on: ownership is the mTLS identity of the caller, which a follower in
between would replace with its own."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

log = logging.getLogger("p4nsm.sdk")

# A stopped (SIGSTOP, frozen VM) replica accepts the connection and answers nothing: its calls end
# at their deadline, and the next replica may be the leader by now.
NOT_SERVING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def split_urls(urls: str) -> list[str]:
    listed = [u.strip() for u in urls.split(",") if u.strip()]
    if not listed:
        raise ValueError(f"nsm url: {urls!r} names no address")
    return listed


class Replicas:
    def __init__(self, urls: str, dial: Callable[[str], grpc.aio.Channel]) -> None:
        self.urls = split_urls(urls)
        self._dial = dial
        self._at = 0
        # one channel per address, kept: moving back to one reuses it (gRPC reconnects it)
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def several(self) -> bool:
        return len(self.urls) > 1

    @property
    def url(self) -> str:
        return self.urls[self._at]

    @property
    def channel(self) -> grpc.aio.Channel:
        channel = self._channels.get(self.url)
        if channel is None:
            channel = self._channels[self.url] = self._dial(self.url)
        return channel

    def failed(self, error: grpc.aio.AioRpcError) -> bool:
        """After a call failed: move to the next address when the answer says this one does not
        serve (NOT_SERVING). True when it moved."""
        if not self.several or error.code() not in NOT_SERVING:
            return False
        was = self.url
        self._at = (self._at + 1) % len(self.urls)
        log.info("event=nsm_next_replica from=%s to=%s why=%r", was, self.url, error.details())
        return True

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()
