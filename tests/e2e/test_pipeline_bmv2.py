"""Pipeline revisions on real BMv2 (simple_switch_grpc in Mininet, diamond on free ports): a second
build of the fabric program by p4c (another label_fwd size, p4c's own ids) is rolled out to every
switch and the connection's entities are written again under it; a device config BMv2 cannot
load is refused by every switch and tainted, the fabric untouched.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import text_format

from controller.pipeline.rollout import Refused
from controller.runtime import Controller
from controller.settings import REPO_ROOT
from controller.topology import load_topology
from lab.p4c import PROGRAM
from tests.e2e.switch_kinds import BMV2, controller_overrides, needs_bmv2, on_kind, require
from tests.e2e.test_fabric_connections import send_and_expect
from tests.e2e.test_heal import ctl, exactly_desired, hosts  # noqa: F401 (fixtures)
from tests.e2e.topology import with_free_ports

pytestmark = [
    pytest.mark.root,
    pytest.mark.bmv2,
    needs_bmv2,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet, network namespaces)"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)"),
]

LABEL_FWD_SIZE = "size = 32768;"
SECOND_SIZE = "size = 16384;"


def second_build(out: Path) -> tuple[Path, Path]:
    """p4c's build of the fabric program with label_fwd half its size: (P4Info, BMv2 JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    source = PROGRAM.read_text()
    assert source.count(LABEL_FWD_SIZE) == 1, "label_fwd's size moved: update the test"
    program = out / "nsm_fabric.p4"
    program.write_text(source.replace(LABEL_FWD_SIZE, SECOND_SIZE))
    p4info = out / "nsm_fabric.p4info.txtpb"
    done = subprocess.run(["p4c", "--target", "bmv2", "--arch", "v1model", "-o", str(out), "--p4runtime-files", str(p4info),
                           str(program)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return p4info, out / "nsm_fabric.json"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The shape test_heal's fixtures (imported above) take, on free ports: labs of other
    worktrees may hold the ones the topology file names."""
    from lab.harness import Lab

    require(BMV2)
    topo = with_free_ports(on_kind(load_topology(REPO_ROOT / "topologies" / "diamond.yaml"), BMV2))
    run_dir = tmp_path_factory.mktemp("revisions-bmv2")
    lab = Lab(topo, run_dir)
    lab.start()
    lab.overrides = {**controller_overrides(BMV2, run_dir), **lab.controller_settings()}
    try:
        yield lab.topology, lab, run_dir
    finally:
        lab.stop()


async def apply(ctl: Controller, p4info: str, config: bytes) -> dict:
    return await ctl.pipeline.apply(p4info, {"bmv2": base64.b64encode(config).decode()}, "test")


async def test_a_second_p4c_build_is_rolled_out_to_every_bmv2(ctl, hosts, lab) -> None:
    _, _, run_dir = lab
    plan = await ctl.fabric.connect("h1", "h4")
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"before-" + plan.id[:6].encode())
    p4info, config = second_build(run_dir / "second")
    pushes = sum(c.pipeline_rpcs for c in ctl.clients.values())
    result = await apply(ctl, p4info.read_text(), config.read_bytes())
    assert result["state"] == "in_sync", "\n".join(f"{a['switch']} {a['step']} {a['ok']} {a['message']}" for a in result["answers"])
    assert sum(c.pipeline_rpcs for c in ctl.clients.values()) - pushes >= 2 * len(ctl.clients)
    assert {c.schema.table("FabricIngress.label_fwd").size for c in ctl.clients.values()} == {16384}
    assert all(a["ok"] for a in result["answers"]), result["answers"]
    await exactly_desired(ctl)
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"after-" + plan.id[:6].encode())


async def test_a_config_that_is_not_a_bmv2_json_is_refused_before_any_switch(ctl, hosts) -> None:
    """simple_switch_grpc VERIFYs any bytes, and committing them wrecks it: the controller checks."""
    plan = await ctl.fabric.connect("h1", "h4")
    before = {sw: set(await ctl.fabric.read_back(sw)) for sw in ctl.clients}
    pushes = sum(c.pipeline_rpcs for c in ctl.clients.values())
    with pytest.raises(Refused, match="config bmv2 is not a BMv2 JSON"):
        await apply(ctl, text_format.MessageToString(ctl.schema.p4info), b'{"not": "a BMv2 program"}')
    assert sum(c.pipeline_rpcs for c in ctl.clients.values()) == pushes
    assert {sw: set(await ctl.fabric.read_back(sw)) for sw in ctl.clients} == before
    await send_and_expect(hosts, "h1", "h4", plan.a.vlan, plan.b.vlan, b"refused-" + plan.id[:6].encode())
