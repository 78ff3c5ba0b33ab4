"""gRPC channels to NSM peers by URL (docs/nsm_contract.md §1): `tcp://host:port` dials host:port,
`unix:///path` dials as is; one channel per URL, reused by every call to that peer."""

from __future__ import annotations

from urllib.parse import urlparse

import grpc


def dial_target(url: str) -> str:
    parsed = urlparse(url)
    # Any other form (unix:///path, 127.0.0.1:5001, dns:///name) already is a gRPC target.
    return parsed.netloc if parsed.scheme == "tcp" else url


class Channels:
    def __init__(self, options: list[tuple[str, int]] | None = None) -> None:
        self.options = options or []
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, url: str) -> grpc.aio.Channel:
        channel = self._channels.get(url)
        if channel is None:
            channel = self._channels[url] = grpc.aio.insecure_channel(dial_target(url), options=self.options)
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
