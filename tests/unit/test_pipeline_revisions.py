"""Pipeline revisions without switches: what fits a P4Info, the cookie of revision 1, and how a
restarted controller settles a rollout the last run left unfinished."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

from controller import admin
from controller.fabric import entries as E
from controller.fabric.store import Store
from controller.p4rt.schema import P4Schema
from controller.pipeline.fit import misfits
from controller.pipeline.revisions import RevisionBook, State, make_revision, pipeline_cookie
from controller.runtime import Controller
from controller.topology import Topology
from tests.support.fixtures import free_port
from tests.support.revisions import SOFTSWITCH_CONFIG, base, renumbered, resized
from tests.support.settings import settings_for_test

SPECS = [
    E.EntrySpec("s1", E.LABEL_TABLE, (("label", 1024),), "FabricIngress.forward", (("port", 2),)),
    E.EntrySpec("s1", E.EDGE_TABLE, (("ingress_port", 1), ("vlan_id", 100)), "FabricIngress.push_label", (("label", 1024),)),
    E.EntrySpec("s1", E.FABRIC_PORTS_TABLE, (("ingress_port", 2),), "FabricIngress.mark_fabric"),
]


def _without_table(name: str) -> p4i.P4Info:
    info = base()
    keep = [t for t in info.tables if t.preamble.name != name]
    del info.tables[:]
    info.tables.extend(keep)
    return info


def test_the_fabric_program_and_its_revisions_fit() -> None:
    assert misfits(P4Schema(base()), SPECS) == []
    assert misfits(P4Schema(renumbered()), SPECS) == []  # ids moved: names are what counts
    assert misfits(P4Schema(resized({E.LABEL_TABLE: 8})), SPECS) == []


def test_a_missing_table_or_a_narrow_parameter_is_named() -> None:
    assert misfits(P4Schema(_without_table(E.LABEL_TABLE)), SPECS) == [f"table {E.LABEL_TABLE}"]
    narrow = base()
    for action in narrow.actions:
        if action.preamble.name == "FabricIngress.forward":
            action.params[0].bitwidth = 1
    assert misfits(P4Schema(narrow), SPECS) == ["action FabricIngress.forward parameter port of 2 bits (it has 1)"]
    # what the connections do not use is not asked for: without label entries the table may go
    assert misfits(P4Schema(_without_table(E.LABEL_TABLE)), SPECS[1:]) == []


def test_revision_one_has_the_cookie_of_before_revisions() -> None:
    schema = P4Schema(base())
    rev = make_revision(schema, {"softswitch": SOFTSWITCH_CONFIG}, "settings", "settings", 1)
    p4info = schema.p4info.SerializeToString(deterministic=True)
    # what runtime.py computed before revisions: the restart-without-writes rule depends on it
    assert rev.cookie == pipeline_cookie(p4info, [SOFTSWITCH_CONFIG])
    assert make_revision(P4Schema(resized({E.LABEL_TABLE: 8})), {"softswitch": SOFTSWITCH_CONFIG}, "apply", "x", 2).id != rev.id


def _book(path: Path) -> tuple[RevisionBook, str, str]:
    """A store whose fabric runs revision 1 and was committing revision 2 when it stopped."""
    book = RevisionBook(Store(path))
    one = book.start(make_revision(P4Schema(base()), {"softswitch": SOFTSWITCH_CONFIG}, "settings", "settings", 1), {"s1", "s2"})
    two = make_revision(P4Schema(resized({E.LABEL_TABLE: 8})), {"softswitch": SOFTSWITCH_CONFIG}, "apply", "op", 2)
    two.previous = one.id
    two.move(State.COMMITTING)
    book.put(two)
    return book, one.id, two.id


def _restart(book: RevisionBook) -> RevisionBook:
    path = book.store.path
    book.store.close()
    again = RevisionBook(Store(path))
    again.start(make_revision(P4Schema(base()), {"softswitch": SOFTSWITCH_CONFIG}, "settings", "settings", 9), {"s1", "s2"})
    return again


def test_a_rollout_cut_short_returns_to_the_last_good_revision(tmp_path: Path) -> None:
    book, one, two = _book(tmp_path / "store.sqlite")
    book.revisions[two].committed = ["s1"]
    book.put(book.revisions[two])
    again = _restart(book)
    assert again.current() is not None and again.current().id == one
    assert again.revisions[two].state == State.ROLLED_BACK


def test_a_rollout_every_switch_committed_is_the_fabrics_after_a_restart(tmp_path: Path) -> None:
    book, one, two = _book(tmp_path / "store.sqlite")
    book.revisions[two].committed = ["s1", "s2"]
    book.put(book.revisions[two])
    again = _restart(book)
    assert again.current() is not None and again.current().id == two
    assert again.revisions[one].state == State.SUPERSEDED
    # and it stays so: the settings' program does not replace a revision an operator applied
    assert _restart(again).current().id == two


BASE_TEXT = text_format.MessageToString(base())
CONFIG = base64.b64encode(SOFTSWITCH_CONFIG).decode()


# --- bad input through the admin socket, answered before any switch is asked -------------------

TOPO = {
    "name": "pair",
    # never started: every answer below comes before a switch would be asked
    "switches": [{"name": n, "device_id": i + 1, "grpc_addr": f"127.0.0.1:{free_port()}", "cpu_port": 255,
                  "ports": [1, 2]} for i, n in enumerate(("s1", "s2"))],
    "links": [{"a": "s1:2", "b": "s2:2"}],
}


@pytest.mark.parametrize(("request_args", "error"), [
    ({"configs": {}}, "p4info: expected the P4Info in text format"),
    ({"p4info": "tables {", "configs": {}}, "p4info: not a P4Info in text format"),
    ({"p4info": BASE_TEXT, "configs": {}}, "config: no device config for target kind softswitch (switches s1, s2)"),
    ({"p4info": BASE_TEXT, "configs": {"nope": ""}}, "config: unknown target kind 'nope'"),
    ({"p4info": BASE_TEXT, "configs": {"softswitch": "%%%"}}, "config softswitch: not base64"),
    ({"p4info": BASE_TEXT, "configs": {"softswitch": CONFIG, "bmv2": CONFIG}},
     "config bmv2: no switch of this fabric is of target kind bmv2"),
    ({"p4info": BASE_TEXT, "configs": {"softswitch": CONFIG}}, "switches: s1, s2 not up"),
])
async def test_bad_input_is_refused_naming_the_field(tmp_path: Path, request_args: dict, error: str) -> None:
    ctl = Controller(Topology.model_validate(TOPO), settings_for_test(store_path=str(tmp_path / "s.sqlite")),
                     admin_path=tmp_path / "admin.sock")
    assert ctl.admin is not None
    await ctl.admin.start()
    try:
        with pytest.raises(RuntimeError) as refused:
            await admin.call(ctl.admin.path, "pipeline_apply", **request_args)
        assert str(refused.value).startswith(error), refused.value
        with pytest.raises(RuntimeError, match="revision: no revision matches 'zz'"):
            await admin.call(ctl.admin.path, "pipeline_delete", revision="zz")
        one = ctl.pipeline.view()[0]["id"]
        with pytest.raises(RuntimeError, match=f"revision: {one} \\(number 1\\) is the fabric's revision, in use"):
            await admin.call(ctl.admin.path, "pipeline_delete", revision="1")
        assert sum(c.pipeline_rpcs for c in ctl.clients.values()) == 0
    finally:
        await ctl.admin.stop()
        ctl.store.close()
