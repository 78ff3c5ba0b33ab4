"""Pipeline revisions on the softswitch over real gRPC: any program in its model's vocabulary is
taken (other table sizes, an added table, moved ids), anything else is INVALID_ARGUMENT naming
the problem while the switch keeps its pipeline and entries; RECONCILE_AND_COMMIT keeps the
forwarding state when every entity still fits, and refuses when one would be lost; a switch's
own capacity (--max-table-size, --refuse-table) makes it refuse what the others take."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from finsy.proto import U128, p4i, p4r

from tests.support import revisions as R
from tests.support.fixtures import SoftSwitchProcess, free_port, start_softswitch
from tests.support.p4rt import P4RTTestClient

SVC = p4r.SetForwardingPipelineConfigRequest
GET = p4r.GetForwardingPipelineConfigRequest
COMMITTING = (SVC.VERIFY_AND_COMMIT, SVC.RECONCILE_AND_COMMIT)
LABEL_FWD = "FabricIngress.label_fwd"


def edge(client: P4RTTestClient, port: int, vlan: int, label: int) -> p4r.TableEntry:
    return client.table_entry("edge_classify", {"ingress_port": port, "vlan_id": vlan}, "push_label", {"label": label})


def fwd(client: P4RTTestClient, label: int, port: int) -> p4r.TableEntry:
    return client.table_entry("label_fwd", {"label": label}, "forward", {"port": port})


def commit_saved(client: P4RTTestClient) -> None:
    request = SVC(device_id=client.device_id, election_id=U128.encode(client.election_id), action=SVC.COMMIT)
    client.stub.SetForwardingPipelineConfig(request, timeout=client.timeout)


def refused(client: P4RTTestClient, info: p4i.P4Info, config: bytes = R.SOFTSWITCH_CONFIG,
            action: int = SVC.VERIFY_AND_COMMIT) -> str:
    """The details of an INVALID_ARGUMENT refusal (fails if the config is taken)."""
    with pytest.raises(grpc.RpcError) as err:
        client.set_pipeline(p4info=info, device_config=config, cookie=99, action=action)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value.details()


def state_of(client: P4RTTestClient) -> tuple[int, list[p4r.TableEntry]]:
    return client.get_pipeline(GET.COOKIE_ONLY).cookie.cookie, client.read_table(None)


# -- taken --------------------------------------------------------------------------------------


@pytest.mark.parametrize("revision", ["resized", "added table", "both"])
def test_a_revision_in_the_vocabulary_is_taken_by_every_action(softswitch: SoftSwitchProcess, revision: str) -> None:
    make = {
        "resized": lambda: R.resized({LABEL_FWD: 1024, "FabricIngress.edge_classify": 64}),
        "added table": lambda: R.with_added_table(),
        "both": lambda: R.with_added_table(R.resized({LABEL_FWD: 65536})),
    }[revision]
    with P4RTTestClient(softswitch.address, election_id=10) as client:
        client.set_pipeline(cookie=1)
        client.set_pipeline(p4info=make(), cookie=2, action=SVC.VERIFY)
        assert client.get_pipeline(GET.COOKIE_ONLY).cookie.cookie == 1
        client.set_pipeline(p4info=make(), cookie=3, action=SVC.VERIFY_AND_COMMIT)
        assert client.get_pipeline(GET.P4INFO_AND_COOKIE).p4info == make()
        client.set_pipeline(p4info=make(), cookie=4, action=SVC.VERIFY_AND_SAVE)
        commit_saved(client)
        client.insert(edge(client, 1, 10, 100))
        client.set_pipeline(p4info=make(), cookie=5, action=SVC.RECONCILE_AND_COMMIT)
        assert state_of(client) == (5, [edge(client, 1, 10, 100)])


def test_an_added_tables_entries_are_held_and_read_back(p4rt: P4RTTestClient) -> None:
    p4rt.set_pipeline(p4info=R.with_added_table(), cookie=2)
    entry = p4rt.table_entry("label_stats", {"label": 7}, "forward", {"port": 3})
    p4rt.insert(entry)
    assert p4rt.read_table("label_stats") == [entry]


def test_table_sizes_of_the_revision_are_what_the_switch_enforces(p4rt: P4RTTestClient) -> None:
    p4rt.set_pipeline(p4info=R.resized({LABEL_FWD: 2}), cookie=2)
    p4rt.insert([fwd(p4rt, 1, 1), fwd(p4rt, 2, 1)])
    with pytest.raises(Exception, match="full"):
        p4rt.insert(fwd(p4rt, 3, 1))


# -- refused, and nothing changes ---------------------------------------------------------------


def refusals() -> dict[str, tuple[p4i.P4Info, bytes, str]]:
    wide = R.base()
    for table in wide.tables:
        if table.preamble.name == LABEL_FWD:
            table.match_fields[0].bitwidth = 24
    bmv2_json = b'{"header_types": [], "headers": [], "pipelines": [], "program": "nsm_fabric.p4"}'
    return {
        "unknown action": (R.with_unknown_action(), R.SOFTSWITCH_CONFIG, f"action {R.UNKNOWN_ACTION}"),
        "added table on an unknown field": (
            R.with_added_table(field=("ipv4_dst", 32)), R.SOFTSWITCH_CONFIG,
            f"table {R.ADDED_TABLE} match field ipv4_dst (32 bits, exact)",
        ),
        "added table, ternary": (
            R.with_added_table(kind=p4i.MatchField.TERNARY), R.SOFTSWITCH_CONFIG,
            f"table {R.ADDED_TABLE} match field label (20 bits, ternary)",
        ),
        "wrong width": (wide, R.SOFTSWITCH_CONFIG, f"table {LABEL_FWD} exact match fields [('label', 20)]"),
        "BMv2's JSON": (R.base(), bmv2_json, "target None is not 'p4nsm-softswitch'"),
        "another target": (R.base(), b'{"target": "tofino", "program": "nsm_fabric"}', "target 'tofino'"),
        "unknown key": (R.base(), b'{"target": "p4nsm-softswitch", "program": "nsm_fabric", "v": 2}',
                        "unknown key(s) 'v'"),
        "malformed": (R.base(), b'{"target": "p4nsm-softswitch",', "not JSON"),
        "empty": (R.base(), b"", "not JSON"),
    }


@pytest.mark.parametrize("case", sorted(refusals()))
def test_a_revision_that_does_not_fit_is_refused_and_the_switch_keeps_its_state(p4rt: P4RTTestClient,
                                                                                case: str) -> None:
    p4rt.set_pipeline(cookie=41)
    p4rt.insert([edge(p4rt, 1, 10, 100), fwd(p4rt, 100, 2)])
    before = state_of(p4rt)
    info, config, why = refusals()[case]
    for action in (SVC.VERIFY, SVC.VERIFY_AND_SAVE, *COMMITTING):
        details = refused(p4rt, info, config, action)
        assert why in details, (action, details)
    assert state_of(p4rt) == before
    with pytest.raises(grpc.RpcError) as err:  # nothing was saved for a COMMIT either
        commit_saved(p4rt)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


# -- RECONCILE_AND_COMMIT -------------------------------------------------------------------------


def test_reconcile_keeps_the_state_by_name_when_ids_move(p4rt: P4RTTestClient) -> None:
    sel = "next_hop_selector"
    p4rt.insert([p4rt.member(sel, 1, "swap_forward", {"label": 5, "port": 2}),
                 p4rt.member(sel, 2, "swap_forward", {"label": 6, "port": 3})])
    p4rt.insert(p4rt.group(sel, 7, [(1, 1, 2), (2, 1, 3)]))
    p4rt.insert([edge(p4rt, 1, 10, 100), fwd(p4rt, 100, 2),
                 p4rt.table_entry("label_group", {"label": 5}, group_id=7)])
    p4rt.modify(p4rt.table_entry("label_fwd", action="forward", params={"port": 4}, is_default=True))

    def by_name(client: P4RTTestClient) -> list[tuple]:
        """Entities as names and values: comparable across P4Infos whose ids differ."""
        out = []
        for e in client.read_table(None):
            table = next(t for t in client.names.info.tables if t.preamble.id == e.table_id)
            action = next((a.preamble.name for a in client.names.info.actions if a.preamble.id == e.action.action.action_id), "")
            out.append((table.preamble.name, tuple(m.exact.value for m in e.match), action,
                        tuple(p.value for p in e.action.action.params), e.action.action_profile_group_id))
        return sorted(out)

    before = by_name(p4rt)
    moved = R.renumbered(R.resized({LABEL_FWD: 4096}))
    p4rt.set_pipeline(p4info=moved, cookie=6, action=SVC.RECONCILE_AND_COMMIT)
    assert by_name(p4rt) == before and len(before) == 3
    assert len(p4rt.read(p4rt.member(sel, 0))) == 2
    default = p4rt.read(p4rt.table_entry("label_fwd", is_default=True))[0].table_entry
    assert default.action.action.params[0].value == b"\x04"


@pytest.mark.parametrize("change", ["table too small", "table gone"])
def test_reconcile_refuses_when_an_entry_would_be_lost(p4rt: P4RTTestClient, change: str) -> None:
    p4rt.set_pipeline(p4info=R.with_added_table(), cookie=41)
    p4rt.insert([fwd(p4rt, 1, 1), fwd(p4rt, 2, 1), edge(p4rt, 1, 10, 1),
                 p4rt.table_entry("label_stats", {"label": 1}, "drop")])
    before = state_of(p4rt)
    if change == "table too small":
        info, why = R.with_added_table(R.resized({LABEL_FWD: 1})), f"table {LABEL_FWD}: full (1 entries)"
    else:
        info, why = R.base(), f"table {R.ADDED_TABLE} is not in the new P4Info"
    details = refused(p4rt, info, action=SVC.RECONCILE_AND_COMMIT)
    assert "RECONCILE_AND_COMMIT cannot keep the forwarding state" in details and why in details, details
    assert state_of(p4rt) == before
    p4rt.set_pipeline(p4info=info, cookie=42, action=SVC.VERIFY_AND_COMMIT)  # starting empty is fine
    assert state_of(p4rt) == (42, [])


async def test_reconcile_hands_the_data_plane_tables_that_already_hold_the_entries() -> None:
    """What the pipeline gets at the commit: the new tables, filled before it sees them."""
    from softswitch.server import SoftSwitchServer

    commits: list = []
    server = SoftSwitchServer(1, 255, lambda state, program: commits.append(state), lambda payload, meta: None)
    address = f"127.0.0.1:{free_port()}"
    await server.start(address)
    try:
        client = await asyncio.to_thread(P4RTTestClient, address, 1, 10)
        await asyncio.to_thread(client.set_pipeline)
        await asyncio.to_thread(client.insert, edge(client, 1, 10, 100))
        await asyncio.to_thread(client.set_pipeline, p4info=R.with_added_table(R.resized({LABEL_FWD: 4096})),
                                cookie=2, action=SVC.RECONCILE_AND_COMMIT)
        assert len(commits) == 2 and commits[1] is not commits[0]
        entry = commits[1].tables["FabricIngress.edge_classify"].exact[(1, 10)]
        assert entry.action.name == "FabricIngress.push_label" and entry.action.args == (100,)
        await asyncio.to_thread(client.close)
    finally:
        await server.stop(0.1)


# -- one switch's capacity ------------------------------------------------------------------------


def test_a_switch_with_less_capacity_refuses_what_another_takes(softswitch: SoftSwitchProcess) -> None:
    bigger = R.resized({LABEL_FWD: 65536})
    added = R.with_added_table()
    with start_softswitch(device_id=2, extra_args=["--max-table-size", "32768", "--refuse-table", R.ADDED_TABLE]) as small, \
            P4RTTestClient(softswitch.address, election_id=10) as roomy, \
            P4RTTestClient(small.address, device_id=2, election_id=10) as client:
        roomy.set_pipeline(cookie=1)
        client.set_pipeline(cookie=1)  # the shipped program fits both
        client.insert(edge(client, 1, 10, 100))
        before = state_of(client)
        for info, why in ((bigger, f"table {LABEL_FWD} size 65536 exceeds this switch's capacity 32768 "
                                   "(--max-table-size)"),
                          (added, f"table {R.ADDED_TABLE} is refused by this switch (--refuse-table)")):
            roomy.set_pipeline(p4info=info, cookie=2, action=SVC.VERIFY)
            for action in (SVC.VERIFY, *COMMITTING):
                assert why in refused(client, info, action=action)
        assert state_of(client) == before


def test_capacity_options_are_checked_at_start() -> None:
    from softswitch.main import parse_args

    options = parse_args(["--max-table-size", "10", "--refuse-table", "A", "--refuse-table", "B"])
    assert (options.max_table_size, options.refuse_table) == (10, ["A", "B"])
    with pytest.raises(SystemExit):
        parse_args(["--max-table-size", "-1"])


def test_no_reconcile_answers_unimplemented_and_keeps_the_state() -> None:
    """--no-reconcile: a softswitch that cannot keep entries across a commit, as BMv2 and Stratum."""
    with start_softswitch(extra_args=["--no-reconcile"]) as switch, \
            P4RTTestClient(switch.address, election_id=10) as client:
        client.set_pipeline(cookie=1)
        client.insert(edge(client, 1, 10, 100))
        before = state_of(client)
        with pytest.raises(grpc.RpcError) as err:
            client.set_pipeline(p4info=R.resized({LABEL_FWD: 4096}), cookie=2, action=SVC.RECONCILE_AND_COMMIT)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert state_of(client) == before
        client.set_pipeline(p4info=R.resized({LABEL_FWD: 4096}), cookie=3, action=SVC.VERIFY_AND_COMMIT)
        assert state_of(client) == (3, [])
