"""The NSM layer's pure parts against the contract (docs/nsm_contract.md): timestamps, §5 updatepath, the monitor
selector, §8.1 refresh schedule, §10.2 MatchEndpoint, §9.2 registry path, address pairs, netns URLs."""

from __future__ import annotations

import os
import uuid

import pytest

from controller.nsm.base import clock, kernel
from controller.nsm.base.errors import NsmError
from controller.nsm.elements.monitor import selects
from controller.nsm.elements.updatepath import update_path
from controller.nsm.registry import path as registry_path
from controller.nsm.registry.matching import is_subset, match_endpoint, render
from controller.sdk.ipam import PairPool
from controller.sdk.refresh import IMMEDIATELY, refresh_delay
from nsm_api import connection_pb2, registry_pb2


def test_rfc3339_round_trip_keeps_nanoseconds() -> None:
    t = clock.parse_rfc3339("2025-06-01T10:00:00.123456789+02:00")
    assert clock.format_rfc3339(t).startswith("2025-06-01T08:00:00.123456")
    assert clock.parse_rfc3339("2025-06-01T08:00:00Z") == clock.parse_rfc3339("2025-06-01T10:00:00+02:00")
    with pytest.raises(ValueError):
        clock.parse_rfc3339("yesterday")


def _conn(segments: list[tuple[str, str]], index: int, conn_id: str) -> connection_pb2.Connection:
    return connection_pb2.Connection(id=conn_id, path=connection_pb2.Path(
        index=index, path_segments=[connection_pb2.PathSegment(name=n, id=i) for n, i in segments]))


def test_updatepath_empty_path_makes_the_first_segment() -> None:
    conn = connection_pb2.Connection()
    assert update_path(conn, "nsc") == 0
    assert conn.id and [s.name for s in conn.path.path_segments] == ["nsc"] and conn.path.path_segments[0].id == conn.id


def test_updatepath_moves_one_hop_forward_and_reuses_ids_on_refresh() -> None:
    conn = _conn([("nsc", "a")], 0, "a")
    assert update_path(conn, "p4nsm") == 0
    own = conn.id
    assert conn.path.index == 1 and conn.path.path_segments[1].id == own != "a"
    again = _conn([("nsc", "a"), ("p4nsm", own)], 0, "a")
    assert update_path(again, "p4nsm") == 0 and again.id == own


def test_updatepath_renames_a_stale_next_hop_with_a_new_id() -> None:
    conn = _conn([("nsc", "a"), ("other", "b")], 0, "a")
    update_path(conn, "p4nsm")
    assert conn.path.path_segments[1].name == "p4nsm" and conn.id not in ("a", "b")


def test_updatepath_same_name_at_index_keeps_the_index() -> None:
    conn = _conn([("nsc", "a"), ("p4nsm", "b")], 1, "whatever")
    assert update_path(conn, "p4nsm") == 1 and conn.id == "b"


@pytest.mark.parametrize("segments,index,conn_id,field", [
    ([("nsc", "a")], 1, "a", "connection.path.index"),
    ([("nsc", "a")], 0, "not-a", "connection.id"),
])
def test_updatepath_refusals(segments, index, conn_id, field) -> None:
    with pytest.raises(NsmError) as info:
        update_path(_conn(segments, index, conn_id), "p4nsm")
    assert info.value.field == field


def test_selector_contiguous_run_and_services() -> None:
    conn = _conn([("nsc", "a"), ("mgr", "b"), ("nse", "c")], 1, "b")
    conn.network_service = "icmp"
    seg = connection_pb2.PathSegment
    assert selects(connection_pb2.MonitorScopeSelector(), conn)
    assert selects(connection_pb2.MonitorScopeSelector(path_segments=[seg(id="b"), seg(name="nse")]), conn)
    assert not selects(connection_pb2.MonitorScopeSelector(path_segments=[seg(id="a"), seg(name="nse")]), conn)
    assert not selects(connection_pb2.MonitorScopeSelector(path_segments=[seg(name="nse"), seg()]), conn)  # past the end
    assert not selects(connection_pb2.MonitorScopeSelector(network_services=["other"]), conn)


def test_refresh_schedule() -> None:
    now = 1000.0
    conn = _conn([("nsc", "a"), ("p4nsm", "b")], 0, "a")
    assert refresh_delay(conn, now) == IMMEDIATELY  # a segment without expires counts as expired
    for seg, left in zip(conn.path.path_segments, (30.0, 60.0)):
        seg.expires.CopyFrom(clock.timestamp(now + left))
    assert refresh_delay(conn, now) == pytest.approx(0.2 * 30)
    conn.path.index = 1
    assert refresh_delay(conn, now) == pytest.approx((0.2 + 0.2 * 1 / 2) * 30)
    del conn.path.path_segments[1]
    assert refresh_delay(conn, now) == pytest.approx(30 / 3)


def test_is_subset_with_templates() -> None:
    assert is_subset({"app": "web", "x": "1"}, {"app": "web"}, {})
    assert not is_subset({"app": "web"}, {"app": "web", "x": "1"}, {})
    assert is_subset({"pod": "p1"}, {"pod": "{{.podName}}"}, {"podName": "p1"})
    assert render("{{ .a }}-{{.b}}", {"a": "1"}) == "1-<no value>"
    assert is_subset({"k": "{{if}}"}, {"k": "{{if}}"}, {})  # a failing template compares raw


def _nse(name: str, labels: dict[str, str]) -> registry_pb2.NetworkServiceEndpoint:
    return registry_pb2.NetworkServiceEndpoint(
        name=name, network_service_names=["s"], network_service_labels={"s": registry_pb2.NetworkServiceLabels(labels=labels)})


def test_match_endpoint_rules() -> None:
    gold, silver = _nse("gold", {"tier": "gold"}), _nse("silver", {"tier": "silver"})
    Match, Dest = registry_pb2.Match, registry_pb2.Destination
    ns = registry_pb2.NetworkService(name="s")
    assert match_endpoint({}, ns, [gold, silver]) == [gold, silver]
    ns = registry_pb2.NetworkService(name="s", matches=[
        Match(source_selector={"want": "bronze"}, routes=[Dest(destination_selector={"tier": "bronze"})], fallthrough=True),
        Match(routes=[Dest(destination_selector={"tier": "silver"})]),
    ])
    assert match_endpoint({"want": "bronze"}, ns, [gold, silver]) == [silver]  # fell through
    only = registry_pb2.NetworkService(name="s", matches=[Match(source_selector={"x": "y"}, routes=[Dest()])])
    assert match_endpoint({}, only, [gold]) == []  # no match applies
    meta = registry_pb2.NetworkService(name="s", matches=[Match(metadata=registry_pb2.Metadata(labels={"a": "b"}))])
    assert match_endpoint({}, meta, [gold, silver]) == [gold, silver]


def test_registry_path_update() -> None:
    path, ids = registry_path.update(registry_path.parse(None), "", "own", [])
    assert (path.index, path.tokens, ids) == (0, ["", "own"], ["", ""])
    path, ids = registry_path.update(registry_path.parse('{"index":1,"pathsegments":[{"TOKEN":"a"},{"token":"b"}]}'), "peer", "own", ["x"])
    assert (path.index, path.tokens) == (1, ["a", "peer", "own"])
    with pytest.raises(NsmError):
        registry_path.update(registry_path.parse('{"Index":2,"PathSegments":[{"token":"a"}]}'), "", "own", [])


def test_address_pairs_are_reused_lowest_first() -> None:
    pool = PairPool("10.60.0.0/29")
    pairs = [pool.take() for _ in range(3)]
    assert pairs == [("10.60.0.1", "10.60.0.2"), ("10.60.0.3", "10.60.0.4"), ("10.60.0.5", "10.60.0.6")]
    with pytest.raises(NsmError):
        pool.take()
    pool.give(pairs[1])
    assert pool.take() == pairs[1]
    pool.give(pairs[0])
    assert pool.take(("10.60.0.3", "10.60.0.4")) == pairs[0]  # wanted but taken: the lowest free one


def test_netns_urls() -> None:
    assert kernel.netns_of_url("file:///var/run/netns/h1") == "h1"
    assert kernel.netns_of_url("file:///run/netns/h1") == "h1"
    assert kernel.netns_of_url(f"file:///nonexistent/{uuid.uuid4()}") is None
    assert kernel.netns_of_url("tcp://h1:1") is None
    named = os.listdir("/var/run/netns") if os.path.isdir("/var/run/netns") else []
    assert kernel.netns_of_url("file:///proc/self/ns/net") in (None, *named)  # by inode: ours is seldom named
    name = kernel.default_ifname("icmp-responder")
    assert len(name) == 15 and name.startswith("icmp-respo-")
