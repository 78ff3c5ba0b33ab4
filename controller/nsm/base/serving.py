"""Listening and health for an NSM gRPC server, the controller's and an SDK endpoint's alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from controller.identity import Svid, server_credentials
from controller.nsm.base.channels import dial_target
from controller.settings import Settings


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", settings.nsm_max_message_bytes)]


async def serve_health(server: grpc.aio.Server, names: Sequence[str]) -> HealthServicer:
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return health


def bind(server: grpc.aio.Server, url: str, svid: Svid | None) -> str:
    """Listen on an NSM URL (tcp://host:port, host:port or unix:///path); the URL peers dial.
    With an SVID only mTLS is served: a plaintext client or one without a certificate of the
    bundle fails its handshake (UNAVAILABLE) before any call; without one, plaintext only."""
    target = dial_target(url)
    if target.startswith("unix:"):
        path = Path(target.removeprefix("unix://") if target.startswith("unix://") else target.removeprefix("unix:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a socket left by an earlier run
    if svid is None:
        port = server.add_insecure_port(target)
    else:
        port = server.add_secure_port(target, server_credentials(svid, require_client_auth=True))
    if port == 0:
        raise OSError(f"cannot listen on {url}")
    if target.startswith("unix:"):
        return target
    return f"tcp://{target.rsplit(':', 1)[0]}:{port}"
