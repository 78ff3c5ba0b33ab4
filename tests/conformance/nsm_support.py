"""Helpers of the NSM API conformance suite: hand-built messages, a recording data plane, and
servers on real gRPC (against a real Fabric whose switches are never started, or with the data
plane short-circuited)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc

from controller.nsm.base import clock
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.tokens import TokenSource
from controller.nsm.elements.begin import is_refresh
from controller.nsm.elements.chain import CallContext, Connection, Element, Next, Request
from controller.settings import REPO_ROOT, Settings
from nsm_api import connection_pb2, networkservice_pb2
from tests.support.settings import settings_for_test

DIAMOND = REPO_ROOT / "topologies" / "diamond.yaml"


def nsm_settings(tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"store_path": str(tmp / "store.sqlite"), "nsm_run_dir": str(tmp / "nsm"),
                                 "nsm_endpoint_timeout": 2.0, "nsm_retry_interval": 0.05}
    values.update(overrides)
    return settings_for_test({k: str(v) for k, v in values.items()})


NSC = "spiffe://p4nsm/nsc"  # the identity of segment("nsc", ...)'s token


def creds(identity: str, expires_in: float = 60.0) -> tuple[tuple[str, str], ...]:
    """The per-RPC token and expiry an NSM client of `identity` sends (docs/nsm_contract.md §6.1).
    The token itself lives a minute whatever `expires_in` says: its `exp` is whole seconds, and a
    sub-second one could be past on arrival, refused as expired before the rule under test."""
    token, _ = TokenSource(identity, 60.0).issue()
    return Credentials(token, clock.now() + expires_in).as_metadata()


class _AsClient:
    """Sends an NSC's credentials on its Close and MonitorConnections calls when they name none,
    as the SDK client does, so that they come from the identity of its Requests' segment token.
    Requests are left alone: their credentials would override the expiry their segments carry."""

    METHODS = ("/networkservice.NetworkService/Close", "/connection.MonitorConnection/MonitorConnections")

    def __init__(self, identity: str) -> None:
        self.identity = identity

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        if details.metadata or method not in self.METHODS:
            return details
        return grpc.aio.ClientCallDetails(details.method, details.timeout, grpc.aio.Metadata(*creds(self.identity)),
                                          details.credentials, details.wait_for_ready)


# grpc.aio files each interceptor under the first kind it is an instance of: one class per kind.
class _AsClientUnary(_AsClient, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _AsClientStream(_AsClient, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


def nsc_channel(target: str, identity: str = NSC) -> grpc.aio.Channel:
    """A plaintext channel whose Close and Monitor calls come from `identity` unless they send
    credentials of their own."""
    return grpc.aio.insecure_channel(target, interceptors=[_AsClientUnary(identity), _AsClientStream(identity)])


def segment(name: str, seg_id: str, expires_in: float | None = 60.0) -> connection_pb2.PathSegment:
    """A caller's segment with the unsigned token a plaintext server accepts (a JWT whose `exp`
    is an hour ahead, whatever the segment's own `expires` says)."""
    token, _ = TokenSource(f"spiffe://p4nsm/{name}", 3600.0).issue()
    seg = connection_pb2.PathSegment(name=name, id=seg_id, token=token)
    if expires_in is not None:
        seg.expires.CopyFrom(clock.timestamp(clock.now() + expires_in))
    return seg


def nsc_request(service: str = "icmp", netns: str = "h1", *, expires_in: float | None = 60.0,
                mechanism: str = "KERNEL", labels: dict[str, str] | None = None,
                segments: list[connection_pb2.PathSegment] | None = None, index: int = 0,
                conn_id: str | None = None) -> networkservice_pb2.NetworkServiceRequest:
    """A Request as an NSC sends it: its own segment first, the connection id = that segment's id."""
    own = str(uuid.uuid4())
    segments = segments if segments is not None else [segment("nsc", own, expires_in)]
    cid = conn_id if conn_id is not None else (segments[index].id if segments else own)
    conn = connection_pb2.Connection(id=cid, network_service=service, labels=labels or {},
                                     path=connection_pb2.Path(index=index, path_segments=segments))
    params = {"inodeURL": f"file:///var/run/netns/{netns}"}
    return networkservice_pb2.NetworkServiceRequest(
        connection=conn, mechanism_preferences=[connection_pb2.Mechanism(cls="LOCAL", type=mechanism, parameters=params)])


def refresh_of(resp: Connection, expires_in: float = 60.0) -> networkservice_pb2.NetworkServiceRequest:
    """The refresh an NSC sends: the connection it got, its own segment's expiry renewed."""
    req = networkservice_pb2.NetworkServiceRequest()
    req.connection.CopyFrom(resp)
    req.connection.path.path_segments[resp.path.index].expires.CopyFrom(clock.timestamp(clock.now() + expires_in))
    return req


class Recorder(Element):
    """The data plane short-circuited: it records what reaches it and makes nothing."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay  # how long making a connection takes
        self.new: list[str] = []
        self.refreshes: list[str] = []
        self.closes: list[tuple[str, str]] = []

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        (self.refreshes if is_refresh(ctx) else self.new).append(req.connection.id)
        if self.delay:
            await asyncio.sleep(self.delay)
        return await nxt.request(req, ctx)

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        self.closes.append((conn.id, ctx.internal))
        await nxt.close(conn, ctx)


def code_of(exc: BaseException) -> grpc.StatusCode:
    assert isinstance(exc, grpc.aio.AioRpcError), exc
    return exc.code()
