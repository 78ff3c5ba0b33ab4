"""Pipeline revisions of the nsm_fabric P4Info for tests and benchmarks: ones the softswitch's
model can run (other table sizes, an added table) and ones it must refuse."""

from __future__ import annotations

from collections.abc import Mapping

from finsy.proto import p4i

from tests.support.p4rt import DEFAULT_P4INFO, load_p4info

ADDED_TABLE = "FabricIngress.label_stats"
ADDED_TABLE_ID = 0x02F0F001
UNKNOWN_ACTION = "FabricIngress.set_dscp"
SOFTSWITCH_CONFIG = b'{"target": "p4nsm-softswitch", "program": "nsm_fabric"}'


def base() -> p4i.P4Info:
    return load_p4info(DEFAULT_P4INFO)


def _table(info: p4i.P4Info, name: str) -> p4i.Table:
    for table in info.tables:
        if table.preamble.name == name:
            return table
    raise KeyError(f"no table {name} in the P4Info")


def _action_id(info: p4i.P4Info, name: str) -> int:
    for action in info.actions:
        if action.preamble.name == name:
            return action.preamble.id
    raise KeyError(f"no action {name} in the P4Info")


def resized(sizes: Mapping[str, int], info: p4i.P4Info | None = None) -> p4i.P4Info:
    """The P4Info with these tables' sizes (full names)."""
    out = p4i.P4Info()
    out.CopyFrom(info if info is not None else base())
    for name, size in sizes.items():
        _table(out, name).size = size
    return out


def with_added_table(info: p4i.P4Info | None = None, name: str = ADDED_TABLE, field: tuple[str, int] = ("label", 20),
                     kind: int = p4i.MatchField.EXACT) -> p4i.P4Info:
    """The P4Info with one more table, matching `field`, whose actions are forward and drop."""
    out = p4i.P4Info()
    out.CopyFrom(info if info is not None else base())
    table = out.tables.add()
    table.preamble.id = ADDED_TABLE_ID
    table.preamble.name = name
    table.preamble.alias = name.rsplit(".", 1)[-1]
    table.match_fields.add(id=1, name=field[0], bitwidth=field[1], match_type=kind)
    for action in ("FabricIngress.forward", "FabricIngress.drop"):
        table.action_refs.add(id=_action_id(out, action))
    table.size = 1024
    return out


def with_unknown_action(info: p4i.P4Info | None = None) -> p4i.P4Info:
    """The P4Info with an action the model has no meaning for, used by label_fwd."""
    out = p4i.P4Info()
    out.CopyFrom(info if info is not None else base())
    action = out.actions.add()
    action.preamble.id = 0x01F0F002
    action.preamble.name = UNKNOWN_ACTION
    action.preamble.alias = "set_dscp"
    action.params.add(id=1, name="dscp", bitwidth=6)
    _table(out, "FabricIngress.label_fwd").action_refs.add(id=action.preamble.id)
    return out


def renumbered(info: p4i.P4Info | None = None, shift: int = 0x100) -> p4i.P4Info:
    """The same program with every table and action id moved (a hand-kept P4Info's ids may
    change between revisions; names are what stays)."""
    out = p4i.P4Info()
    out.CopyFrom(info if info is not None else base())
    actions = {a.preamble.id: a.preamble.id + shift for a in out.actions}
    tables = {t.preamble.id: t.preamble.id + shift for t in out.tables}
    for action in out.actions:
        action.preamble.id = actions[action.preamble.id]
    for table in out.tables:
        table.preamble.id = tables[table.preamble.id]
        for ref in table.action_refs:
            ref.id = actions[ref.id]
        if table.const_default_action_id:
            table.const_default_action_id = actions[table.const_default_action_id]
    for profile in out.action_profiles:
        profile.table_ids[:] = [tables[t] for t in profile.table_ids]
    for counter in out.direct_counters:
        counter.direct_table_id = tables[counter.direct_table_id]
    return out
