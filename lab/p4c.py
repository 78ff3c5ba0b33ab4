"""What a lab of BMv2 switches needs beyond the softswitch's: every switch of the topology set to
BMv2, and p4c's build of p4/nsm_fabric.p4 for the controller to push (the BMv2 JSON, and p4c's
P4Info with p4c's own ids: the controller resolves tables and actions by name)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from controller.settings import REPO_ROOT
from controller.topology import Target, Topology

# No Mininet here (lab.switches imports it): test modules import this at collection.

PROGRAM = REPO_ROOT / "p4" / "nsm_fabric.p4"


def with_switch_kind(topo: Topology, kind: Target | str) -> Topology:
    """The topology with every switch of `kind`, validated again: `model_copy(update=...)` would
    keep a plain string where a Target belongs, and leave `topo.switch(name)` answering the old
    switches (the validator builds that index)."""
    data = topo.model_dump(mode="json")
    data["switches"] = [{**s, "target": Target(kind).value} for s in data["switches"]]
    return Topology.model_validate(data)


def bmv2_build(out_dir: Path) -> dict[str, str]:
    """p4c's BMv2 build of the fabric program in out_dir (once per directory), as the Settings
    overrides that load it."""
    json_path, p4info_path = out_dir / "nsm_fabric.json", out_dir / "nsm_fabric.p4info.txtpb"
    if not json_path.exists():
        if shutil.which("p4c") is None:
            raise RuntimeError("BMv2 needs p4c on PATH to build p4/nsm_fabric.p4")
        out_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["p4c", "--target", "bmv2", "--arch", "v1model", "-o", str(out_dir),
                               "--p4runtime-files", str(p4info_path), str(PROGRAM)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"p4c failed on {PROGRAM}:\n{done.stderr}")
    return {"bmv2_json_path": str(json_path), "p4info_path": str(p4info_path)}


def controller_overrides(kind: Target | str, run_dir: Path) -> dict[str, str]:
    """Settings a controller of switches of `kind` needs beyond the defaults."""
    return bmv2_build(run_dir / "p4c") if Target(kind) is Target.BMV2 else {}
