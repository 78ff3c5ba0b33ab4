"""Endpoint selection with outlier ejection, driven through the real chain elements (begin,
roundrobin, forward over gRPC to a tiny endpoint, fabric_connect over a fake fabric): only a
failure of the endpoint itself counts against it (issue 15 item 5). A fabric with no path to
the endpoint's host, or a switch that fails, must not eject the endpoint."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from controller.fabric.connections import ConnectError
from controller.nsm.base import kernel
from controller.nsm.base.channels import Channels
from controller.nsm.base.errors import NsmError
from controller.nsm.base.tasks import Tasks
from controller.nsm.base.tokens import TokenSource
from controller.nsm.elements.begin import Begin
from controller.nsm.elements.chain import CallContext, Chain, Connection, Element, Next, Request
from controller.nsm.elements.client_mechanism import set_client_host
from controller.nsm.elements.endpoint_watch import EndpointWatch
from controller.nsm.elements.fabric_connect import FabricConnect
from controller.nsm.elements.forward import Forward
from controller.nsm.elements.monitor import MonitorHub
from controller.nsm.elements.select.discover import set_candidates
from controller.nsm.elements.select.outlier import OutlierDetector
from controller.nsm.elements.select.roundrobin import RoundRobin
from controller.p4rt.errors import SwitchError
from nsm_api import connection_pb2, networkservice_pb2_grpc, registry_pb2

THRESHOLD = 3  # consecutive failures that eject
HOSTS = ("h1", "h3")


class EchoEndpoint(networkservice_pb2_grpc.NetworkServiceServicer):
    """An endpoint that accepts every Request with the mechanism it was offered."""

    def __init__(self) -> None:
        self.requests = 0

    async def Request(self, request: Request, context: grpc.aio.ServicerContext) -> Connection:
        self.requests += 1
        out = Connection()
        out.CopyFrom(request.connection)
        out.mechanism.CopyFrom(request.mechanism_preferences[0])
        return out

    async def Close(self, request: Connection, context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        return empty_pb2.Empty()


def no_path(a: str, b: str) -> Exception:
    return ConnectError(f"b: host {b!r} is unreachable from {a!r}: no path", field="b")


def switch_down(a: str, b: str) -> Exception:
    return SwitchError("s2", grpc.StatusCode.UNAVAILABLE, "switch unreachable")


class FailingFabric:
    """A fabric that cannot make the connection, failing as Fabric.connect does."""

    def __init__(self, failure: Callable[[str, str], Exception] = no_path) -> None:
        self.failure = failure
        self.plans: dict[str, object] = {}
        self.listeners: list[object] = []
        self.connects = 0

    async def connect(self, a: str, b: str, *, conn_id: str, labels: dict[str, str]) -> object:
        self.connects += 1
        raise self.failure(a, b)

    async def disconnect(self, conn_id: str) -> None:
        return None


class Seed(Element):
    """What client_mechanism and discover would have found: the client's host, one candidate."""

    def __init__(self, nse: registry_pb2.NetworkServiceEndpoint) -> None:
        self.nse = nse

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        set_client_host(ctx, "h1")
        set_candidates(ctx, [self.nse])
        return await nxt.request(req, ctx)


def _request() -> Request:
    own = str(uuid.uuid4())
    conn = connection_pb2.Connection(id=own, network_service="icmp", path=connection_pb2.Path(
        index=1, path_segments=[connection_pb2.PathSegment(name="nsc", id=str(uuid.uuid4())),
                                connection_pb2.PathSegment(name="p4nsm", id=own)]))
    conn.mechanism.CopyFrom(kernel.mechanism("h1", "nsm0"))
    return Request(connection=conn)


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[tuple[str, EchoEndpoint]]:
    """A live endpoint on h3 (the host is the socket's directory, as the SDK lays it out)."""
    (tmp_path / "h3").mkdir()
    url = f"unix://{tmp_path}/h3/nse-1.sock"
    server = grpc.aio.server()
    servicer = EchoEndpoint()
    networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(servicer, server)
    server.add_insecure_port(url)
    await server.start()
    yield url, servicer
    await server.stop(0)


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Channels, Tasks, MonitorHub, OutlierDetector]]:
    channels, tasks, hub = Channels(), Tasks("test"), MonitorHub("p4nsm")
    yield channels, tasks, hub, OutlierDetector(consecutive=THRESHOLD, base_time=30, max_percent=10)
    await tasks.stop()
    await channels.close()


def _chain(url: str, parts: tuple[Channels, Tasks, MonitorHub, OutlierDetector], fabric: FailingFabric) -> Chain:
    channels, tasks, hub, outliers = parts
    nse = registry_pb2.NetworkServiceEndpoint(name="nse-1", url=url, network_service_names=["icmp"])
    tokens = TokenSource("spiffe://p4nsm/test", 60)
    watch = EndpointWatch("p4nsm", channels, tokens, hub, tasks)
    return Chain([Begin(), Seed(nse), RoundRobin(outliers.ejected, outliers.report),
                  Forward(channels, HOSTS, watch, 5.0, tokens), FabricConnect(fabric, hub)])  # type: ignore[arg-type]


@pytest.mark.parametrize("failure", [no_path, switch_down])
async def test_a_fabric_failure_does_not_eject_the_endpoint(endpoint, parts, failure) -> None:
    url, servicer = endpoint
    fabric = FailingFabric(failure)
    chain = _chain(url, parts, fabric)
    for _ in range(THRESHOLD + 2):
        with pytest.raises(NsmError) as failed:
            await chain.request(_request(), CallContext())
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE and "unreachable" in str(failed.value)
    assert servicer.requests == fabric.connects == THRESHOLD + 2  # each time the endpoint answered
    assert not parts[3].ejected("nse-1")


async def test_an_endpoint_that_fails_is_still_ejected(tmp_path: Path, parts) -> None:
    (tmp_path / "h3").mkdir()
    url = f"unix://{tmp_path}/h3/nobody.sock"  # nothing listens: the endpoint's own call fails
    fabric = FailingFabric()
    chain = _chain(url, parts, fabric)
    for _ in range(THRESHOLD):
        with pytest.raises(NsmError) as failed:
            await chain.request(_request(), CallContext())
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert fabric.connects == 0
    assert parts[3].ejected("nse-1")
