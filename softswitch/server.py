"""The softswitch's P4Runtime service (grpc.aio): arbitration, pipeline config, Write, Read,
packet I/O. The data plane wires it in through SoftSwitchServer's callbacks and packet_in().

Everything runs on one asyncio loop, the data plane's too: a Write batch is applied between two
packets, and no handler awaits while it mutates the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
from finsy.proto import U128, p4r, p4r_grpc, rpc_code, rpc_status
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from softswitch.carry_over import carry_over
from softswitch.decoding import MalformedRequest, add_servicer
from softswitch.model import DataplaneState
from softswitch.p4info_index import (
    PROGRAMS,
    UNLIMITED,
    Capacity,
    P4InfoIndex,
    P4RTError,
    PacketMetadataInfo,
    Program,
    check_program,
    encode_value,
    invalid,
    value_error,
)
from softswitch.profiles import SOFTSWITCH, Profile
from softswitch.tables import EntityStore
from softswitch.trust import TRUST_EVERYONE, Trust, peer_identities

log = logging.getLogger("p4nsm.softswitch.p4rt")

# We implement the 1.4 semantics; finsy's protos also carry 1.5 additions we do not serve.
P4RUNTIME_API_VERSION = "1.4.0"
DEVICE_CONFIG_TARGET = "p4nsm-softswitch"
DEVICE_CONFIG_KEYS = frozenset({"target", "program"})
READ_CHUNK = 512  # entities per ReadResponse
PACKET_IN_QUEUE_LIMIT = 4096  # per stream; beyond it packet-ins are dropped, not buffered
WRITE_SLICE = 1024  # updates a Write applies before the data plane gets a turn (~10-25 ms)
# Largest request accepted: grpc refuses a larger one with RESOURCE_EXHAUSTED before it is parsed
# (a 16 MB Write parsed in full stalled the switch for ~0.5 s). A controller's Write batch of
# 1,000 entries is ~100 KB; `--grpc-max-recv-msg-size` changes it.
DEFAULT_MAX_RECEIVE_BYTES = 4 * 1024 * 1024
MAX_SEND_BYTES = 64 * 1024 * 1024
# The device config is one small JSON object; anything larger is refused before json parses it.
MAX_DEVICE_CONFIG_BYTES = 64 * 1024
SVC = p4r.SetForwardingPipelineConfigRequest
GET = p4r.GetForwardingPipelineConfigRequest

_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}


def grpc_code(code: int) -> grpc.StatusCode:
    return _GRPC_CODES.get(code, grpc.StatusCode.UNKNOWN)


async def _abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    details: str,
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
) -> NoReturn:
    """context.abort, which always raises: grpc.aio declares it NoReturn, but grpc ships no type
    information, so without this mypy would not know the code after it is unreachable."""
    await context.abort(code, details, trailing_metadata=trailing_metadata)
    raise AssertionError("grpc.aio.ServicerContext.abort returned")


# -- arbitration ---------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Close:
    """Ends a stream with an error status (put in the stream's outbox)."""

    code: int
    message: str


class StreamClient:
    """One StreamChannel: its outbox and what it said in arbitration."""

    def __init__(self, peer: str, identities: tuple[str, ...] = ()) -> None:
        self.peer = peer
        self.identities = identities  # from its verified certificate; () over plaintext
        self.outbox: asyncio.Queue[p4r.StreamMessageResponse | _Close | None] = asyncio.Queue()
        self.joined = False
        self.closed = False
        self.role = ""
        self.election: int | None = None
        self.dropped_packets = 0

    def send(self, msg: p4r.StreamMessageResponse) -> None:
        if not self.closed:
            self.outbox.put_nowait(msg)

    def close(self, code: int, message: str) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(_Close(code, message))


class _RoleGroup:
    def __init__(self) -> None:
        self.clients: list[StreamClient] = []
        self.primary: StreamClient | None = None
        # election_id_past of the spec: the highest election id ever seen for this role.
        self.highest: int | None = None


class Arbiter:
    """Primary election per role, as the spec's arbitration rules say.

    The primary is the client whose election id is >= the highest ever seen for the role. When
    it leaves nobody is promoted: the others hear NOT_FOUND until one of them re-arbitrates
    with an id at least that high.
    """

    def __init__(self, device_id: int, profile: Profile = SOFTSWITCH, trust: Trust = TRUST_EVERYONE) -> None:
        self.device_id = device_id
        self.profile = profile
        self.trust = trust
        self.roles: dict[str, _RoleGroup] = {}

    def arbitrate(self, client: StreamClient, update: p4r.MasterArbitrationUpdate) -> None:
        role = update.role.name if update.HasField("role") else ""
        try:
            # An arbitration without an election id counts as id 0 for a target that refuses it.
            self.profile.check_ids(update.device_id, U128.decode(update.election_id))
        except P4RTError as err:
            client.close(err.code, err.message)
            return
        if update.device_id != self.device_id:
            if client.joined:
                client.close(
                    rpc_code.FAILED_PRECONDITION, f"stream is bound to device {self.device_id}, got {update.device_id}"
                )
            else:
                client.close(
                    rpc_code.NOT_FOUND, f"unknown device id {update.device_id}; this is device {self.device_id}"
                )
            return
        if client.joined and role != client.role:
            client.close(rpc_code.FAILED_PRECONDITION, f"stream is bound to role {client.role!r}, got {role!r}")
            return
        if update.role.HasField("config"):
            client.close(rpc_code.INVALID_ARGUMENT, "role config is not supported: a role has the whole pipeline, "
                         "and who may hold it is the switch's allow-list (--grpc-server-allow)")
            return
        if not self.trust.allows(client.identities, role):
            # Before the election id is even looked at: a high id from an untrusted client is no claim.
            client.close(rpc_code.PERMISSION_DENIED, _untrusted(client.identities, role, "arbitrate"))
            return
        election = U128.decode(update.election_id) if update.HasField("election_id") else None
        group = self.roles.setdefault(role, _RoleGroup())
        if election is not None and any(c is not client and c.election == election for c in group.clients):
            client.close(
                rpc_code.INVALID_ARGUMENT, f"election id {election} is already used by a live client of role {role!r}"
            )
            return
        client.election = election
        client.role = role
        if not client.joined:
            client.joined = True
            group.clients.append(client)
        was_primary = group.primary is client
        if election is not None and (group.highest is None or election >= group.highest):
            group.primary = client
            group.highest = election
            log.info(
                "event=primary device=%d role=%r election_id=%d peer=%s", self.device_id, role, election, client.peer
            )
            self._notify(role, group, group.clients)
        elif was_primary:
            group.primary = None
            log.info("event=primary_downgraded device=%d role=%r peer=%s", self.device_id, role, client.peer)
            self._notify(role, group, group.clients)
        else:
            log.info(
                "event=backup device=%d role=%r election_id=%s peer=%s", self.device_id, role, election, client.peer
            )
            self._notify(role, group, [client])

    def leave(self, client: StreamClient) -> None:
        client.closed = True
        if not client.joined:
            return
        group = self.roles.get(client.role)
        if group is None or client not in group.clients:
            return
        group.clients.remove(client)
        if group.primary is client:
            group.primary = None
            log.info("event=primary_left device=%d role=%r peer=%s", self.device_id, client.role, client.peer)
            self._notify(client.role, group, group.clients)

    def _notify(self, role: str, group: _RoleGroup, clients: list[StreamClient]) -> None:
        for client in clients:
            update = p4r.MasterArbitrationUpdate(device_id=self.device_id)
            if role:
                update.role.name = role
            if group.highest is not None:
                update.election_id.CopyFrom(U128.encode(group.highest))
            if group.primary is client:
                update.status.code = rpc_code.OK
                update.status.message = "primary"
            elif group.primary is not None:
                update.status.code = rpc_code.ALREADY_EXISTS
                update.status.message = f"backup: the primary has election id {group.highest}"
            else:
                update.status.code = rpc_code.NOT_FOUND
                update.status.message = "no primary: re-arbitrate with an election id >= the one given"
            client.send(p4r.StreamMessageResponse(arbitration=update))

    def primary(self, role: str) -> StreamClient | None:
        group = self.roles.get(role)
        return group.primary if group is not None else None

    def primaries(self) -> list[StreamClient]:
        return [g.primary for g in self.roles.values() if g.primary is not None]

    def is_primary(self, role: str, election: p4r.Uint128) -> bool:
        primary = self.primary(role)
        return primary is not None and primary.election == U128.decode(election)


def _untrusted(identities: tuple[str, ...], role: str | None, what: str) -> str:
    who = f"client {', '.join(identities)!r}" if identities else "a client without a certificate identity"
    which = "any role" if role is None else f"role {role!r}"
    return f"{who} may not {what} for {which}: not on this switch's allow-list (--grpc-server-allow)"


# -- pipeline ------------------------------------------------------------------------------


@dataclasses.dataclass
class Pipeline:
    config: p4r.ForwardingPipelineConfig
    index: P4InfoIndex
    program: Program
    store: EntityStore


def parse_device_config(data: bytes) -> Program:
    """The softswitch's device config: {"target": "p4nsm-softswitch", "program": NAME}."""
    if len(data) > MAX_DEVICE_CONFIG_BYTES:
        raise invalid(f"p4_device_config: {len(data)} bytes, more than {MAX_DEVICE_CONFIG_BYTES} (it is one small JSON object)")
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # RecursionError: nested too deep
        raise invalid(f"p4_device_config: not JSON ({err})") from None
    if not isinstance(doc, dict):
        raise invalid("p4_device_config: expected a JSON object")
    if doc.get("target") != DEVICE_CONFIG_TARGET:
        raise invalid(f"p4_device_config: target {doc.get('target')!r} is not {DEVICE_CONFIG_TARGET!r}")
    unknown = sorted(set(doc) - DEVICE_CONFIG_KEYS)
    if unknown:
        # Another compiler's or a newer release's config: better refused than half understood.
        raise invalid(f"p4_device_config: unknown key(s) {', '.join(map(repr, unknown))}; "
                      f"a softswitch config has {', '.join(sorted(DEVICE_CONFIG_KEYS))}")
    name = doc.get("program")
    program = PROGRAMS.get(name) if isinstance(name, str) else None  # an unhashable JSON value must not raise
    if program is None:
        raise invalid(f"p4_device_config: program {doc.get('program')!r} is not one of {sorted(PROGRAMS)}")
    return program


def verify_pipeline(config: p4r.ForwardingPipelineConfig, capacity: Capacity = UNLIMITED) -> Pipeline:
    """A pipeline the switch could run, or INVALID_ARGUMENT naming what does not fit: the device
    config, the P4Info's consistency, the program's vocabulary, this switch's capacity."""
    if not config.HasField("p4info"):
        raise invalid("config: p4info missing")
    program = parse_device_config(config.p4_device_config)
    index = P4InfoIndex(config.p4info)
    check_program(index, program)
    capacity.check(index)
    kept = p4r.ForwardingPipelineConfig()
    kept.CopyFrom(config)
    return Pipeline(kept, index, program, EntityStore(index, program))


def write_failure_status(results: list[tuple[int, str] | None], failed: int) -> bytes:
    """google.rpc.Status with one p4.v1.Error per update, in order, for grpc-status-details-bin."""
    status = rpc_status.Status(code=rpc_code.UNKNOWN, message=f"{failed} of {len(results)} updates failed")
    ok = p4r.Error(canonical_code=rpc_code.OK)
    for result in results:
        if result is None:
            status.details.add().Pack(ok)
        else:
            status.details.add().Pack(p4r.Error(canonical_code=result[0], message=result[1]))
    return status.SerializeToString()


# -- the service ---------------------------------------------------------------------------


class SoftSwitchServer(p4r_grpc.P4RuntimeServicer):
    """P4Runtime server of one softswitch device."""

    def __init__(
        self,
        device_id: int,
        cpu_port: int,
        on_commit: Callable[[DataplaneState | None, str], None],
        on_packet_out: Callable[[bytes, dict[str, int]], None],
        profile: Profile = SOFTSWITCH,
        trust: Trust = TRUST_EVERYONE,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        capacity: Capacity = UNLIMITED,
    ) -> None:
        self.device_id = device_id
        self.capacity = capacity
        self.cpu_port = cpu_port
        self.profile = profile
        self.trust = trust
        self.max_receive_bytes = max_receive_bytes
        self.dropped_packet_outs = 0  # a target without packet I/O takes them and drops them
        self._on_commit = on_commit
        self._on_packet_out = on_packet_out
        self.arbiter = Arbiter(device_id, profile, trust)
        self.pipeline: Pipeline | None = None
        self._saved: Pipeline | None = None
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._packet_in_header: PacketMetadataInfo | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self,
        address: str,
        credentials: grpc.ServerCredentials | None = None,
        extra_services: Callable[[grpc.aio.Server], None] | None = None,
    ) -> None:
        """Serve on host:port or unix:PATH; TLS with `credentials`. `extra_services` adds
        other services (gNMI) to the same server before it starts."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_receive_bytes),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ]
        )
        guards = {"Write": self._require_writer, "SetForwardingPipelineConfig": self._require_writer}
        add_servicer(server, p4r_grpc.add_P4RuntimeServicer_to_server, self, log,
                     guards if self.trust.enforced else None)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        if extra_services is not None:
            extra_services(server)
        try:
            if credentials is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, credentials)
        except RuntimeError as err:  # grpc reports bind failures so; callers expect OSError
            raise OSError(f"cannot bind P4Runtime server to {address}: {err}") from None
        if bound == 0 and not address.startswith("unix:"):
            raise OSError(f"cannot bind P4Runtime server to {address}")
        await server.start()
        self._server = server
        log.info("event=listening device=%d addr=%s cpu_port=%d profile=%s tls=%s client_auth=%s allowed=%d "
                 "max_receive_bytes=%d", self.device_id, address, self.cpu_port, self.profile.name,
                 credentials is not None, self.trust.client_auth, len(self.trust.grants), self.max_receive_bytes)

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is None:
            return
        for client in [c for g in self.arbiter.roles.values() for c in g.clients]:
            client.outbox.put_nowait(None)
        await self._server.stop(grace)
        self._server = None
        log.info("event=stopped device=%d", self.device_id)

    # -- helpers ----------------------------------------------------------------------------

    async def _check_device(
        self, device_id: int, context: grpc.aio.ServicerContext, election: p4r.Uint128 | None = None
    ) -> None:
        try:
            self.profile.check_ids(device_id, U128.decode(election) if election is not None else None)
        except P4RTError as err:
            await self._refuse(context, grpc_code(err.code), err.message)
        if device_id != self.device_id:
            await self._refuse(
                context,
                grpc.StatusCode.NOT_FOUND, f"unknown device id {device_id}; this is device {self.device_id}"
            )

    async def _refuse(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        """A request this switch will not serve: one log line, then the status."""
        log.info("event=request_refused device=%d peer=%s code=%s reason=%r", self.device_id, context.peer(),
                 code.name, message)
        await _abort(context, code, message)

    async def _require_pipeline(self, context: grpc.aio.ServicerContext) -> Pipeline:
        if self.pipeline is None:
            await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "no forwarding pipeline config has been committed")
        return self.pipeline

    async def _require_writer(self, context: grpc.aio.ServicerContext) -> None:
        """Before the request is parsed: a peer that may write to no role is refused at once."""
        identities = peer_identities(context.auth_context())
        if not self.trust.allows_any_role(identities):
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, _untrusted(identities, None, "write"))

    async def _require_primary(
        self, role: str, election: p4r.Uint128, context: grpc.aio.ServicerContext, what: str
    ) -> None:
        if self.trust.enforced:
            identities = peer_identities(context.auth_context())
            if not self.trust.allows(identities, role):
                await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, _untrusted(identities, role, what))
            primary = self.arbiter.primary(role)
            if primary is not None and set(primary.identities) != set(identities):
                # The election id is the primary's, the caller is not: an id is no credential.
                await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                                   f"{what} refused: role {role!r}'s primary election id belongs to another client's stream")
        if not self.arbiter.is_primary(role, election):
            primary = self.arbiter.primary(role)
            held = "no primary" if primary is None else f"primary election id is {primary.election}"
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{what} from election id {U128.decode(election)} role {role!r} refused: {held}",
            )

    # -- RPCs -------------------------------------------------------------------------------

    async def Capabilities(self, request, context):
        return p4r.CapabilitiesResponse(p4runtime_api_version=P4RUNTIME_API_VERSION)

    async def SetForwardingPipelineConfig(self, request, context):
        await self._check_device(request.device_id, context, request.election_id)
        await self._require_primary(request.role, request.election_id, context, "SetForwardingPipelineConfig")
        action = request.action
        kept = 0
        try:
            if action == SVC.RECONCILE_AND_COMMIT and not self.profile.reconcile_supported:
                raise P4RTError(rpc_code.UNIMPLEMENTED, "RECONCILE_AND_COMMIT is not supported")
            if action == SVC.COMMIT:
                if self._saved is None:
                    raise P4RTError(rpc_code.FAILED_PRECONDITION, "COMMIT: no config saved with VERIFY_AND_SAVE")
                candidate, self._saved = self._saved, None
            elif action in (SVC.VERIFY, SVC.VERIFY_AND_SAVE, SVC.VERIFY_AND_COMMIT, SVC.RECONCILE_AND_COMMIT):
                candidate = verify_pipeline(request.config, self.capacity)
                if action == SVC.RECONCILE_AND_COMMIT and self.pipeline is not None:
                    # Before the swap and without an await: no frame sees a half-filled pipeline.
                    kept = carry_over(self.pipeline.store, candidate.store)
            elif action == SVC.UNSPECIFIED:
                raise invalid("SetForwardingPipelineConfig: action is unspecified")
            else:
                raise invalid(f"SetForwardingPipelineConfig: action {action} is not a SetForwardingPipelineConfigRequest.Action")
        except P4RTError as err:
            log.warning(
                "event=pipeline_refused device=%d action=%s reason=%r",
                self.device_id,
                _enum_name(SVC.Action, action),
                err.message,
            )
            await _abort(context, grpc_code(err.code), err.message)
        if action == SVC.VERIFY:
            return p4r.SetForwardingPipelineConfigResponse()
        if action == SVC.VERIFY_AND_SAVE:
            self._saved = candidate
            return p4r.SetForwardingPipelineConfigResponse()
        self._commit(candidate, reconcile=action == SVC.RECONCILE_AND_COMMIT, kept=kept)
        return p4r.SetForwardingPipelineConfigResponse()

    def _commit(self, candidate: Pipeline, reconcile: bool, kept: int) -> None:
        self.pipeline = candidate
        self._packet_in_header = candidate.index.packet_metadata.get("packet_in")
        cookie = candidate.config.cookie.cookie if candidate.config.HasField("cookie") else None
        log.info(
            "event=pipeline_committed device=%d program=%s cookie=%s reconcile=%s kept=%d",
            self.device_id,
            candidate.program.name,
            cookie,
            reconcile,
            kept,
        )
        state = candidate.store.dataplane_state() if candidate.program.forwards else None
        self._on_commit(state, candidate.program.name)

    async def GetForwardingPipelineConfig(self, request, context):
        await self._check_device(request.device_id, context)
        if request.response_type not in GET.ResponseType.values():
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                               f"response_type {request.response_type} is not a GetForwardingPipelineConfigRequest.ResponseType")
        out = p4r.GetForwardingPipelineConfigResponse()
        pipeline = self.pipeline
        if pipeline is None:
            return out
        config = pipeline.config
        kind = request.response_type
        if config.HasField("cookie"):
            out.config.cookie.CopyFrom(config.cookie)
        if kind in (GET.ALL, GET.P4INFO_AND_COOKIE):
            out.config.p4info.CopyFrom(config.p4info)
        if kind in (GET.ALL, GET.DEVICE_CONFIG_AND_COOKIE):
            out.config.p4_device_config = config.p4_device_config
        return out

    async def Write(self, request, context):
        await self._check_device(request.device_id, context, request.election_id)
        await self._require_primary(request.role, request.election_id, context, "Write")
        if request.atomicity != p4r.WriteRequest.CONTINUE_ON_ERROR:
            if request.atomicity not in p4r.WriteRequest.Atomicity.values():
                await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT,
                             f"atomicity {request.atomicity} is not a WriteRequest.Atomicity")
            await self._refuse(
                context,
                grpc.StatusCode.UNIMPLEMENTED,
                f"atomicity {p4r.WriteRequest.Atomicity.Name(request.atomicity)} is not supported: "
                "use CONTINUE_ON_ERROR",
            )
        pipeline = await self._require_pipeline(context)
        write = pipeline.store.write
        if not self.profile.admits_every_update:
            store_write, admit = write, self.profile.admit_update

            def write(update: p4r.Update) -> None:
                store_write(admit(update))

        updates = request.updates
        failures: list[tuple[int, P4RTError]] | None = None
        for i, update in enumerate(updates):
            if i % WRITE_SLICE == WRITE_SLICE - 1:
                # Let the data plane and the packet-in stream run between slices of a big batch,
                # as BMv2's separate threads would: a 10k-entry Write must not starve probes. A
                # small one (a heal round's switch-over) is not made to wait behind the data.
                await asyncio.sleep(0)
            try:
                write(update)
            except P4RTError as err:
                if failures is None:
                    failures = []
                failures.append((i, err))
            except Exception as err:  # a bug must not take the other updates down with it
                log.exception("event=write_internal_error device=%d update=%d", self.device_id, i)
                if failures is None:
                    failures = []
                failures.append((i, P4RTError(rpc_code.INTERNAL, f"internal error: {err!r}")))
        if failures is None:
            return p4r.WriteResponse()
        results: list[tuple[int, str] | None] = [None] * len(updates)
        for i, failure in failures:
            results[i] = (failure.code, failure.message)
        first = failures[0][1]
        log.info(
            "event=write_failed device=%d updates=%d failed=%d first_code=%s first=%r",
            self.device_id,
            len(updates),
            len(failures),
            rpc_code.Code.Name(first.code),
            first.message,
        )
        # The spec's error report: status UNKNOWN, one p4.v1.Error per update in the details.
        # For very large failed batches these details may exceed a client's metadata limit
        # (grpc.max_metadata_size, 8 KiB by default); clients raise it, the server sends all.
        await _abort(
            context,
            grpc.StatusCode.UNKNOWN,
            f"{len(failures)} of {len(updates)} updates failed; first: {first.message}",
            trailing_metadata=(("grpc-status-details-bin", write_failure_status(results, len(failures))),),
        )

    async def Read(self, request, context) -> AsyncIterator[p4r.ReadResponse]:
        await self._check_device(request.device_id, context)
        pipeline = await self._require_pipeline(context)
        batch: list[p4r.Entity] = []
        sent = False
        try:
            for entity in request.entities:
                for out in pipeline.store.read(entity):
                    batch.append(out)
                    if len(batch) >= READ_CHUNK:
                        yield p4r.ReadResponse(entities=batch)
                        sent = True
                        batch = []
        except P4RTError as err:
            await self._refuse(context, grpc_code(err.code), err.message)
        if batch or not sent:
            yield p4r.ReadResponse(entities=batch)

    async def StreamChannel(self, request_iterator, context) -> AsyncIterator[p4r.StreamMessageResponse]:
        client = StreamClient(context.peer(), peer_identities(context.auth_context()) if self.trust.enforced else ())
        reader = asyncio.create_task(self._read_stream(request_iterator, client))
        try:
            while True:
                item = await client.outbox.get()
                if item is None:
                    return
                if isinstance(item, _Close):
                    log.info(
                        "event=stream_closed device=%d peer=%s code=%s reason=%r",
                        self.device_id,
                        client.peer,
                        rpc_code.Code.Name(item.code),
                        item.message,
                    )
                    await _abort(context, grpc_code(item.code), item.message)
                yield item
        finally:
            reader.cancel()
            self.arbiter.leave(client)

    async def _read_stream(self, requests, client: StreamClient) -> None:
        try:
            async for msg in requests:
                if client.closed:
                    return
                which = msg.WhichOneof("update")
                if which == "arbitration":
                    self.arbiter.arbitrate(client, msg.arbitration)
                elif not client.joined:
                    client.close(
                        rpc_code.FAILED_PRECONDITION, "the first stream message must be a MasterArbitrationUpdate"
                    )
                    return
                elif which == "packet":
                    self._packet_out(client, msg.packet)
                else:
                    client.send(
                        p4r.StreamMessageResponse(
                            error=p4r.StreamError(
                                canonical_code=rpc_code.UNIMPLEMENTED,
                                message=f"stream message {which} is not supported",
                            )
                        )
                    )
        except asyncio.CancelledError:
            raise
        except MalformedRequest as err:
            client.close(rpc_code.INVALID_ARGUMENT, str(err))
        except (grpc.RpcError, grpc.aio.AbortError):
            pass  # the peer went away, or the stream was refused (logged as stream_closed); cleanup is in finally
        except Exception:
            log.exception("event=stream_reader_error device=%d peer=%s", self.device_id, client.peer)
        client.outbox.put_nowait(None)

    # -- packet I/O -------------------------------------------------------------------------

    def _packet_out(self, client: StreamClient, packet: p4r.PacketOut) -> None:
        try:
            if self.arbiter.primary(client.role) is not client:
                raise P4RTError(rpc_code.PERMISSION_DENIED, "packet-out is for the primary client only")
            pipeline = self.pipeline
            if pipeline is None:
                raise P4RTError(rpc_code.FAILED_PRECONDITION, "packet-out before any pipeline was committed")
            metadata = decode_packet_out(
                pipeline.index.packet_metadata.get("packet_out"), packet, self.profile.packet_port_bits
            )
        except P4RTError as err:
            log.info("event=packet_out_refused device=%d peer=%s reason=%r", self.device_id, client.peer, err.message)
            error = p4r.StreamError(canonical_code=err.code, message=err.message)
            error.packet_out.packet_out.CopyFrom(packet)
            client.send(p4r.StreamMessageResponse(error=error))
            return
        if not self.profile.packet_io:
            self.dropped_packet_outs += 1
            if self.dropped_packet_outs & (self.dropped_packet_outs - 1) == 0:  # 1st, 2nd, 4th, ...
                log.info("event=packet_out_dropped device=%d profile=%s dropped=%d reason=no_packet_io",
                         self.device_id, self.profile.name, self.dropped_packet_outs)
            return
        self._on_packet_out(packet.payload, metadata)

    def packet_in(self, payload: bytes, metadata: dict[str, int]) -> None:
        """Data plane -> the primary controller's stream (callable from any thread)."""
        if self._loop is not None and threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self.packet_in, payload, metadata)
            return
        header = self._packet_in_header
        if header is None or not self.profile.packet_io:
            return
        packet = p4r.PacketIn(payload=payload)
        for f in header.fields:
            value = metadata.get(f.name, 0)
            if value < 0 or value >> f.bitwidth:
                log.warning(
                    "event=packet_in_dropped device=%d reason=%r",
                    self.device_id,
                    f"metadata {f.name}={value} wider than {f.bitwidth} bits",
                )
                return
            packet.metadata.add(metadata_id=f.id, value=encode_value(value))
        msg = p4r.StreamMessageResponse(packet=packet)
        for client in self.arbiter.primaries():
            if client.outbox.qsize() >= PACKET_IN_QUEUE_LIMIT:
                client.dropped_packets += 1
                if client.dropped_packets % 1000 == 1:
                    log.warning(
                        "event=packet_in_dropped device=%d peer=%s dropped=%d reason=slow_client",
                        self.device_id,
                        client.peer,
                        client.dropped_packets,
                    )
                continue
            client.send(msg)


def _enum_name(enum: Any, value: int) -> str:
    """The value's name, or the number itself for a value the enum does not define (clients send any)."""
    return enum.Name(value) if value in enum.values() else str(value)


def decode_packet_out(
    header: PacketMetadataInfo | None, packet: p4r.PacketOut, port_bits: int | None = None
) -> dict[str, int]:
    """Packet-out metadata as {name: int}, checked against the P4Info's packet_out header.

    Fields named with a leading underscore are p4c's byte-alignment padding: they may be left
    out (they are 0). Every other field must be given. With port_bits, fields named `*port`
    may be that wide (PNA's 32-bit PortId_t on infrap4d).
    """
    if header is None:
        raise invalid("packet-out: the P4Info has no packet_out controller header")
    values: dict[str, int] = {}
    for m in packet.metadata:
        f = header.fields_by_id.get(m.metadata_id)
        if f is None:
            raise invalid(f"packet-out: unknown metadata id {m.metadata_id}")
        if f.name in values:
            raise invalid(f"packet-out: metadata {f.name} given twice")
        value = int.from_bytes(m.value, "big")
        width = max(f.bitwidth, port_bits) if port_bits is not None and f.name.endswith("port") else f.bitwidth
        if not m.value or value >> width:
            err = value_error(m.value, width, f"packet-out: metadata {f.name}")
            # A malformed packet-out is the request's fault, not a range query: INVALID_ARGUMENT.
            raise invalid(err.message)
        values[f.name] = value
    for f in header.fields:
        if f.name not in values:
            if not f.name.startswith("_"):
                raise invalid(f"packet-out: metadata {f.name} missing")
            values[f.name] = 0
    return values
