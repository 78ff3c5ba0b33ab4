"""Limits of the NSM server over real gRPC (issue 12, item 7): admission slots per caller
identity, a bound on the Requests waiting for one endpoint, and log lines a client cannot
break; and (item 6) an endpoint started by `p4nsm nse --payload ETHERNET` is found by a
client asking for ETHERNET."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import empty_pb2

from controller import logs
from controller.nsm.base.metadata import Credentials
from controller.nsm.base.serving import bind
from controller.nsm.base.tokens import TokenSource
from controller.nsm.elements.placement import HOST_LABEL
from controller.settings import REPO_ROOT
from nsm_api import connection_pb2, networkservice_pb2_grpc, registry_pb2
from tests.conformance.nsm_support import Recorder, code_of, nsc_request, nsm_settings
from tests.conformance.test_nsm_api import Served, _serve, controller, endpoints, looped, settings  # noqa: F401 (fixtures)
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(120)


def as_caller(sub: str) -> tuple[tuple[str, str], ...]:
    """The per-RPC credentials of a caller whose identity is `sub`."""
    return Credentials(*TokenSource(sub, 60.0).issue()).as_metadata()


class MuteEndpoint(networkservice_pb2_grpc.NetworkServiceServicer):
    """An endpoint that takes every Request and never answers (until released)."""

    def __init__(self) -> None:
        self.waiting = 0
        self.release = asyncio.Event()

    async def Request(self, request, context):  # type: ignore[no-untyped-def]
        self.waiting += 1
        try:
            await self.release.wait()
        finally:
            self.waiting -= 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "released")

    async def Close(self, request, context):  # type: ignore[no-untyped-def]
        return empty_pb2.Empty()


@pytest.fixture
async def mute(tmp_path) -> AsyncIterator[tuple[MuteEndpoint, str]]:
    servicer = MuteEndpoint()
    server = grpc.aio.server()
    networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(servicer, server)
    url = bind(server, f"unix://{tmp_path}/mute.sock", None)  # plaintext, as the served controller
    await server.start()
    yield servicer, url
    servicer.release.set()
    await server.stop(0)


async def register_mute(served: Served, url: str, service: str, name: str = "mute-1") -> None:
    await served.ns_registry.Register(registry_pb2.NetworkService(name=service))
    await served.nse_registry.Register(registry_pb2.NetworkServiceEndpoint(
        name=name, network_service_names=[service], url=url,
        network_service_labels={service: registry_pb2.NetworkServiceLabels(labels={HOST_LABEL: "h4"})}))


async def outcomes(calls: list[asyncio.Future[connection_pb2.Connection]]) -> list[object]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


# --- admission per caller identity ----------------------------------------------------------------

async def test_one_caller_cannot_take_every_admission_slot(controller, tmp_path, endpoints, mute) -> None:
    """The issue's defect, scaled down: one caller's Requests to an endpoint that never answers
    filled every slot, and another caller's Request got RESOURCE_EXHAUSTED."""
    servicer, url = mute
    settings = nsm_settings(tmp_path, nsm_max_requests_in_progress=40, nsm_max_requests_per_client=10,
                            nsm_max_requests_per_endpoint=1000, nsm_endpoint_timeout=60)
    async for served in _serve(controller, settings, Recorder()):
        await register_mute(served, url, "mute")
        await endpoints(served)  # icmp on h3, answers
        attacker = as_caller("spiffe://p4nsm/nsc/attacker")
        calls = [asyncio.ensure_future(served.ns.Request(nsc_request("mute"), metadata=attacker, timeout=60))
                 for _ in range(40)]
        await until(lambda started=calls: sum(c.done() for c in started) == 30, "30 calls done")
        assert servicer.waiting == 10  # the attacker's share, and not one more
        refused = [c.exception() for c in calls if c.done()]
        assert {code_of(e) for e in refused if e is not None} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "spiffe://p4nsm/nsc/attacker" in refused[0].details()  # type: ignore[union-attr]
        # Another caller is served while the attacker holds its share.
        resp = await served.ns.Request(nsc_request("icmp"), metadata=as_caller("spiffe://p4nsm/nsc/victim"), timeout=10)
        assert resp.state == connection_pb2.UP
        servicer.release.set()
        await outcomes(calls)


# --- Requests in flight to one endpoint -------------------------------------------------------------

async def test_requests_waiting_for_one_endpoint_are_bounded_and_not_its_failures(controller, tmp_path, endpoints,
                                                                                  mute) -> None:
    servicer, url = mute
    settings = nsm_settings(tmp_path, nsm_max_requests_per_endpoint=5, nsm_endpoint_timeout=60)
    async for served in _serve(controller, settings, Recorder()):
        await register_mute(served, url, "icmp")  # the mute endpoint and a live one serve icmp
        live = await endpoints(served)
        # Five wait for the mute endpoint; more asking for it by name are refused at once.
        waiting = [asyncio.ensure_future(served.ns.Request(nsc_request_named("mute-1"), timeout=60)) for _ in range(5)]
        await until(lambda: servicer.waiting == 5, "5 calls waiting")
        started = time.monotonic()
        extra = await outcomes([asyncio.ensure_future(served.ns.Request(nsc_request_named("mute-1"), timeout=60))
                                for _ in range(10)])
        assert time.monotonic() - started < 5
        assert {code_of(e) for e in extra} == {grpc.StatusCode.RESOURCE_EXHAUSTED}  # type: ignore[arg-type]
        assert "nsm_max_requests_per_endpoint=5" in extra[0].details()  # type: ignore[attr-defined]
        assert servicer.waiting == 5
        # Round robin moves on to the live endpoint while the mute one is full.
        for _ in range(6):
            resp = await served.ns.Request(nsc_request(), timeout=10)
            assert resp.network_service_endpoint_name == live.name
        # Being full is not failing: outlier ejection has counted nothing against it.
        record = served.server.outliers.records.get("mute-1")
        assert record is None or (record.failures == 0 and record.ejections == 0)
        servicer.release.set()
        await outcomes(waiting)


def nsc_request_named(endpoint: str):  # type: ignore[no-untyped-def]
    req = nsc_request()
    req.connection.network_service_endpoint_name = endpoint
    return req


# --- log lines --------------------------------------------------------------------------------------

FORGED = "icmp\n01:02:03.004 ERROR p4nsm.p4rt switch=s1 event=down"
RECORD_START = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} [A-Z]+ p4nsm")


async def test_a_newline_a_client_sends_stays_inside_its_log_line(controller, settings) -> None:
    out = io.StringIO()
    handler = logs.handler(out)
    records: list[logging.LogRecord] = []
    counter = logging.Handler()
    counter.emit = records.append  # type: ignore[method-assign]
    nsm_log = logging.getLogger("p4nsm")
    nsm_log.addHandler(handler)
    nsm_log.addHandler(counter)
    old_level = nsm_log.level
    nsm_log.setLevel(logging.INFO)
    try:
        async for served in _serve(controller, settings, Recorder()):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await served.ns.Request(nsc_request(FORGED))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        nsm_log.removeHandler(handler)
        nsm_log.removeHandler(counter)
        nsm_log.setLevel(old_level)
    lines = out.getvalue().splitlines()
    refused = [line for line in lines if "event=request_refused" in line]
    assert len(refused) == 1 and "event=down" in refused[0], lines
    assert len(lines) == len(records)  # one line per record: nothing the client sent began a line
    assert all(RECORD_START.match(line) for line in lines), lines


# --- the payload of an endpoint ---------------------------------------------------------------------

async def test_p4nsm_nse_with_an_ethernet_payload_is_found_by_an_ethernet_client(looped: Served, tmp_path) -> None:
    env = {**os.environ, "P4NSM_NSM_RUN_DIR": str(tmp_path / "run"), "P4NSM_NSM_RETRY_INTERVAL": "0.05"}
    proc = await asyncio.create_subprocess_exec(
        str(REPO_ROOT / ".venv" / "bin" / "p4nsm"), "nse", "--service", "l2", "--netns", "h3",
        "--cidr", "10.70.0.0/24", "--payload", "ETHERNET", "--name", "l2-nse", "--plaintext", "--nsm-address", looped.server.address,
        cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await until(lambda: looped.server.endpoints.get("l2-nse") is not None or proc.returncode is not None, "the l2 endpoint registered", 30)
        assert proc.returncode is None, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        ns = looped.server.services.get("l2")
        assert ns is not None and ns.payload == "ETHERNET"
        req = nsc_request("l2")
        req.connection.payload = "ETHERNET"
        resp = await looped.ns.Request(req, timeout=10)
        assert resp.network_service_endpoint_name == "l2-nse" and resp.payload == "ETHERNET"
        ip = nsc_request("l2")
        ip.connection.payload = "IP"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await looped.ns.Request(ip, timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 20)


# --- bytes that do not decode --------------------------------------------------------------------

async def test_garbage_bytes_are_refused_naming_the_message_without_a_traceback(looped: Served, caplog) -> None:
    def raw(path: str, stream: bool = False):  # type: ignore[no-untyped-def]
        make = looped.channel.unary_stream if stream else looped.channel.unary_unary
        return make(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    garbage = b"\xff\xff\xff\x01garbage"
    with caplog.at_level(logging.INFO):
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await raw("/networkservice.NetworkService/Request")(garbage, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            [m async for m in raw("/registry.NetworkServiceEndpointRegistry/Find", stream=True)(garbage, timeout=5)]
    assert unary.value.code() == stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "networkservice.NetworkServiceRequest" in unary.value.details()  # type: ignore[operator]
    assert "registry.NetworkServiceEndpointQuery" in stream.value.details()  # type: ignore[operator]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # Whatever else the servers serve still decodes as before.
    assert (await looped.ns_registry.Register(registry_pb2.NetworkService(name="after"))).name == "after"
