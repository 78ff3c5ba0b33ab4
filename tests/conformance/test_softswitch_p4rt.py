"""The softswitch's P4Runtime server over real gRPC, against the P4Runtime spec (v1.4).

Where the spec and BMv2 differ, the spec wins (e.g. RESOURCE_EXHAUSTED on a full table, where
BMv2 answers UNKNOWN; each group member's own watch_port read back, where BMv2 repeats the
last one).
"""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path

import grpc
import pytest
from finsy.proto import U128, p4i, p4r, rpc_code

from tests.support.fixtures import SoftSwitchProcess, free_port
from tests.support.p4rt import DEFAULT_P4INFO, P4RTTestClient, WriteError, load_p4info

DATA = Path(__file__).parent / "data"
GENERIC_P4INFO = DATA / "generic.p4info.txtpb"
GENERIC_CONFIG = DATA / "generic.softswitch.json"
SVC = p4r.SetForwardingPipelineConfigRequest
GET = p4r.GetForwardingPipelineConfigRequest


def write_codes(err: WriteError) -> list[int]:
    return [e.canonical_code for e in err.errors]


def expect_write_error(client: P4RTTestClient, updates: list[p4r.Update], code: int) -> p4r.Error:
    """A single-update write that fails with `code`; returns its p4.v1.Error."""
    with pytest.raises(WriteError) as info:
        client.write(updates)
    assert info.value.code == grpc.StatusCode.UNKNOWN
    assert len(info.value.errors) == len(updates)
    assert info.value.errors[0].canonical_code == code, info.value.errors[0].message
    return info.value.errors[0]


def upd(kind: int, obj) -> p4r.Update:
    return p4r.Update(type=kind, entity=P4RTTestClient.entity(obj))


INSERT, MODIFY, DELETE = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE


def edge(client: P4RTTestClient, port: int, vlan: int, label: int = 100) -> p4r.TableEntry:
    return client.table_entry("edge_classify", {"ingress_port": port, "vlan_id": vlan}, "push_label", {"label": label})


@pytest.fixture
def generic(softswitch: SoftSwitchProcess):
    client = P4RTTestClient(softswitch.address, election_id=10, p4info_path=GENERIC_P4INFO)
    client.set_pipeline(GENERIC_P4INFO, GENERIC_CONFIG, cookie=7)
    yield client
    client.close()


# -- basics -----------------------------------------------------------------------------------


def test_capabilities(p4rt: P4RTTestClient) -> None:
    assert p4rt.capabilities().p4runtime_api_version.startswith("1.")


def test_before_pipeline_write_and_read_fail_precondition(softswitch: SoftSwitchProcess) -> None:
    with P4RTTestClient(softswitch.address, election_id=3) as client:
        assert client.is_primary
        with pytest.raises(WriteError) as info:
            client.insert(edge(client, 1, 10))
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as rinfo:
            client.read_table("edge_classify")
        assert rinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert not client.get_pipeline().HasField("p4info")


def test_write_to_unknown_device_is_not_found(p4rt: P4RTTestClient) -> None:
    request = p4rt.write_request([upd(INSERT, edge(p4rt, 1, 10))])
    request.device_id = 99
    with pytest.raises(grpc.RpcError) as info:
        p4rt.stub.Write(request)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_get_pipeline_response_types_and_cookie(p4rt: P4RTTestClient) -> None:
    p4rt.set_pipeline(cookie=0xC0FFEE)
    full = p4rt.get_pipeline(GET.ALL)
    assert full.cookie.cookie == 0xC0FFEE
    assert full.p4info == load_p4info(DEFAULT_P4INFO)
    assert b'"nsm_fabric"' in full.p4_device_config
    cookie = p4rt.get_pipeline(GET.COOKIE_ONLY)
    assert cookie.cookie.cookie == 0xC0FFEE and not cookie.HasField("p4info") and not cookie.p4_device_config
    info = p4rt.get_pipeline(GET.P4INFO_AND_COOKIE)
    assert info.HasField("p4info") and not info.p4_device_config and info.cookie.cookie == 0xC0FFEE
    dev = p4rt.get_pipeline(GET.DEVICE_CONFIG_AND_COOKIE)
    assert dev.p4_device_config and not dev.HasField("p4info") and dev.cookie.cookie == 0xC0FFEE


# -- table entries: round trip and per-update errors -------------------------------------------


def test_insert_read_modify_delete(p4rt: P4RTTestClient) -> None:
    entry = edge(p4rt, 1, 10, label=100)
    p4rt.insert(entry)
    assert p4rt.read_table("edge_classify") == [entry]
    modified = edge(p4rt, 1, 10, label=200)
    p4rt.modify(modified)
    assert p4rt.read_table("edge_classify") == [modified]
    p4rt.delete(modified)
    assert p4rt.read_table("edge_classify") == []


def test_padded_values_are_accepted_and_read_back_canonical(p4rt: P4RTTestClient) -> None:
    padded = p4rt.table_entry(
        "edge_classify",
        {"ingress_port": b"\x00\x00\x01", "vlan_id": b"\x00\x0a"},
        "push_label",
        {"label": b"\x00\x00\x00\x05"},
    )
    p4rt.insert(padded)
    assert p4rt.read_table("edge_classify") == [edge(p4rt, 1, 10, label=5)]


def test_already_exists_and_not_found(p4rt: P4RTTestClient) -> None:
    entry = edge(p4rt, 1, 10)
    p4rt.insert(entry)
    expect_write_error(p4rt, [upd(INSERT, entry)], rpc_code.ALREADY_EXISTS)
    expect_write_error(p4rt, [upd(MODIFY, edge(p4rt, 1, 11))], rpc_code.NOT_FOUND)
    expect_write_error(p4rt, [upd(DELETE, edge(p4rt, 1, 11))], rpc_code.NOT_FOUND)


def test_unknown_ids_are_invalid_argument(p4rt: P4RTTestClient) -> None:
    bad_table = edge(p4rt, 1, 10)
    bad_table.table_id = 0x02FFFFFF
    err = expect_write_error(p4rt, [upd(INSERT, bad_table)], rpc_code.INVALID_ARGUMENT)
    assert "table id" in err.message

    bad_action = edge(p4rt, 1, 10)
    bad_action.action.action.action_id = 0x01FFFFFF
    err = expect_write_error(p4rt, [upd(INSERT, bad_action)], rpc_code.INVALID_ARGUMENT)
    assert "action id" in err.message

    bad_field = edge(p4rt, 1, 10)
    bad_field.match[1].field_id = 9
    err = expect_write_error(p4rt, [upd(INSERT, bad_field)], rpc_code.INVALID_ARGUMENT)
    assert "match field id 9" in err.message

    bad_param = edge(p4rt, 1, 10)
    bad_param.action.action.params[0].param_id = 7
    err = expect_write_error(p4rt, [upd(INSERT, bad_param)], rpc_code.INVALID_ARGUMENT)
    assert "param id 7" in err.message


def test_missing_fields_are_invalid_argument(p4rt: P4RTTestClient) -> None:
    no_vlan = edge(p4rt, 1, 10)
    del no_vlan.match[1]
    err = expect_write_error(p4rt, [upd(INSERT, no_vlan)], rpc_code.INVALID_ARGUMENT)
    assert "vlan_id" in err.message

    no_param = edge(p4rt, 1, 10)
    del no_param.action.action.params[0]
    err = expect_write_error(p4rt, [upd(INSERT, no_param)], rpc_code.INVALID_ARGUMENT)
    assert "label" in err.message

    no_action = edge(p4rt, 1, 10)
    no_action.ClearField("action")
    expect_write_error(p4rt, [upd(INSERT, no_action)], rpc_code.INVALID_ARGUMENT)

    no_entity = p4r.Update(type=INSERT)
    expect_write_error(p4rt, [no_entity], rpc_code.INVALID_ARGUMENT)


def test_wrong_action_for_table(p4rt: P4RTTestClient) -> None:
    wrong = p4rt.table_entry("edge_classify", {"ingress_port": 1, "vlan_id": 10}, "forward", {"port": 1})
    err = expect_write_error(p4rt, [upd(INSERT, wrong)], rpc_code.INVALID_ARGUMENT)
    assert "FabricIngress.forward" in err.message
    # The spec: a valid action used outside its scope (here @defaultonly) is PERMISSION_DENIED.
    default_only = p4rt.table_entry("fabric_ports", {"ingress_port": 1}, "NoAction")
    err = expect_write_error(p4rt, [upd(INSERT, default_only)], rpc_code.PERMISSION_DENIED)
    assert "default-only" in err.message


def test_exact_table_refuses_a_priority(p4rt: P4RTTestClient) -> None:
    with_priority = edge(p4rt, 1, 10)
    with_priority.priority = 5
    err = expect_write_error(p4rt, [upd(INSERT, with_priority)], rpc_code.INVALID_ARGUMENT)
    assert "priority" in err.message


def test_priority_required_for_ternary(generic: P4RTTestClient) -> None:
    no_priority = generic.table_entry("acl", {"addr": (0x1200, 0xFF00), "proto": 6}, "set_port", {"port": 1})
    err = expect_write_error(generic, [upd(INSERT, no_priority)], rpc_code.INVALID_ARGUMENT)
    assert "priority" in err.message
    lpm_priority = generic.table_entry("routes", {"dst": (0x0A000000, 8)}, "set_port", {"port": 1}, priority=3)
    expect_write_error(generic, [upd(INSERT, lpm_priority)], rpc_code.INVALID_ARGUMENT)


def test_out_of_range_values(p4rt: P4RTTestClient) -> None:
    wide = p4rt.table_entry("edge_classify", {"ingress_port": 1, "vlan_id": b"\x1f\xff"}, "push_label", {"label": 1})
    err = expect_write_error(p4rt, [upd(INSERT, wide)], rpc_code.OUT_OF_RANGE)
    assert err.message == "table FabricIngress.edge_classify: match field vlan_id: value 0x1fff wider than 12 bits"

    empty = p4rt.table_entry("edge_classify", {"ingress_port": 1, "vlan_id": b""}, "push_label", {"label": 1})
    err = expect_write_error(p4rt, [upd(INSERT, empty)], rpc_code.OUT_OF_RANGE)
    assert "empty" in err.message

    wide_param = p4rt.table_entry(
        "edge_classify", {"ingress_port": 1, "vlan_id": 1}, "push_label", {"label": b"\x10\x00\x00"}
    )
    err = expect_write_error(p4rt, [upd(INSERT, wide_param)], rpc_code.OUT_OF_RANGE)
    assert "param label" in err.message


def test_full_table_is_resource_exhausted(p4rt: P4RTTestClient) -> None:
    size = 8192
    entries = [edge(p4rt, port, vlan) for port in range(1, 3) for vlan in range(4096)]
    assert len(entries) == size
    for i in range(0, size, 1000):
        p4rt.insert(entries[i : i + 1000])
    err = expect_write_error(p4rt, [upd(INSERT, edge(p4rt, 3, 1))], rpc_code.RESOURCE_EXHAUSTED)
    assert "8192" in err.message
    assert len(p4rt.read_table("edge_classify")) == size
    p4rt.delete(entries[0])
    p4rt.insert(edge(p4rt, 3, 1))


@pytest.mark.parametrize("atomicity", [p4r.WriteRequest.ROLLBACK_ON_ERROR, p4r.WriteRequest.DATAPLANE_ATOMIC])
def test_atomicity_other_than_continue_is_unimplemented(p4rt: P4RTTestClient, atomicity: int) -> None:
    with pytest.raises(WriteError) as info:
        p4rt.write([upd(INSERT, edge(p4rt, 1, 10))], atomicity=atomicity)
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert p4rt.read_table("edge_classify") == []


def test_mixed_batch_reports_one_error_per_update_in_order(p4rt: P4RTTestClient) -> None:
    p4rt.insert(edge(p4rt, 1, 1))
    unknown_table = edge(p4rt, 1, 5)
    unknown_table.table_id = 0x02ABCDEF
    wide = p4rt.table_entry("edge_classify", {"ingress_port": b"\x03\xff", "vlan_id": 1}, "push_label", {"label": 1})
    updates = [
        upd(INSERT, edge(p4rt, 1, 2)),
        upd(INSERT, edge(p4rt, 1, 1)),  # duplicate
        upd(INSERT, edge(p4rt, 1, 3)),
        upd(INSERT, unknown_table),
        upd(DELETE, edge(p4rt, 1, 99)),
        upd(INSERT, wide),
        upd(MODIFY, edge(p4rt, 1, 2, label=7)),  # applies to the entry inserted by update 0
    ]
    with pytest.raises(WriteError) as info:
        p4rt.write(updates)
    assert info.value.code == grpc.StatusCode.UNKNOWN
    assert write_codes(info.value) == [
        rpc_code.OK,
        rpc_code.ALREADY_EXISTS,
        rpc_code.OK,
        rpc_code.INVALID_ARGUMENT,
        rpc_code.NOT_FOUND,
        rpc_code.OUT_OF_RANGE,
        rpc_code.OK,
    ]
    assert all(not e.message for e in info.value.errors if e.canonical_code == rpc_code.OK)
    assert "ingress_port" in info.value.errors[5].message
    got = {(e.match[1].exact.value, e.action.action.params[0].value) for e in p4rt.read_table("edge_classify")}
    assert got == {(b"\x01", b"\x64"), (b"\x02", b"\x07"), (b"\x03", b"\x64")}


def test_thousand_failures_give_a_well_formed_status(p4rt: P4RTTestClient) -> None:
    entries = [edge(p4rt, 1, vlan) for vlan in range(1, 1001)]
    p4rt.insert(entries)
    with pytest.raises(WriteError) as info:
        p4rt.insert(entries)
    assert write_codes(info.value) == [rpc_code.ALREADY_EXISTS] * 1000
    assert "1000 of 1000" in info.value.details


# -- reads ------------------------------------------------------------------------------------


def test_read_wildcards(p4rt: P4RTTestClient) -> None:
    edges = [edge(p4rt, 1, v) for v in range(1, 4)]
    fwd = p4rt.table_entry("label_fwd", {"label": 42}, "forward", {"port": 3})
    ports = p4rt.table_entry("fabric_ports", {"ingress_port": 3}, "mark_fabric")
    p4rt.insert([*edges, fwd, ports])

    everything = p4rt.read_table(None)
    assert len(everything) == 5 and fwd in everything and ports in everything
    assert p4rt.read_table("edge_classify") == edges
    one = p4rt.read(edge(p4rt, 1, 2))
    assert [e.table_entry for e in one] == [edges[1]]
    assert p4rt.read(edge(p4rt, 1, 50)) == []
    # Filter by action id (the only action filter the spec defines).
    by_action = p4rt.table_entry("label_fwd", action="drop")
    by_action.ClearField("match")
    assert p4rt.read(by_action) == []
    # Several entities in one request; results stream back in chunks.
    many = p4rt.read([p4rt.table_entry("label_fwd"), p4rt.table_entry("fabric_ports")])
    assert [e.table_entry for e in many] == [fwd, ports]


def test_large_read_streams_in_chunks(p4rt: P4RTTestClient) -> None:
    entries = [edge(p4rt, 2, v) for v in range(1, 2001)]
    for i in range(0, 2000, 1000):
        p4rt.insert(entries[i : i + 1000])
    request = p4r.ReadRequest(device_id=p4rt.device_id, entities=[p4r.Entity(table_entry=p4r.TableEntry())])
    responses = list(p4rt.stub.Read(request))
    assert len(responses) > 1
    assert sum(len(r.entities) for r in responses) == 2000


def test_counter_data_only_when_requested(p4rt: P4RTTestClient) -> None:
    p4rt.insert(edge(p4rt, 1, 10))
    plain = p4rt.read_table("edge_classify")[0]
    assert not plain.HasField("counter_data")
    counted = p4rt.read_table("edge_classify", counters=True)[0]
    assert counted.HasField("counter_data") and counted.counter_data.packet_count == 0


def test_default_entry_modify_read_reset(p4rt: P4RTTestClient) -> None:
    default = p4rt.read(p4rt.table_entry("label_fwd", is_default=True))
    assert [e.table_entry for e in default] == [p4rt.table_entry("label_fwd", action="drop", is_default=True)]

    forward = p4rt.table_entry("label_fwd", action="forward", params={"port": 3}, is_default=True)
    p4rt.modify(forward)
    assert [e.table_entry for e in p4rt.read(p4rt.table_entry("label_fwd", is_default=True))] == [forward]
    # Wildcard reads return the non-default entries only.
    assert p4rt.read_table("label_fwd") == []

    p4rt.modify(p4rt.table_entry("label_fwd", is_default=True))  # no action: back to the P4 default
    assert p4rt.read(p4rt.table_entry("label_fwd", is_default=True))[0].table_entry.action.action.action_id == (
        p4rt.names.action("drop").preamble.id
    )
    expect_write_error(p4rt, [upd(INSERT, forward)], rpc_code.INVALID_ARGUMENT)
    expect_write_error(p4rt, [upd(DELETE, forward)], rpc_code.INVALID_ARGUMENT)
    const_default = p4rt.table_entry("fabric_ports", action="mark_fabric", is_default=True)
    expect_write_error(p4rt, [upd(MODIFY, const_default)], rpc_code.PERMISSION_DENIED)


def test_table_only_action_cannot_be_default(generic: P4RTTestClient) -> None:
    discard = generic.table_entry("acl", action="discard", is_default=True)
    expect_write_error(generic, [upd(MODIFY, discard)], rpc_code.PERMISSION_DENIED)
    fixed = generic.table_entry("fixed", action="set_port", params={"port": 1}, is_default=True)
    expect_write_error(generic, [upd(MODIFY, fixed)], rpc_code.PERMISSION_DENIED)


# -- LPM, ternary, optional, range (program "generic") ------------------------------------------


def test_lpm_entries(generic: P4RTTestClient) -> None:
    short = generic.table_entry("routes", {"dst": (0x0A000000, 8)}, "set_port", {"port": 1})
    long = generic.table_entry("routes", {"dst": (0x0A010000, 16)}, "set_port", {"port": 2})
    catch_all = generic.table_entry("routes", {}, "discard")
    generic.insert([short, long, catch_all])
    assert generic.read_table("routes") == [short, long, catch_all]
    expect_write_error(generic, [upd(INSERT, short)], rpc_code.ALREADY_EXISTS)
    zero_len = generic.table_entry("routes", {"dst": (0, 0)}, "discard")
    err = expect_write_error(generic, [upd(INSERT, zero_len)], rpc_code.INVALID_ARGUMENT)
    assert "prefix_len" in err.message
    stray_bits = generic.table_entry("routes", {"dst": (0x0A0000FF, 8)}, "discard")
    err = expect_write_error(generic, [upd(INSERT, stray_bits)], rpc_code.INVALID_ARGUMENT)
    assert "beyond prefix" in err.message
    too_long = generic.table_entry("routes", {"dst": (0x0A000000, 33)}, "discard")
    expect_write_error(generic, [upd(INSERT, too_long)], rpc_code.INVALID_ARGUMENT)


def test_ternary_and_optional_entries(generic: P4RTTestClient) -> None:
    a = generic.table_entry("acl", {"addr": (0x1200, 0xFF00), "proto": 6}, "set_port", {"port": 1}, priority=10)
    b = generic.table_entry("acl", {"addr": (0x1200, 0xFF00), "proto": 6}, "set_port", {"port": 2}, priority=20)
    c = generic.table_entry("acl", {"proto": 17, "in_port": 4}, "discard", priority=5)
    generic.insert([a, b, c])
    assert sorted(e.priority for e in generic.read_table("acl")) == [5, 10, 20]
    assert [
        e.table_entry
        for e in generic.read(generic.table_entry("acl", {"addr": (0x1200, 0xFF00), "proto": 6}, priority=20))
    ] == [b]
    # A wildcard read filtered by priority.
    by_priority = generic.table_entry("acl", priority=5)
    assert [e.table_entry for e in generic.read(by_priority)] == [c]
    expect_write_error(generic, [upd(INSERT, a)], rpc_code.ALREADY_EXISTS)
    outside = generic.table_entry("acl", {"addr": (0x1234, 0xFF00), "proto": 6}, "discard", priority=1)
    err = expect_write_error(generic, [upd(INSERT, outside)], rpc_code.INVALID_ARGUMENT)
    assert "outside mask" in err.message
    zero_mask = generic.table_entry("acl", {"addr": (0, 0), "proto": 6}, "discard", priority=1)
    expect_write_error(generic, [upd(INSERT, zero_mask)], rpc_code.INVALID_ARGUMENT)
    wrong_kind = generic.table_entry("acl", {"proto": 6}, "discard", priority=1)
    wrong_kind.match[0].ClearField("exact")
    wrong_kind.match[0].lpm.value = b"\x06"
    wrong_kind.match[0].lpm.prefix_len = 8
    err = expect_write_error(generic, [upd(INSERT, wrong_kind)], rpc_code.INVALID_ARGUMENT)
    assert "is exact, got lpm" in err.message
    generic.delete(b)
    assert sorted(e.priority for e in generic.read_table("acl")) == [5, 10]


def test_range_entries(generic: P4RTTestClient) -> None:
    r = generic.table_entry("ports", {"l4_port": (1000, 2000)}, "set_port", {"port": 3}, priority=1)
    generic.insert(r)
    assert generic.read_table("ports") == [r]
    backwards = generic.table_entry("ports", {"l4_port": (2000, 1000)}, "set_port", {"port": 3}, priority=2)
    expect_write_error(generic, [upd(INSERT, backwards)], rpc_code.INVALID_ARGUMENT)
    full = generic.table_entry("ports", {"l4_port": (0, 0xFFFF)}, "set_port", {"port": 3}, priority=2)
    expect_write_error(generic, [upd(INSERT, full)], rpc_code.INVALID_ARGUMENT)


# -- action profiles ----------------------------------------------------------------------------


def test_members_groups_and_watch_ports(p4rt: P4RTTestClient) -> None:
    sel = "next_hop_selector"
    members = [p4rt.member(sel, i, "swap_forward", {"label": 100 + i, "port": i}) for i in (1, 2, 3)]
    p4rt.insert(members)
    group = p4rt.group(sel, 10, [(1, 1, 1), (2, 3, 2), (3, 1, 3)])
    p4rt.insert(group)
    read_members = [e.action_profile_member for e in p4rt.read(p4rt.member(sel, 0))]
    assert read_members == members
    read_groups = [e.action_profile_group for e in p4rt.read(p4rt.group(sel, 0))]
    assert read_groups == [group]
    # Every member keeps its own watch port (BMv2 reports the last member's for all).
    assert [m.watch_port for m in read_groups[0].members] == [b"\x01", b"\x02", b"\x03"]
    assert [m.weight for m in read_groups[0].members] == [1, 3, 1]

    entry = p4rt.table_entry("label_group", {"label": 77}, group_id=10)
    p4rt.insert(entry)
    assert p4rt.read_table("label_group") == [entry]

    expect_write_error(p4rt, [upd(DELETE, members[0])], rpc_code.FAILED_PRECONDITION)
    expect_write_error(p4rt, [upd(DELETE, group)], rpc_code.FAILED_PRECONDITION)
    expect_write_error(p4rt, [upd(INSERT, members[0])], rpc_code.ALREADY_EXISTS)
    expect_write_error(p4rt, [upd(INSERT, p4rt.group(sel, 11, [1, 99]))], rpc_code.NOT_FOUND)
    expect_write_error(p4rt, [upd(INSERT, p4rt.group(sel, 11, [(1, 0)]))], rpc_code.INVALID_ARGUMENT)
    expect_write_error(p4rt, [upd(INSERT, p4rt.group(sel, 11, [1, 1]))], rpc_code.INVALID_ARGUMENT)
    expect_write_error(p4rt, [upd(MODIFY, p4rt.group(sel, 12, [1]))], rpc_code.NOT_FOUND)
    expect_write_error(
        p4rt, [upd(INSERT, p4rt.table_entry("label_group", {"label": 78}, group_id=99))], rpc_code.NOT_FOUND
    )
    expect_write_error(
        p4rt, [upd(INSERT, p4rt.table_entry("label_group", {"label": 78}, member_id=99))], rpc_code.NOT_FOUND
    )
    direct = p4rt.table_entry("label_group", {"label": 78}, "swap_forward", {"label": 1, "port": 1})
    expect_write_error(p4rt, [upd(INSERT, direct)], rpc_code.INVALID_ARGUMENT)
    wrong_action = p4rt.member(sel, 9, "forward", {"port": 1})
    expect_write_error(p4rt, [upd(INSERT, wrong_action)], rpc_code.INVALID_ARGUMENT)

    # Shrink the group, then the freed member can go; the entry and group go in order.
    p4rt.modify(p4rt.group(sel, 10, [(2, 1, 2)]))
    p4rt.delete(members[0])
    p4rt.modify(p4rt.member(sel, 2, "swap_forward", {"label": 555, "port": 2}))
    assert p4rt.read(p4rt.member(sel, 2))[0].action_profile_member.action.params[0].value == (555).to_bytes(2, "big")
    p4rt.delete(entry)
    p4rt.delete(group)
    p4rt.delete(members[1:])
    assert p4rt.read([p4rt.member(sel, 0), p4rt.group(sel, 0)]) == []


def test_profile_without_selector(generic: P4RTTestClient) -> None:
    prof = "plain_profile"
    generic.insert([generic.member(prof, i, "set_port", {"port": i}) for i in range(1, 5)])
    err = expect_write_error(
        generic, [upd(INSERT, generic.member(prof, 5, "set_port", {"port": 5}))], rpc_code.RESOURCE_EXHAUSTED
    )
    assert "4 members" in err.message
    expect_write_error(generic, [upd(INSERT, generic.group(prof, 1, [1]))], rpc_code.INVALID_ARGUMENT)
    entry = generic.table_entry("indirect", {"key": 1}, member_id=2)
    generic.insert(entry)
    assert generic.read_table("indirect") == [entry]
    expect_write_error(
        generic, [upd(INSERT, generic.table_entry("indirect", {"key": 2}, group_id=1))], rpc_code.INVALID_ARGUMENT
    )


# -- direct counters ----------------------------------------------------------------------------


def test_direct_counters(p4rt: P4RTTestClient) -> None:
    entry = edge(p4rt, 1, 10)
    entry.counter_data.packet_count = 10
    entry.counter_data.byte_count = 1000
    p4rt.insert(entry)
    read = p4rt.read_table("edge_classify", counters=True)[0]
    assert (read.counter_data.packet_count, read.counter_data.byte_count) == (10, 1000)

    # MODIFY of the action keeps the counter (the data plane's Entry object is kept).
    p4rt.modify(edge(p4rt, 1, 10, label=9))
    dce = p4rt.read(p4rt.direct_counter(edge(p4rt, 1, 10)))[0].direct_counter_entry
    assert (dce.data.packet_count, dce.data.byte_count) == (10, 1000)
    assert dce.table_entry.match == edge(p4rt, 1, 10).match

    p4rt.modify(p4rt.direct_counter(edge(p4rt, 1, 10), packets=1, bytes_=64))
    every = p4rt.read(p4r.DirectCounterEntry())
    assert [(e.direct_counter_entry.data.packet_count, e.direct_counter_entry.data.byte_count) for e in every] == [
        (1, 64)
    ]
    expect_write_error(p4rt, [upd(MODIFY, p4rt.direct_counter(edge(p4rt, 1, 11), packets=1))], rpc_code.NOT_FOUND)
    no_counter = p4rt.direct_counter(p4rt.table_entry("label_fwd", {"label": 1}, "drop"), packets=1)
    expect_write_error(p4rt, [upd(MODIFY, no_counter)], rpc_code.INVALID_ARGUMENT)


# -- pipeline config ------------------------------------------------------------------------------


def malformed_p4infos() -> dict[str, p4i.P4Info]:
    base = load_p4info(DEFAULT_P4INFO)
    dup = p4i.P4Info()
    dup.CopyFrom(base)
    dup.actions[1].preamble.id = dup.actions[0].preamble.id
    dangling = p4i.P4Info()
    dangling.CopyFrom(base)
    dangling.tables[0].action_refs.add(id=0x01ABCDEF)
    bad_profile = p4i.P4Info()
    bad_profile.CopyFrom(base)
    bad_profile.tables[2].implementation_id = 0x11ABCDEF
    return {"duplicate id": dup, "action ref 0x1abcdef": dangling, "implementation 0x11abcdef": bad_profile}


def test_malformed_pipeline_is_refused_and_old_one_keeps_working(p4rt: P4RTTestClient) -> None:
    p4rt.set_pipeline(cookie=41)
    entry = edge(p4rt, 1, 10)
    p4rt.insert(entry)
    base = load_p4info(DEFAULT_P4INFO)
    cases: list[tuple[p4i.P4Info, bytes, str]] = [
        (info, b'{"target": "p4nsm-softswitch", "program": "nsm_fabric"}', why)
        for why, info in malformed_p4infos().items()
    ]
    cases += [
        (base, b"not json", "not JSON"),
        (base, b'{"target": "bmv2", "program": "nsm_fabric"}', "target"),
        (base, b'{"target": "p4nsm-softswitch", "program": "nope"}', "program 'nope'"),
        (
            load_p4info(GENERIC_P4INFO),
            b'{"target": "p4nsm-softswitch", "program": "nsm_fabric"}',
            "table FabricIngress.edge_classify",
        ),
    ]
    for info, config, why in cases:
        for action in (SVC.VERIFY, SVC.VERIFY_AND_COMMIT):
            with pytest.raises(grpc.RpcError) as err:
                p4rt.set_pipeline(p4info=info, device_config=config, cookie=99, action=action)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
            assert why in err.value.details(), (why, err.value.details())
    assert p4rt.get_pipeline(GET.COOKIE_ONLY).cookie.cookie == 41
    assert p4rt.read_table("edge_classify") == [entry]
    p4rt.insert(edge(p4rt, 1, 11))


def test_missing_p4info_is_refused(p4rt: P4RTTestClient) -> None:
    request = SVC(device_id=1, election_id=U128.encode(10), action=SVC.VERIFY_AND_COMMIT)
    request.config.p4_device_config = b'{"target": "p4nsm-softswitch", "program": "nsm_fabric"}'
    with pytest.raises(grpc.RpcError) as err:
        p4rt.stub.SetForwardingPipelineConfig(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_pipeline_actions(p4rt: P4RTTestClient) -> None:
    p4rt.set_pipeline(cookie=1)
    p4rt.insert(edge(p4rt, 1, 10))
    p4rt.set_pipeline(cookie=2, action=SVC.VERIFY)
    assert p4rt.get_pipeline(GET.COOKIE_ONLY).cookie.cookie == 1
    with pytest.raises(grpc.RpcError) as err:
        p4rt.set_pipeline(cookie=2, action=SVC.COMMIT)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    p4rt.set_pipeline(cookie=3, action=SVC.VERIFY_AND_SAVE)
    assert p4rt.get_pipeline(GET.COOKIE_ONLY).cookie.cookie == 1
    assert len(p4rt.read_table("edge_classify")) == 1
    request = SVC(device_id=1, election_id=U128.encode(10), action=SVC.COMMIT)
    p4rt.stub.SetForwardingPipelineConfig(request)
    assert p4rt.get_pipeline(GET.COOKIE_ONLY).cookie.cookie == 3
    assert p4rt.read_table("edge_classify") == []

    p4rt.insert(edge(p4rt, 1, 10))
    p4rt.insert(p4rt.member("next_hop_selector", 1, "swap_forward", {"label": 1, "port": 1}))
    p4rt.modify(p4rt.table_entry("label_fwd", action="forward", params={"port": 2}, is_default=True))
    p4rt.set_pipeline(cookie=4, action=SVC.RECONCILE_AND_COMMIT)
    assert p4rt.get_pipeline(GET.COOKIE_ONLY).cookie.cookie == 4
    assert p4rt.read_table("edge_classify") == [edge(p4rt, 1, 10)]
    assert len(p4rt.read(p4rt.member("next_hop_selector", 0))) == 1
    default = p4rt.read(p4rt.table_entry("label_fwd", is_default=True))[0].table_entry
    assert default.action.action.params[0].value == b"\x02"

    p4rt.set_pipeline(cookie=5, action=SVC.VERIFY_AND_COMMIT)
    assert p4rt.read_table(None) == []


# -- arbitration -------------------------------------------------------------------------------


def arb(update: p4r.MasterArbitrationUpdate) -> tuple[int, int]:
    return update.status.code, U128.decode(update.election_id)


def test_arbitration_primary_backup_and_changes(softswitch: SoftSwitchProcess) -> None:
    addr = softswitch.address
    c10 = P4RTTestClient(addr, election_id=10)
    assert arb(c10.arbitration) == (rpc_code.OK, 10)
    c5 = P4RTTestClient(addr, election_id=5)
    assert arb(c5.arbitration) == (rpc_code.ALREADY_EXISTS, 10)
    assert c10.arbitrations.empty()  # a new backup does not disturb the others

    c10.set_pipeline()
    with pytest.raises(WriteError) as denied:
        c5.insert(edge(c5, 1, 1))
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as denied_pipeline:
        c5.set_pipeline()
    assert denied_pipeline.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert [e.table_entry for e in c5.read(c5.table_entry("label_fwd", is_default=True))]  # backups may read

    # A higher election id takes over; everyone hears about it.
    c20 = P4RTTestClient(addr, election_id=20)
    assert arb(c20.arbitration) == (rpc_code.OK, 20)
    assert arb(c10.next_arbitration()) == (rpc_code.ALREADY_EXISTS, 20)
    assert arb(c5.next_arbitration()) == (rpc_code.ALREADY_EXISTS, 20)
    with pytest.raises(WriteError):
        c10.insert(edge(c10, 1, 1))
    c20.insert(edge(c20, 1, 1))

    # The primary leaves: NOT_FOUND with the highest id seen, and nobody is promoted.
    c20.close()
    assert arb(c10.next_arbitration()) == (rpc_code.NOT_FOUND, 20)
    assert arb(c5.next_arbitration()) == (rpc_code.NOT_FOUND, 20)
    with pytest.raises(WriteError) as nobody:
        c10.insert(edge(c10, 1, 2))
    assert nobody.value.code == grpc.StatusCode.PERMISSION_DENIED
    # Re-arbitrating below the highest id seen does not make a primary either.
    assert arb(c10.arbitrate(10)) == (rpc_code.NOT_FOUND, 20)
    assert arb(c10.arbitrate(21)) == (rpc_code.OK, 21)
    assert arb(c5.next_arbitration()) == (rpc_code.ALREADY_EXISTS, 21)
    c10.insert(edge(c10, 1, 2))

    # The primary downgrades itself: everyone hears there is no primary.
    assert arb(c10.arbitrate(1)) == (rpc_code.NOT_FOUND, 21)
    assert arb(c5.next_arbitration()) == (rpc_code.NOT_FOUND, 21)
    c10.close()
    c5.close()


def test_duplicate_election_id_is_refused(softswitch: SoftSwitchProcess) -> None:
    with P4RTTestClient(softswitch.address, election_id=10) as first:
        second = P4RTTestClient(softswitch.address, election_id=10, arbitrate=False)
        second.send_arbitration()
        end = second.wait_stream_end()
        assert end is not None and end.code() == grpc.StatusCode.INVALID_ARGUMENT
        second.close()
        assert first.is_primary and first.arbitrations.empty()
        # Once the first one is gone, the id is free again.
    with P4RTTestClient(softswitch.address, election_id=10) as again:
        assert arb(again.arbitration) == (rpc_code.OK, 10)


def test_wrong_device_id_ends_the_stream_not_found(softswitch: SoftSwitchProcess) -> None:
    client = P4RTTestClient(softswitch.address, device_id=7, election_id=1, arbitrate=False)
    client.send_arbitration()
    end = client.wait_stream_end()
    assert end is not None and end.code() == grpc.StatusCode.NOT_FOUND
    client.close()


def test_first_message_must_be_arbitration(p4rt: P4RTTestClient, softswitch: SoftSwitchProcess) -> None:
    client = P4RTTestClient(softswitch.address, election_id=1, arbitrate=False)
    client.packet_out(b"x", 1)
    end = client.wait_stream_end()
    assert end is not None and end.code() == grpc.StatusCode.FAILED_PRECONDITION
    client.close()


# -- packet-out --------------------------------------------------------------------------------


def test_malformed_packet_out_gets_a_stream_error_and_the_stream_goes_on(p4rt: P4RTTestClient) -> None:
    unknown = p4r.PacketOut(payload=b"frame", metadata=[p4r.PacketMetadata(metadata_id=9, value=b"\x01")])
    p4rt.send_packet_out(unknown)
    error = p4rt.stream_error()
    assert error.canonical_code == rpc_code.INVALID_ARGUMENT
    assert "metadata id 9" in error.message
    assert error.packet_out.packet_out == unknown

    wide = p4r.PacketOut(payload=b"frame", metadata=[p4r.PacketMetadata(metadata_id=1, value=b"\x02\x00")])
    p4rt.send_packet_out(wide)
    error = p4rt.stream_error()
    assert error.canonical_code == rpc_code.INVALID_ARGUMENT and "egress_port" in error.message

    missing = p4r.PacketOut(payload=b"frame")
    p4rt.send_packet_out(missing)
    assert "egress_port missing" in p4rt.stream_error().message

    p4rt.packet_out(b"\x00" * 60, egress_port=3)
    with pytest.raises(queue.Empty):
        p4rt.stream_error(timeout=0.3)
    assert arb(p4rt.arbitrate(10)) == (rpc_code.OK, 10)


def test_backup_packet_out_is_refused(p4rt: P4RTTestClient, softswitch: SoftSwitchProcess) -> None:
    with P4RTTestClient(softswitch.address, election_id=2) as backup:
        backup.packet_out(b"frame", egress_port=1)
        assert backup.stream_error().canonical_code == rpc_code.PERMISSION_DENIED


# -- in process: what the data plane is handed ------------------------------------------------


async def test_dataplane_callbacks_and_packet_in() -> None:
    from softswitch.server import SoftSwitchServer

    commits: list[tuple[object, str]] = []
    packets: list[tuple[bytes, dict[str, int]]] = []
    server = SoftSwitchServer(
        1,
        255,
        lambda state, program: commits.append((state, program)),
        lambda payload, meta: packets.append((payload, meta)),
    )
    address = f"127.0.0.1:{free_port()}"
    await server.start(address)
    try:
        primary = await asyncio.to_thread(P4RTTestClient, address, 1, 10)
        backup = await asyncio.to_thread(P4RTTestClient, address, 1, 5)
        await asyncio.to_thread(primary.set_pipeline)
        state, program = commits[-1]
        assert program == "nsm_fabric"
        assert set(state.tables) == {
            "FabricIngress.fabric_ports",
            "FabricIngress.edge_classify",
            "FabricIngress.label_group",
            "FabricIngress.label_fwd",
        }
        edge_table = state.tables["FabricIngress.edge_classify"]
        assert edge_table.all_exact and edge_table.default.name == "FabricIngress.drop"
        assert state.tables["FabricIngress.label_fwd"].default.name == "FabricIngress.drop"
        assert state.tables["FabricIngress.fabric_ports"].default.name == "NoAction"
        assert state.table_profile == {"FabricIngress.label_group": "FabricIngress.next_hop_selector"}
        assert state.packet_metadata["packet_out"] == [("egress_port", 9), ("_pad", 7)]

        await asyncio.to_thread(primary.insert, edge(primary, 1, 10, label=100))
        entry = edge_table.exact[(1, 10)]
        assert entry.action.name == "FabricIngress.push_label" and entry.action.args == (100,)
        entry.packets, entry.bytes = 3, 300  # as the pipeline would count
        await asyncio.to_thread(primary.modify, edge(primary, 1, 10, label=200))
        assert edge_table.exact[(1, 10)] is entry and entry.action.args == (200,)
        read = await asyncio.to_thread(primary.read_table, "edge_classify", True)
        assert (read[0].counter_data.packet_count, read[0].counter_data.byte_count) == (3, 300)

        sel = "next_hop_selector"
        await asyncio.to_thread(
            primary.insert,
            [
                primary.member(sel, 1, "swap_forward", {"label": 5, "port": 2}),
                primary.member(sel, 2, "swap_forward", {"label": 6, "port": 3}),
            ],
        )
        await asyncio.to_thread(primary.insert, primary.group(sel, 7, [(1, 2, 2), (2, 1, 3)]))
        profile = state.profiles["FabricIngress.next_hop_selector"]
        assert profile.groups[7] == [(1, 2), (2, 1)]
        assert profile.members[1].watch_port == 2 and profile.members[2].watch_port == 3

        await asyncio.to_thread(primary.packet_out, b"out-frame", 4)
        for _ in range(100):
            if packets:
                break
            await asyncio.sleep(0.01)
        assert packets == [(b"out-frame", {"egress_port": 4, "_pad": 0})]

        server.packet_in(b"in-frame", {"ingress_port": 7, "ingress_ts": 123456})
        payload, meta = await asyncio.to_thread(primary.packet_in, 2.0)
        assert (payload, meta) == (b"in-frame", {"ingress_port": 7, "_pad": 0, "ingress_ts": 123456})
        with pytest.raises(queue.Empty):
            await asyncio.to_thread(backup.packet_in, 0.3)

        await asyncio.to_thread(primary.set_pipeline, GENERIC_P4INFO, GENERIC_CONFIG)
        assert commits[-1] == (None, "generic")
        await asyncio.to_thread(primary.close)
        await asyncio.to_thread(backup.close)
    finally:
        await server.stop(0.1)


async def test_a_small_write_goes_through_in_one_piece_and_a_big_one_lets_the_data_plane_run() -> None:
    """What the loop's other work (the data plane, packet-ins) sees of a Write in progress: a heal
    round's switch-over (a few hundred updates) not at all, a 30,000-entry one between its slices."""
    from softswitch.server import SoftSwitchServer

    commits: list[tuple[object, str]] = []
    server = SoftSwitchServer(1, 255, lambda state, program: commits.append((state, program)), lambda p, m: None)
    address = f"127.0.0.1:{free_port()}"
    await server.start(address)
    seen: list[int] = []  # label_fwd's size at each turn the loop gave to other work

    async def other_work() -> None:
        while True:
            seen.append(len(commits[-1][0].tables["FabricIngress.label_fwd"].exact))  # type: ignore[attr-defined]
            await asyncio.sleep(0)

    try:
        client = await asyncio.to_thread(P4RTTestClient, address, 1, 10)
        await asyncio.to_thread(client.set_pipeline)
        watcher = asyncio.create_task(other_work())
        for first, count in ((1, 300), (1000, 30_000)):
            seen.clear()
            entries = [client.table_entry("label_fwd", {"label": i}, "forward", {"port": 1}) for i in range(first, first + count)]
            before = len(commits[-1][0].tables["FabricIngress.label_fwd"].exact)  # type: ignore[attr-defined]
            await asyncio.to_thread(client.insert, entries)
            partial = [n for n in seen if before < n < before + count]
            if count == 300:
                assert not partial, partial[:5]
            else:
                assert partial, "a big Write ran in one piece"
        watcher.cancel()
        await asyncio.to_thread(client.close)
    finally:
        await server.stop(0.1)


def test_write_throughput_smoke(p4rt: P4RTTestClient) -> None:
    """Not the benchmark (benchmarks/bench_softswitch_write.py): a guard against a slow path."""
    entries = [p4rt.table_entry("label_fwd", {"label": i}, "forward", {"port": i % 500}) for i in range(1, 5001)]
    requests = [p4rt.write_request([upd(INSERT, e) for e in entries[i : i + 1000]]) for i in range(0, 5000, 1000)]
    start = time.perf_counter()
    for request in requests:
        p4rt.stub.Write(request)
    rate = 5000 / (time.perf_counter() - start)
    assert rate > 5000, f"{rate:.0f} entries/s"
