"""Pipeline revisions end to end on a diamond of softswitches: a revision every switch refuses is
tainted and never tried again, one that some refuse is held, one that all accept is committed
switch by switch with the entities rewritten through its P4Info; a commit failing half-way, or a
controller stopped mid-rollout, leaves the fabric on one revision; what the stored connections
need is checked before any switch is touched; the revision in use cannot be deleted.

Softswitch only: its `--refuse-table` makes one switch refuse what the others take, and its log
counts every refused SetForwardingPipelineConfig. s2 refuses a P4Info that declares
FabricIngress.label_stats.

Fabric: diamond in the root namespace on free ports, s1 - s2|s3 - s4, h1 on s1:1, h4 on s4:1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from finsy.proto import p4i, p4r, p4r_grpc
from google.protobuf import text_format

from controller import admin
from controller.fabric import entries as E
from controller.runtime import Controller
from controller.settings import REPO_ROOT
from controller.topology import Topology
from tests.e2e.hosts import Host
from tests.e2e.test_heal import exactly_desired, wait_for
from tests.e2e.topology import Net, crosses
from tests.support.fixtures import SoftSwitchProcess, start_softswitch
from tests.support.revisions import (
    ADDED_TABLE,
    SOFTSWITCH_CONFIG,
    base,
    renumbered,
    resized,
    with_added_table,
    with_unknown_action,
)
from tests.support.settings import settings_for_test

pytestmark = [pytest.mark.root]

CPU_PORT = 255
LINKS = [("s1", 2, "s2", 1), ("s2", 2, "s4", 2), ("s1", 3, "s3", 1), ("s3", 2, "s4", 3)]
HOSTS = {"h1": ("s1", 1), "h4": ("s4", 1)}
SWITCHES = ("s1", "s2", "s3", "s4")
REFUSES = {"s2": ["--refuse-table", ADDED_TABLE]}
SETTINGS = {"keepalive_interval": 0.1, "keepalive_timeout": 1.0, "probe_interval": 0.02, "anti_entropy_interval": 0}
REFUSED = "event=pipeline_refused"


@dataclasses.dataclass
class Fabric:
    net: Net
    hosts: dict[str, Host]
    ifnames: dict[tuple[str, int], str]
    run_dir: Path
    processes: dict[str, SoftSwitchProcess] = dataclasses.field(default_factory=dict)
    stacks: dict[str, contextlib.ExitStack] = dataclasses.field(default_factory=dict)
    topo: Topology = dataclasses.field(init=False)

    def start(self, name: str, address: str | None = None) -> SoftSwitchProcess:
        device_id = SWITCHES.index(name) + 1
        ports = sorted(p for (s, p) in self.ifnames if s == name)
        stack = self.stacks[name] = contextlib.ExitStack()
        self.processes[name] = stack.enter_context(start_softswitch(
            device_id, CPU_PORT, [f"{p}@{self.ifnames[(name, p)]}" for p in ports], extra_args=REFUSES.get(name, []),
            address=address))
        return self.processes[name]

    def kill(self, name: str) -> None:
        self.processes[name].process.send_signal(signal.SIGKILL)
        self.processes[name].process.wait()

    def restart(self, name: str) -> None:
        address = self.processes[name].address
        self.stacks.pop(name).close()
        self.start(name, address)

    def refusals(self) -> dict[str, int]:
        """Refused SetForwardingPipelineConfig calls in each switch's log since it started."""
        return {n: p.log().count(REFUSED) for n, p in self.processes.items()}

    def close(self) -> None:
        for stack in self.stacks.values():
            stack.close()


@pytest.fixture(scope="module")
def fabric(module_net: Net, tmp_path_factory) -> Iterator[Fabric]:
    hosts, ifnames = module_net.wire(HOSTS, LINKS)
    made = Fabric(module_net, hosts, ifnames, tmp_path_factory.mktemp("revisions"))
    try:
        for name in SWITCHES:
            made.start(name)
        made.topo = Topology.model_validate({
            "name": "diamond-revisions",
            "switches": [{"name": n, "device_id": SWITCHES.index(n) + 1, "grpc_addr": made.processes[n].address,
                          "cpu_port": CPU_PORT, "ports": sorted(p for (s, p) in ifnames if s == n)} for n in SWITCHES],
            "links": [{"a": f"{a}:{ap}", "b": f"{b}:{bp}"} for a, ap, b, bp in LINKS],
            "hosts": [{"name": h, "attach": f"{sw}:{p}"} for h, (sw, p) in HOSTS.items()],
        })
        yield made
    finally:
        made.close()


@contextlib.asynccontextmanager
async def controller(fabric: Fabric, store: Path) -> AsyncIterator[Controller]:
    ctl = Controller(fabric.topo, settings_for_test({**SETTINGS, "store_path": str(store)}),
                     admin_path=store.with_suffix(".sock"))
    await ctl.start()
    try:
        assert await ctl.wait_ready(30), "switches did not come up"
        yield ctl
    finally:
        await ctl.stop()


def store_path(fabric: Fabric) -> Path:
    return fabric.run_dir / f"{uuid.uuid4().hex[:6]}.sqlite"


def p4info_text(info: p4i.P4Info) -> str:
    return text_format.MessageToString(info)


async def apply(ctl: Controller, info: p4i.P4Info, config: bytes = SOFTSWITCH_CONFIG) -> dict:
    assert ctl.admin is not None
    return await admin.call(ctl.admin.path, "pipeline_apply", p4info=p4info_text(info),
                            configs={"softswitch": base64.b64encode(config).decode()})


def cookies(fabric: Fabric) -> dict[str, int]:
    """Each switch's pipeline cookie, asked of the switch itself."""
    out = {}
    for name, process in fabric.processes.items():
        with grpc.insecure_channel(process.address) as channel:
            reply = p4r_grpc.P4RuntimeStub(channel).GetForwardingPipelineConfig(p4r.GetForwardingPipelineConfigRequest(
                device_id=SWITCHES.index(name) + 1, response_type=p4r.GetForwardingPipelineConfigRequest.COOKIE_ONLY), timeout=5)
        out[name] = reply.config.cookie.cookie
    return out


async def flows(fabric: Fabric, plan, tag: str) -> None:
    await crosses(fabric.hosts["h1"], "eth0", fabric.hosts["h4"], "eth0", plan.a.vlan, f"{tag}-{uuid.uuid4().hex[:6]}")


async def read_all(ctl: Controller) -> dict[str, set]:
    return {sw: set(await ctl.fabric.read_back(sw)) for sw in ctl.clients}


def rpcs(ctl: Controller) -> int:
    return sum(c.pipeline_rpcs for c in ctl.clients.values())


async def test_a_revision_every_switch_refuses_is_tainted_and_never_tried_again(fabric: Fabric) -> None:
    store = store_path(fabric)
    async with controller(fabric, store) as ctl:
        plan = await ctl.fabric.connect("h1", "h4")
        await flows(fabric, plan, "before")
        before, refused_before, pushes = await read_all(ctl), fabric.refusals(), rpcs(ctl)
        path = fabric.run_dir / "unknown-action.p4info.txtpb"
        path.write_text(p4info_text(with_unknown_action()))
        config = fabric.run_dir / "softswitch.json"
        config.write_bytes(SOFTSWITCH_CONFIG)
        assert ctl.admin is not None
        # through the command an operator runs
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.commands.cli", "pipeline", "apply", "--p4info", str(path),
            "--config", f"softswitch={config}", "--admin-socket", str(ctl.admin.path),
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out = (await cli.communicate())[0].decode()
        assert cli.returncode == 1, out
        assert ": tainted" in out, out
        rev = next(r for r in ctl.pipeline.view() if r["state"] == "tainted")
        assert all("FabricIngress.set_dscp" in a["message"] for a in rev["answers"]), rev["answers"]
        assert {a["switch"] for a in rev["answers"] if a["step"] == "verify" and a["code"] == "INVALID_ARGUMENT"} == set(SWITCHES)
        # one VERIFY per switch, each refused; nothing committed; entries and traffic as they were
        assert rpcs(ctl) - pushes == len(SWITCHES)
        assert {n: c - refused_before[n] for n, c in fabric.refusals().items()} == dict.fromkeys(SWITCHES, 1)
        assert await read_all(ctl) == before
        await flows(fabric, plan, "after")
        with pytest.raises(RuntimeError, match=f"{rev['id']} .*is tainted"):
            await apply(ctl, with_unknown_action())
        assert rpcs(ctl) - pushes == len(SWITCHES)
        await ctl.fabric.disconnect(plan.id)
    async with controller(fabric, store) as again:
        assert again.pipeline.view()[-1]["state"] == "tainted"
        with pytest.raises(RuntimeError, match="is tainted"):
            await apply(again, with_unknown_action())
        # the restarted controller kept the pipeline (cookie) and asked nothing of any switch
        assert rpcs(again) == 0
        assert {n: c - refused_before[n] for n, c in fabric.refusals().items()} == dict.fromkeys(SWITCHES, 1)
        # deleting it is the only way to clear the taint
        assert ctl.admin is not None and again.admin is not None
        await admin.call(again.admin.path, "pipeline_delete", revision=rev["id"])
        assert all(r["id"] != rev["id"] for r in again.pipeline.view())


async def test_a_revision_one_switch_refuses_is_held_and_committed_nowhere(fabric: Fabric) -> None:
    async with controller(fabric, store_path(fabric)) as ctl:
        plan = await ctl.fabric.connect("h1", "h4")
        before, cookies_before, pushes = await read_all(ctl), cookies(fabric), rpcs(ctl)
        result = await apply(ctl, with_added_table())
        assert result["state"] == "held"
        assert rpcs(ctl) - pushes == len(SWITCHES)  # VERIFY only
        assert cookies(fabric) == cookies_before and await read_all(ctl) == before
        # the operator's view names the switch and its error
        held = next(r for r in await admin.call(ctl.admin.path, "pipeline_revisions") if r["state"] == "held")
        refused = [a for a in held["answers"] if not a["ok"]]
        assert [(a["switch"], a["code"]) for a in refused] == [("s2", "INVALID_ARGUMENT")]
        assert ADDED_TABLE in refused[0]["message"]
        await flows(fabric, plan, "held")
        await ctl.fabric.disconnect(plan.id)


async def test_a_revision_all_accept_is_committed_with_the_entities_under_its_ids(fabric: Fabric) -> None:
    async with controller(fabric, store_path(fabric)) as ctl:
        plan = await ctl.fabric.connect("h1", "h4")
        pushes = rpcs(ctl)
        result = await apply(ctl, renumbered(resized({E.LABEL_TABLE: 4096})))
        assert result["state"] == "in_sync", result
        assert rpcs(ctl) - pushes == 2 * len(SWITCHES)  # VERIFY, then the commit, on each
        # the softswitch carries its entities over by name: nothing is lost while they are rewritten
        commits = [a["message"] for a in result["answers"] if a["step"] == "commit"]
        assert commits == ["RECONCILE_AND_COMMIT: forwarding state kept"] * len(SWITCHES), result["answers"]
        print(f"rollout of 4 switches: {result['seconds']} s, {rpcs(ctl) - pushes} SetForwardingPipelineConfig calls")
        assert set(cookies(fabric).values()) == {result["cookie"]}
        # the ids moved: what was written, and is read back, resolved through the new P4Info
        label_fwd = ctl.clients["s1"].schema.table(E.LABEL_TABLE)
        assert label_fwd.id == ctl.schema.table(E.LABEL_TABLE).id + 0x100 and label_fwd.size == 4096
        await exactly_desired(ctl)
        await flows(fabric, plan, "renumbered")
        # in use: not deleted
        with pytest.raises(RuntimeError, match="is the fabric's revision, in use"):
            await admin.call(ctl.admin.path, "pipeline_delete", revision=result["id"])
        await ctl.fabric.disconnect(plan.id)


async def test_a_p4info_lacking_a_table_the_connections_use_is_refused_before_any_switch(fabric: Fabric) -> None:
    async with controller(fabric, store_path(fabric)) as ctl:
        plan = await ctl.fabric.connect("h1", "h4")
        lacking = base()
        keep = [t for t in lacking.tables if t.preamble.name != E.LABEL_TABLE]
        del lacking.tables[:]
        lacking.tables.extend(keep)
        pushes, refused = rpcs(ctl), fabric.refusals()
        with pytest.raises(RuntimeError, match=f"p4info: the stored connections need .*table {E.LABEL_TABLE}"):
            await apply(ctl, lacking)
        assert rpcs(ctl) == pushes and fabric.refusals() == refused
        assert [r["state"] for r in ctl.pipeline.view()] == ["in_sync"]
        await ctl.fabric.disconnect(plan.id)


def hook_commit(ctl: Controller, switch: str, before, after=None) -> None:
    """Run `before` as the rollout's commit on `switch` starts, `after` once it returned."""
    client = ctl.clients[switch]
    real = client.set_pipeline

    async def set_pipeline(action, target):
        if action != p4r.SetForwardingPipelineConfigRequest.VERIFY and target.cookie != client.target.cookie:
            before()
            await real(action, target)
            if after is not None:
                after()
            return
        await real(action, target)

    client.set_pipeline = set_pipeline


async def test_a_commit_that_fails_half_way_leaves_the_fabric_on_the_good_revision(fabric: Fabric) -> None:
    async with controller(fabric, store_path(fabric)) as ctl:
        plan = await ctl.fabric.connect("h1", "h4")
        good = ctl.clients["s1"].target.cookie
        hook_commit(ctl, "s3", lambda: fabric.kill("s3"))  # s1 and s2 commit first
        result = await apply(ctl, resized({E.LABEL_TABLE: 2048}))
        assert result["state"] == "tainted", result
        assert [e["state"] for e in result["history"]][-2:] == ["rolled_back", "tainted"]
        assert result["committed"] == ["s1", "s2"]
        assert {a["switch"] for a in result["answers"] if a["step"] == "rollback" and a["ok"]} == {"s1", "s2"}
        await asyncio.to_thread(fabric.restart, "s3")
        await wait_for(lambda: "s3" in ctl.fabric.ready_switches, 20, "s3 to come back and be reconciled")
        assert cookies(fabric) == dict.fromkeys(SWITCHES, good)
        await exactly_desired(ctl)
        await flows(fabric, plan, "after-rollback")
        await ctl.fabric.disconnect(plan.id)


@pytest.mark.parametrize("cut_at", ["s3", "s4"])
async def test_a_controller_stopped_mid_rollout_converges_to_one_revision(fabric: Fabric, cut_at: str) -> None:
    """Cut before s3's commit (s1, s2 committed): back to the last good revision. Cut after
    s4's, the last (every switch committed): the new revision, its entities written on restart."""
    store = store_path(fabric)
    async with controller(fabric, store) as ctl:
        plan = await ctl.fabric.connect("h1", "h4")
        good = ctl.clients["s1"].target.cookie
        task = asyncio.ensure_future(apply(ctl, resized({E.LABEL_TABLE: 3072})))
        cut = lambda: [t.cancel() for t in asyncio.all_tasks() if "_serve" in repr(t.get_coro())]  # noqa: E731
        if cut_at == "s3":
            hook_commit(ctl, "s3", cut)
        else:
            hook_commit(ctl, "s4", lambda: None, cut)
        with pytest.raises((RuntimeError, ConnectionError, ValueError, asyncio.IncompleteReadError)):
            await task
    async with controller(fabric, store) as again:
        rev = again.pipeline.view()[-1]
        want = good if cut_at == "s3" else rev["cookie"]
        assert rev["state"] == ("rolled_back" if cut_at == "s3" else "in_sync"), rev
        await wait_for(lambda: set(cookies(fabric).values()) == {want}, 10, "every switch on one revision")
        await exactly_desired(again)
        await flows(fabric, plan, f"after-cut-{cut_at}")
        await again.fabric.disconnect(plan.id)
