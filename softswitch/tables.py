"""The entity store: table entries, default entries, action-profile members and groups, direct
counters, for one committed pipeline.

The store keeps no second copy of an entry: the softswitch.model runtime structures ARE the
store (RuntimeTable.exact for exact tables; a key dict beside RuntimeTable.ternary for the
others). Read re-encodes from them, which also gives canonical bytestrings back (read-write
symmetry) whatever padding the client wrote. The Entry object of an entry lives as long as
the entry, across MODIFY, because the pipeline counts hits in it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from finsy.proto import p4r, rpc_code

from softswitch.model import (
    ActionCall,
    DataplaneState,
    Entry,
    Member,
    RuntimeProfile,
    RuntimeTable,
    TernaryEntry,
)
from softswitch.p4info_index import (
    DEFAULT_ONLY,
    EXACT,
    LPM,
    MATCH_KIND_NAMES,
    NO_ACTION,
    OPTIONAL,
    RANGE,
    TABLE_ONLY,
    TERNARY,
    ActionInfo,
    FieldInfo,
    P4InfoIndex,
    P4RTError,
    ProfileInfo,
    Program,
    TableInfo,
    decode_value,
    encode_value,
    invalid,
    value_error,
)

INSERT = p4r.Update.INSERT
MODIFY = p4r.Update.MODIFY
DELETE = p4r.Update.DELETE
# An SDN port is 32 bits wide (spec, "Translation of Port Numbers").
WATCH_PORT_BITS = 32

# Per field of a non-exact key: None (don't care), an int (exact, optional),
# or a pair (lpm: value, prefix_len; ternary: value, mask; range: low, high).
FieldSpec = int | tuple[int, int] | None


class SpecKey(NamedTuple):
    """Store key of a non-exact table (a plain tuple at run time: same hash and equality)."""

    specs: tuple[FieldSpec, ...]
    priority: int


# Store key of an all-exact table: the runtime key itself, one int per field.
ExactKey = tuple[int, ...]
TableKey = ExactKey | SpecKey


def _not_found(message: str) -> P4RTError:
    return P4RTError(rpc_code.NOT_FOUND, message)


def _denied(message: str) -> P4RTError:
    return P4RTError(rpc_code.PERMISSION_DENIED, message)


class _Extras:
    """Opaque per-entry values the client may set; rare, so kept apart from the hot path."""

    __slots__ = ("metadata", "controller_metadata")

    def __init__(self, metadata: bytes, controller_metadata: int) -> None:
        self.metadata = metadata
        self.controller_metadata = controller_metadata


class TableState:
    """One table: its P4Info, its runtime lookup structure and its initial default action."""

    __slots__ = ("info", "where", "runtime", "keyed", "extras", "initial_default", "profile", "default_fixed")

    def __init__(self, info: TableInfo, initial_default: ActionCall, profile: ProfileState | None) -> None:
        self.info = info
        self.where = f"table {info.name}"  # message prefix, built once rather than per update
        self.runtime = RuntimeTable(info.name, info.all_exact, initial_default)
        # Non-exact tables: (field specs, priority) -> TernaryEntry (not in runtime.ternary for
        # range tables, which only the control-plane-only "generic" program may have).
        self.keyed: dict[SpecKey, TernaryEntry] = {}
        self.extras: dict[TableKey, _Extras] = {}
        self.initial_default = initial_default
        self.profile = profile
        # Const defaults and indirect tables (spec: their default is a constant NoAction).
        self.default_fixed = bool(info.const_default_action_id) or profile is not None

    # -- keys ---------------------------------------------------------------------------------

    def _field_error(self, f: FieldInfo, data: bytes) -> P4RTError:
        return value_error(data, f.bitwidth, f"table {self.info.name}: match field {f.name}")

    def exact_key(self, matches: Sequence[p4r.FieldMatch]) -> ExactKey:
        """The runtime key of an all-exact table (the hot path of Write)."""
        fields_by_id = self.info.fields_by_id
        n = len(self.info.fields)
        if len(matches) != n:
            raise self._match_count_error(matches)
        if n == 1:
            fm = matches[0]
            f = fields_by_id.get(fm.field_id)
            if f is None or not fm.HasField("exact"):
                raise self._match_error(fm, f)
            data = fm.exact.value
            value = int.from_bytes(data, "big")
            if not data or value >> f.bitwidth:
                raise self._field_error(f, data)
            return (value,)
        # -1: not given yet (values are unsigned). n matches, none twice: every field gets one.
        values = [-1] * n
        for fm in matches:
            f = fields_by_id.get(fm.field_id)
            if f is None or not fm.HasField("exact"):
                raise self._match_error(fm, f)
            if values[f.index] != -1:
                raise invalid(f"table {self.info.name}: match field {f.name} given twice")
            data = fm.exact.value
            value = int.from_bytes(data, "big")
            if not data or value >> f.bitwidth:
                raise self._field_error(f, data)
            values[f.index] = value
        return tuple(values)

    def _match_count_error(self, matches: Sequence[p4r.FieldMatch]) -> P4RTError:
        given = {fm.field_id for fm in matches}
        missing = [f.name for f in self.info.fields if f.id not in given]
        if missing:
            return invalid(f"table {self.info.name}: exact match field(s) missing: {', '.join(missing)}")
        return invalid(f"table {self.info.name}: {len(matches)} match fields given, table has {len(self.info.fields)}")

    def _match_error(self, fm: p4r.FieldMatch, f: FieldInfo | None) -> P4RTError:
        if f is None:
            return invalid(f"table {self.info.name}: unknown match field id {fm.field_id}")
        given = fm.WhichOneof("field_match_type")
        if given is None:
            return invalid(f"table {self.info.name}: match field {f.name}: no match value set")
        return invalid(f"table {self.info.name}: match field {f.name} is {MATCH_KIND_NAMES[f.kind]}, got {given}")

    def spec_key(self, matches: Sequence[p4r.FieldMatch], priority: int) -> SpecKey:
        """Validated key of a non-exact table: per-field specs plus the priority."""
        info = self.info
        specs: list[FieldSpec] = [None] * len(info.fields)
        seen = 0
        for fm in matches:
            f = info.fields_by_id.get(fm.field_id)
            if f is None:
                raise self._match_error(fm, None)
            if specs[f.index] is not None or (seen >> f.index) & 1:
                raise invalid(f"table {info.name}: match field {f.name} given twice")
            seen |= 1 << f.index
            specs[f.index] = self._field_spec(f, fm)
        for f in info.fields:
            if f.kind == EXACT and specs[f.index] is None:
                raise invalid(f"table {info.name}: exact match field {f.name} missing")
        return SpecKey(tuple(specs), priority)

    def _field_spec(self, f: FieldInfo, fm: p4r.FieldMatch) -> FieldSpec:
        what = f"table {self.info.name}: match field {f.name}"
        kind = f.kind
        if kind == EXACT and fm.HasField("exact"):
            return decode_value(fm.exact.value, f.bitwidth, what)
        if kind == OPTIONAL and fm.HasField("optional"):
            return decode_value(fm.optional.value, f.bitwidth, what)
        if kind == LPM and fm.HasField("lpm"):
            value = decode_value(fm.lpm.value, f.bitwidth, what)
            plen = fm.lpm.prefix_len
            if not 0 < plen <= f.bitwidth:
                raise invalid(f"{what}: prefix_len {plen} not in 1..{f.bitwidth} (omit the field for don't care)")
            if value & ~_prefix_mask(plen, f.bitwidth):
                raise invalid(f"{what}: value {value:#x} has bits set beyond prefix /{plen}")
            return (value, plen)
        if kind == TERNARY and fm.HasField("ternary"):
            value = decode_value(fm.ternary.value, f.bitwidth, what + " value")
            mask = decode_value(fm.ternary.mask, f.bitwidth, what + " mask")
            if mask == 0:
                raise invalid(f"{what}: mask 0 (omit the field for don't care)")
            if value & ~mask:
                raise invalid(f"{what}: value {value:#x} has bits outside mask {mask:#x}")
            return (value, mask)
        if kind == RANGE and fm.HasField("range"):
            low = decode_value(fm.range.low, f.bitwidth, what + " low")
            high = decode_value(fm.range.high, f.bitwidth, what + " high")
            if low > high:
                raise invalid(f"{what}: range low {low:#x} above high {high:#x}")
            if low == 0 and high == (1 << f.bitwidth) - 1:
                raise invalid(f"{what}: full range (omit the field for don't care)")
            return (low, high)
        raise self._match_error(fm, f)

    def check_priority(self, priority: int) -> None:
        if self.info.needs_priority:
            if priority <= 0:
                raise invalid(
                    f"table {self.info.name}: ternary/range/optional match needs a priority > 0, got {priority}"
                )
        elif priority != 0:
            raise invalid(f"table {self.info.name}: exact/LPM table takes no priority, got {priority}")

    def key_of(self, te: p4r.TableEntry) -> TableKey:
        """The store key of a TableEntry's match and priority, validated."""
        priority = te.priority
        if self.info.needs_priority:
            if priority <= 0:
                self.check_priority(priority)
        elif priority:
            self.check_priority(priority)
        if self.info.all_exact:
            return self.exact_key(te.match)
        return self.spec_key(te.match, priority)

    # key_of gives an ExactKey exactly when the table is all-exact, so the key's type says
    # which structure holds the entry.

    def lookup(self, key: TableKey) -> Entry | None:
        if not isinstance(key, SpecKey):
            return self.runtime.exact.get(key)
        t = self.keyed.get(key)
        return t.entry if t is not None else None

    def add(self, key: TableKey, entry: Entry) -> None:
        if not isinstance(key, SpecKey):
            self.runtime.exact[key] = entry
            return
        values, masks = _runtime_masks(self.info, key.specs)
        t = TernaryEntry(values, masks, key.priority, entry)
        self.keyed[key] = t
        if not self.info.has_range:
            bisect.insort(self.runtime.ternary, t, key=self._rank)

    def remove(self, key: TableKey) -> Entry:
        self.extras.pop(key, None)
        if not isinstance(key, SpecKey):
            return self.runtime.exact.pop(key)
        t = self.keyed.pop(key)
        if not self.info.has_range:
            self.runtime.ternary.remove(t)
        return t.entry

    def _rank(self, t: TernaryEntry) -> int:
        # Best match first: by priority, or for LPM tables (priority 0) by prefix length.
        if self.info.needs_priority:
            return -t.priority
        return -sum(m.bit_count() for m in t.masks)

    def items(self) -> Iterator[tuple[TableKey, Entry]]:
        if self.info.all_exact:
            yield from self.runtime.exact.items()
        else:
            for key, t in self.keyed.items():
                yield key, t.entry


def _prefix_mask(plen: int, bitwidth: int) -> int:
    return ((1 << plen) - 1) << (bitwidth - plen)


def _runtime_masks(info: TableInfo, specs: tuple[FieldSpec, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    values: list[int] = []
    masks: list[int] = []
    for f, spec in zip(info.fields, specs, strict=False):
        full = (1 << f.bitwidth) - 1
        if spec is None:
            values.append(0)
            masks.append(0)
        elif isinstance(spec, int):  # exact, optional (_field_spec gives the others a pair)
            values.append(spec)
            masks.append(full)
        elif f.kind == LPM:
            value, plen = spec
            values.append(value)
            masks.append(_prefix_mask(plen, f.bitwidth))
        elif f.kind == TERNARY:
            value, mask = spec
            values.append(value)
            masks.append(mask)
        else:  # range: no value/mask form; such tables are not in the runtime (see TableState)
            values.append(0)
            masks.append(0)
    return tuple(values), tuple(masks)


class ProfileState:
    """One action profile or selector: members, groups and who references them."""

    __slots__ = (
        "info",
        "runtime",
        "group_specs",
        "max_sizes",
        "member_groups",
        "member_entry_refs",
        "group_entry_refs",
    )

    def __init__(self, info: ProfileInfo) -> None:
        self.info = info
        self.runtime = RuntimeProfile(info.name)
        # group id -> [(member id, weight, watch port)] as written, for read-back
        self.group_specs: dict[int, list[tuple[int, int, int | None]]] = {}
        self.max_sizes: dict[int, int] = {}
        self.member_groups: dict[int, set[int]] = {}
        self.member_entry_refs: dict[int, int] = {}
        self.group_entry_refs: dict[int, int] = {}

    def ref(self, entry: Entry, delta: int) -> None:
        if entry.member_id is not None:
            self.member_entry_refs[entry.member_id] = self.member_entry_refs.get(entry.member_id, 0) + delta
        elif entry.group_id is not None:
            self.group_entry_refs[entry.group_id] = self.group_entry_refs.get(entry.group_id, 0) + delta


class EntityStore:
    """All writable entities of one pipeline. write() raises P4RTError; the caller collects."""

    def __init__(self, index: P4InfoIndex, program: Program) -> None:
        self.index = index
        self.program = program
        self.profiles: dict[int, ProfileState] = {pid: ProfileState(p) for pid, p in index.profiles.items()}
        self.tables: dict[int, TableState] = {}
        for tid, info in index.tables.items():
            profile = self.profiles.get(info.implementation_id) if info.implementation_id else None
            self.tables[tid] = TableState(info, self._initial_default(info, profile is not None), profile)

    def _initial_default(self, info: TableInfo, indirect: bool) -> ActionCall:
        if info.const_default_action_id:
            return ActionCall(self.index.actions[info.const_default_action_id].name)
        name = self.program.initial_defaults.get(info.name)
        if name is not None and not indirect:
            return ActionCall(name)
        return ActionCall(NO_ACTION)

    def dataplane_state(self) -> DataplaneState:
        return DataplaneState(
            tables={t.info.name: t.runtime for t in self.tables.values()},
            profiles={p.info.name: p.runtime for p in self.profiles.values()},
            table_profile={t.info.name: t.profile.info.name for t in self.tables.values() if t.profile is not None},
            packet_metadata={
                name: [(f.name, f.bitwidth) for f in meta.fields] for name, meta in self.index.packet_metadata.items()
            },
        )

    # -- Write ------------------------------------------------------------------------------

    def write(self, update: p4r.Update) -> None:
        kind = update.type
        if not INSERT <= kind <= DELETE:
            raise invalid(f"update type {kind} is not INSERT, MODIFY or DELETE")
        entity = update.entity
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            self._write_table_entry(kind, entity.table_entry)
        elif which == "action_profile_member":
            self._write_member(kind, entity.action_profile_member)
        elif which == "action_profile_group":
            self._write_group(kind, entity.action_profile_group)
        elif which == "direct_counter_entry":
            self._write_direct_counter(kind, entity.direct_counter_entry)
        elif which is None:
            raise invalid("update has no entity")
        else:
            raise P4RTError(rpc_code.UNIMPLEMENTED, f"entity {which} is not supported by the softswitch")

    def _table(self, table_id: int) -> TableState:
        table = self.tables.get(table_id)
        if table is None:
            raise invalid(f"unknown table id {table_id:#x}")
        return table

    def _write_table_entry(self, kind: int, te: p4r.TableEntry) -> None:
        table = self.tables.get(te.table_id)
        if table is None:
            raise invalid(f"unknown table id {te.table_id:#x}")
        if te.is_default_action:
            self._write_default(kind, table, te)
            return
        info = table.info
        if te.is_const:
            raise invalid(f"table {info.name}: is_const must be false in a write")
        if info.is_const:
            raise _denied(f"table {info.name} is const")
        if not info.fields:
            raise invalid(f"table {info.name} has no match key; only its default entry can be written")
        key = table.key_of(te)
        entry: Entry | None
        if kind == INSERT:
            if table.lookup(key) is not None:
                raise P4RTError(rpc_code.ALREADY_EXISTS, f"table {info.name}: entry already exists")
            count = len(table.runtime.exact) if info.all_exact else len(table.keyed)
            if info.size and count >= info.size:
                raise P4RTError(rpc_code.RESOURCE_EXHAUSTED, f"table {info.name}: full ({info.size} entries)")
            if not te.HasField("action"):
                raise invalid(f"table {info.name}: INSERT without an action")
            entry = self._table_action(table, te.action)
            if te.HasField("counter_data"):
                self._set_counters(table, entry, te.counter_data)
            self._check_unsupported(table, te)
            if table.profile is not None:
                table.profile.ref(entry, 1)
            table.add(key, entry)
            if te.metadata or te.controller_metadata:
                table.extras[key] = _Extras(te.metadata, te.controller_metadata)
        elif kind == MODIFY:
            entry = table.lookup(key)
            if entry is None:
                raise _not_found(f"table {info.name}: no such entry to modify")
            self._check_unsupported(table, te)
            if te.HasField("action"):
                new = self._table_action(table, te.action)
                if table.profile is not None:
                    table.profile.ref(entry, -1)
                    table.profile.ref(new, 1)
                # The same Entry object stays in place: the pipeline counts hits in it.
                entry.action, entry.member_id, entry.group_id = new.action, new.member_id, new.group_id
            if te.HasField("counter_data"):
                self._set_counters(table, entry, te.counter_data)
            if te.metadata or te.controller_metadata:
                table.extras[key] = _Extras(te.metadata, te.controller_metadata)
            else:
                table.extras.pop(key, None)
        else:
            entry = table.lookup(key)
            if entry is None:
                raise _not_found(f"table {info.name}: no such entry to delete")
            table.remove(key)
            if table.profile is not None:
                table.profile.ref(entry, -1)

    def _check_unsupported(self, table: TableState, te: p4r.TableEntry) -> None:
        if te.idle_timeout_ns:
            raise invalid(f"table {table.info.name} does not support idle timeout")
        if te.HasField("meter_config") or te.HasField("meter_counter_data"):
            raise invalid(f"table {table.info.name} has no direct meter")

    def _set_counters(self, table: TableState, entry: Entry, data: p4r.CounterData) -> None:
        if not table.info.direct_counter_id:
            raise invalid(f"table {table.info.name} has no direct counter")
        entry.packets = data.packet_count
        entry.bytes = data.byte_count

    def _table_action(self, table: TableState, ta: p4r.TableAction) -> Entry:
        which = ta.WhichOneof("type")
        profile = table.profile
        if profile is None:
            if which != "action":
                raise invalid(f"table {table.info.name} is direct: action must be an Action, got {which}")
            return Entry(self._action(table.info.actions, ta.action, table.where, default=False))
        if which == "action_profile_member_id":
            mid = ta.action_profile_member_id
            if mid not in profile.runtime.members:
                raise _not_found(f"table {table.info.name}: action profile member {mid} not found")
            return Entry(member_id=mid)
        if which == "action_profile_group_id":
            gid = ta.action_profile_group_id
            if not profile.info.with_selector:
                raise invalid(
                    f"table {table.info.name}: action profile {profile.info.name} has no selector (no groups)"
                )
            if gid not in profile.runtime.groups:
                raise _not_found(f"table {table.info.name}: action profile group {gid} not found")
            return Entry(group_id=gid)
        if which == "action_profile_action_set":
            raise P4RTError(rpc_code.UNIMPLEMENTED, f"table {table.info.name}: one-shot action sets are not supported")
        raise invalid(f"table {table.info.name} is indirect: action must be a member or group id, got {which}")

    def _action(
        self, allowed: dict[int, tuple[ActionInfo, int]], action: p4r.Action, where: str, default: bool
    ) -> ActionCall:
        ref = allowed.get(action.action_id)
        if ref is None:
            known = self.index.actions.get(action.action_id)
            if known is None:
                raise invalid(f"{where}: unknown action id {action.action_id:#x}")
            raise invalid(f"{where}: action {known.name} is not one of its actions")
        info, scope = ref
        if scope == DEFAULT_ONLY and not default:
            raise _denied(f"{where}: action {info.name} is default-only")
        if scope == TABLE_ONLY and default:
            raise _denied(f"{where}: action {info.name} is table-only, not a default action")
        params = action.params
        expected = info.params
        if len(params) != len(expected):
            raise self._param_count_error(info, params, where)
        if not expected:
            return ActionCall(info.name)
        if len(expected) == 1:  # the common case, without the bookkeeping for several params
            p = params[0]
            only = expected[0]
            if p.param_id != only.id:
                raise invalid(f"{where}: action {info.name}: unknown param id {p.param_id}")
            data = p.value
            value = int.from_bytes(data, "big")
            if not data or value >> only.bitwidth:
                raise value_error(data, only.bitwidth, f"{where}: action {info.name}: param {only.name}")
            return ActionCall(info.name, (value,))
        # -1: not given yet (values are unsigned). As many params as expected, none twice:
        # every param gets one.
        args = [-1] * len(expected)
        by_id = info.params_by_id
        for p in params:
            pinfo = by_id.get(p.param_id)
            if pinfo is None:
                raise invalid(f"{where}: action {info.name}: unknown param id {p.param_id}")
            if args[pinfo.index] != -1:
                raise invalid(f"{where}: action {info.name}: param {pinfo.name} given twice")
            data = p.value
            value = int.from_bytes(data, "big")
            if not data or value >> pinfo.bitwidth:
                raise value_error(data, pinfo.bitwidth, f"{where}: action {info.name}: param {pinfo.name}")
            args[pinfo.index] = value
        return ActionCall(info.name, tuple(args))

    @staticmethod
    def _param_count_error(info: ActionInfo, params: Sequence[p4r.Action.Param], where: str) -> P4RTError:
        given = {p.param_id for p in params}
        missing = [p.name for p in info.params if p.id not in given]
        if missing:
            return invalid(f"{where}: action {info.name}: missing param(s) {', '.join(missing)}")
        return invalid(f"{where}: action {info.name}: {len(params)} params given, it takes {len(info.params)}")

    def _write_default(self, kind: int, table: TableState, te: p4r.TableEntry) -> None:
        info = table.info
        if kind != MODIFY:
            raise invalid(f"table {info.name}: the default entry can only be modified (no INSERT/DELETE)")
        if len(te.match) or te.priority:
            raise invalid(f"table {info.name}: default entry takes no match and no priority")
        if table.default_fixed:
            raise _denied(f"table {info.name}: default action is constant")
        if not te.HasField("action"):
            table.runtime.default = table.initial_default
            return
        if te.action.WhichOneof("type") != "action":
            raise invalid(f"table {info.name}: default entry needs an Action")
        table.runtime.default = self._action(info.actions, te.action.action, f"table {info.name} default", default=True)

    def _write_direct_counter(self, kind: int, dce: p4r.DirectCounterEntry) -> None:
        if kind != MODIFY:
            raise invalid("direct counter entries can only be modified")
        te = dce.table_entry
        table = self._table(te.table_id)
        if not table.info.direct_counter_id:
            raise invalid(f"table {table.info.name} has no direct counter")
        if te.is_default_action:
            raise P4RTError(rpc_code.UNIMPLEMENTED, f"table {table.info.name}: default entry has no counter here")
        entry = table.lookup(table.key_of(te))
        if entry is None:
            raise _not_found(f"table {table.info.name}: no such entry for its direct counter")
        entry.packets = dce.data.packet_count
        entry.bytes = dce.data.byte_count

    # -- action profiles --------------------------------------------------------------------

    def _profile(self, profile_id: int) -> ProfileState:
        profile = self.profiles.get(profile_id)
        if profile is None:
            raise invalid(f"unknown action profile id {profile_id:#x}")
        return profile

    def _write_member(self, kind: int, m: p4r.ActionProfileMember) -> None:
        profile = self._profile(m.action_profile_id)
        name = profile.info.name
        members = profile.runtime.members
        mid = m.member_id
        if mid == 0:
            raise invalid(f"action profile {name}: member id 0 is reserved")
        if kind == DELETE:
            if mid not in members:
                raise _not_found(f"action profile {name}: member {mid} not found")
            if profile.member_groups.get(mid) or profile.member_entry_refs.get(mid):
                raise P4RTError(rpc_code.FAILED_PRECONDITION, f"action profile {name}: member {mid} is in use")
            del members[mid]
            profile.member_groups.pop(mid, None)
            profile.member_entry_refs.pop(mid, None)
            return
        if kind == INSERT:
            if mid in members:
                raise P4RTError(rpc_code.ALREADY_EXISTS, f"action profile {name}: member {mid} already exists")
            if profile.info.size and len(members) >= profile.info.size:
                raise P4RTError(
                    rpc_code.RESOURCE_EXHAUSTED, f"action profile {name}: full ({profile.info.size} members)"
                )
        elif mid not in members:
            raise _not_found(f"action profile {name}: member {mid} not found")
        if not m.HasField("action"):
            raise invalid(f"action profile {name}: member {mid} has no action")
        call = self._action(profile.info.actions, m.action, f"action profile {name} member {mid}", default=False)
        if kind == INSERT:
            members[mid] = Member(call)
        else:
            members[mid].action = call  # in place: groups holding it see the change

    def _write_group(self, kind: int, g: p4r.ActionProfileGroup) -> None:
        profile = self._profile(g.action_profile_id)
        info = profile.info
        name = info.name
        if not info.with_selector:
            raise invalid(f"action profile {name} has no selector: it has no groups")
        gid = g.group_id
        if gid == 0:
            raise invalid(f"action profile {name}: group id 0 is reserved")
        groups = profile.runtime.groups
        if kind == DELETE:
            if gid not in groups:
                raise _not_found(f"action profile {name}: group {gid} not found")
            if profile.group_entry_refs.get(gid):
                raise P4RTError(rpc_code.FAILED_PRECONDITION, f"action profile {name}: group {gid} is in use")
            self._set_group(profile, gid, None)
            profile.group_entry_refs.pop(gid, None)
            return
        if kind == INSERT:
            if gid in groups:
                raise P4RTError(rpc_code.ALREADY_EXISTS, f"action profile {name}: group {gid} already exists")
            if info.max_group_size and not 0 < g.max_size <= info.max_group_size:
                raise invalid(
                    f"action profile {name}: group {gid}: max_size {g.max_size} not in 1..{info.max_group_size}"
                )
            if g.max_size < 0:
                raise invalid(f"action profile {name}: group {gid}: max_size {g.max_size} is negative")
        else:
            if gid not in groups:
                raise _not_found(f"action profile {name}: group {gid} not found")
            if g.max_size != profile.max_sizes[gid]:
                old = profile.max_sizes[gid]
                raise invalid(f"action profile {name}: group {gid}: max_size cannot change ({old} -> {g.max_size})")
        spec = self._group_members(profile, gid, g)
        if g.max_size and sum(w for _, w, _ in spec) > g.max_size:
            raise P4RTError(
                rpc_code.RESOURCE_EXHAUSTED, f"action profile {name}: group {gid}: weights exceed max_size {g.max_size}"
            )
        profile.max_sizes[gid] = g.max_size
        self._set_group(profile, gid, spec)

    def _group_members(
        self, profile: ProfileState, gid: int, g: p4r.ActionProfileGroup
    ) -> list[tuple[int, int, int | None]]:
        where = f"action profile {profile.info.name}: group {gid}"
        spec: list[tuple[int, int, int | None]] = []
        seen: set[int] = set()
        for gm in g.members:
            mid = gm.member_id
            if mid in seen:
                raise invalid(f"{where}: member {mid} listed twice (use weight)")
            seen.add(mid)
            if gm.weight <= 0:
                raise invalid(f"{where}: member {mid}: weight {gm.weight} must be > 0")
            if mid not in profile.runtime.members:
                raise _not_found(f"{where}: member {mid} not found")
            watch: int | None = None
            which = gm.WhichOneof("watch_kind")
            if which == "watch_port" and gm.watch_port:
                watch = decode_value(gm.watch_port, WATCH_PORT_BITS, f"{where}: member {mid}: watch_port")
            elif which == "watch":
                watch = gm.watch
            spec.append((mid, gm.weight, watch))
        # model.Member holds one watch port, so a member shared by groups must watch the same one.
        for mid, _, watch in spec:
            for other in profile.member_groups.get(mid, ()):
                theirs = _watch_of(profile.group_specs[other], mid)
                if other != gid and theirs != watch:
                    raise P4RTError(
                        rpc_code.UNIMPLEMENTED,
                        f"{where}: member {mid} watches port {watch} here but {theirs} in group {other}; "
                        "the softswitch keeps one watch port per member",
                    )
        return spec

    def _set_group(self, profile: ProfileState, gid: int, spec: list[tuple[int, int, int | None]] | None) -> None:
        old = profile.group_specs.pop(gid, [])
        for mid, _, _ in old:
            groups = profile.member_groups.get(mid)
            if groups is not None:
                groups.discard(gid)
        if spec is None:
            profile.runtime.groups.pop(gid, None)
            profile.max_sizes.pop(gid, None)
        else:
            profile.group_specs[gid] = spec
            profile.runtime.groups[gid] = [(mid, weight) for mid, weight, _ in spec]
            for mid, _, _ in spec:
                profile.member_groups.setdefault(mid, set()).add(gid)
        for mid in {m for m, _, _ in old} | {m for m, _, _ in spec or ()}:
            member = profile.runtime.members.get(mid)
            if member is not None:
                groups = profile.member_groups.get(mid)
                member.watch_port = _watch_of(profile.group_specs[next(iter(groups))], mid) if groups else None

    # -- Read -------------------------------------------------------------------------------

    def read(self, entity: p4r.Entity) -> Iterator[p4r.Entity]:
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            yield from self._read_table_entries(entity.table_entry)
        elif which == "action_profile_member":
            yield from self._read_members(entity.action_profile_member)
        elif which == "action_profile_group":
            yield from self._read_groups(entity.action_profile_group)
        elif which == "direct_counter_entry":
            yield from self._read_direct_counters(entity.direct_counter_entry)
        elif which is None:
            raise invalid("read entity is empty")
        else:
            raise P4RTError(rpc_code.UNIMPLEMENTED, f"reading {which} is not supported by the softswitch")

    def _read_table_entries(self, te: p4r.TableEntry) -> Iterator[p4r.Entity]:
        counters = te.HasField("counter_data")
        if te.table_id == 0:
            for table in self.tables.values():
                for out in self._table_entries(table, counters):
                    yield p4r.Entity(table_entry=out)
            return
        table = self._table(te.table_id)
        if te.is_default_action:
            yield p4r.Entity(table_entry=self._default_entry(table))
            return
        action_filter = te.action.action.action_id if te.action.WhichOneof("type") == "action" else 0
        if len(te.match):
            key = table.key_of(te)
            entry = table.lookup(key)
            found = [] if entry is None else [(key, entry)]
            entries = self._encode_entries(table, found, counters)
        else:
            entries = self._table_entries(table, counters)
        for out in entries:
            if te.priority and out.priority != te.priority:
                continue
            if action_filter and out.action.action.action_id != action_filter:
                continue
            if te.metadata and out.metadata != te.metadata:
                continue
            if te.controller_metadata and out.controller_metadata != te.controller_metadata:
                continue
            yield p4r.Entity(table_entry=out)

    def _table_entries(self, table: TableState, counters: bool) -> Iterator[p4r.TableEntry]:
        return self._encode_entries(table, list(table.items()), counters)

    def _encode_entries(
        self, table: TableState, items: list[tuple[TableKey, Entry]], counters: bool
    ) -> Iterator[p4r.TableEntry]:
        with_counters = counters and bool(table.info.direct_counter_id)
        for key, entry in items:
            out = p4r.TableEntry(table_id=table.info.id)
            self._encode_key(table, key, out)
            self._encode_table_action(entry, out.action)
            if with_counters:
                out.counter_data.packet_count = entry.packets
                out.counter_data.byte_count = entry.bytes
            extras = table.extras.get(key)
            if extras is not None:
                out.metadata = extras.metadata
                out.controller_metadata = extras.controller_metadata
            yield out

    @staticmethod
    def _encode_key(table: TableState, key: TableKey, out: p4r.TableEntry) -> None:
        fields = table.info.fields
        if not isinstance(key, SpecKey):
            for f, value in zip(fields, key, strict=False):
                out.match.add(field_id=f.id).exact.value = encode_value(value)
            return
        out.priority = key.priority
        for f, spec in zip(fields, key.specs, strict=False):
            if spec is None:
                continue
            fm = out.match.add(field_id=f.id)
            if isinstance(spec, int):  # exact, optional (_field_spec gives the others a pair)
                if f.kind == EXACT:
                    fm.exact.value = encode_value(spec)
                else:
                    fm.optional.value = encode_value(spec)
            elif f.kind == LPM:
                fm.lpm.value = encode_value(spec[0])
                fm.lpm.prefix_len = spec[1]
            elif f.kind == TERNARY:
                fm.ternary.value = encode_value(spec[0])
                fm.ternary.mask = encode_value(spec[1])
            else:
                fm.range.low = encode_value(spec[0])
                fm.range.high = encode_value(spec[1])

    def _encode_table_action(self, entry: Entry, out: p4r.TableAction) -> None:
        if entry.member_id is not None:
            out.action_profile_member_id = entry.member_id
        elif entry.group_id is not None:
            out.action_profile_group_id = entry.group_id
        elif entry.action is not None:
            self._encode_action(entry.action, out.action)

    def _encode_action(self, call: ActionCall, out: p4r.Action) -> bool:
        info = self.index.actions_by_name.get(call.name)
        if info is None:  # NoAction of a generic P4Info that does not declare it
            return False
        out.action_id = info.id
        for p, value in zip(info.params, call.args, strict=False):
            out.params.add(param_id=p.id, value=encode_value(value))
        return True

    def _default_entry(self, table: TableState) -> p4r.TableEntry:
        out = p4r.TableEntry(table_id=table.info.id, is_default_action=True)
        action = p4r.Action()
        if self._encode_action(table.runtime.default, action):
            out.action.action.CopyFrom(action)
        return out

    def _read_direct_counters(self, dce: p4r.DirectCounterEntry) -> Iterator[p4r.Entity]:
        te = dce.table_entry
        if te.table_id == 0:
            tables = [t for t in self.tables.values() if t.info.direct_counter_id]
        else:
            table = self._table(te.table_id)
            if not table.info.direct_counter_id:
                raise invalid(f"table {table.info.name} has no direct counter")
            tables = [table]
        for table in tables:
            if te.table_id and len(te.match):
                key = table.key_of(te)
                entry = table.lookup(key)
                items = [] if entry is None else [(key, entry)]
            else:
                items = list(table.items())
            for key, entry in items:
                out = p4r.DirectCounterEntry()
                out.table_entry.table_id = table.info.id
                self._encode_key(table, key, out.table_entry)
                out.data.packet_count = entry.packets
                out.data.byte_count = entry.bytes
                yield p4r.Entity(direct_counter_entry=out)

    def _selected_profiles(self, profile_id: int) -> list[ProfileState]:
        if profile_id == 0:
            return list(self.profiles.values())
        return [self._profile(profile_id)]

    def _read_members(self, m: p4r.ActionProfileMember) -> Iterator[p4r.Entity]:
        for profile in self._selected_profiles(m.action_profile_id):
            members = profile.runtime.members
            ids = [m.member_id] if m.member_id else list(members)
            for mid in ids:
                member = members.get(mid)
                if member is None:
                    continue
                out = p4r.ActionProfileMember(action_profile_id=profile.info.id, member_id=mid)
                self._encode_action(member.action, out.action)
                yield p4r.Entity(action_profile_member=out)

    def _read_groups(self, g: p4r.ActionProfileGroup) -> Iterator[p4r.Entity]:
        for profile in self._selected_profiles(g.action_profile_id):
            ids = [g.group_id] if g.group_id else list(profile.group_specs)
            for gid in ids:
                spec = profile.group_specs.get(gid)
                if spec is None:
                    continue
                out = p4r.ActionProfileGroup(
                    action_profile_id=profile.info.id, group_id=gid, max_size=profile.max_sizes[gid]
                )
                for mid, weight, watch in spec:
                    gm = out.members.add(member_id=mid, weight=weight)
                    if watch is not None:
                        gm.watch_port = encode_value(watch)
                yield p4r.Entity(action_profile_group=out)

    # -- reconcile ----------------------------------------------------------------------------

    def snapshot(self) -> list[p4r.Update]:
        """Everything written, as updates that rebuild it (members, groups, entries, defaults)."""
        updates: list[p4r.Update] = []

        def add(kind: p4r.Update.Type.ValueType, entity: p4r.Entity) -> None:
            updates.append(p4r.Update(type=kind, entity=entity))

        for entity in self._read_members(p4r.ActionProfileMember()):
            add(INSERT, entity)
        for entity in self._read_groups(p4r.ActionProfileGroup()):
            add(INSERT, entity)
        for table in self.tables.values():
            for te in self._table_entries(table, counters=True):
                add(INSERT, p4r.Entity(table_entry=te))
            if table.runtime.default != table.initial_default:
                add(MODIFY, p4r.Entity(table_entry=self._default_entry(table)))
        return updates


def _watch_of(spec: list[tuple[int, int, int | None]], mid: int) -> int | None:
    for m, _, watch in spec:
        if m == mid:
            return watch
    return None
