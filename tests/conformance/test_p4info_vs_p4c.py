"""The hand-kept P4Infos must agree with what the compilers emit; each check runs when its compiler
is on PATH and is skipped, naming it, otherwise.

- p4/nsm_fabric.p4info.txtpb against p4c (v1model);
- p4/nsm_fabric_pna.p4info.txtpb against p4c-dpdk, and against p4c's own PNA front end
  (p4c-bm2-ss writes the P4Info before its BMv2 back end refuses the PNA package), which also
  type-checks the program against P4-DPDK's pna.p4;
- p4/nsm_fabric_tna.p4 with bf-p4c: its P4Info has the fabric's vocabulary with 32-bit ports.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

from controller.settings import REPO_ROOT
from controller.targets import profile
from controller.targets.p4info_ports import PORT_FIELDS

P4 = REPO_ROOT / "p4"


def needs(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not on PATH")


def vocabulary(info: p4i.P4Info, port_bits: int | None = None) -> dict[str, Any]:
    """What must agree: names, match kinds, widths, params, controller metadata, translated types
    (not ids). With `port_bits`, port fields are shown as that wide and without their type."""

    def field(name: str, bitwidth: int, type_name: str) -> tuple[str, int, str]:
        if port_bits is not None and name in PORT_FIELDS:
            return name, port_bits, ""
        return name, bitwidth, type_name

    actions = {a.preamble.id: a for a in info.actions}
    out: dict[str, Any] = {"tables": {}, "actions": {}, "packet": {}, "profiles": {}, "direct_counters": {}, "types": {}}
    for t in info.tables:
        out["tables"][t.preamble.name] = {
            "fields": [(*field(f.name, f.bitwidth, f.type_name.name), f.match_type) for f in t.match_fields],
            "actions": sorted(actions[r.id].preamble.name for r in t.action_refs),
            "size": t.size,
            "has_profile": bool(t.implementation_id),
        }
    for a in info.actions:
        out["actions"][a.preamble.name] = [field(p.name, p.bitwidth, p.type_name.name) for p in a.params]
    for c in info.controller_packet_metadata:
        out["packet"][c.preamble.name] = [field(m.name, m.bitwidth, m.type_name.name) for m in c.metadata]
    for p in info.action_profiles:
        out["profiles"][p.preamble.name] = (p.with_selector, p.size)
    for c in info.direct_counters:
        out["direct_counters"][c.preamble.name] = c.spec.unit
    if port_bits is None:
        for name, t in info.type_info.new_types.items():
            out["types"][name] = (t.translated_type.uri, t.translated_type.sdn_bitwidth)
    return out


def load(path: Path) -> p4i.P4Info:
    return text_format.Parse(path.read_text(), p4i.P4Info())


@needs("p4c")
def test_p4info_matches_p4c(tmp_path: Path) -> None:
    out = tmp_path / "p4info.txtpb"
    subprocess.run(
        ["p4c", "--target", "bmv2", "--arch", "v1model", "-o", str(tmp_path), "--p4runtime-files", str(out),
         str(P4 / "nsm_fabric.p4")],
        check=True, capture_output=True, text=True,
    )
    assert vocabulary(load(P4 / "nsm_fabric.p4info.txtpb")) == vocabulary(load(out))


@needs("p4c-dpdk")
def test_pna_p4info_matches_p4c_dpdk(tmp_path: Path) -> None:
    out = tmp_path / "p4Info.txt"
    (tmp_path / "pipe").mkdir()
    subprocess.run(
        ["p4c-dpdk", "--arch", "pna", "--target", "dpdk", "--p4runtime-files", str(out),
         "--bf-rt-schema", str(tmp_path / "bf-rt.json"), "--context", str(tmp_path / "pipe" / "context.json"),
         "-o", str(tmp_path / "pipe" / "nsm_fabric_pna.spec"), str(P4 / "nsm_fabric_pna.p4")],
        check=True, capture_output=True, text=True,
    )
    assert vocabulary(load(P4 / "nsm_fabric_pna.p4info.txtpb")) == vocabulary(load(out))
    assert (tmp_path / "pipe" / "nsm_fabric_pna.spec").read_text().count("apply") == 1


@needs("p4c-bm2-ss")
def test_pna_program_and_p4info_agree_with_p4cs_pna_front_end(tmp_path: Path) -> None:
    out = tmp_path / "p4info.txtpb"
    compiler = shutil.which("p4c-bm2-ss")
    assert compiler is not None
    # P4-DPDK's pna.p4 (more hash algorithms, count(pkt_len)) where p4c installs its includes
    dpdk_include = Path(compiler).resolve().parent.parent / "share" / "p4c" / "p4include" / "dpdk"
    if not (dpdk_include / "pna.p4").exists():
        pytest.skip(f"P4-DPDK's pna.p4 is not at {dpdk_include}")
    run = subprocess.run(
        ["p4c-bm2-ss", "--arch", "pna", "-I", str(dpdk_include), "--p4runtime-files", str(out),
         "-o", str(tmp_path / "bmv2.json"), str(P4 / "nsm_fabric_pna.p4")],
        capture_output=True, text=True,
    )
    # The front end passed and wrote the P4Info; the only error is the BMv2 back end's refusal
    # of a package that is not V1Switch.
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert out.exists(), run.stderr
    assert all("main package" in line for line in errors), run.stderr
    assert vocabulary(load(P4 / "nsm_fabric_pna.p4info.txtpb")) == vocabulary(load(out))


@needs("bf-p4c")
def test_tna_program_compiles_with_the_fabrics_vocabulary(tmp_path: Path) -> None:
    out = tmp_path / "nsm_fabric_tna.p4info.txtpb"
    subprocess.run(
        ["bf-p4c", "--arch", "tna", "-o", str(tmp_path), "--p4runtime-files", str(out), str(P4 / "nsm_fabric_tna.p4")],
        check=True, capture_output=True, text=True,
    )
    compiled = load(out)
    profile("tofino").check_p4info(compiled, str(out))
    tna, v1model = vocabulary(compiled, port_bits=32), vocabulary(load(P4 / "nsm_fabric.p4info.txtpb"), port_bits=32)
    assert tna["tables"].keys() == v1model["tables"].keys()
    assert {k: v["fields"] for k, v in tna["tables"].items()} == {k: v["fields"] for k, v in v1model["tables"].items()}
    assert {k: v for k, v in tna["actions"].items() if k != "NoAction"} == {
        k: v for k, v in v1model["actions"].items() if k != "NoAction"}
    assert tna["packet"] == v1model["packet"]  # the port at 32 bits, its padding kept
    assert tna["profiles"].keys() == v1model["profiles"].keys()
