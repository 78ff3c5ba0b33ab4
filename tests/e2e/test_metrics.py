"""The controller's metrics as a real Prometheus server sees them: Prometheus scrapes a running
controller on a diamond of softswitches, and a silent cut of a link the connection uses shows in
its query API as the link down and a heal round that switched the connection over.

Softswitches only: the subject is what the controller exports, not the switch kind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from controller.runtime import Controller
from controller.settings import REPO_ROOT
from controller.topology import Topology, load_topology, switch_ifname
from lab import faults
from tests.e2e.lab_fixtures import running_controller
from tests.support.fixtures import free_port

PROMETHEUS = shutil.which("prometheus")
LAB_WAIT_S = 900.0  # other labs on a shared machine hold the lab lock for minutes
READY_S = 60.0
SEEN_S = 30.0

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Mininet, network namespaces)"),
    pytest.mark.skipif(shutil.which("mnexec") is None, reason="needs Mininet (mnexec)"),
    pytest.mark.skipif(PROMETHEUS is None, reason="needs Prometheus: `prometheus` on PATH (Debian: apt-get install prometheus)"),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Path]]:
    from lab.harness import Lab
    from tests.e2e.lab_fixtures import softswitch_or_skip

    softswitch_or_skip()
    topo = load_topology(REPO_ROOT / "topologies" / "diamond.yaml")
    run_dir = tmp_path_factory.mktemp("metrics-lab")
    with Lab(topo, run_dir, lock_timeout=LAB_WAIT_S, tls=False):  # about HTTP: a controller with an SVID serves HTTPS
        yield topo, run_dir


@pytest.fixture
async def ctl(lab: tuple[Topology, Path]) -> AsyncIterator[Controller]:
    topo, run_dir = lab
    async with running_controller(topo, run_dir) as ctl:
        yield ctl


class Prometheus:
    """A Prometheus server of its own for one test: scrapes `target` every 250 ms."""

    def __init__(self, target: str, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = work / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 250ms, scrape_timeout: 200ms, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: p4nsm\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log_path = work / "prometheus.log"
        assert PROMETHEUS is not None
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    async def ready(self, http: aiohttp.ClientSession) -> None:
        deadline = asyncio.get_running_loop().time() + READY_S
        while asyncio.get_running_loop().time() < deadline:
            assert self.process.poll() is None, f"prometheus exited:\n{self.log_tail()}"
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.url}/-/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise AssertionError(f"prometheus not ready after {READY_S}s:\n{self.log_tail()}")

    async def value(self, http: aiohttp.ClientSession, query: str) -> float | None:
        """The instant query's single value, or None while it has no result."""
        async with http.get(f"{self.url}/api/v1/query", params={"query": query}) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        result = body["data"]["result"]
        assert len(result) <= 1, f"{query}: {result}"
        return float(result[0]["value"][1]) if result else None

    async def until(self, http: aiohttp.ClientSession, checks: dict[str, Callable[[float], bool]], what: str) -> None:
        """Until every query has a value and its check holds."""
        deadline = asyncio.get_running_loop().time() + SEEN_S
        seen: dict[str, float | None] = {}
        while asyncio.get_running_loop().time() < deadline:
            seen = {q: await self.value(http, q) for q in checks}
            if all(v is not None and checks[q](v) for q, v in seen.items()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"Prometheus did not show {what} within {SEEN_S}s: {seen}")


@pytest.fixture
def prometheus(ctl: Controller, tmp_path: Path) -> Iterator[Prometheus]:
    assert ctl.metrics_url is not None
    server = Prometheus(urlsplit(ctl.metrics_url).netloc, tmp_path)
    try:
        yield server
    finally:
        server.stop()


async def test_prometheus_sees_a_silent_link_cut_and_the_heal_round(ctl: Controller, prometheus: Prometheus) -> None:
    plan = await ctl.fabric.connect("h1", "h4")
    async with aiohttp.ClientSession() as http:
        await prometheus.ready(http)
        await prometheus.until(http, {'up{job="p4nsm"}': lambda v: v == 1,
                                      'p4nsm_connections{state="up"}': lambda v: v == 1},
                               "the fabric before the cut")
        # The link the connection uses now: on a loaded machine a heal may already have moved it
        # off the path it was made on, and cutting that one would switch nothing over.
        link = ctl.fabric.graph.links[ctl.fabric.plans[plan.id].a_to_b.path.links[0]]
        down = f'p4nsm_link_up{{link="{link.name}"}}'
        await prometheus.until(http, {down: lambda v: v == 1,
                                      f'p4nsm_switch_writes_total{{switch="{link.a}"}}': lambda v: v > 0},
                               f"{link.name} up before the cut")
        rounds = await prometheus.value(http, "p4nsm_heal_rounds_total") or 0.0
        switchovers = await prometheus.value(http, "p4nsm_heal_switchover_seconds_count") or 0.0
        ends = [switch_ifname(link.a, link.a_port), switch_ifname(link.b, link.b_port)]
        for ifname in ends:
            await asyncio.to_thread(faults.cut, ifname)
        try:
            await prometheus.until(http, {
                down: lambda v: v == 0,
                "p4nsm_heal_rounds_total": lambda v: v > rounds,
                "p4nsm_heal_switchover_seconds_count": lambda v: v > switchovers,
                'p4nsm_heal_detection_seconds_count{element="link"}': lambda v: v >= 1,
                "p4nsm_heal_urgent_connections_total": lambda v: v >= 1,
            }, f"{link.name} down and a heal round that switched over")
        finally:
            for ifname in ends:
                await asyncio.to_thread(faults.mend, ifname)
        # the detection and switch-over times are what the controller measured, in seconds
        detection = await prometheus.value(http, 'p4nsm_heal_detection_seconds_sum{element="link"}')
        switchover = await prometheus.value(http, "p4nsm_heal_switchover_seconds_sum")
        assert detection is not None and 0 < detection < 5
        assert switchover is not None and 0 < switchover < 5
