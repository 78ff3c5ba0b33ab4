"""Specs to P4Runtime and back: what is written reads back as the same specs."""

from __future__ import annotations

from finsy.proto import p4r

from controller.fabric import entries as E
from controller.fabric.codec import SpecCodec
from tests.unit.fabric_rig import DIAMOND, Rig, schema
from tests.unit.fake_switch import FakeSwitch


async def test_every_kind_of_spec_reads_back_as_written() -> None:
    codec = SpecCodec(schema())
    switch = FakeSwitch("s1", schema())
    await switch.set_up()
    rig = Rig(DIAMOND)  # with protection groups: entries, members and groups
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    specs = [s for s in rig.fabric.specs(plan) if s.switch == "s1"]
    specs += E.fabric_port_entries("s1", [2, 3])
    assert {type(s) for s in specs} == {E.EntrySpec, E.MemberSpec, E.GroupSpec}
    for phase in E.phases((E.INSERT, s) for s in specs):
        await switch.write([codec.to_update(op, s) for op, s in phase])

    back = [codec.from_entity("s1", ent) for ent in await switch.read(codec.read_request())]
    assert set(back) == set(specs) and len(back) == len(specs)

    for phase in E.phases((E.DELETE, s) for s in specs):
        await switch.write([codec.to_update(op, s) for op, s in phase])
    assert await switch.read(codec.read_request()) == []


def test_entries_of_tables_the_p4info_does_not_declare_are_not_decoded() -> None:
    codec = SpecCodec(schema())
    foreign = p4r.Entity(table_entry=p4r.TableEntry(table_id=12345))
    assert codec.from_entity("s1", foreign) is None
