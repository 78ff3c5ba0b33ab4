"""The PNA program's hand-kept P4Info drives the fabric: every name the fabric writes resolves in it,
its ports are PNA's 32 bits, and a P4Info of the wrong port width is refused for the target."""

from __future__ import annotations

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

from controller.fabric import entries as E
from controller.fabric.codec import SpecCodec
from controller.p4rt.schema import P4Schema, SchemaError
from controller.settings import REPO_ROOT
from controller.targets import TargetError, profile
from tests.unit.fabric_rig import DIAMOND, Rig
from tests.unit.fake_switch import FakeSwitch

PNA_P4INFO = REPO_ROOT / "p4" / "nsm_fabric_pna.p4info.txtpb"
V1MODEL_P4INFO = REPO_ROOT / "p4" / "nsm_fabric.p4info.txtpb"


def pna() -> P4Schema:
    return P4Schema.from_file(PNA_P4INFO)


def test_pna_p4info_is_pna_with_translated_32_bit_ports() -> None:
    info = pna().p4info
    assert info.pkg_info.arch == "pna"
    port_type = info.type_info.new_types["PortId_t"].translated_type
    assert (port_type.uri, port_type.sdn_bitwidth) == ("p4.org/pna/v1/PortId_t", 32)
    # P4-DPDK has no packet I/O, so the program declares no controller headers
    assert not info.controller_packet_metadata


def test_every_name_the_fabric_writes_resolves_with_widths_that_fit() -> None:
    s = pna()
    ports = {("FabricIngress.fabric_ports", "ingress_port"), ("FabricIngress.edge_classify", "ingress_port")}
    for table, field in ports:
        assert s.table(table).fields_by_name[field].bitwidth == 32
    for action in ("FabricIngress.forward", "FabricIngress.swap_forward", "FabricIngress.pop_to_edge"):
        assert s.action(action).params_by_name["port"].bitwidth == 32
    assert s.table(E.EDGE_TABLE).fields_by_name["vlan_id"].bitwidth == 12
    assert s.action("FabricIngress.push_label").params_by_name["label"].bitwidth == 20
    assert s.profile(E.PROFILE).id == s.table(E.GROUP_TABLE).implementation_id
    # the largest DPDK port fits, one more does not
    s.table_entry(E.FABRIC_PORTS_TABLE, {"ingress_port": 2**32 - 1}, "FabricIngress.mark_fabric")
    with pytest.raises(SchemaError, match="does not fit in 32 bits"):
        s.action_msg("FabricIngress.forward", {"port": 2**32})


async def test_a_connection_with_protection_groups_encodes_and_reads_back_in_pna() -> None:
    s = pna()
    codec = SpecCodec(s)
    switch = FakeSwitch("s1", s)
    await switch.set_up()
    rig = Rig(DIAMOND)  # entries, members and groups: every table and action the fabric writes
    await rig.start()
    plan = await rig.fabric.connect("h1", "h4")
    specs = [sp for sp in rig.fabric.specs(plan) if sp.switch == "s1"] + E.fabric_port_entries("s1", [2, 3])
    assert {type(sp) for sp in specs} == {E.EntrySpec, E.MemberSpec, E.GroupSpec}
    for phase in E.phases((E.INSERT, sp) for sp in specs):
        await switch.write([codec.to_update(op, sp) for op, sp in phase])
    back = [codec.from_entity("s1", ent) for ent in await switch.read(codec.read_request())]
    assert set(back) == set(specs) and len(back) == len(specs)


def test_pna_p4info_suits_dpdk_and_tofino_not_v1model_targets() -> None:
    info = pna().p4info
    profile("dpdk").check_p4info(info, str(PNA_P4INFO))
    profile("tofino").check_p4info(info, str(PNA_P4INFO))
    with pytest.raises(TargetError, match=r"match field 'ingress_port' is 32 bits, but a bmv2 switch takes 9-bit ports"):
        profile("bmv2").check_p4info(info, str(PNA_P4INFO))


def test_v1model_p4info_is_refused_for_dpdk_naming_the_field() -> None:
    info = P4Schema.from_file(V1MODEL_P4INFO).p4info
    with pytest.raises(TargetError, match=r"^P4Info .*nsm_fabric\.p4info\.txtpb: table FabricIngress\.fabric_ports match "
                                          r"field 'ingress_port' is 9 bits, but a dpdk switch takes 32-bit ports; "
                                          r"use p4/nsm_fabric_pna\.p4info\.txtpb"):
        profile("dpdk").check_p4info(info, str(V1MODEL_P4INFO))


@pytest.mark.parametrize(("kind", "what"), [
    ("action", "action FabricIngress.forward parameter 'port'"),
    ("meta", "controller header packet_out field 'egress_port'"),
])
def test_every_kind_of_port_field_is_checked(kind: str, what: str) -> None:
    # a PNA P4Info with one port field narrowed: the check names that one
    info = text_format.Parse(PNA_P4INFO.read_text(), p4i.P4Info())
    if kind == "action":
        next(a for a in info.actions if a.preamble.name == "FabricIngress.forward").params[0].bitwidth = 9
    else:
        header = info.controller_packet_metadata.add()
        header.preamble.name = "packet_out"
        header.metadata.add(id=1, name="egress_port", bitwidth=16)
    with pytest.raises(TargetError, match=rf"{what} is (9|16) bits, but a dpdk switch takes 32-bit ports"):
        profile("dpdk").check_p4info(info, "x")
