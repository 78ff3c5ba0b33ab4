"""One asyncio P4Runtime client per switch: arbitration, pipeline by cookie, batched writes,
reads, packet I/O, liveness and reconnection.

Why not finsy's `Switch`: the write path here coalesces the Writes of concurrent callers into
one batched RPC and hands each caller back exactly its own per-update errors, splits batches
under the trailing-metadata limit, and reports liveness within ~200 ms through a unary probe;
finsy's Switch is built around one program object per switch and offers none of those knobs.
The protos are finsy's (the PyPI `p4runtime` package does not import under protobuf>=4).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
from finsy.proto import U128, p4r, p4r_grpc

from controller.aio import cancel_and_wait
from controller.identity import Svid
from controller.p4rt.errors import SwitchError, UpdateError, per_update_errors
from controller.p4rt.schema import P4Schema
from controller.settings import Settings
from controller.topology import Switch

_T = TypeVar("_T")
_CUT_OFF = "RPC cut off: the channel to the switch closed"

log = logging.getLogger("p4nsm.p4rt")

StateListener = Callable[["SwitchClient", bool, str], Awaitable[None] | None]
PacketListener = Callable[["SwitchClient", bytes, dict[str, int]], None]
# (client, updates in the Write RPC, the updates that failed, seconds the RPC took)
WriteListener = Callable[["SwitchClient", int, Sequence[UpdateError], float], None]
# (client, the election id the switch now holds as highest): another client took the switch
DeposedListener = Callable[["SwitchClient", int], None]
_PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """TLS towards a switch: the CA that signed its certificate, the name the certificate
    carries when it is not the address's host (infrap4d's generate-certs.sh COMMON_NAME), and
    the controller's own SVID, offered as client certificate to a switch that asks for one
    (infrap4d always does; the softswitch and BMv2 with --grpc-server-with-client-auth)."""

    ca_path: Path
    server_name: str | None = None
    client: Svid | None = None


def open_channel(address: str, tls: TlsConfig | None, options: Sequence[tuple[str, int | str]]) -> grpc.aio.Channel:
    """A channel to a switch: TLS when it has a CA, else plaintext. The CA is read at each
    connect, so a renewed file is picked up by the next session; a missing one is an OSError
    the session's retry reports. A switch that asks for a client certificate gets the SVID's;
    one that requires it, from a controller without an SVID, fails the handshake (retried)."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    client = tls.client
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_path.read_bytes(),
        private_key=client.key_pem() if client is not None else None,
        certificate_chain=client.cert_chain_pem() if client is not None else None,
    )
    named = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.aio.secure_channel(address, credentials, options=[*options, *named])


def switch_tls(switch: Switch, client: Svid | None) -> TlsConfig | None:
    """How a topology switch is reached: TLS when it names its CA (tls_ca, tls_server_name),
    offering the controller's SVID `client` when the switch asks; None: plaintext."""
    return TlsConfig(switch.tls_ca, switch.tls_server_name, client) if switch.tls_ca is not None else None


@dataclasses.dataclass(frozen=True)
class SwitchTarget:
    name: str
    address: str
    device_id: int
    p4info: bytes  # serialized p4.config.v1.P4Info
    device_config: bytes
    cookie: int
    tls: TlsConfig | None = None


@dataclasses.dataclass(slots=True)
class _PendingWrite:
    updates: Sequence[p4r.Update]
    future: asyncio.Future[list[UpdateError]]


class SwitchClient:
    """Drives one switch for the lifetime of the controller. Start with `start()`."""

    def __init__(self, target: SwitchTarget, schema: P4Schema, settings: Settings) -> None:
        self.target = target
        self.name = target.name
        self.schema = schema
        self.settings = settings
        self.primary = False
        self.up = asyncio.Event()  # connected, primary, pipeline verified
        self.state_listeners: list[StateListener] = []
        self.packet_listeners: list[PacketListener] = []
        self.write_listeners: list[WriteListener] = []  # after each Write RPC (metrics)
        # With replicas (controller/replication.py) another client outranking this one is a lost
        # term, not a lost switch: told to these listeners instead of taking the switch down.
        self.deposed_listeners: list[DeposedListener] = []
        # Set while a higher term holds the switch: a write then is refused as PERMISSION_DENIED
        # (the switch's own answer), not UNAVAILABLE, which callers read as a lost switch.
        self.deposed_by: int | None = None
        # Whether this controller may write: a follower's client keeps its stream as a backup
        # and never writes. One replica alone (the SQLite store) is always the leader.
        self.leader = True
        self.election_id = settings.election_id
        self._election = U128.encode(settings.election_id)
        # updates the switch refused because this client was not its primary (fencing at work)
        self.refused_writes = 0
        # the highest election id the switch last named in arbitration: its primary's (0: none heard)
        self.primary_election_id = 0
        self._channel: grpc.aio.Channel | None = None
        self._stub: p4r_grpc.P4RuntimeStub | None = None
        self._outbox: asyncio.Queue[tuple[p4r.StreamMessageRequest, int]] = asyncio.Queue()
        # how long recent stream messages (packet-outs, mostly probes) waited from packet_out()
        # until gRPC took them (ns): the controller's own share of a probe's way out
        self.outbox_waits: deque[int] = deque(maxlen=1024)
        self._pending: list[_PendingWrite] = []
        self._pending_event = asyncio.Event()
        # No write waits or is in flight: what a pipeline change waits for (pipeline_change).
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._changing = False
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        # The loop keeps only weak references to tasks: an unreferenced one may vanish mid-push.
        self._ready_task: asyncio.Task[None] | None = None
        self.sessions = 0  # how many times the stream came up (tests and `p4nsm switches` show it)
        self.pipeline_pushes = 0  # 0 after a restart that found its program on the switch
        self.pipeline_rpcs = 0  # SetForwardingPipelineConfig calls of any action, pushes and rollouts
        # monotonic time of the last sign of life: a keepalive answer or any stream message
        self.last_alive = 0.0
        # when the newest answered keepalive was SENT: proof the switch ran after that moment,
        # whatever backlog the controller's own loop had in reading the answer
        self.answered_sent_at = 0.0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"p4rt:{self.name}")
            self._writer = asyncio.create_task(self._write_loop(), name=f"p4rt-write:{self.name}")

    async def stop(self) -> None:
        tasks = (self._task, self._writer, self._ready_task)
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            await cancel_and_wait(task)
        self._task = self._writer = self._ready_task = None
        await self._close_channel()
        self._fail_pending(grpc.StatusCode.CANCELLED, "controller stopping")

    async def wait_up(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.up.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _supervise(self) -> None:
        delay = self.settings.reconnect_backoff_min
        while True:
            try:
                await self._session()
                reason = "stream ended"
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details()}"
            except (SwitchError, TimeoutError, OSError, ConnectionError) as e:
                reason = str(e) or type(e).__name__
            except Exception as e:  # a bug must not kill the switch's supervisor silently
                log.exception("switch=%s event=session_crash", self.name)
                reason = f"internal error: {e!r}"
            was_up = self.up.is_set()
            await self._set_down(reason)
            await self._close_channel()
            if was_up:
                delay = self.settings.reconnect_backoff_min
            log.info("switch=%s event=reconnect_wait delay=%.2fs reason=%r", self.name, delay, reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_backoff_max)

    async def _close_channel(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close(grace=None)

    # --- one connection -------------------------------------------------------------------

    async def _session(self) -> None:
        s = self.settings
        self._channel = open_channel(
            self.target.address,
            self.target.tls,
            options=[
                ("grpc.max_metadata_size", s.grpc_max_metadata_bytes),
                ("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.initial_reconnect_backoff_ms", int(s.reconnect_backoff_min * 1000)),
                ("grpc.max_reconnect_backoff_ms", int(s.reconnect_backoff_max * 1000)),
            ],
        )
        self._stub = p4r_grpc.P4RuntimeStub(self._channel)
        await asyncio.wait_for(self._channel.channel_ready(), s.rpc_timeout)
        self._outbox = asyncio.Queue()
        stream = self._stub.StreamChannel()
        await stream.write(self._arbitration_msg())
        self.sessions += 1
        sender = asyncio.create_task(self._send_loop(stream), name=f"p4rt-send:{self.name}")
        keepalive = asyncio.create_task(self._keepalive_loop(), name=f"p4rt-keepalive:{self.name}")
        try:
            receiver = asyncio.create_task(self._receive_loop(stream), name=f"p4rt-recv:{self.name}")
            done, _ = await asyncio.wait({sender, keepalive, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise the failure that ended the session
        finally:
            for task in (sender, keepalive, receiver):
                task.cancel()
            stream.cancel()

    def set_role(self, election_id: int, leader: bool) -> None:
        """Take `election_id` and the leader's or a follower's part. A leader's id must be higher
        than every earlier term's (the switch then deposes the old primary); a follower's must be
        lower and its own. On an open stream this is one arbitration message; otherwise the next
        session sends it. A follower's writes stop here, at once: the queued ones fail."""
        self.election_id, self._election, self.leader = election_id, U128.encode(election_id), leader
        self.deposed_by = None
        log.info("switch=%s event=role leader=%s election_id=%d", self.name, leader, election_id)
        if not leader:
            self._fail_pending(grpc.StatusCode.PERMISSION_DENIED, "this controller replica is not the leader")
            self.up.clear()
            self.primary = False
        if self._stub is not None:
            self._outbox.put_nowait((self._arbitration_msg(), time.monotonic_ns()))

    def _arbitration_msg(self) -> p4r.StreamMessageRequest:
        return p4r.StreamMessageRequest(
            arbitration=p4r.MasterArbitrationUpdate(device_id=self.target.device_id, election_id=self._election)
        )

    async def _send_loop(self, stream: grpc.aio.StreamStreamCall) -> None:
        waits = self.outbox_waits
        while True:
            msg, queued_ns = await self._outbox.get()
            await stream.write(msg)
            waits.append(time.monotonic_ns() - queued_ns)

    async def _receive_loop(self, stream: grpc.aio.StreamStreamCall) -> None:
        while True:
            msg = await stream.read()
            if msg is grpc.aio.EOF:
                return
            self.last_alive = time.monotonic()
            kind = msg.WhichOneof("update")
            if kind == "arbitration":
                await self._on_arbitration(msg.arbitration)
            elif kind == "packet":
                meta = self.schema.decode_packet_metadata("packet_in", msg.packet.metadata)
                for listener in self.packet_listeners:
                    listener(self, msg.packet.payload, meta)
            elif kind == "error":
                log.warning("switch=%s event=stream_error code=%s message=%r", self.name, msg.error.canonical_code, msg.error.message)

    async def _on_arbitration(self, arb: p4r.MasterArbitrationUpdate) -> None:
        primary = arb.status.code == grpc.StatusCode.OK.value[0]
        if arb.HasField("election_id"):
            self.primary_election_id = U128.decode(arb.election_id)
        if primary and not self.leader:
            # A switch that forgets earlier ids (or has seen none) makes a follower primary;
            # it still never writes, not even the pipeline: the leader's higher id takes over.
            log.info("switch=%s event=primary_as_follower election_id=%d", self.name, self.election_id)
            return
        if not primary and not self.leader:
            log.info("switch=%s event=backup code=%d primary_election_id=%d", self.name, arb.status.code,
                     U128.decode(arb.election_id))
            self.primary = False
            return
        if not primary and self.primary and self.deposed_listeners:
            other = U128.decode(arb.election_id)
            log.warning("switch=%s event=deposed election_id=%d other_election_id=%d", self.name, self.election_id, other)
            self.primary = False
            self.deposed_by = other
            self.up.clear()
            self._fail_pending(grpc.StatusCode.PERMISSION_DENIED, f"deposed by election id {other}")
            for listener in self.deposed_listeners:
                listener(self, other)
            return
        if primary and not self.primary:
            self.primary = True
            self.deposed_by = None
            log.info("switch=%s event=primary election_id=%d", self.name, self.election_id)
            # Runs on its own task so that the receive loop keeps draining packet-ins meanwhile.
            self._ready_task = asyncio.create_task(self._become_ready(), name=f"p4rt-ready:{self.name}")
        elif not primary:
            if self.primary:
                log.warning("switch=%s event=lost_primary other_election_id=%d", self.name, U128.decode(arb.election_id))
            else:
                log.info("switch=%s event=backup code=%d primary_election_id=%d", self.name, arb.status.code, U128.decode(arb.election_id))
            self.primary = False
            await self._set_down("not primary")

    async def _become_ready(self) -> None:
        try:
            await self._ensure_pipeline()
        except (grpc.aio.AioRpcError, SwitchError) as e:
            log.error("switch=%s event=pipeline_failed error=%s", self.name, e)
            # Ending the stream makes the supervisor retry the whole session with backoff.
            await self._close_channel()
            return
        if self.primary and self.leader:
            self.up.set()
            log.info("switch=%s event=up", self.name)
            await self._notify(True, "ready")

    async def _ensure_pipeline(self) -> None:
        assert self._stub is not None
        timeout = self.settings.rpc_timeout
        cookie = None
        try:
            reply = await self._rpc(self._stub.GetForwardingPipelineConfig(
                p4r.GetForwardingPipelineConfigRequest(
                    device_id=self.target.device_id,
                    response_type=p4r.GetForwardingPipelineConfigRequest.COOKIE_ONLY,
                ),
                timeout=timeout,
            ))
            if reply.config.HasField("cookie"):
                cookie = reply.config.cookie.cookie
        except grpc.aio.AioRpcError as e:
            if e.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise
        if cookie == self.target.cookie:
            log.info("switch=%s event=pipeline_kept cookie=%#x", self.name, cookie)
            return
        log.info("switch=%s event=pipeline_push cookie=%s->%#x", self.name, cookie, self.target.cookie)
        self.pipeline_pushes += 1
        await self._set_pipeline_rpc(p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT, self.target)

    async def _set_pipeline_rpc(self, action: p4r.SetForwardingPipelineConfigRequest.Action.ValueType,
                                target: SwitchTarget) -> None:
        assert self._stub is not None
        config = p4r.ForwardingPipelineConfig(p4_device_config=target.device_config)
        config.p4info.ParseFromString(target.p4info)
        config.cookie.cookie = target.cookie
        self.pipeline_rpcs += 1
        await self._rpc(self._stub.SetForwardingPipelineConfig(
            p4r.SetForwardingPipelineConfigRequest(
                device_id=target.device_id,
                election_id=self._election,
                action=action,
                config=config,
            ),
            timeout=self.settings.rpc_timeout,
        ))

    async def set_pipeline(self, action: p4r.SetForwardingPipelineConfigRequest.Action.ValueType,
                           target: SwitchTarget) -> None:
        """One SetForwardingPipelineConfig of `target`'s program (VERIFY, VERIFY_AND_COMMIT...)
        on the live session; SwitchError with the switch's status when it refuses or is away.
        A commit does not change what this client pushes on its next session: `adopt` does."""
        if self._stub is None or not self.up.is_set():
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "switch is not up")
        try:
            await self._set_pipeline_rpc(action, target)
        except grpc.aio.AioRpcError as e:
            raise SwitchError(self.name, e.code(), e.details() or e.code().name) from None

    def adopt(self, target: SwitchTarget, schema: P4Schema) -> None:
        """From now on this switch runs `target`'s program: writes, reads and packet metadata go
        through `schema`, and a new session finds or pushes that program (by its cookie)."""
        self.target = target
        self.schema = schema

    async def _keepalive_loop(self) -> None:
        """A frozen switch keeps its TCP connection; only silence reveals it.

        Every interval a Capabilities RPC goes out without waiting for the previous one, and the
        switch is declared down when nothing at all (an answer, or any stream message such as a
        probe's packet-in) has come from it for `keepalive_timeout`."""
        s = self.settings
        self.last_alive = time.monotonic()
        pending: set[asyncio.Task[None]] = set()

        async def ping() -> None:
            assert self._stub is not None
            sent = time.monotonic()
            try:
                await self._stub.Capabilities(p4r.CapabilitiesRequest(), timeout=s.keepalive_timeout)
                self.last_alive = time.monotonic()
                self.answered_sent_at = max(self.answered_sent_at, sent)
            except grpc.aio.AioRpcError:
                pass  # silence is judged below, whatever the error

        # Silence is counted only for time this loop was awake: when the controller's own loop
        # stalls, the switch's answers wait unread in the socket, and that is not its fault.
        silent = 0.0
        seen = self.last_alive
        try:
            while True:
                task = asyncio.create_task(ping())
                pending.add(task)
                task.add_done_callback(pending.discard)
                before = time.monotonic()
                await asyncio.sleep(s.keepalive_interval)
                awake = min(time.monotonic() - before, 2 * s.keepalive_interval)
                if self.last_alive != seen:
                    seen, silent = self.last_alive, 0.0
                else:
                    silent += awake
                if silent > s.keepalive_timeout:
                    raise SwitchError(self.name, grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"no sign of life for {silent * 1000:.0f} ms (keepalive_timeout {s.keepalive_timeout}s)")
        finally:
            for task in pending:
                task.cancel()

    async def _set_down(self, reason: str) -> None:
        if self.up.is_set():
            self.up.clear()
            log.warning("switch=%s event=down reason=%r", self.name, reason)
            self._fail_pending(grpc.StatusCode.UNAVAILABLE, f"switch down: {reason}")
            await self._notify(False, reason)
        self.primary = False

    async def _notify(self, up: bool, reason: str) -> None:
        for listener in self.state_listeners:
            try:
                result = listener(self, up, reason)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("switch=%s event=listener_failed up=%s", self.name, up)

    # --- writes ---------------------------------------------------------------------------

    async def write(self, updates: Sequence[p4r.Update]) -> None:
        """Write updates in order; raise SwitchError carrying the per-update errors if any failed.

        Concurrent callers are coalesced into shared Write RPCs; each caller gets back only the
        results of its own updates (indexes relative to its own list).
        """
        if not updates:
            return
        if not self.leader:
            raise SwitchError(self.name, grpc.StatusCode.PERMISSION_DENIED, "this controller replica is not the leader")
        if self.deposed_by is not None:
            raise SwitchError(self.name, grpc.StatusCode.PERMISSION_DENIED, f"deposed by election id {self.deposed_by}")
        if not self.up.is_set():
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "switch is not up")
        if self._changing:
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "its pipeline is being changed")
        fut: asyncio.Future[list[UpdateError]] = asyncio.get_running_loop().create_future()
        self._pending.append(_PendingWrite(updates, fut))
        self._quiet.clear()
        self._pending_event.set()
        errors = await fut
        failed = [e for e in errors if e.code != 0]
        if failed:
            raise SwitchError(self.name, grpc.StatusCode.UNKNOWN, f"{len(failed)} of {len(updates)} updates failed", errors)

    @contextlib.asynccontextmanager
    async def pipeline_change(self) -> AsyncIterator[None]:
        """While the block runs (a SetForwardingPipelineConfig commit) writes and reads are refused
        as UNAVAILABLE, once the writes already sent or queued have ended: BMv2 loses track of its
        tables and groups when a Write races a pipeline change (seen here, then it crashed),
        and an update encoded for the old P4Info must not reach the new program."""
        self._changing = True
        try:
            await self._quiet.wait()
            yield
        finally:
            self._changing = False

    def _fail_pending(self, code: grpc.StatusCode, message: str) -> None:
        pending, self._pending = self._pending, []
        for p in pending:
            if not p.future.done():
                p.future.set_exception(SwitchError(self.name, code, message))

    async def _write_loop(self) -> None:
        limit = self.settings.write_batch_max
        while True:
            await self._pending_event.wait()
            self._pending_event.clear()
            while self._pending:
                batch: list[_PendingWrite] = []
                count = 0
                while self._pending and (not batch or count + len(self._pending[0].updates) <= limit):
                    p = self._pending.pop(0)
                    batch.append(p)
                    count += len(p.updates)
                try:
                    await self._write_batch(batch)
                except asyncio.CancelledError:
                    for p in batch:
                        if not p.future.done():
                            p.future.cancel()
                    raise
                except Exception as e:  # never leave a caller waiting forever
                    log.exception("switch=%s event=write_loop_error", self.name)
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(SwitchError(self.name, grpc.StatusCode.INTERNAL, repr(e)))
            if not self._pending:
                self._quiet.set()

    async def _write_batch(self, batch: list[_PendingWrite]) -> None:
        updates = [u for p in batch for u in p.updates]
        results: list[UpdateError] = []
        limit = self.settings.write_batch_max
        # A single caller may bring more than `limit` updates: send them in order, chunk by chunk.
        for start in range(0, len(updates), limit):
            chunk = updates[start : start + limit]
            results.extend(UpdateError(start + e.index, e.code, e.message) for e in await self._write_rpc(chunk))
        offset = 0
        for p in batch:
            n = len(p.updates)
            mine = [UpdateError(e.index - offset, e.code, e.message) for e in results[offset : offset + n]]
            offset += n
            if not p.future.done():
                p.future.set_result(mine)

    async def _write_rpc(self, updates: list[p4r.Update]) -> list[UpdateError]:
        if self.deposed_by is not None:
            return [UpdateError(i, _PERMISSION_DENIED, f"deposed by election id {self.deposed_by}") for i in range(len(updates))]
        if self._stub is None or not self.up.is_set():
            return [UpdateError(i, 14, "switch is not up") for i in range(len(updates))]
        started = time.perf_counter()
        election = self.election_id
        errors = await self._write_call(updates)
        refused = sum(1 for e in errors if e.code == _PERMISSION_DENIED) if errors is not None else 0
        if refused:
            self.refused_writes += refused
            log.warning("switch=%s event=write_refused updates=%d election_id=%d total=%d message=%r", self.name, refused,
                        election, self.refused_writes, next(e.message for e in errors or () if e.code == _PERMISSION_DENIED))
        if self.write_listeners:
            # The failed updates are picked out only when some failed: nothing per update on success.
            failed = [e for e in errors if e.code != 0] if errors is not None else []
            elapsed = time.perf_counter() - started
            for listener in self.write_listeners:
                listener(self, len(updates), failed, elapsed)
        return errors if errors is not None else [UpdateError(i, 0, "") for i in range(len(updates))]

    async def _write_call(self, updates: list[p4r.Update]) -> list[UpdateError] | None:
        """One Write RPC; None when every update was applied, else every update's outcome."""
        assert self._stub is not None
        request = p4r.WriteRequest(
            device_id=self.target.device_id,
            election_id=self._election,
            updates=updates,
            atomicity=p4r.WriteRequest.CONTINUE_ON_ERROR,
        )
        try:
            await self._rpc(self._stub.Write(request, timeout=self.settings.rpc_timeout))
            return None
        except SwitchError as e:
            # Cut off in flight: the switch may or may not have applied it.
            return [UpdateError(i, e.code.value[0], _CUT_OFF) for i in range(len(updates))]
        except grpc.aio.AioRpcError as e:
            errors = per_update_errors(e, len(updates))
            if errors:
                return errors
            # No per-update detail: the whole RPC failed (unavailable, not primary, metadata
            # over the limit...). Every update of the batch reports the RPC's status.
            code = e.code().value[0]
            return [UpdateError(i, code, e.details() or e.code().name) for i in range(len(updates))]

    # --- reads and packets ------------------------------------------------------------------

    async def read(self, entities: Sequence[p4r.Entity]) -> list[p4r.Entity]:
        if self._stub is None:
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "not connected")
        if self._changing:
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "its pipeline is being changed")
        out: list[p4r.Entity] = []
        call = self._stub.Read(p4r.ReadRequest(device_id=self.target.device_id, entities=entities), timeout=self.settings.rpc_timeout)

        async def collect() -> None:
            async for reply in call:
                out.extend(reply.entities)

        try:
            await self._rpc(collect())
        except grpc.aio.AioRpcError as e:
            # Callers handle a switch's failure as SwitchError, whatever RPC it came from.
            raise SwitchError(self.name, e.code(), e.details() or e.code().name) from None
        return out

    async def _rpc(self, call: Awaitable[_T]) -> _T:
        """Await an RPC. Closing the channel (the switch was declared down) cancels the RPCs on
        it, and grpc.aio reports that as CancelledError: that is the switch's failure, not a
        cancellation of the caller, so it becomes a SwitchError the caller can handle."""
        try:
            return await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise SwitchError(self.name, grpc.StatusCode.CANCELLED, _CUT_OFF) from None

    async def read_table_entries(self, table: str | None = None, counters: bool = False) -> list[p4r.TableEntry]:
        entry = p4r.TableEntry(table_id=self.schema.table(table).id if table else 0)
        if counters:
            entry.counter_data.SetInParent()
        return [e.table_entry for e in await self.read([p4r.Entity(table_entry=entry)])]

    def packet_out(self, payload: bytes, **metadata: int) -> None:
        if not self.up.is_set():
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "switch is not up")
        msg = p4r.StreamMessageRequest(
            packet=p4r.PacketOut(payload=payload, metadata=self.schema.packet_metadata("packet_out", metadata))
        )
        self._outbox.put_nowait((msg, time.monotonic_ns()))
