"""Fixtures for the lab and host-interface tests. Test modules import them explicitly:

    from tests.e2e.lab_fixtures import line3_lab, scratch_netns, veth_pair  # noqa: F401

Scratch namespaces follow tests/e2e/netns.py's naming (`p4t{pid}-...`), so they cannot clash with
a parallel run's and its sweep_stale() removes them if this run is killed. The lab uses the
topology's names (h1, s1-eth1, ...) and serializes with other labs through its lock.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

from controller.runtime import Controller
from controller.topology import Target, Topology
from lab.harness import Lab
from lab.switches import LabError, find_command
from tests.support.settings import settings_for_test

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"
_counter = itertools.count(1)


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and veth pairs")


def softswitch_or_skip() -> str:
    """The softswitch command, if it is installed and answers --help; skips otherwise."""
    require_root()
    try:
        command = find_command(Target.SOFTSWITCH)
    except LabError as exc:
        pytest.skip(str(exc))
    probe = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"p4nsm-softswitch is not usable yet: {(probe.stderr or probe.stdout).strip()[-300:]}")
    return command


@pytest.fixture
def lab_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lab")


@pytest.fixture
def line3_lab(lab_run_dir: Path) -> Iterator[Lab]:
    softswitch_or_skip()
    with Lab(TOPOLOGIES / "line3.yaml", lab_run_dir) as lab:
        yield lab


@pytest.fixture
def scratch_netns() -> Iterator[Callable[[], str]]:
    """A factory of empty, uniquely named network namespaces, all removed after the test."""
    require_root()
    made: list[str] = []

    def make() -> str:
        name = f"p4t{os.getpid()}-hif-{next(_counter)}"
        netns.create(name)
        made.append(name)
        return name

    yield make
    for name in made:
        if name in netns.listnetns():
            netns.remove(name)


@pytest.fixture
def veth_pair(scratch_netns: Callable[[], str]) -> tuple[str, str, str, str]:
    """Two namespaces joined by a veth pair, both ends up: (netns_a, iface_a, netns_b, iface_b)."""
    ns_a, ns_b = scratch_netns(), scratch_netns()
    with IPRoute(netns=ns_a, flags=0) as ipr:
        ipr.link("add", ifname="up0", kind="veth", peer={"ifname": "up1", "net_ns_fd": ns_b})
        ipr.link("set", index=ipr.link_lookup(ifname="up0")[0], state="up")
    with IPRoute(netns=ns_b, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="up1")[0], state="up")
    return ns_a, "up0", ns_b, "up1"


@contextlib.asynccontextmanager
async def running_controller(topo: Topology, run_dir: Path, overrides: Mapping[str, Any] | None = None,
                             setup: Callable[[Controller], None] | None = None) -> AsyncIterator[Controller]:
    """An in-process controller on its own store in `run_dir`, ready (every switch reconciled);
    afterwards every connection it still holds is removed from the switches, then it stops.
    `setup` runs before the start (listeners that must see the first events)."""
    ctl = Controller(topo, settings_for_test({**(overrides or {}),
                                              "store_path": str(run_dir / f"store-{uuid.uuid4().hex[:6]}.sqlite")}))
    if setup is not None:
        setup(ctl)
    await ctl.start()
    try:
        assert await ctl.wait_ready(30), "switches did not come up"
        yield ctl
    finally:
        for conn_id in list(ctl.fabric.plans):
            await ctl.fabric.disconnect(conn_id)
        await ctl.stop()

