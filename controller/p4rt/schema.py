"""The P4Info, indexed by name, and the encoders that turn names and ints into P4Runtime messages.

Everything is addressed by name (full `FabricIngress.edge_classify` or alias `edge_classify`),
so the same controller code drives the softswitch, BMv2 and Tofino, whose ids differ.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Required, TypedDict, TypeVar

from finsy.proto import p4i, p4r
from google.protobuf import text_format


class SchemaError(LookupError):
    """A name that the P4Info does not declare, or a value that does not fit."""


def encode_value(value: int, bitwidth: int, what: str) -> bytes:
    """Canonical P4Runtime bytes: big-endian, no leading zero bytes (zero is one 0x00 byte)."""
    if value < 0 or value >> bitwidth:
        raise SchemaError(f"{what}: value {value:#x} does not fit in {bitwidth} bits")
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def decode_value(data: bytes) -> int:
    return int.from_bytes(data, "big")


@dataclasses.dataclass(frozen=True, slots=True)
class FieldInfo:
    id: int
    name: str
    bitwidth: int
    match_type: int  # p4i.MatchField.MatchType


@dataclasses.dataclass(frozen=True, slots=True)
class ActionInfo:
    id: int
    name: str
    params: tuple[FieldInfo, ...]
    params_by_name: dict[str, FieldInfo]


@dataclasses.dataclass(frozen=True, slots=True)
class TableInfo:
    id: int
    name: str
    fields: tuple[FieldInfo, ...]
    fields_by_name: dict[str, FieldInfo]
    action_ids: frozenset[int]
    size: int
    implementation_id: int
    needs_priority: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ProfileInfo:
    id: int
    name: str
    size: int
    max_group_size: int


class EntryView(TypedDict, total=False):
    """describe_entry's name-keyed view of a table entry; action/params, member or group by
    the entry's action kind, packets/bytes when it carries counter data."""

    table: Required[str]
    match: Required[dict[str, int | tuple[int, int]]]  # LPM (value, prefix_len), ternary (value, mask)
    priority: Required[int]
    action: str
    params: dict[str, int]
    member: int
    group: int
    packets: int
    bytes: int


_Info = TypeVar("_Info", TableInfo, ActionInfo, ProfileInfo)


def _register(names: dict[str, _Info], preamble: p4i.Preamble, info: _Info) -> None:
    names[preamble.name] = info
    if preamble.alias:
        names.setdefault(preamble.alias, info)


def _lookup(names: dict[str, _Info], kind: str, name: str) -> _Info:
    try:
        return names[name]
    except KeyError:
        raise SchemaError(f"P4Info declares no {kind} named {name!r}") from None


def _scalar(value: int | tuple[int, int], what: str) -> int:
    """An exact or optional match value: an int (a pair is a caller's type error)."""
    if not isinstance(value, int):
        raise TypeError(f"{what}: match value must be an int, got {value!r}")
    return value


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    """An LPM (value, prefix_len) or ternary (value, mask) match value."""
    if isinstance(value, int):
        raise TypeError(f"{what}: match value must be a pair, got {value!r}")
    return value


def _exact_match(info: TableInfo, match: dict[str, int | tuple[int, int]]) -> list[tuple[int, bytes]] | None:
    """(field id, canonical bytes) of an all-exact int match, or None if any field is not that."""
    exact: list[tuple[int, bytes]] = []
    for name, value in match.items():
        f = info.fields_by_name.get(name)
        if f is None or f.match_type != p4i.MatchField.EXACT or type(value) is not int:
            return None
        if value < 0 or value >> f.bitwidth:
            encode_value(value, f.bitwidth, f"{info.name}.{name}")  # raises with the names
        exact.append((f.id, value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")))
    return exact


class P4Schema:
    """Name -> id index of one P4Info."""

    def __init__(self, p4info: p4i.P4Info) -> None:
        self.p4info = p4info
        # name and alias -> info, one dict per kind
        self._tables: dict[str, TableInfo] = {}
        self._actions: dict[str, ActionInfo] = {}
        self._profiles: dict[str, ProfileInfo] = {}
        self.tables_by_id: dict[int, TableInfo] = {}
        self.actions_by_id: dict[int, ActionInfo] = {}
        self.packet_meta: dict[str, tuple[FieldInfo, ...]] = {}
        for a in p4info.actions:
            params = tuple(FieldInfo(p.id, p.name, p.bitwidth, 0) for p in a.params)
            action = ActionInfo(a.preamble.id, a.preamble.name, params, {p.name: p for p in params})
            self.actions_by_id[action.id] = action
            _register(self._actions, a.preamble, action)
        exact_like = {p4i.MatchField.EXACT, p4i.MatchField.LPM}
        for t in p4info.tables:
            fields = tuple(FieldInfo(f.id, f.name, f.bitwidth, f.match_type) for f in t.match_fields)
            info = TableInfo(
                id=t.preamble.id,
                name=t.preamble.name,
                fields=fields,
                fields_by_name={f.name: f for f in fields},
                action_ids=frozenset(r.id for r in t.action_refs),
                size=t.size,
                implementation_id=t.implementation_id,
                needs_priority=any(f.match_type not in exact_like for f in fields),
            )
            self.tables_by_id[info.id] = info
            _register(self._tables, t.preamble, info)
        for p in p4info.action_profiles:
            _register(self._profiles, p.preamble, ProfileInfo(p.preamble.id, p.preamble.name, p.size, p.max_group_size))
        for c in p4info.controller_packet_metadata:
            meta = tuple(FieldInfo(m.id, m.name, m.bitwidth, 0) for m in c.metadata)
            self.packet_meta[c.preamble.name] = meta

    @classmethod
    def from_file(cls, path: str | Path) -> P4Schema:
        return cls(text_format.Parse(Path(path).read_text(), p4i.P4Info()))

    def table(self, name: str) -> TableInfo:
        return _lookup(self._tables, "table", name)

    def action(self, name: str) -> ActionInfo:
        return _lookup(self._actions, "action", name)

    def profile(self, name: str) -> ProfileInfo:
        return _lookup(self._profiles, "profile", name)

    # --- builders ------------------------------------------------------------------------

    def action_msg(self, action: str, params: dict[str, int] | None = None) -> p4r.Action:
        msg = p4r.Action()
        self._fill_action(msg, action, params)
        return msg

    def _fill_action(self, msg: p4r.Action, action: str, params: dict[str, int] | None) -> None:
        # Fills the message in place: building sub-messages and copying them in costs ~3x more
        # (upb copies on every assignment), and encoding is ~40% of a large batch's client time.
        info = self.action(action)
        params = params or {}
        if len(params) != len(info.params) or not all(p.name in params for p in info.params):
            unknown = set(params) - set(info.params_by_name)
            if unknown:
                raise SchemaError(f"action {info.name}: no parameter {sorted(unknown)[0]!r}")
            missing = next(p for p in info.params if p.name not in params)
            raise SchemaError(f"action {info.name}: parameter {missing.name!r} is missing")
        msg.action_id = info.id
        add = msg.params.add
        for p in info.params:
            value = params[p.name]
            if value < 0 or value >> p.bitwidth:
                encode_value(value, p.bitwidth, f"{info.name}.{p.name}")  # raises with the names
            add(param_id=p.id, value=value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))

    def match_msgs(self, table: TableInfo, match: dict[str, int | tuple[int, int]]) -> list[p4r.FieldMatch]:
        """Exact fields take an int; LPM (value, prefix_len); ternary (value, mask); optional an int."""
        out = []
        for name, value in match.items():
            f = table.fields_by_name.get(name)
            if f is None:
                raise SchemaError(f"table {table.name}: no match field {name!r}")
            what = f"{table.name}.{name}"
            mt = f.match_type
            if mt == p4i.MatchField.EXACT:
                out.append(p4r.FieldMatch(field_id=f.id, exact=p4r.FieldMatch.Exact(value=encode_value(_scalar(value, what), f.bitwidth, what))))
            elif mt == p4i.MatchField.LPM:
                v, plen = _pair(value, what)
                out.append(p4r.FieldMatch(field_id=f.id, lpm=p4r.FieldMatch.LPM(value=encode_value(v, f.bitwidth, what), prefix_len=plen)))
            elif mt == p4i.MatchField.TERNARY:
                v, m = _pair(value, what)
                out.append(p4r.FieldMatch(field_id=f.id, ternary=p4r.FieldMatch.Ternary(value=encode_value(v, f.bitwidth, what), mask=encode_value(m, f.bitwidth, what))))
            elif mt == p4i.MatchField.OPTIONAL:
                out.append(p4r.FieldMatch(field_id=f.id, optional=p4r.FieldMatch.Optional(value=encode_value(_scalar(value, what), f.bitwidth, what))))
            else:
                raise SchemaError(f"{what}: match type {mt} is not supported")
        out.sort(key=lambda m: m.field_id)
        return out

    def table_entry(
        self,
        table: str,
        match: dict[str, int | tuple[int, int]],
        action: str | None = None,
        params: dict[str, int] | None = None,
        *,
        priority: int = 0,
        member_id: int | None = None,
        group_id: int | None = None,
    ) -> p4r.TableEntry:
        entry = p4r.TableEntry()
        self._fill_entry(entry, table, match, action, params, priority, member_id, group_id)
        return entry

    def table_update(
        self,
        kind: p4r.Update.Type.ValueType,
        table: str,
        match: dict[str, int | tuple[int, int]],
        action: str | None = None,
        params: dict[str, int] | None = None,
        *,
        priority: int = 0,
        member_id: int | None = None,
        group_id: int | None = None,
    ) -> p4r.Update:
        """`update(kind, table_entry(...))`, built in place: no copy of the entry into the Update."""
        msg = p4r.Update(type=kind)
        self._fill_entry(msg.entity.table_entry, table, match, action, params, priority, member_id, group_id)
        return msg

    def _fill_entry(self, entry: p4r.TableEntry, table: str, match: dict[str, int | tuple[int, int]],
                    action: str | None, params: dict[str, int] | None, priority: int,
                    member_id: int | None, group_id: int | None) -> None:
        info = self.table(table)
        entry.table_id = info.id
        # All-exact keys (every table the fabric writes) are encoded in place; others, and
        # every error, go through match_msgs.
        exact = _exact_match(info, match)
        if exact is None:
            entry.match.extend(self.match_msgs(info, match))
        else:
            exact.sort()
            add = entry.match.add
            for field_id, data in exact:
                add(field_id=field_id).exact.value = data
        if priority:
            entry.priority = priority
        if action is not None:
            self._fill_action(entry.action.action, action, params)
        elif member_id is not None:
            entry.action.action_profile_member_id = member_id
        elif group_id is not None:
            entry.action.action_profile_group_id = group_id

    def member(self, profile: str, member_id: int, action: str, params: dict[str, int]) -> p4r.ActionProfileMember:
        msg = p4r.ActionProfileMember(action_profile_id=self.profile(profile).id, member_id=member_id)
        self._fill_action(msg.action, action, params)
        return msg

    def group(self, profile: str, group_id: int, members: list[tuple[int, int | None]]) -> p4r.ActionProfileGroup:
        """members: (member id, watch port or None)."""
        info = self.profile(profile)
        out = []
        for member_id, watch in members:
            m = p4r.ActionProfileGroup.Member(member_id=member_id, weight=1)
            if watch is not None:
                m.watch_port = encode_value(watch, 32, f"{info.name} member {member_id} watch_port")
            out.append(m)
        return p4r.ActionProfileGroup(action_profile_id=info.id, group_id=group_id, members=out, max_size=len(out))

    def packet_metadata(self, header: str, values: dict[str, int]) -> list[p4r.PacketMetadata]:
        fields = self.packet_meta.get(header)
        if fields is None:
            raise SchemaError(f"P4Info declares no controller header {header!r}")
        return [
            p4r.PacketMetadata(metadata_id=f.id, value=encode_value(values.get(f.name, 0), f.bitwidth, f"{header}.{f.name}"))
            for f in fields
        ]

    def decode_packet_metadata(self, header: str, metadata: list[p4r.PacketMetadata]) -> dict[str, int]:
        by_id = {f.id: f.name for f in self.packet_meta.get(header, ())}
        return {by_id.get(m.metadata_id, str(m.metadata_id)): decode_value(m.value) for m in metadata}

    # --- decoders (for show and reconcile) -------------------------------------------------

    def describe_entry(self, entry: p4r.TableEntry) -> EntryView:
        """A name-keyed view of an entry read back from a switch."""
        table = self.tables_by_id.get(entry.table_id)
        tname = table.name if table else str(entry.table_id)
        fields = {f.id: f.name for f in table.fields} if table else {}
        match: dict[str, int | tuple[int, int]] = {}
        for m in entry.match:
            kind = m.WhichOneof("field_match_type")
            sub = getattr(m, kind)
            name = fields.get(m.field_id, str(m.field_id))
            if kind == "lpm":
                match[name] = (decode_value(sub.value), sub.prefix_len)
            elif kind == "ternary":
                match[name] = (decode_value(sub.value), decode_value(sub.mask))
            else:
                match[name] = decode_value(sub.value)
        out: EntryView = {"table": tname, "match": match, "priority": entry.priority}
        kind = entry.action.WhichOneof("type")
        if kind == "action":
            act = self.actions_by_id.get(entry.action.action.action_id)
            pnames = {p.id: p.name for p in act.params} if act else {}
            out["action"] = act.name if act else str(entry.action.action.action_id)
            out["params"] = {pnames.get(p.param_id, str(p.param_id)): decode_value(p.value) for p in entry.action.action.params}
        elif kind == "action_profile_member_id":
            out["member"] = entry.action.action_profile_member_id
        elif kind == "action_profile_group_id":
            out["group"] = entry.action.action_profile_group_id
        if entry.HasField("counter_data"):
            out["packets"] = entry.counter_data.packet_count
            out["bytes"] = entry.counter_data.byte_count
        return out


_ENTITY_FIELD = {
    p4r.TableEntry: "table_entry",
    p4r.ActionProfileMember: "action_profile_member",
    p4r.ActionProfileGroup: "action_profile_group",
}


def update(kind: p4r.Update.Type.ValueType, msg: p4r.TableEntry | p4r.ActionProfileMember | p4r.ActionProfileGroup) -> p4r.Update:
    """Wrap an entity into an Update (kind: p4r.Update.INSERT / MODIFY / DELETE)."""
    out = p4r.Update(type=kind)
    getattr(out.entity, _ENTITY_FIELD[type(msg)]).CopyFrom(msg)  # one copy; Entity(**...) then Update(...) made two
    return out
