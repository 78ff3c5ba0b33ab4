"""Specs (entries.EntrySpec / MemberSpec / GroupSpec) to P4Runtime updates, and the entities a
switch reads back to specs: both directions of one translation, kept together so that what is
written and what is compared after a read cannot drift apart."""

from __future__ import annotations

from finsy.proto import p4r

from controller.fabric import entries as E
from controller.p4rt.schema import P4Schema, decode_value, update

# The tables whose entries the controller writes; a read-back ignores the others.
OWNED_TABLES = frozenset((E.FABRIC_PORTS_TABLE, E.EDGE_TABLE, E.LABEL_TABLE, E.GROUP_TABLE))
_KIND = {E.INSERT: p4r.Update.INSERT, E.MODIFY: p4r.Update.MODIFY, E.DELETE: p4r.Update.DELETE}


class SpecCodec:
    def __init__(self, schema: P4Schema) -> None:
        self.schema = schema
        self._profile_id = schema.profile(E.PROFILE).id

    # --- spec -> P4Runtime ------------------------------------------------------------------

    def to_update(self, op: str, spec: E.Spec) -> p4r.Update:
        s = self.schema
        full = op != E.DELETE  # a delete names the entity only
        kind = _KIND[op]
        if isinstance(spec, E.EntrySpec):
            # Built inside the Update: most of a connection's updates are table entries.
            if not full:
                return s.table_update(kind, spec.table, dict(spec.match))
            if spec.group_id is not None:
                return s.table_update(kind, spec.table, dict(spec.match), group_id=spec.group_id)
            return s.table_update(kind, spec.table, dict(spec.match), spec.action, dict(spec.params))
        if isinstance(spec, E.MemberSpec):
            if full:
                return update(kind, s.member(spec.profile, spec.member_id, spec.action, dict(spec.params)))
            return update(kind, p4r.ActionProfileMember(action_profile_id=s.profile(spec.profile).id, member_id=spec.member_id))
        if full:
            return update(kind, s.group(spec.profile, spec.group_id, list(spec.members)))
        return update(kind, p4r.ActionProfileGroup(action_profile_id=s.profile(spec.profile).id, group_id=spec.group_id))

    def read_request(self) -> list[p4r.Entity]:
        """The Read that returns every entity the controller may own on a switch."""
        return [
            p4r.Entity(table_entry=p4r.TableEntry()),
            p4r.Entity(action_profile_member=p4r.ActionProfileMember(action_profile_id=self._profile_id)),
            p4r.Entity(action_profile_group=p4r.ActionProfileGroup(action_profile_id=self._profile_id)),
        ]

    # --- P4Runtime -> spec ------------------------------------------------------------------

    def from_entity(self, switch: str, ent: p4r.Entity) -> E.Spec | None:
        """The spec of an entity read back; None for what the controller does not own."""
        kind = ent.WhichOneof("entity")
        if kind == "table_entry":
            return self._entry(switch, ent.table_entry)
        if kind == "action_profile_member":
            m = ent.action_profile_member
            act = self.schema.actions_by_id[m.action.action_id]
            names = {p.id: p.name for p in act.params}
            return E.MemberSpec(switch, m.member_id, act.name,
                                tuple((names[p.param_id], decode_value(p.value)) for p in m.action.params))
        if kind == "action_profile_group":
            g = ent.action_profile_group
            return E.GroupSpec(switch, g.group_id,
                               tuple((m.member_id, decode_value(m.watch_port) if m.watch_port else None) for m in g.members))
        return None

    def _entry(self, switch: str, te: p4r.TableEntry) -> E.EntrySpec | None:
        table = self.schema.tables_by_id.get(te.table_id)
        if table is None or table.name not in OWNED_TABLES:
            return None
        fields = {f.id: f.name for f in table.fields}
        # Every owned table matches exactly (the P4Info says so), so a match is name -> int.
        match = tuple((fields[m.field_id], decode_value(m.exact.value)) for m in te.match)
        which = te.action.WhichOneof("type")
        if which == "action_profile_group_id":
            return E.EntrySpec(switch, table.name, match, group_id=te.action.action_profile_group_id)
        if which == "action":
            act = self.schema.actions_by_id[te.action.action.action_id]
            names = {p.id: p.name for p in act.params}
            params = tuple((names[p.param_id], decode_value(p.value)) for p in te.action.action.params)
            return E.EntrySpec(switch, table.name, match, act.name, params)
        return E.EntrySpec(switch, table.name, match)
