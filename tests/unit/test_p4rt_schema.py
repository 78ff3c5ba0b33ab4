"""Name-based encoding against the fabric's P4Info: what the controller puts on the wire."""

import pytest
from finsy.proto import p4r

from controller.p4rt.schema import P4Schema, SchemaError, encode_value, update
from controller.settings import Settings


@pytest.fixture(scope="module")
def schema() -> P4Schema:
    return P4Schema.from_file(Settings().p4info_path)


def test_canonical_bytes():
    assert encode_value(0, 9, "x") == b"\x00"
    assert encode_value(1, 9, "x") == b"\x01"
    assert encode_value(0x1FF, 9, "x") == b"\x01\xff"
    assert encode_value(0xFFFFF, 20, "x") == b"\x0f\xff\xff"
    with pytest.raises(SchemaError, match="does not fit in 12 bits"):
        encode_value(4096, 12, "vlan")


def test_entry_by_alias_and_full_name(schema):
    a = schema.table_entry("edge_classify", {"ingress_port": 1, "vlan_id": 100}, "push_label", {"label": 1024})
    b = schema.table_entry("FabricIngress.edge_classify", {"vlan_id": 100, "ingress_port": 1},
                           "FabricIngress.push_label", {"label": 1024})
    assert a == b
    assert [m.field_id for m in a.match] == [1, 2]
    assert a.match[1].exact.value == b"\x64"
    assert a.action.action.params[0].value == b"\x04\x00"


def test_errors_name_what_is_wrong(schema):
    with pytest.raises(SchemaError, match="no table named 'nope'"):
        schema.table("nope")
    with pytest.raises(SchemaError, match="no match field 'vid'"):
        schema.table_entry("edge_classify", {"vid": 1}, "push_label", {"label": 1})
    with pytest.raises(SchemaError, match="parameter 'port' is missing"):
        schema.action_msg("forward", {})
    with pytest.raises(SchemaError, match=r"FabricIngress\.pop_to_edge\.vlan_id"):
        schema.action_msg("pop_to_edge", {"port": 1, "vlan_id": 5000})


def test_describe_round_trip(schema):
    e = schema.table_entry("label_fwd", {"label": 77}, "pop_to_edge", {"port": 3, "vlan_id": 200})
    d = schema.describe_entry(e)
    assert d == {"table": "FabricIngress.label_fwd", "match": {"label": 77}, "priority": 0,
                 "action": "FabricIngress.pop_to_edge", "params": {"port": 3, "vlan_id": 200}}


def test_packet_metadata_and_groups(schema):
    md = schema.packet_metadata("packet_out", {"egress_port": 3})
    assert [(m.metadata_id, m.value) for m in md] == [(1, b"\x03"), (2, b"\x00")]
    assert schema.decode_packet_metadata("packet_in", [p4r.PacketMetadata(metadata_id=1, value=b"\x01\x02")]) == {"ingress_port": 258}
    g = schema.group("next_hop_selector", 5, [(1, 3), (2, None)])
    assert g.members[0].watch_port == b"\x03" and not g.members[1].watch_port
    u = update(p4r.Update.INSERT, g)
    assert u.entity.WhichOneof("entity") == "action_profile_group"
