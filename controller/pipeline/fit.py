"""Can the fabric's entities be written in another P4Info? Checked before a rollout touches any
switch: a program that lacks a table, action, match field, parameter or profile the stored
connections use, or has one too narrow for the values they hold, is refused naming it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from finsy.proto import p4i

from controller.fabric import entries as E
from controller.p4rt.schema import ActionInfo, FieldInfo, P4Schema, ProfileInfo, SchemaError

# The packet-out and packet-in metadata the link probes use (heal/link_monitor.py).
PROBE_METADATA = (("packet_out", "egress_port"), ("packet_in", "ingress_port"))
MOST = 12  # problems listed in one refusal
_T = TypeVar("_T")


class _Uses:
    """Everything the entities name, with the largest value each field and parameter holds."""

    def __init__(self) -> None:
        self.fields: dict[str, dict[str, int]] = {}  # table -> match field -> largest value
        self.actions: dict[str, dict[str, int]] = {}  # action -> param -> largest value
        self.table_actions: set[tuple[str, str]] = set()
        self.grouped_tables: set[tuple[str, str]] = set()  # (table, profile)
        self.profiles: set[str] = set()
        self.watch_ports = 0

    def add(self, spec: E.Spec) -> None:
        if isinstance(spec, E.EntrySpec):
            fields = self.fields.setdefault(spec.table, {})
            for name, value in spec.match:
                fields[name] = max(fields.get(name, 0), value)
            if spec.group_id is not None:
                self.grouped_tables.add((spec.table, E.PROFILE))
                self.profiles.add(E.PROFILE)
            elif spec.action:
                self.table_actions.add((spec.table, spec.action))
                self._action(spec.action, spec.params)
        elif isinstance(spec, E.MemberSpec):
            self.profiles.add(spec.profile)
            self._action(spec.action, spec.params)
        else:
            self.profiles.add(spec.profile)

    def _action(self, action: str, params: tuple[tuple[str, int], ...]) -> None:
        have = self.actions.setdefault(action, {})
        for name, value in params:
            have[name] = max(have.get(name, 0), value)


def _lookup(what: str, find: Callable[[str], _T], name: str, problems: list[str]) -> _T | None:
    try:
        return find(name)
    except SchemaError:
        problems.append(f"{what} {name}")
        return None


def misfits(schema: P4Schema, specs: Iterable[E.Spec]) -> list[str]:
    """What `schema` lacks for `specs`, one phrase each ("table FabricIngress.label_fwd"); empty: they fit."""
    uses = _Uses()
    # The codec reads the profile's members and groups back from every switch, used or not.
    uses.profiles.add(E.PROFILE)
    for spec in specs:
        uses.add(spec)
    problems: list[str] = []
    for table_name, fields in sorted(uses.fields.items()):
        table = _lookup("table", schema.table, table_name, problems)
        if table is not None:
            _widths(f"table {table_name}", "match field", table.fields, fields, problems)
            problems += [f"table {table_name} match field {f.name} as an exact match" for f in table.fields
                         if f.name in fields and f.match_type != p4i.MatchField.EXACT]
    for action_name, params in sorted(uses.actions.items()):
        action = _lookup("action", schema.action, action_name, problems)
        if action is not None:
            _widths(f"action {action_name}", "parameter", action.params, params, problems)
    for table_name, action_name in sorted(uses.table_actions):
        table, action_id = _found(schema.table, table_name), _id(schema.action, action_name)
        if table is not None and action_id is not None and action_id not in table.action_ids:
            problems.append(f"table {table_name} action {action_name}")
    for profile_name in sorted(uses.profiles):
        _lookup("action profile", schema.profile, profile_name, problems)
    for table_name, profile_name in sorted(uses.grouped_tables):
        table, profile_id = _found(schema.table, table_name), _id(schema.profile, profile_name)
        if table is not None and profile_id is not None and table.implementation_id != profile_id:
            problems.append(f"table {table_name} implemented by action profile {profile_name}")
    for header, field in PROBE_METADATA:
        if not any(f.name == field for f in schema.packet_meta.get(header, ())):
            problems.append(f"controller packet metadata {header}.{field}")
    return problems


def _widths(owner: str, what: str, have: tuple[FieldInfo, ...], used: dict[str, int], problems: list[str]) -> None:
    """Every name used exists wide enough for its largest value, and every one declared gets a value."""
    by_name = {f.name: f for f in have}
    for name, largest in sorted(used.items()):
        f = by_name.get(name)
        if f is None:
            problems.append(f"{owner} {what} {name}")
        elif largest >> f.bitwidth:
            problems.append(f"{owner} {what} {name} of {largest.bit_length()} bits (it has {f.bitwidth})")
    problems += [f"{owner}: no value for its {what} {f.name}" for f in have if f.name not in used]


def _found(find: Callable[[str], _T], name: str) -> _T | None:
    try:
        return find(name)
    except SchemaError:
        return None


def _id(find: Callable[[str], ActionInfo | ProfileInfo], name: str) -> int | None:
    info = _found(find, name)
    return None if info is None else info.id


def refusal(problems: list[str]) -> str:
    shown = "; ".join(problems[:MOST])
    more = f"; and {len(problems) - MOST} more" if len(problems) > MOST else ""
    return f"p4info: the stored connections need what this P4Info lacks: {shown}{more}"
