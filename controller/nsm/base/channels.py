"""gRPC channels to NSM peers by URL (docs/nsm_contract.md §1): `tcp://host:port` dials host:port,
`unix:///path` dials as is; one channel per URL, reused by every call to that peer. With an SVID
every channel is mTLS (the peer's certificate must chain to the SVID's bundle and carry the
name dialled, or `server_name`, or `localhost` for a unix socket); without one, plaintext (the
`plaintext` setting)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import grpc

from controller.identity import Svid, channel_credentials


def dial_target(url: str) -> str:
    parsed = urlparse(url)
    # Any other form (unix:///path, 127.0.0.1:5001, dns:///name) already is a gRPC target.
    return parsed.netloc if parsed.scheme == "tcp" else url


RECONNECT: list[tuple[str, Any]] = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]


def dial(url: str, svid: Svid | None, options: list[tuple[str, Any]] | None = None, server_name: str = "") -> grpc.aio.Channel:
    """A channel to an NSM peer: mTLS with `svid`, plaintext without."""
    # gRPC's default reconnect backoff grows to minutes: a peer that restarted (a controller
    # back after 4 s) was dialled again only ~6 s later, past a registration's refresh deadline,
    # so the endpoint expired and its client reselected. Peers come back in well under a second.
    options = [*RECONNECT, *(options or [])]
    if svid is None:
        return grpc.aio.insecure_channel(dial_target(url), options=options)
    target = dial_target(url)
    # A unix socket names no host: its server's certificate is checked for `localhost` (what
    # the lab's certificates carry) unless a name is given.
    name = server_name or ("localhost" if target.startswith("unix:") else "")
    if name:
        options.append(("grpc.ssl_target_name_override", name))
    return grpc.aio.secure_channel(target, channel_credentials(svid), options=options)


class Channels:
    def __init__(self, options: list[tuple[str, Any]] | None = None, svid: Svid | None = None, server_name: str = "") -> None:
        self.options = options or []
        self.svid = svid
        self.server_name = server_name
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, url: str) -> grpc.aio.Channel:
        channel = self._channels.get(url)
        if channel is None:
            channel = self._channels[url] = dial(url, self.svid, self.options, self.server_name)
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
