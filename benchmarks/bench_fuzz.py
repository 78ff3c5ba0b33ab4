"""Hostile input against a running lab: NSM messages and P4Runtime messages that are all invalid,
while a connection carries a stream; then a flood of refused NSM Requests at a steady rate.

    sudo flock /tmp/p4nsm-e2e.lock .venv/bin/python benchmarks/bench_fuzz.py \
        [--nsm 10000] [--p4rt 5000] [--flood-rate 200] [--flood-seconds 60] [--no-write]

The diamond lab (Mininet, one `p4nsm-softswitch` per switch), the real Controller serving the NSM
API on a unix socket in this process, a `p4nsm nse` endpoint on h3, and one fabric connection
h1 -> h3 carrying a 100 frames/s stream (benchmarks/heal/traffic.py) from start to end. Load
processes (this file with --load) send the hostile messages, each with a deadline, and tally
the status codes they get:

- nsm: every method of the NSM server (Request, Close, MonitorConnections, both registries)
  with malformed fields (control characters, oversize names, maps and lists, bad mechanisms,
  paths, expiries, payloads, IP contexts), unknown services and endpoints, malformed metadata,
  garbage and truncated bytes, a message over the size limit.
- p4rt: Write, Read, SetForwardingPipelineConfig, GetForwardingPipelineConfig and StreamChannel
  against every switch, each malformed or from a client that is not primary (election ids
  below the controller's: a higher one is a takeover, issue 12 item 5, not malformed input).
- flood: NSM Requests that are all refused, paced at --flood-rate for --flood-seconds (issue 12
  item 8: the controller's loop must not starve its own keepalives).

Reported: crashes (a switch process gone, the NSM server not SERVING), hangs (a call past its
deadline), status codes, switch tables, store rows, fabric plans, NSM connections and
registrations changed by the invalid input (target 0), false switch and link downs per phase
(target 0), frames lost on the baseline connection (target 0), the controller's event-loop
lag, and controller and switch memory before and after. Writes benchmarks/results/fuzz.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from finsy.proto import U128, p4r  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from benchmarks.bench_controller_setup import ReaderProcess, check_installed, link_down_counter, switch_down_counter  # noqa: E402
from benchmarks.bench_nsm_requests import _loop_lag, _read_all, pct  # noqa: E402
from benchmarks.heal import scenario  # noqa: E402
from benchmarks.heal.traffic import Stream, Traffic  # noqa: E402
from controller.aio import freeze_startup_heap  # noqa: E402
from controller.nsm.base import clock  # noqa: E402
from controller.nsm.base.channels import dial_target  # noqa: E402
from controller.nsm.base.metadata import EXPIRES_KEY, TOKEN_KEY, Credentials  # noqa: E402
from controller.nsm.base.tokens import TokenSource  # noqa: E402
from nsm_api import connection_pb2, networkservice_pb2, registry_pb2  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "fuzz.md"
SERVICE = "fuzz"
READY_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 5.0  # a call that has not ended by then is a hang
STREAM_RATE = 100.0  # frames/s on the baseline connection
STREAM_CHUNK_S = 10.0  # the stream runs in trials of this length while a phase lasts
CONCURRENCY = 16
LOAD_REPORT_LIMIT = 16 * 1024 * 1024
IDLE_S = 20.0  # the first phase: no hostile input, for the controller's own CPU and the lab's own losses
OVERSIZE = 2 * 1024 * 1024  # over nsm_max_message_bytes (1 MiB)


# --- hostile NSM messages -----------------------------------------------------------------------

Raw = Callable[[bytes], bytes]


def _ident(b: bytes) -> bytes:
    return b


def _segment(name: str = "nsc", seg_id: str = "", expires_in: float | None = 60.0) -> connection_pb2.PathSegment:
    seg = connection_pb2.PathSegment(name=name, id=seg_id or str(uuid.uuid4()))
    if expires_in is not None:
        seg.expires.CopyFrom(clock.timestamp(clock.now() + expires_in))
    return seg


def _request(service: str = SERVICE, netns: str = "h1", **params: str) -> networkservice_pb2.NetworkServiceRequest:
    seg = _segment()
    conn = connection_pb2.Connection(id=seg.id, network_service=service,
                                     path=connection_pb2.Path(index=0, path_segments=[seg]))
    mech = connection_pb2.Mechanism(cls="LOCAL", type="KERNEL",
                                    parameters={"inodeURL": f"file:///var/run/netns/{netns}", **params})
    return networkservice_pb2.NetworkServiceRequest(connection=conn, mechanism_preferences=[mech])


def _mutated(change: Callable[[networkservice_pb2.NetworkServiceRequest], None]) -> Callable[[], networkservice_pb2.NetworkServiceRequest]:
    def make() -> networkservice_pb2.NetworkServiceRequest:
        req = _request()
        change(req)
        return req
    return make


def _set(path: str, value: object) -> Callable[[networkservice_pb2.NetworkServiceRequest], None]:
    def change(req: networkservice_pb2.NetworkServiceRequest) -> None:
        *parents, last = path.split(".")
        obj: object = req
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, last, value)
    return change


def _labels(n: int, key: str = "k", value: str = "v") -> Callable[[networkservice_pb2.NetworkServiceRequest], None]:
    def change(req: networkservice_pb2.NetworkServiceRequest) -> None:
        for i in range(n):
            req.connection.labels[f"{key}{i}"] = value
    return change


def _path(change_path: Callable[[connection_pb2.Path], None]) -> Callable[[networkservice_pb2.NetworkServiceRequest], None]:
    def change(req: networkservice_pb2.NetworkServiceRequest) -> None:
        change_path(req.connection.path)
    return change


def _mech(**fields: object) -> Callable[[networkservice_pb2.NetworkServiceRequest], None]:
    def change(req: networkservice_pb2.NetworkServiceRequest) -> None:
        mech = req.mechanism_preferences[0]
        for k, v in fields.items():
            if k == "parameters":
                mech.parameters.clear()
                mech.parameters.update(v)  # type: ignore[arg-type]
            else:
                setattr(mech, k, v)
    return change


def _ip(**lists: list[str]) -> Callable[[networkservice_pb2.NetworkServiceRequest], None]:
    def change(req: networkservice_pb2.NetworkServiceRequest) -> None:
        ip = req.connection.context.ip_context
        for k, v in lists.items():
            if k.endswith("routes"):
                getattr(ip, k).add(prefix=v[0], nextHop=v[1] if len(v) > 1 else "")
            else:
                getattr(ip, k).extend(v)
    return change


def _past_expiry(req: networkservice_pb2.NetworkServiceRequest) -> None:
    req.connection.path.path_segments[0].expires.CopyFrom(clock.timestamp(clock.now() - 60))


def _no_expiry(req: networkservice_pb2.NetworkServiceRequest) -> None:
    req.connection.path.path_segments[0].ClearField("expires")


def _bad_nanos(req: networkservice_pb2.NetworkServiceRequest) -> None:
    req.connection.path.path_segments[0].expires.nanos = 2_000_000_000


def _many_segments(path: connection_pb2.Path) -> None:
    for _ in range(200):
        path.path_segments.append(_segment("x"))


def _foreign_id(req: networkservice_pb2.NetworkServiceRequest) -> None:
    req.connection.id = str(uuid.uuid4())


def _no_mechanism(req: networkservice_pb2.NetworkServiceRequest) -> None:
    del req.mechanism_preferences[:]


def _reselect_unknown(req: networkservice_pb2.NetworkServiceRequest) -> None:
    req.connection.state = connection_pb2.RESELECT_REQUESTED
    req.connection.path.path_segments[0].expires.CopyFrom(clock.timestamp(clock.now() - 1))


FORGED = "\n01:02:03.004 ERROR p4nsm.p4rt switch=s1 event=down"

# Each is invalid: any answer but a refusal (or, for the no-op kinds, OK with nothing changed) is a finding.
REQUESTS: dict[str, Callable[[], networkservice_pb2.NetworkServiceRequest]] = {
    "service newline": _mutated(_set("connection.network_service", SERVICE + FORGED)),
    "service control chars": _mutated(_set("connection.network_service", "fu\x00zz\x1b[31m")),
    "service empty": _mutated(_set("connection.network_service", "")),
    "service 300 chars": _mutated(_set("connection.network_service", "s" * 300)),
    "service unknown": _mutated(_set("connection.network_service", "no-such-service")),
    "service bidi": _mutated(_set("connection.network_service", "fuzz\u202e\u2028x")),
    "endpoint unknown": _mutated(_set("connection.network_service_endpoint_name", "no-such-nse")),
    "endpoint newline": _mutated(_set("connection.network_service_endpoint_name", "nse" + FORGED)),
    "payload bogus": _mutated(_set("connection.payload", "FOO")),
    "labels 100": _mutated(_labels(100)),
    "label value 5000": _mutated(_labels(1, value="v" * 5000)),
    "label key space": _mutated(_labels(1, key="a b")),
    "mechanism MEMIF": _mutated(_mech(type="MEMIF")),
    "mechanism none": _mutated(_no_mechanism),
    "ifname 16 chars": _mutated(_mech(parameters={"inodeURL": "file:///var/run/netns/h1", "name": "i" * 16})),
    "ifname slash": _mutated(_mech(parameters={"inodeURL": "file:///var/run/netns/h1", "name": "../eth0"})),
    "ifname newline": _mutated(_mech(parameters={"inodeURL": "file:///var/run/netns/h1", "name": "a\nb"})),
    "netns /etc/passwd": _mutated(_mech(parameters={"inodeURL": "file:///etc/passwd"})),
    "netns unknown": _mutated(_mech(parameters={"netnsName": "h99"})),
    "netns none": _mutated(_mech(parameters={})),
    "path index 5": _mutated(_path(lambda p: setattr(p, "index", 5))),
    "path empty": _mutated(_path(lambda p: p.ClearField("path_segments"))),
    "path 200 segments": _mutated(_path(_many_segments)),
    "segment id mismatch": _mutated(_foreign_id),
    "expires past": _mutated(_past_expiry),
    "expires missing": _mutated(_no_expiry),
    "expires bad nanos": _mutated(_bad_nanos),
    "ip addr bogus": _mutated(_ip(src_ip_addrs=["999.1.1.1/33"])),
    "ip addr no prefix": _mutated(_ip(dst_ip_addrs=["10.0.0.1"])),
    "route bogus": _mutated(_ip(src_routes=["default", "x"])),
    "reselect past expiry": _mutated(_reselect_unknown),
}

# Metadata each Request may carry: the right kind, or a malformed one.
TOKENS = TokenSource("spiffe://p4nsm/fuzz", 600.0)
METADATA: dict[str, Callable[[], tuple[tuple[str, str], ...]]] = {
    "metadata ok": lambda: Credentials(*TOKENS.issue()).as_metadata(),
    "metadata none": lambda: (),
    "expires malformed": lambda: ((TOKEN_KEY, TOKENS.issue()[0]), (EXPIRES_KEY, "yesterday")),
    "token twice": lambda: ((TOKEN_KEY, "a"), (TOKEN_KEY, "b"), (EXPIRES_KEY, "2030-01-01T00:00:00Z")),
    "token garbage": lambda: ((TOKEN_KEY, "not.a.jwt!"), (EXPIRES_KEY, clock.format_rfc3339(clock.now() + 60))),
}

EXPIRY_FAULTS = {"expires past", "expires missing", "reselect past expiry"}
KEEP_SEGMENT_EXPIRY = ["metadata none", "token twice", "expires malformed"]


def _registrations() -> dict[str, Callable[[], object]]:
    past = clock.timestamp(clock.now() - 60)
    return {
        "ns register empty name": lambda: registry_pb2.NetworkService(name=""),
        "ns register newline": lambda: registry_pb2.NetworkService(name="ns" + FORGED),
        "ns register 300 chars": lambda: registry_pb2.NetworkService(name="n" * 300),
        "ns register bad payload": lambda: registry_pb2.NetworkService(name="n\x01", payload="x" * 300),
        "nse register empty name": lambda: registry_pb2.NetworkServiceEndpoint(name=""),
        "nse register past expiry": lambda: registry_pb2.NetworkServiceEndpoint(name="fuzz-past", network_service_names=[SERVICE],
                                                                                 url="unix:///x", expiration_time=past),
        "nse register newline": lambda: registry_pb2.NetworkServiceEndpoint(name="nse" + FORGED, url="unix:///x"),
        "nse register 100 services": lambda: registry_pb2.NetworkServiceEndpoint(
            name="n\x02", network_service_names=[f"s{i}" for i in range(100)]),
    }


def _oversize() -> bytes:
    req = _request()
    req.connection.labels["big"] = "x" * OVERSIZE
    return req.SerializeToString()


def _garbage(rng: random.Random) -> bytes:
    # A first byte 0 is a tag of field number 0, which no message has: random bytes that
    # happened to decode (into a Find that watches, say) would not be garbage.
    return b"\x00" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))


def _truncated(rng: random.Random) -> bytes:
    data = _request().SerializeToString()
    return data[: rng.randint(1, len(data) - 1)]


async def _nsm_load(address: str, count: int, flood_rate: float, flood_seconds: float) -> None:
    """`count` hostile messages over every NSM method, or (flood_rate > 0) refused Requests at a
    steady rate; prints one JSON line of tallies."""
    rng = random.Random(12)
    channel = grpc.aio.insecure_channel(dial_target(address), options=[("grpc.max_send_message_length", 8 * OVERSIZE)])
    codes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    hangs: list[str] = []
    accepted: Counter[str] = Counter()

    def method(path: str, stream: bool = False):  # type: ignore[no-untyped-def]
        make = channel.unary_stream if stream else channel.unary_unary
        return make(path, request_serializer=_ident, response_deserializer=_ident)

    ns_request = method("/networkservice.NetworkService/Request")
    ns_close = method("/networkservice.NetworkService/Close")
    monitor = method("/connection.MonitorConnection/MonitorConnections", stream=True)
    methods = {
        "ns register": method("/registry.NetworkServiceRegistry/Register"),
        "nse register": method("/registry.NetworkServiceEndpointRegistry/Register"),
        "ns find": method("/registry.NetworkServiceRegistry/Find", stream=True),
        "nse find": method("/registry.NetworkServiceEndpointRegistry/Find", stream=True),
        "nse unregister": method("/registry.NetworkServiceEndpointRegistry/Unregister"),
    }
    registrations = _registrations()

    def pick() -> tuple[str, Callable[[], Awaitable[object]], bool]:
        """(kind, the call, whether OK is a fine answer: a no-op such as Close of an unknown id)."""
        r = rng.random()
        if flood_rate or r < 0.6:
            kind = rng.choice(list(REQUESTS))
            # A token and expiry in the metadata replace the segment's own (§6.2): with them an
            # expiry fault is no fault at all.
            meta_kind = rng.choice(KEEP_SEGMENT_EXPIRY if kind in EXPIRY_FAULTS else list(METADATA))
            data, meta = REQUESTS[kind]().SerializeToString(), METADATA[meta_kind]()
            return f"Request: {kind}; {meta_kind}", lambda: ns_request(data, timeout=CALL_TIMEOUT_S, metadata=meta), False
        if r < 0.66:
            data = _garbage(rng)
            target = rng.choice([ns_request, ns_close, *[m for k, m in methods.items() if "find" not in k]])
            return "garbage bytes", lambda: target(data, timeout=CALL_TIMEOUT_S), False
        if r < 0.70:
            data = _truncated(rng)
            return "truncated Request", lambda: ns_request(data, timeout=CALL_TIMEOUT_S), False
        if r < 0.71:
            data = _oversize()
            return "Request over the size limit", lambda: ns_request(data, timeout=CALL_TIMEOUT_S), False
        if r < 0.78:
            conn = _request().connection
            conn.id = conn.path.path_segments[0].id = str(uuid.uuid4())
            data = conn.SerializeToString()
            return "Close unknown id", lambda: ns_close(data, timeout=CALL_TIMEOUT_S), True
        if r < 0.82:
            sel = connection_pb2.MonitorScopeSelector(path_segments=[_segment("x" + FORGED)] * 100)
            data = sel.SerializeToString() if rng.random() < 0.5 else _garbage(rng)

            async def watch() -> object:
                call = monitor(data, timeout=CALL_TIMEOUT_S)
                try:
                    return await asyncio.wait_for(call.read(), 1.0)  # the initial state, or the refusal
                except TimeoutError:
                    return None
                finally:
                    call.cancel()
            return "MonitorConnections odd selector", watch, True
        if r < 0.93:
            kind = rng.choice(list(registrations))
            data = registrations[kind]().SerializeToString()  # type: ignore[attr-defined]
            target = methods["ns register" if kind.startswith("ns ") else "nse register"]
            return kind, lambda: target(data, timeout=CALL_TIMEOUT_S), False
        if r < 0.96:
            data = registry_pb2.NetworkServiceEndpoint(name=f"no-such-{uuid.uuid4().hex[:6]}").SerializeToString()
            return "nse unregister unknown", lambda: methods["nse unregister"](data, timeout=CALL_TIMEOUT_S), True
        which = rng.choice(["ns find", "nse find"])
        data = _garbage(rng)

        async def find() -> object:
            return [m async for m in methods[which](data, timeout=CALL_TIMEOUT_S)]
        return f"{which} garbage", find, False

    async def one(kind: str, call: Callable[[], Awaitable[object]], ok_is_fine: bool) -> None:
        try:
            await call()
            code = "OK"
            if not ok_is_fine:
                accepted[kind] += 1
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                hangs.append(kind)
        except Exception as e:  # grpc refused to send it: the message never left this process
            code = f"not sent ({type(e).__name__})"
        codes[code] += 1
        by_kind.setdefault(kind.split(";")[0], Counter())[code] += 1

    began = time.perf_counter()
    if flood_rate:
        n, pending = 0, set()
        start = time.monotonic()
        while time.monotonic() - start < flood_seconds:
            due = start + n / flood_rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            pending.add(asyncio.ensure_future(one(*pick())))
            pending = {p for p in pending if not p.done()}
            n += 1
        await asyncio.gather(*pending)
    else:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def bounded() -> None:
            async with sem:
                await one(*pick())
        await asyncio.gather(*(bounded() for _ in range(count)))
    seconds = time.perf_counter() - began
    await channel.close()
    print(json.dumps({"sent": sum(codes.values()), "seconds": seconds, "codes": codes, "by_kind": by_kind,
                      "hangs": Counter(hangs), "accepted": accepted}), flush=True)


# --- malformed P4Runtime messages ---------------------------------------------------------------

def _u128(n: int) -> p4r.Uint128:
    return U128.encode(n)


def _p4rt_cases(device_id: int, rng: random.Random) -> dict[str, Callable[[], tuple[str, object]]]:
    """kind -> (method, message or bytes). Every election id is below the controller's (10)."""
    def entry(table_id: int, match: list[p4r.FieldMatch], action_id: int = 1) -> p4r.Entity:
        return p4r.Entity(table_entry=p4r.TableEntry(
            table_id=table_id, match=match, action=p4r.TableAction(action=p4r.Action(action_id=action_id))))

    def write(*updates: p4r.Update, election: int = 5, device: int = device_id, atomicity: int = 0, role: str = "") -> p4r.WriteRequest:
        return p4r.WriteRequest(device_id=device, election_id=_u128(election) if election else None, updates=list(updates),
                                atomicity=atomicity, role=role)  # type: ignore[arg-type]

    upd = p4r.Update(type=p4r.Update.INSERT, entity=entry(rng.randint(1, 2**32 - 1),
                                                          [p4r.FieldMatch(field_id=1, exact=p4r.FieldMatch.Exact(value=b"\x01" * 40))]))
    return {
        "Write not primary": lambda: ("Write", write(upd)),
        "Write no election id": lambda: ("Write", write(upd, election=0)),
        "Write wrong device": lambda: ("Write", write(upd, device=device_id + 1000)),
        "Write atomicity 9": lambda: ("Write", write(upd, atomicity=9)),
        "Write unknown role": lambda: ("Write", write(upd, role="intruder")),
        "Write update type 0": lambda: ("Write", write(p4r.Update(type=0, entity=upd.entity))),
        "Write empty entity": lambda: ("Write", write(p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity()))),
        "Write 1000 updates": lambda: ("Write", write(*[upd] * 1000)),
        "Write garbage": lambda: ("Write", _garbage(rng)),
        "Read unknown table": lambda: ("Read", p4r.ReadRequest(device_id=device_id, entities=[entry(rng.randint(1, 2**32 - 1), [])])),
        "Read wrong device": lambda: ("Read", p4r.ReadRequest(device_id=device_id + 1000, entities=[p4r.Entity(table_entry=p4r.TableEntry())])),
        "Read garbage": lambda: ("Read", _garbage(rng)),
        "SetPipeline not primary": lambda: ("SetForwardingPipelineConfig", p4r.SetForwardingPipelineConfigRequest(
            device_id=device_id, election_id=_u128(5), action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
            config=p4r.ForwardingPipelineConfig(p4_device_config=b'{"program": [1, 2]}'))),
        "SetPipeline action 99": lambda: ("SetForwardingPipelineConfig", p4r.SetForwardingPipelineConfigRequest(
            device_id=device_id, election_id=_u128(5), action=99)),  # type: ignore[arg-type]
        "SetPipeline garbage": lambda: ("SetForwardingPipelineConfig", _garbage(rng)),
        "GetPipeline response type 99": lambda: ("GetForwardingPipelineConfig", p4r.GetForwardingPipelineConfigRequest(
            device_id=device_id, response_type=99)),  # type: ignore[arg-type]
        "GetPipeline wrong device": lambda: ("GetForwardingPipelineConfig", p4r.GetForwardingPipelineConfigRequest(device_id=device_id + 1000)),
        "Capabilities garbage": lambda: ("Capabilities", _garbage(rng)),
        "Stream backup arbitration, then packet-out": lambda: ("StreamChannel", [
            p4r.StreamMessageRequest(arbitration=p4r.MasterArbitrationUpdate(device_id=device_id, election_id=_u128(rng.randint(1, 9)))),
            p4r.StreamMessageRequest(packet=p4r.PacketOut(payload=b"\x00" * 64))]),
        "Stream packet-out first": lambda: ("StreamChannel", [p4r.StreamMessageRequest(packet=p4r.PacketOut(payload=b"x"))]),
        "Stream wrong device": lambda: ("StreamChannel", [
            p4r.StreamMessageRequest(arbitration=p4r.MasterArbitrationUpdate(device_id=device_id + 1000, election_id=_u128(3)))]),
        "Stream garbage": lambda: ("StreamChannel", [_garbage(rng)]),
    }


async def _p4rt_load(switches: list[tuple[str, int]], count: int) -> None:
    rng = random.Random(34)
    codes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    hangs: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    channels = {addr: grpc.aio.insecure_channel(addr) for addr, _ in switches}

    def raw(addr: str, name: str, stream: bool = False):  # type: ignore[no-untyped-def]
        path = f"/p4.v1.P4Runtime/{name}"
        ch = channels[addr]
        if stream:
            return ch.stream_stream(path, request_serializer=_ident, response_deserializer=_ident)
        return ch.unary_unary(path, request_serializer=_ident, response_deserializer=_ident)

    async def one() -> None:
        addr, device = rng.choice(switches)
        kind, make = rng.choice(list(_p4rt_cases(device, rng).items()))
        name, msg = make()
        try:
            if name == "StreamChannel":
                call = raw(addr, name, stream=True)(timeout=CALL_TIMEOUT_S)
                try:
                    for m in msg:  # type: ignore[attr-defined]
                        await call.write(m if isinstance(m, bytes) else m.SerializeToString())
                    await asyncio.wait_for(call.read(), 1.0)  # an error, an arbitration answer, or nothing
                except TimeoutError:
                    pass
                finally:
                    call.cancel()
                code = "CANCELLED (stream closed by us)"
            else:
                data = msg if isinstance(msg, bytes) else msg.SerializeToString()  # type: ignore[attr-defined]
                await raw(addr, name)(data, timeout=CALL_TIMEOUT_S)
                code = "OK"
                accepted[kind] += 1
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                hangs[kind] += 1
        except Exception as e:  # grpc refused to send it: the message never left this process
            code = f"not sent ({type(e).__name__})"
        codes[code] += 1
        by_kind.setdefault(kind, Counter())[code] += 1

    sem = asyncio.Semaphore(CONCURRENCY)

    async def bounded() -> None:
        async with sem:
            await one()
    began = time.perf_counter()
    await asyncio.gather(*(bounded() for _ in range(count)))
    seconds = time.perf_counter() - began
    for ch in channels.values():
        await ch.close()
    print(json.dumps({"sent": sum(codes.values()), "seconds": seconds, "codes": codes, "by_kind": by_kind,
                      "hangs": hangs, "accepted": accepted}), flush=True)


# --- the orchestrator ---------------------------------------------------------------------------

def rss_mib(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


async def _run_load(*args: str) -> dict:
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--load", *args,
                                                stdout=asyncio.subprocess.PIPE, limit=LOAD_REPORT_LIMIT)
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    await proc.wait()
    if not line:
        raise SystemExit(f"the load process {args[0]} ended without a report")
    return json.loads(line)


class Baseline:
    """The stream on the baseline connection, run in STREAM_CHUNK_S trials while a phase lasts."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.trial = 0
        self.sent = 0
        self.received = 0

    async def during(self, work: Awaitable[dict]) -> tuple[dict, int, int]:
        """Runs `work` with the stream on; (its result, frames sent, frames received)."""
        task = asyncio.ensure_future(work)
        sent = received = 0
        while True:
            self.trial += 1
            _, chunk = await self.traffic.run(self.trial, STREAM_CHUNK_S)
            t = await chunk
            sent += sum(t.sent.values())
            received += len(t.records)
            if task.done():
                break
        self.sent += sent
        self.received += received
        return task.result(), sent, received


class GcPauses:
    """How long the controller's process spent in each full (generation 2) collection: a
    stall of its one event loop, keepalives and probes included."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


async def _idle(seconds: float) -> dict:
    """No hostile input: what the controller and the lab cost (and drop) on their own."""
    await asyncio.sleep(seconds)
    return {"sent": 0, "seconds": seconds, "codes": {}, "by_kind": {}, "hangs": {}, "accepted": {}}


async def _state(ctl) -> dict:  # type: ignore[no-untyped-def]
    assert ctl.nsm is not None
    return {
        "tables": await _read_all(ctl),
        # which connections are stored between which hosts: a heal round (after a false down)
        # rewrites a row's path, and that is not the invalid input's doing
        "store": sorted((p.id, p.a.host, p.b.host) for p in ctl.store.all()),
        "plans": sorted(ctl.fabric.plans),
        "nsm connections": sorted(ctl.nsm.begin.states),
        "services": sorted(m.SerializeToString(deterministic=True) for m in ctl.nsm.services.entries.values()),
        "endpoints": sorted(ctl.nsm.endpoints.entries),
    }


async def _baseline_connection(ctl, within: float = 60.0):  # type: ignore[no-untyped-def]
    """h1 -> h3, once the links are up: ready switches are not yet probed links."""
    from controller.fabric.connections import ConnectError

    deadline = time.monotonic() + within
    while True:
        try:
            [plan] = await scenario.connect_all(ctl, [("h1", "h3")], 1, print)
            return plan
        except ConnectError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(dial_target(address)) as ch:
        try:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="networkservice.NetworkService"), timeout=5)
        except grpc.aio.AioRpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


async def orchestrate(topo, lab, work: Path, args: argparse.Namespace) -> dict:  # type: ignore[no-untyped-def]
    from controller.runtime import Controller
    from controller.settings import Settings
    from controller.topology import host_ifname

    settings = Settings.load({"metrics_address": "127.0.0.1:0", "web_address": "127.0.0.1:0", "plaintext": "true",
                              "store_path": str(work / "store.sqlite"), "nsm_run_dir": str(work / "nsm"),
                              **dict(o.split("=", 1) for o in args.set)})
    address = f"unix://{work / 'nsm.sock'}"
    ctl = Controller(topo, settings, nsm_address=address)
    await ctl.start()
    nse: subprocess.Popen | None = None
    traffic: Traffic | None = None
    try:
        if not await ctl.wait_ready(READY_TIMEOUT_S):
            raise SystemExit("switches not ready")
        with open(work / "nse.log", "w") as nse_log:
            nse = subprocess.Popen([str(REPO / ".venv" / "bin" / "p4nsm"), "nse", "--service", SERVICE, "--netns", "h3",
                                    "--cidr", "10.80.0.0/16", "--nsm-address", address, "--name", f"{SERVICE}-h3", "--plaintext"],
                                   env={**os.environ, "P4NSM_NSM_RUN_DIR": str(work / "nsm")},
                                   stdout=subprocess.DEVNULL, stderr=nse_log)
        assert ctl.nsm is not None
        deadline = time.monotonic() + 30
        while not ctl.nsm.endpoints.offering(SERVICE):
            if time.monotonic() > deadline:
                raise SystemExit("the endpoint did not register")
            await asyncio.sleep(0.1)
        plan = await _baseline_connection(ctl)
        traffic = Traffic([Stream(0, plan.id, "h1", "h3", plan.a.vlan, STREAM_RATE)],
                          {h.name: host_ifname(h.name) for h in topo.hosts}, work)
        await traffic.start()
        await scenario.settle(ctl, 60)
        if not args.no_gc_freeze:
            # As `p4nsm run` does once started (controller/aio.py): the start-up heap is left
            # out of every later collection.
            freeze_startup_heap()
        baseline = Baseline(traffic)
        before = await _state(ctl)
        mem_before = {"controller": rss_mib(), **{s.name: rss_mib(lab.switch_pid(s.name) or 0) for s in topo.switches}}
        pids = {s.name: lab.switch_pid(s.name) for s in topo.switches}
        link_downs, switch_downs = link_down_counter(ctl), switch_down_counter(ctl)
        lags: list[float] = []
        lag_probe = asyncio.create_task(_loop_lag(lags))
        gc_pauses = GcPauses()
        p4rt_targets = ",".join(f"{s.grpc_addr}@{s.device_id}" for s in topo.switches)
        phases: dict[str, dict] = {}
        for phase, load_args in (("idle", ("idle", str(IDLE_S))),
                                 ("nsm", ("nsm", address, str(args.nsm))),
                                 ("p4rt", ("p4rt", p4rt_targets, str(args.p4rt))),
                                 ("flood", ("flood", address, str(args.flood_rate), str(args.flood_seconds)))):
            if phase == "flood" and not args.flood_seconds:
                continue
            print(f"phase {phase}: {' '.join(load_args[2:])}", flush=True)
            downs0, lags0, cpu0, gc0 = (link_downs[0], switch_downs[0]), len(lags), time.process_time(), len(gc_pauses.pauses)
            work_of = _idle(IDLE_S) if phase == "idle" else _run_load(*load_args)
            tally, sent, received = await baseline.during(work_of)
            tally.update(link_downs=link_downs[0] - downs0[0], switch_downs=switch_downs[0] - downs0[1],
                         frames_sent=sent, frames_lost=sent - received, controller_cpu=time.process_time() - cpu0,
                         lag_p99=pct(lags[lags0:], 0.99), lag_max=pct(lags[lags0:], 1.0),
                         gc_full=len(gc_pauses.pauses) - gc0, gc_max=pct(gc_pauses.pauses[gc0:], 1.0))
            phases[phase] = tally
            print(f"  {tally['sent']} messages in {tally['seconds']:.1f}s: {dict(tally['codes'])}; hangs "
                  f"{sum(tally['hangs'].values())}; link downs {tally['link_downs']}, switch downs {tally['switch_downs']}; "
                  f"frames lost {tally['frames_lost']}/{sent}; loop lag p99 {tally['lag_p99']:.1f} ms, "
                  f"max {tally['lag_max']:.1f} ms; full collections {tally['gc_full']}, longest {tally['gc_max']:.0f} ms", flush=True)
        lag_probe.cancel()
        gc_pauses.close()
        await scenario.settle(ctl, 60)
        after = await _state(ctl)
        changed = [k for k in before if before[k] != after[k] and k != "tables"]
        # A false down moves the baseline connection onto the other leg: its entries change, and
        # that is the heal's doing. What invalid input could leave is told by the read-back
        # holding exactly what the connections want, nothing more.
        reader = ReaderProcess(REPO / "topologies" / "diamond.yaml", settings.p4info_path)
        try:
            changed += [f"tables: {p}" for p in await check_installed(ctl, reader)]
        finally:
            reader.close()
        rerouted = before["tables"] != after["tables"]
        crashes = [f"switch {n} (pid {p} -> {lab.switch_pid(n)})" for n, p in pids.items() if lab.switch_pid(n) != p]
        if not await _serving(address):
            crashes.append("NSM server not SERVING")
        mem_after = {"controller": rss_mib(), **{s.name: rss_mib(lab.switch_pid(s.name) or 0) for s in topo.switches}}
        return {"phases": phases, "changed": changed, "rerouted": rerouted, "crashes": crashes, "mem_before": mem_before,
                "mem_after": mem_after, "frames_sent": baseline.sent, "frames_lost": baseline.sent - baseline.received}
    finally:
        if traffic is not None:
            await traffic.close()
        if nse is not None:
            nse.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(nse.wait, 10)
            except subprocess.TimeoutExpired:
                nse.kill()
        for conn_id in list(ctl.fabric.plans):
            await asyncio.wait_for(ctl.fabric.disconnect(conn_id), 10)
        await ctl.stop()


def report(r: dict, args: argparse.Namespace, began: str, load: tuple[float, float]) -> str:
    ph = r["phases"]
    lines = [
        "# Hostile input against a running lab",
        "",
        f"`sudo .venv/bin/python benchmarks/bench_fuzz.py --nsm {args.nsm} --p4rt {args.p4rt} --flood-rate {args.flood_rate:g} "
        f"--flood-seconds {args.flood_seconds:g}{' --no-gc-freeze' if args.no_gc_freeze else ''}`, {began}, {platform.node()} ({os.cpu_count()} cores, load "
        f"{load[0]:.1f} → {load[1]:.1f}; other work shared the machine). Diamond of softswitches in Mininet, the "
        f"controller with the NSM API in one process (default settings: keepalive {0.05:g} s, timeout 0.15 s), a "
        f"`p4nsm nse` on h3, and one connection h1 → h3 carrying a {STREAM_RATE:.0f} frames/s stream throughout.",
        "",
        "| phase | messages | s | status codes | hangs | accepted (invalid, yet OK) | false link / switch downs | frames lost | loop lag p99 / max (ms) | full GCs, longest (ms) | controller CPU (s) |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in ph.items():
        codes = ", ".join(f"{k} {v}" for k, v in sorted(t["codes"].items(), key=lambda kv: -kv[1]))
        accepted = ", ".join(f"{k} {v}" for k, v in t["accepted"].items()) or "none"
        lines.append(f"| {name} | {t['sent']:,} | {t['seconds']:.1f} | {codes} | {sum(t['hangs'].values())} | {accepted} | "
                     f"{t['link_downs']} / {t['switch_downs']} | {t['frames_lost']}/{t['frames_sent']} | "
                     f"{t['lag_p99']:.1f} / {t['lag_max']:.1f} | {t['gc_full']}, {t['gc_max']:.0f} | {t['controller_cpu']:.1f} |")
    lines += [
        "",
        f"- Crashes: {', '.join(r['crashes']) or 'none'} (every switch process still the one it was; the NSM server SERVING).",
        f"- State changed by the invalid input: {', '.join(r['changed']) or 'none'} (switch tables read back, store rows, "
        f"fabric plans, NSM connections, registered services and endpoints, before and after; every switch read back "
        f"holds exactly what the connections want"
        + ("; the baseline connection's entries moved to the other leg after a false down" if r["rerouted"] else "") + ").",
        f"- Baseline connection: {r['frames_lost']} of {r['frames_sent']:,} frames lost.",
        "- Memory (RSS, MiB) before → after: " + ", ".join(
            f"{k} {r['mem_before'][k]:.0f} → {r['mem_after'][k]:.0f}" for k in r["mem_before"]),
        "",
        "Status codes per kind of message:",
        "",
        "| phase | kind | codes |",
        "|---|---|---|",
    ]
    for name, t in ph.items():
        if name == "flood":
            continue
        for kind, codes in sorted(t["by_kind"].items()):
            lines.append(f"| {name} | {kind} | {', '.join(f'{k} {v}' for k, v in sorted(codes.items()))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nsm", type=int, default=10000, help="hostile NSM messages")
    parser.add_argument("--p4rt", type=int, default=5000, help="malformed P4Runtime messages")
    parser.add_argument("--flood-rate", type=float, default=200.0, help="refused NSM Requests per second in the flood phase")
    parser.add_argument("--flood-seconds", type=float, default=60.0, help="length of the flood phase (0: none)")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="leave the controller's start-up heap to the collector (p4nsm run freezes it once started)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="controller setting override")
    parser.add_argument("--lock-timeout", type=float, default=1800.0, help="seconds to wait for another lab on this machine")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    parser.add_argument("--load", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        kind, *rest = args.load
        if kind == "nsm":
            asyncio.run(_nsm_load(rest[0], int(rest[1]), 0.0, 0.0))
        elif kind == "flood":
            asyncio.run(_nsm_load(rest[0], 0, float(rest[1]), float(rest[2])))
        else:
            targets = [(t.split("@")[0], int(t.split("@")[1])) for t in rest[0].split(",")]
            asyncio.run(_p4rt_load(targets, int(rest[1])))
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root: the lab makes network namespaces and veth pairs")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    from controller.logs import setup_logging
    from controller.topology import load_topology
    from lab.harness import Lab

    began, load_before = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()[0]
    topo = load_topology(REPO / "topologies" / "diamond.yaml")
    work = Path(tempfile.mkdtemp(prefix="p4nsm-bench-fuzz-"))
    with open(work / "controller.log", "w") as log_file:
        setup_logging("WARNING", log_file)
        try:
            # Plaintext switches and NSM API: the hostile messages must reach the code that parses
            # them, not stop at a TLS handshake (the TLS refusals have tests of their own).
            with Lab(topo, work / "lab", lock_timeout=args.lock_timeout, tls=False) as lab:
                result = asyncio.run(orchestrate(topo, lab, work, args))
        finally:
            print(f"controller log: {work / 'controller.log'} (kept)" if args.no_write else "", flush=True)
    text = report(result, args, began, (load_before, os.getloadavg()[0]))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        shutil.rmtree(work, ignore_errors=True)
    print(text)


if __name__ == "__main__":
    main()
