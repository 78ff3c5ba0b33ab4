"""Where an endpoint lives on the fabric. Its registration says so with the label
`p4nsm.io/host` (or `netnsName`) in network_service_labels[service]; failing that, an endpoint
listening on a unix socket in a directory named after a host (the SDK's
`<run>/nse/<host>/<name>.sock`) is on that host."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import PurePosixPath
from urllib.parse import urlparse

import grpc

from controller.nsm.base import kernel
from controller.nsm.base.errors import EndpointFailed
from nsm_api import registry_pb2

HOST_LABEL = "p4nsm.io/host"


def endpoint_host(nse: registry_pb2.NetworkServiceEndpoint, service: str, hosts: Collection[str]) -> str:
    labels = nse.network_service_labels[service].labels if service in nse.network_service_labels else {}
    host = labels.get(HOST_LABEL) or labels.get(kernel.NETNS_NAME_KEY, "")
    if not host:
        url = urlparse(nse.url)
        if url.scheme == "unix":
            host = PurePosixPath(url.path).parent.name
    if host in hosts:
        return host
    raise EndpointFailed(grpc.StatusCode.NOT_FOUND, "connection.network_service_endpoint_name",
                         f"endpoint {nse.name}: "
                         + (f"host {host!r} is not a host of the fabric" if host
                            else f"no {HOST_LABEL} label for {service} and no host in its URL {nse.url!r}"))
