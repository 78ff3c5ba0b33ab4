"""RECONCILE_AND_COMMIT: the forwarding state of one pipeline rebuilt in the next, by name.

The spec lets a target keep its forwarding state across a pipeline change when it can. The
softswitch can whenever every entity it holds still fits the new P4Info: its table, match
fields, action, parameters and action profile exist by the same names with room for the values,
and the tables hold as many entries. Ids are resolved by name, so a P4Info whose ids moved keeps
the state too. Anything that does not fit refuses the whole commit (nothing is dropped
silently: a dropped entry would be a connection that stops forwarding without anyone asking).
"""

from __future__ import annotations

from finsy.proto import p4r

from softswitch.p4info_index import ActionInfo, P4InfoIndex, P4RTError, TableInfo, invalid
from softswitch.tables import EntityStore


def carry_over(old: EntityStore, new: EntityStore) -> int:
    """Write every entity of `old` into `new` (empty, not yet serving); returns how many.
    Raises P4RTError(INVALID_ARGUMENT) naming the first entity that does not fit."""
    count = 0
    for update in old.snapshot():
        try:
            new.write(_renamed(update, old.index, new.index))
        except P4RTError as err:
            raise invalid(f"RECONCILE_AND_COMMIT cannot keep the forwarding state: {err.message} "
                          "(VERIFY_AND_COMMIT starts the new pipeline empty)") from None
        count += 1
    return count


def _renamed(update: p4r.Update, old: P4InfoIndex, new: P4InfoIndex) -> p4r.Update:
    out = p4r.Update()
    out.CopyFrom(update)
    entity = out.entity
    which = entity.WhichOneof("entity")
    if which == "table_entry":
        te = entity.table_entry
        was = old.tables[te.table_id]
        table = _table(new, was.name)
        te.table_id = table.id
        fields = {f.name: f.id for f in table.fields}
        for fm in te.match:
            name = was.fields_by_id[fm.field_id].name
            if name not in fields:
                raise invalid(f"table {was.name}: match field {name} is not in the new P4Info")
            fm.field_id = fields[name]
        if te.action.WhichOneof("type") == "action":
            _rename_action(te.action.action, old, new)
    elif which == "action_profile_member":
        member = entity.action_profile_member
        member.action_profile_id = _profile_id(new, old.profiles[member.action_profile_id].name)
        _rename_action(member.action, old, new)
    elif which == "action_profile_group":
        group = entity.action_profile_group
        group.action_profile_id = _profile_id(new, old.profiles[group.action_profile_id].name)
    return out


def _table(index: P4InfoIndex, name: str) -> TableInfo:
    table = index.tables_by_name.get(name)
    if table is None:
        raise invalid(f"table {name} is not in the new P4Info")
    return table


def _profile_id(index: P4InfoIndex, name: str) -> int:
    for profile in index.profiles.values():
        if profile.name == name:
            return profile.id
    raise invalid(f"action profile {name} is not in the new P4Info")


def _rename_action(action: p4r.Action, old: P4InfoIndex, new: P4InfoIndex) -> None:
    was: ActionInfo = old.actions[action.action_id]
    now = new.actions_by_name.get(was.name)
    if now is None:
        raise invalid(f"action {was.name} is not in the new P4Info")
    action.action_id = now.id
    params = {p.name: p.id for p in now.params}
    for param in action.params:
        name = was.params_by_id[param.param_id].name
        if name not in params:
            raise invalid(f"action {was.name}: param {name} is not in the new P4Info")
        param.param_id = params[name]
