"""A P4Info indexed for the P4Runtime server: by id and by name, checked for consistency once.

Everything the Write path needs per update (field slot, bitwidth, allowed actions and their
scopes) is precomputed here, so an update costs dict lookups and int.from_bytes, nothing more.
"""

from __future__ import annotations

import dataclasses

from finsy.proto import p4i, rpc_code

MatchKind = int
EXACT: MatchKind = p4i.MatchField.EXACT
LPM: MatchKind = p4i.MatchField.LPM
TERNARY: MatchKind = p4i.MatchField.TERNARY
RANGE: MatchKind = p4i.MatchField.RANGE
OPTIONAL: MatchKind = p4i.MatchField.OPTIONAL
MATCH_KIND_NAMES = {EXACT: "exact", LPM: "lpm", TERNARY: "ternary", RANGE: "range", OPTIONAL: "optional"}

TABLE_AND_DEFAULT: int = p4i.ActionRef.TABLE_AND_DEFAULT
TABLE_ONLY: int = p4i.ActionRef.TABLE_ONLY
DEFAULT_ONLY: int = p4i.ActionRef.DEFAULT_ONLY

NO_ACTION = "NoAction"


class P4RTError(Exception):
    """A P4Runtime failure with its google.rpc canonical code; the message names the field."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> P4RTError:
    return P4RTError(rpc_code.INVALID_ARGUMENT, message)


def decode_value(data: bytes, bitwidth: int, what: str) -> int:
    """A P4Runtime bytestring as an int: any zero padding is accepted, as the spec requires.

    Empty strings and values wider than the field are OUT_OF_RANGE (spec, "Bytestrings").
    """
    value = int.from_bytes(data, "big")
    if not data or value >> bitwidth:
        raise value_error(data, bitwidth, what)
    return value


def value_error(data: bytes, bitwidth: int, what: str) -> P4RTError:
    """The error for a bytestring that decode_value rejects (built only on failure)."""
    if not data:
        return P4RTError(rpc_code.OUT_OF_RANGE, f"{what}: empty bytestring")
    value = int.from_bytes(data, "big")
    return P4RTError(rpc_code.OUT_OF_RANGE, f"{what}: value {value:#x} wider than {bitwidth} bits")


def encode_value(value: int) -> bytes:
    """Canonical bytestring: the shortest big-endian form, zero being one zero byte."""
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


@dataclasses.dataclass(slots=True, frozen=True)
class FieldInfo:
    id: int
    name: str
    bitwidth: int
    kind: MatchKind
    index: int  # position in the table's key, i.e. in runtime key tuples


@dataclasses.dataclass(slots=True, frozen=True)
class ParamInfo:
    id: int
    name: str
    bitwidth: int
    index: int


@dataclasses.dataclass(slots=True)
class ActionInfo:
    id: int
    name: str
    alias: str
    params: list[ParamInfo]
    params_by_id: dict[int, ParamInfo]


@dataclasses.dataclass(slots=True)
class TableInfo:
    id: int
    name: str
    alias: str
    fields: list[FieldInfo]
    fields_by_id: dict[int, FieldInfo]
    # action id -> (action, scope)
    actions: dict[int, tuple[ActionInfo, int]]
    size: int
    implementation_id: int
    direct_counter_id: int
    const_default_action_id: int
    is_const: bool
    all_exact: bool
    # Ternary, range and optional matches need a priority; exact and LPM-only tables forbid one.
    needs_priority: bool
    has_range: bool


@dataclasses.dataclass(slots=True)
class ProfileInfo:
    id: int
    name: str
    alias: str
    table_ids: list[int]
    with_selector: bool
    size: int
    max_group_size: int
    # Actions a member may be bound to: those of the tables the profile implements.
    actions: dict[int, tuple[ActionInfo, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class PacketMetadataInfo:
    id: int
    name: str
    fields: list[ParamInfo]
    fields_by_id: dict[int, ParamInfo]


class P4InfoIndex:
    """Raises P4RTError(INVALID_ARGUMENT) when the P4Info is not self-consistent."""

    def __init__(self, info: p4i.P4Info) -> None:
        self.info = info
        self.actions: dict[int, ActionInfo] = {}
        self.tables: dict[int, TableInfo] = {}
        self.profiles: dict[int, ProfileInfo] = {}
        self.direct_counters: dict[int, int] = {}  # counter id -> table id
        self.packet_metadata: dict[str, PacketMetadataInfo] = {}
        self._ids: dict[int, str] = {}
        self._index_actions()
        self._index_profiles()
        self._index_counters()
        self._index_tables()
        self._link_profiles()
        self._index_packet_metadata()
        self.tables_by_name = {t.name: t for t in self.tables.values()}
        self.actions_by_name = {a.name: a for a in self.actions.values()}

    def _claim(self, obj_id: int, name: str) -> None:
        if obj_id == 0:
            raise invalid(f"P4Info: {name} has id 0")
        if obj_id in self._ids:
            raise invalid(f"P4Info: duplicate id {obj_id:#x} for {name} and {self._ids[obj_id]}")
        self._ids[obj_id] = name

    def _index_actions(self) -> None:
        for a in self.info.actions:
            name = a.preamble.name
            self._claim(a.preamble.id, f"action {name}")
            params, by_id = _index_params(a.params, f"action {name}: param")
            self.actions[a.preamble.id] = ActionInfo(a.preamble.id, name, a.preamble.alias or name, params, by_id)

    def _index_profiles(self) -> None:
        for ap in self.info.action_profiles:
            self._claim(ap.preamble.id, f"action profile {ap.preamble.name}")
            self.profiles[ap.preamble.id] = ProfileInfo(
                ap.preamble.id,
                ap.preamble.name,
                ap.preamble.alias or ap.preamble.name,
                list(ap.table_ids),
                ap.with_selector,
                ap.size,
                ap.max_group_size,
            )

    def _index_counters(self) -> None:
        for dc in self.info.direct_counters:
            self._claim(dc.preamble.id, f"direct counter {dc.preamble.name}")
            self.direct_counters[dc.preamble.id] = dc.direct_table_id

    def _index_tables(self) -> None:
        for t in self.info.tables:
            name = t.preamble.name
            self._claim(t.preamble.id, f"table {name}")
            fields: list[FieldInfo] = []
            by_id: dict[int, FieldInfo] = {}
            for i, f in enumerate(t.match_fields):
                if f.id in by_id:
                    raise invalid(f"P4Info: table {name}: duplicate match field id {f.id}")
                if f.match_type not in MATCH_KIND_NAMES:
                    raise invalid(f"P4Info: table {name}: match field {f.name}: unsupported match kind")
                if f.bitwidth <= 0:
                    raise invalid(f"P4Info: table {name}: match field {f.name} has no bitwidth (unsupported type)")
                field = FieldInfo(f.id, f.name, f.bitwidth, f.match_type, i)
                fields.append(field)
                by_id[f.id] = field
            actions: dict[int, tuple[ActionInfo, int]] = {}
            for ref in t.action_refs:
                action = self.actions.get(ref.id)
                if action is None:
                    raise invalid(f"P4Info: table {name}: action ref {ref.id:#x} names no action")
                actions[ref.id] = (action, ref.scope)
            if t.const_default_action_id and t.const_default_action_id not in actions:
                raise invalid(
                    f"P4Info: table {name}: const default action {t.const_default_action_id:#x} not in its actions"
                )
            if t.implementation_id and t.implementation_id not in self.profiles:
                raise invalid(f"P4Info: table {name}: implementation {t.implementation_id:#x} is no action profile")
            counter_id = 0
            for rid in t.direct_resource_ids:
                if rid in self.direct_counters:
                    if self.direct_counters[rid] != t.preamble.id:
                        raise invalid(f"P4Info: table {name}: direct counter {rid:#x} belongs to another table")
                    counter_id = rid
                elif rid not in self._ids:
                    raise invalid(f"P4Info: table {name}: direct resource {rid:#x} is unknown")
            kinds = {f.kind for f in fields}
            self.tables[t.preamble.id] = TableInfo(
                id=t.preamble.id,
                name=name,
                alias=t.preamble.alias or name,
                fields=fields,
                fields_by_id=by_id,
                actions=actions,
                size=t.size,
                implementation_id=t.implementation_id,
                direct_counter_id=counter_id,
                const_default_action_id=t.const_default_action_id,
                is_const=t.is_const_table,
                all_exact=kinds <= {EXACT},
                needs_priority=bool(kinds & {TERNARY, RANGE, OPTIONAL}),
                has_range=RANGE in kinds,
            )
        for counter_id, table_id in self.direct_counters.items():
            if table_id not in self.tables:
                raise invalid(f"P4Info: direct counter {counter_id:#x}: direct_table_id {table_id:#x} is no table")

    def _link_profiles(self) -> None:
        for profile in self.profiles.values():
            for table_id in profile.table_ids:
                table = self.tables.get(table_id)
                if table is None:
                    raise invalid(f"P4Info: action profile {profile.name}: table id {table_id:#x} is no table")
                if table.implementation_id != profile.id:
                    raise invalid(f"P4Info: action profile {profile.name}: table {table.name} does not use it")
                profile.actions.update(table.actions)

    def _index_packet_metadata(self) -> None:
        for cpm in self.info.controller_packet_metadata:
            name = cpm.preamble.name
            self._claim(cpm.preamble.id, f"controller packet metadata {name}")
            fields, by_id = _index_params(cpm.metadata, f"controller packet metadata {name}: field")
            self.packet_metadata[name] = PacketMetadataInfo(cpm.preamble.id, name, fields, by_id)


def _index_params(items, what: str) -> tuple[list[ParamInfo], dict[int, ParamInfo]]:
    """Action params or controller-header fields (P4Info gives both as id, name, bitwidth)."""
    params: list[ParamInfo] = []
    by_id: dict[int, ParamInfo] = {}
    for i, p in enumerate(items):
        if p.id in by_id:
            raise invalid(f"P4Info: {what} id {p.id} appears twice")
        if p.bitwidth <= 0:
            raise invalid(f"P4Info: {what} {p.name} has no bitwidth (unsupported type)")
        param = ParamInfo(p.id, p.name, p.bitwidth, i)
        params.append(param)
        by_id[p.id] = param
    return params, by_id


# -- programs the softswitch can run ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TableShape:
    fields: tuple[tuple[str, int], ...]  # (name, bitwidth), all exact
    actions: tuple[str, ...]
    profile: str | None = None
    direct_counter: bool = False


@dataclasses.dataclass(frozen=True)
class Program:
    """What a built-in pipeline model reads, by name, from the P4Info it is given."""

    name: str
    tables: dict[str, TableShape]
    actions: dict[str, tuple[tuple[str, int], ...]]
    packet_metadata: dict[str, tuple[tuple[str, int], ...]]
    # P4Info carries only const defaults; the program's other initial defaults live here.
    initial_defaults: dict[str, str]
    forwards: bool = True
    # What a table the program does not apply may match on: the header fields its parser
    # extracts, (name, bitwidth), exact only. Such a table (a later revision's, say) is held and
    # read back like any other; the data plane runs only the tables in `tables`.
    match_vocabulary: tuple[tuple[str, int], ...] = ()


NSM_FABRIC = Program(
    name="nsm_fabric",
    tables={
        "FabricIngress.fabric_ports": TableShape((("ingress_port", 9),), ("FabricIngress.mark_fabric", NO_ACTION)),
        "FabricIngress.edge_classify": TableShape(
            (("ingress_port", 9), ("vlan_id", 12)),
            ("FabricIngress.push_label", "FabricIngress.drop"),
            direct_counter=True,
        ),
        "FabricIngress.label_group": TableShape(
            (("label", 20),), ("FabricIngress.swap_forward",), profile="FabricIngress.next_hop_selector"
        ),
        "FabricIngress.label_fwd": TableShape(
            (("label", 20),),
            ("FabricIngress.forward", "FabricIngress.swap_forward", "FabricIngress.pop_to_edge", "FabricIngress.drop"),
        ),
    },
    actions={
        "FabricIngress.drop": (),
        "FabricIngress.mark_fabric": (),
        "FabricIngress.push_label": (("label", 20),),
        "FabricIngress.forward": (("port", 9),),
        "FabricIngress.swap_forward": (("label", 20), ("port", 9)),
        "FabricIngress.pop_to_edge": (("port", 9), ("vlan_id", 12)),
    },
    packet_metadata={"packet_in": (("ingress_port", 9),), "packet_out": (("egress_port", 9),)},
    initial_defaults={
        "FabricIngress.edge_classify": "FabricIngress.drop",
        "FabricIngress.label_fwd": "FabricIngress.drop",
    },
    match_vocabulary=(("ingress_port", 9), ("vlan_id", 12), ("label", 20)),
)

GENERIC = Program(name="generic", tables={}, actions={}, packet_metadata={}, initial_defaults={}, forwards=False)

PROGRAMS = {p.name: p for p in (NSM_FABRIC, GENERIC)}


def check_program(index: P4InfoIndex, program: Program) -> None:
    """INVALID_ARGUMENT listing everything the program needs and the P4Info lacks."""
    missing: list[str] = []
    for name, params in program.actions.items():
        action = index.actions_by_name.get(name)
        if action is None:
            missing.append(f"action {name}")
            continue
        have = [(p.name, p.bitwidth) for p in action.params]
        if have != list(params):
            missing.append(f"action {name} params {list(params)} (P4Info has {have})")
    for name, shape in program.tables.items():
        table = index.tables_by_name.get(name)
        if table is None:
            missing.append(f"table {name}")
            continue
        have = [(f.name, f.bitwidth) for f in table.fields]
        if have != list(shape.fields) or not table.all_exact:
            missing.append(f"table {name} exact match fields {list(shape.fields)} (P4Info has {have})")
        names = {a.name for a, _ in table.actions.values()}
        for action_name in shape.actions:
            if action_name not in names:
                missing.append(f"table {name} action {action_name}")
        if shape.profile is not None:
            profile = index.profiles.get(table.implementation_id)
            if profile is None or profile.name != shape.profile:
                missing.append(f"table {name} implementation {shape.profile}")
        if shape.direct_counter and not table.direct_counter_id:
            missing.append(f"table {name} direct counter")
    for header, fields in program.packet_metadata.items():
        meta = index.packet_metadata.get(header)
        have = [(f.name, f.bitwidth) for f in meta.fields] if meta else []
        for field in fields:
            if field not in have:
                missing.append(f"controller packet metadata {header}.{field[0]} ({field[1]} bits)")
    problems = []
    if missing:
        problems.append(f"P4Info lacks what program {program.name} needs: " + "; ".join(missing))
    if program.forwards:
        unknown = _outside_vocabulary(index, program)
        if unknown:
            problems.append(f"P4Info has what program {program.name} cannot run: " + "; ".join(unknown))
    if problems:
        raise invalid(". ".join(problems))


def _outside_vocabulary(index: P4InfoIndex, program: Program) -> list[str]:
    """Actions, action profiles and added tables whose meaning the program does not know: the
    data plane could not do what such a P4Info says, so it is refused rather than half run."""
    out: list[str] = []
    for action in index.actions.values():
        if action.name != NO_ACTION and action.name not in program.actions:
            out.append(f"action {action.name} (known: {', '.join(sorted(program.actions))}, {NO_ACTION})")
    profiles = {shape.profile for shape in program.tables.values() if shape.profile is not None}
    for profile in index.profiles.values():
        if profile.name not in profiles:
            out.append(f"action profile {profile.name} (known: {', '.join(sorted(profiles))})")
    vocabulary = set(program.match_vocabulary)
    for table in index.tables.values():
        if table.name in program.tables:
            continue
        for f in table.fields:
            if f.kind != EXACT or (f.name, f.bitwidth) not in vocabulary:
                out.append(
                    f"table {table.name} match field {f.name} ({f.bitwidth} bits, {MATCH_KIND_NAMES[f.kind]}): an added "
                    f"table may match exactly on {', '.join(f'{n} ({w} bits)' for n, w in program.match_vocabulary)}"
                )
    return out


@dataclasses.dataclass(frozen=True)
class Capacity:
    """What one switch can hold, whatever its program allows (--max-table-size, --refuse-table):
    a hardware target refuses a table that does not fit its memory, and tests use this to make
    one switch refuse a revision the others take."""

    max_table_size: int = 0  # 0: no limit
    refused_tables: frozenset[str] = frozenset()

    def check(self, index: P4InfoIndex) -> None:
        """INVALID_ARGUMENT naming every table this switch cannot hold."""
        problems: list[str] = []
        for table in index.tables.values():
            if table.name in self.refused_tables:
                problems.append(f"table {table.name} is refused by this switch (--refuse-table)")
            if self.max_table_size and table.size > self.max_table_size:
                problems.append(f"table {table.name} size {table.size} exceeds this switch's capacity "
                                f"{self.max_table_size} (--max-table-size)")
        for profile in index.profiles.values():
            if self.max_table_size and profile.size > self.max_table_size:
                problems.append(f"action profile {profile.name} size {profile.size} exceeds this switch's capacity "
                                f"{self.max_table_size} (--max-table-size)")
        if problems:
            raise invalid("P4Info does not fit this switch: " + "; ".join(problems))


UNLIMITED = Capacity()
