"""The hand-kept P4Info must agree with what p4c emits for p4/nsm_fabric.p4 (runs when p4c is on PATH)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from google.protobuf import text_format
from finsy.proto import p4i

from controller.settings import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("p4c") is None, reason="p4c is not on PATH")


def vocabulary(info: p4i.P4Info) -> dict:
    """What must agree: names, match kinds, widths, params, controller metadata (not ids)."""
    actions = {a.preamble.id: a for a in info.actions}
    out: dict = {"tables": {}, "actions": {}, "packet": {}, "profiles": {}, "direct_counters": {}}
    for t in info.tables:
        out["tables"][t.preamble.name] = {
            "fields": [(f.name, f.bitwidth, f.match_type) for f in t.match_fields],
            "actions": sorted(actions[r.id].preamble.name for r in t.action_refs),
            "size": t.size,
            "has_profile": bool(t.implementation_id),
        }
    for a in info.actions:
        out["actions"][a.preamble.name] = [(p.name, p.bitwidth) for p in a.params]
    for c in info.controller_packet_metadata:
        out["packet"][c.preamble.name] = [(m.name, m.bitwidth) for m in c.metadata]
    for p in info.action_profiles:
        out["profiles"][p.preamble.name] = (p.with_selector, p.size)
    for c in info.direct_counters:
        out["direct_counters"][c.preamble.name] = c.spec.unit
    return out


def test_p4info_matches_p4c(tmp_path):
    out = tmp_path / "p4info.txtpb"
    subprocess.run(
        ["p4c", "--target", "bmv2", "--arch", "v1model", "-o", str(tmp_path), "--p4runtime-files", str(out),
         str(REPO_ROOT / "p4" / "nsm_fabric.p4")],
        check=True, capture_output=True, text=True,
    )
    compiled = text_format.Parse(out.read_text(), p4i.P4Info())
    kept = text_format.Parse((REPO_ROOT / "p4" / "nsm_fabric.p4info.txtpb").read_text(), p4i.P4Info())
    assert vocabulary(kept) == vocabulary(compiled)
