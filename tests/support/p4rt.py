"""A small synchronous P4Runtime client for tests.

It is deliberately independent of the softswitch (and of the controller's client): it encodes
names, values and errors on its own, so a bug in the server's encoding cannot cancel out here.
Everything is addressed by name through the P4Info the client was given (short or full names).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import grpc
from finsy.proto import U128, p4i, p4r, p4r_grpc, rpc_status
from google.protobuf import text_format

REPO = Path(__file__).resolve().parents[2]
DEFAULT_P4INFO = REPO / "p4" / "nsm_fabric.p4info.txtpb"
DEFAULT_SOFTSWITCH_CONFIG = REPO / "p4" / "nsm_fabric.softswitch.json"

# Error details of a failed batch travel in trailing metadata (grpc-status-details-bin); the
# grpc default of 8 KiB is too small for large batches that fail, so tests raise it.
MAX_METADATA_SIZE = 16 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_metadata_size", MAX_METADATA_SIZE),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]

Writable = p4r.Entity | p4r.TableEntry | p4r.ActionProfileMember | p4r.ActionProfileGroup | p4r.DirectCounterEntry
MatchValue = int | bytes | tuple


class WriteError(Exception):
    """A failed Write: the gRPC code and one p4.v1.Error per update, in request order."""

    def __init__(self, code: grpc.StatusCode, details: str, errors: list[p4r.Error]) -> None:
        self.code = code
        self.details = details
        self.errors = errors
        codes = [e.canonical_code for e in errors]
        super().__init__(f"{code.name}: {details}; per-update codes {codes}")

    @property
    def failed(self) -> list[tuple[int, p4r.Error]]:
        return [(i, e) for i, e in enumerate(self.errors) if e.canonical_code != 0]


def load_p4info(path: str | Path) -> p4i.P4Info:
    info = p4i.P4Info()
    text_format.Parse(Path(path).read_text(), info)
    return info


def encode(value: int, bitwidth: int) -> bytes:
    """Canonical (shortest) big-endian bytes; zero is one zero byte."""
    if value < 0 or value >= 1 << bitwidth:
        raise ValueError(f"{value:#x} does not fit in {bitwidth} bits")
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def decode(data: bytes) -> int:
    return int.from_bytes(data, "big")


def rpc_errors(err: grpc.RpcError) -> list[p4r.Error]:
    """The per-update p4.v1.Error list carried in grpc-status-details-bin, if any."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = rpc_status.Status.FromString(value)
            errors = []
            for detail in status.details:
                error = p4r.Error()
                detail.Unpack(error)
                errors.append(error)
            return errors
    return []


class _Names:
    """Name -> P4Info object, accepting full names and aliases."""

    def __init__(self, info: p4i.P4Info) -> None:
        self.info = info
        self.tables = self._index(info.tables)
        self.actions = self._index(info.actions)
        self.profiles = self._index(info.action_profiles)
        self.counters = self._index(info.direct_counters)
        self.packet_metadata = {m.preamble.name: m for m in info.controller_packet_metadata}

    @staticmethod
    def _index(objs: Iterable) -> dict:
        out = {}
        for obj in objs:
            out[obj.preamble.name] = obj
            out.setdefault(obj.preamble.alias, obj)
        return out

    def table(self, name: str) -> p4i.Table:
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"no table {name!r} in the P4Info") from None

    def action(self, name: str) -> p4i.Action:
        try:
            return self.actions[name]
        except KeyError:
            raise KeyError(f"no action {name!r} in the P4Info") from None

    def profile(self, name: str) -> p4i.ActionProfile:
        try:
            return self.profiles[name]
        except KeyError:
            raise KeyError(f"no action profile {name!r} in the P4Info") from None


@dataclasses.dataclass
class PacketIn:
    payload: bytes
    metadata: dict[str, int]


class P4RTTestClient:
    """Opens a stream, arbitrates, and offers name-based helpers for Write/Read/packet I/O."""

    def __init__(
        self,
        address: str,
        device_id: int = 1,
        election_id: int = 1,
        role: str = "",
        p4info_path: str | Path = DEFAULT_P4INFO,
        arbitrate: bool = True,
        timeout: float = 10.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.address = address
        self.device_id = device_id
        self.election_id = election_id
        self.role = role
        self.timeout = timeout
        self.names = _Names(load_p4info(p4info_path))
        # channel: e.g. a TLS one (tests/support/tls.py), made with CHANNEL_OPTIONS
        self.channel = channel if channel is not None else grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.arbitration: p4r.MasterArbitrationUpdate | None = None
        self.arbitrations: queue.Queue[p4r.MasterArbitrationUpdate] = queue.Queue()
        self.packets: queue.Queue[p4r.PacketIn] = queue.Queue()
        self.stream_errors: queue.Queue[p4r.StreamError] = queue.Queue()
        # Set when the server ends the stream: the grpc.RpcError (or None for a clean end).
        self.stream_end: queue.Queue[grpc.RpcError | None] = queue.Queue()
        self._requests: queue.Queue[p4r.StreamMessageRequest | None] = queue.Queue()
        self._stream = self.stub.StreamChannel(self._request_iter())
        self._reader = threading.Thread(target=self._read_stream, daemon=True)
        self._reader.start()
        if arbitrate:
            self.arbitrate(election_id)

    # -- stream ---------------------------------------------------------------------------

    def _request_iter(self) -> Iterator[p4r.StreamMessageRequest]:
        while True:
            msg = self._requests.get()
            if msg is None:
                return
            yield msg

    def _read_stream(self) -> None:
        try:
            for msg in self._stream:
                kind = msg.WhichOneof("update")
                if kind == "arbitration":
                    self.arbitration = msg.arbitration
                    self.arbitrations.put(msg.arbitration)
                elif kind == "packet":
                    self.packets.put(msg.packet)
                elif kind == "error":
                    self.stream_errors.put(msg.error)
            self.stream_end.put(None)
        except grpc.RpcError as err:
            self.stream_end.put(err)

    def send_arbitration(self, election_id: int | None = None, device_id: int | None = None) -> None:
        """Send a MasterArbitrationUpdate without waiting for the reply."""
        if election_id is not None:
            self.election_id = election_id
        update = p4r.MasterArbitrationUpdate(
            device_id=self.device_id if device_id is None else device_id,
            election_id=U128.encode(self.election_id),
        )
        if self.role:
            update.role.name = self.role
        self._requests.put(p4r.StreamMessageRequest(arbitration=update))

    def arbitrate(self, election_id: int | None = None) -> p4r.MasterArbitrationUpdate:
        """Send arbitration and return the server's reply to it (also kept in `.arbitration`)."""
        self.send_arbitration(election_id)
        return self.next_arbitration()

    def next_arbitration(self, timeout: float | None = None) -> p4r.MasterArbitrationUpdate:
        try:
            return self.arbitrations.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            end = self._peek_end()
            raise TimeoutError(f"no arbitration reply from {self.address}; stream end: {end}") from None

    def _peek_end(self) -> grpc.RpcError | str | None:
        try:
            end = self.stream_end.get_nowait()
        except queue.Empty:
            return "stream still open"
        self.stream_end.put(end)
        return end

    def wait_stream_end(self, timeout: float | None = None) -> grpc.RpcError | None:
        end = self.stream_end.get(timeout=self.timeout if timeout is None else timeout)
        self.stream_end.put(end)
        return end

    @property
    def is_primary(self) -> bool:
        return (
            self.arbitration is not None
            and self.arbitration.status.code == 0
            and (U128.decode(self.arbitration.election_id) == self.election_id)
        )

    # -- pipeline -------------------------------------------------------------------------

    def set_pipeline(
        self,
        p4info_path: str | Path = DEFAULT_P4INFO,
        device_config: str | Path | bytes = DEFAULT_SOFTSWITCH_CONFIG,
        cookie: int = 1,
        action: int = p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
        p4info: p4i.P4Info | None = None,
    ) -> None:
        info = p4info if p4info is not None else load_p4info(p4info_path)
        config = device_config if isinstance(device_config, bytes) else Path(device_config).read_bytes()
        request = p4r.SetForwardingPipelineConfigRequest(
            device_id=self.device_id,
            role=self.role,
            election_id=U128.encode(self.election_id),
            action=action,
            config=p4r.ForwardingPipelineConfig(
                p4info=info,
                p4_device_config=config,
                cookie=p4r.ForwardingPipelineConfig.Cookie(cookie=cookie),
            ),
        )
        self.stub.SetForwardingPipelineConfig(request, timeout=self.timeout)
        if action != p4r.SetForwardingPipelineConfigRequest.VERIFY:
            self.names = _Names(info)

    def get_pipeline(
        self, response_type: int = p4r.GetForwardingPipelineConfigRequest.ALL
    ) -> p4r.ForwardingPipelineConfig:
        request = p4r.GetForwardingPipelineConfigRequest(device_id=self.device_id, response_type=response_type)
        return self.stub.GetForwardingPipelineConfig(request, timeout=self.timeout).config

    def capabilities(self) -> p4r.CapabilitiesResponse:
        return self.stub.Capabilities(p4r.CapabilitiesRequest(), timeout=self.timeout)

    # -- building entities by name ----------------------------------------------------------

    def action(self, name: str, params: Mapping[str, int] | None = None) -> p4r.Action:
        info = self.names.action(name)
        params = dict(params or {})
        out = p4r.Action(action_id=info.preamble.id)
        for p in info.params:
            if p.name not in params:
                raise KeyError(f"action {info.preamble.name}: missing param {p.name!r}")
            value = params.pop(p.name)
            raw = value if isinstance(value, bytes) else encode(value, p.bitwidth)
            out.params.add(param_id=p.id, value=raw)
        if params:
            raise KeyError(f"action {info.preamble.name}: unknown params {sorted(params)}")
        return out

    def field_match(self, table: p4i.Table, name: str, value: MatchValue) -> p4r.FieldMatch:
        for f in table.match_fields:
            if f.name == name:
                break
        else:
            raise KeyError(f"table {table.preamble.name}: no match field {name!r}")
        fm = p4r.FieldMatch(field_id=f.id)

        def enc(v: int | bytes) -> bytes:
            return v if isinstance(v, bytes) else encode(v, f.bitwidth)

        kind = f.match_type
        if kind == p4i.MatchField.EXACT:
            fm.exact.value = enc(value)
        elif kind == p4i.MatchField.LPM:
            v, plen = value if isinstance(value, tuple) else (value, f.bitwidth)
            fm.lpm.value = enc(v)
            fm.lpm.prefix_len = plen
        elif kind == p4i.MatchField.TERNARY:
            v, m = value if isinstance(value, tuple) else (value, (1 << f.bitwidth) - 1)
            fm.ternary.value = enc(v)
            fm.ternary.mask = enc(m)
        elif kind == p4i.MatchField.OPTIONAL:
            fm.optional.value = enc(value)
        elif kind == p4i.MatchField.RANGE:
            lo, hi = value
            fm.range.low = enc(lo)
            fm.range.high = enc(hi)
        else:
            raise ValueError(f"match kind {kind} of {name!r} not supported by the test client")
        return fm

    def table_entry(
        self,
        table: str,
        match: Mapping[str, MatchValue] | None = None,
        action: str | None = None,
        params: Mapping[str, int] | None = None,
        priority: int = 0,
        *,
        member_id: int | None = None,
        group_id: int | None = None,
        is_default: bool = False,
        counter_data: tuple[int, int] | None = None,
    ) -> p4r.TableEntry:
        """A TableEntry by name; counter_data is (packets, bytes)."""
        info = self.names.table(table)
        entry = p4r.TableEntry(table_id=info.preamble.id, priority=priority, is_default_action=is_default)
        for name, value in (match or {}).items():
            entry.match.append(self.field_match(info, name, value))
        if action is not None:
            entry.action.action.CopyFrom(self.action(action, params))
        elif member_id is not None:
            entry.action.action_profile_member_id = member_id
        elif group_id is not None:
            entry.action.action_profile_group_id = group_id
        if counter_data is not None:
            entry.counter_data.packet_count, entry.counter_data.byte_count = counter_data
        return entry

    def member(
        self, profile: str, member_id: int, action: str | None = None, params: Mapping[str, int] | None = None
    ) -> p4r.ActionProfileMember:
        out = p4r.ActionProfileMember(action_profile_id=self.names.profile(profile).preamble.id, member_id=member_id)
        if action is not None:
            out.action.CopyFrom(self.action(action, params))
        return out

    def group(
        self,
        profile: str,
        group_id: int,
        members: Sequence[int | tuple[int, int] | tuple[int, int, int]] = (),
        max_size: int = 0,
        watch_port_width: int = 9,
    ) -> p4r.ActionProfileGroup:
        """members: member ids, (id, weight) or (id, weight, watch_port)."""
        out = p4r.ActionProfileGroup(
            action_profile_id=self.names.profile(profile).preamble.id, group_id=group_id, max_size=max_size
        )
        for m in members:
            mid, weight, watch = (m, 1, None) if isinstance(m, int) else (tuple(m) + (None,))[:3]
            gm = out.members.add(member_id=mid, weight=weight)
            if watch is not None:
                gm.watch_port = encode(watch, watch_port_width)
        return out

    def direct_counter(
        self, entry: p4r.TableEntry, packets: int | None = None, bytes_: int | None = None
    ) -> p4r.DirectCounterEntry:
        out = p4r.DirectCounterEntry()
        out.table_entry.CopyFrom(entry)
        out.table_entry.ClearField("action")
        if packets is not None or bytes_ is not None:
            out.data.packet_count = packets or 0
            out.data.byte_count = bytes_ or 0
        return out

    # -- Write / Read -----------------------------------------------------------------------

    @staticmethod
    def entity(obj: Writable) -> p4r.Entity:
        if isinstance(obj, p4r.Entity):
            return obj
        if isinstance(obj, p4r.TableEntry):
            return p4r.Entity(table_entry=obj)
        if isinstance(obj, p4r.ActionProfileMember):
            return p4r.Entity(action_profile_member=obj)
        if isinstance(obj, p4r.ActionProfileGroup):
            return p4r.Entity(action_profile_group=obj)
        if isinstance(obj, p4r.DirectCounterEntry):
            return p4r.Entity(direct_counter_entry=obj)
        raise TypeError(f"cannot make an Entity of {type(obj).__name__}")

    def _updates(self, kind: int, objs: Writable | Iterable[Writable]) -> list[p4r.Update]:
        items = [objs] if not isinstance(objs, Iterable) else list(objs)
        return [p4r.Update(type=kind, entity=self.entity(o)) for o in items]

    def insert(self, objs: Writable | Iterable[Writable]) -> None:
        self.write(self._updates(p4r.Update.INSERT, objs))

    def modify(self, objs: Writable | Iterable[Writable]) -> None:
        self.write(self._updates(p4r.Update.MODIFY, objs))

    def delete(self, objs: Writable | Iterable[Writable]) -> None:
        self.write(self._updates(p4r.Update.DELETE, objs))

    def write_request(
        self, updates: Sequence[p4r.Update], atomicity: int = p4r.WriteRequest.CONTINUE_ON_ERROR
    ) -> p4r.WriteRequest:
        return p4r.WriteRequest(
            device_id=self.device_id,
            role=self.role,
            election_id=U128.encode(self.election_id),
            updates=updates,
            atomicity=atomicity,
        )

    def write(self, updates: Sequence[p4r.Update], atomicity: int = p4r.WriteRequest.CONTINUE_ON_ERROR) -> None:
        try:
            self.stub.Write(self.write_request(updates, atomicity), timeout=self.timeout)
        except grpc.RpcError as err:
            raise WriteError(err.code(), err.details() or "", rpc_errors(err)) from None

    def read(self, entities: Writable | Iterable[Writable]) -> list[p4r.Entity]:
        items = [entities] if not isinstance(entities, Iterable) else list(entities)
        request = p4r.ReadRequest(device_id=self.device_id, role=self.role, entities=[self.entity(e) for e in items])
        out: list[p4r.Entity] = []
        for response in self.stub.Read(request, timeout=self.timeout):
            out.extend(response.entities)
        return out

    def read_table(self, table: str | None = None, counters: bool = False) -> list[p4r.TableEntry]:
        """All entries of one table (or of every table when table is None)."""
        entry = p4r.TableEntry(table_id=self.names.table(table).preamble.id if table else 0)
        if counters:
            entry.counter_data.SetInParent()
        return [e.table_entry for e in self.read(entry)]

    # -- packet I/O -------------------------------------------------------------------------

    def packet_out(self, payload: bytes, egress_port: int, **metadata: int) -> None:
        header = self.names.packet_metadata["packet_out"]
        values = {"egress_port": egress_port, **metadata}
        packet = p4r.PacketOut(payload=payload)
        for m in header.metadata:
            packet.metadata.add(metadata_id=m.id, value=encode(values.get(m.name, 0), m.bitwidth))
        self.send_packet_out(packet)

    def send_packet_out(self, packet: p4r.PacketOut) -> None:
        self._requests.put(p4r.StreamMessageRequest(packet=packet))

    def packet_in(self, timeout: float = 2.0) -> tuple[bytes, dict[str, int]]:
        """The next packet-in as (payload, {metadata name: value}); raises queue.Empty."""
        packet = self.packets.get(timeout=timeout)
        header = self.names.packet_metadata["packet_in"]
        names = {m.id: m.name for m in header.metadata}
        return packet.payload, {names.get(m.metadata_id, str(m.metadata_id)): decode(m.value) for m in packet.metadata}

    def stream_error(self, timeout: float = 2.0) -> p4r.StreamError:
        return self.stream_errors.get(timeout=timeout)

    def close(self) -> None:
        self._requests.put(None)
        self._stream.cancel()
        self._reader.join(timeout=2)
        self.channel.close()

    def __enter__(self) -> P4RTTestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
