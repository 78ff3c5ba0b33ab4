"""The controller's Prometheus metrics on a fabric of fake switches: the scrape-time collector's
names, labels and values, the event metrics fed by the lower layers' hooks, the NSM chain's
outcome element in its place, and /metrics over HTTP parsed by prometheus_client's own parser."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from finsy.proto import rpc_code
from prometheus_client.parser import text_string_to_metric_families

from controller.fabric.anti_entropy import AntiEntropy
from controller.fabric.connections import ConnectError
from controller.fabric.graph import Link
from controller.heal.link_monitor import LinkMonitor
from controller.nsm.base.errors import NsmError
from controller.nsm.elements.chain import CallContext, Request
from controller.nsm.elements.select.outlier import OutlierDetector
from controller.nsm.server import NsmServer
from controller.operators.metrics import ControllerMetrics
from controller.p4rt.errors import SwitchError
from controller.settings import REPO_ROOT
from tests.support.settings import settings_for_test
from tests.unit.fabric_rig import DIAMOND, Rig


async def _no_change(link: Link, up: bool) -> None:
    pass


class Bench:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        # Built over no clients: only the link states are read, the monitor is never started.
        self.links = LinkMonitor(rig.graph, {}, rig.settings, _no_change)
        self.anti_entropy = AntiEntropy(rig.fabric, lambda: False, 0)
        self.metrics = ControllerMetrics("127.0.0.1:0", fabric=rig.fabric, clients=rig.clients, links=self.links,
                                         rerouter=rig.rerouter, anti_entropy=self.anti_entropy, store=rig.store)

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    rig = Rig(DIAMOND)
    b = Bench(rig)
    await rig.start()
    yield b
    await rig.fabric.stop()
    rig.store.close()


async def test_connections_store_and_links_are_read_at_scrape(bench: Bench) -> None:
    assert bench.value("p4nsm_connections", state="up") == 0
    plan = await bench.rig.fabric.connect("h1", "h4")
    assert bench.value("p4nsm_connections", state="up") == 1
    for state in ("installing", "down", "removing"):
        assert bench.value("p4nsm_connections", state=state) == 0
    assert bench.value("p4nsm_store_connections") == 1
    assert bench.value("p4nsm_store_size_bytes") == 0  # in memory
    link = plan.a_to_b.path.links[0]
    assert bench.value("p4nsm_link_up", link=link) == 1
    bench.links.links[link].up = False
    assert bench.value("p4nsm_link_up", link=link) == 0
    assert {bench.value("p4nsm_link_up", link=name) for name in bench.rig.graph.links if name != link} == {1}


async def test_switch_sessions_roles_reconcile_and_corrections(bench: Bench) -> None:
    rig = bench.rig
    for name in rig.clients:
        assert bench.value("p4nsm_switch_up", switch=name) == 1
        assert bench.value("p4nsm_switch_ready", switch=name) == 1
        assert bench.value("p4nsm_switch_primary", switch=name) == 1
        assert bench.value("p4nsm_switch_sessions_total", switch=name) == 1
        inserted, _, deleted = rig.fabric.last_reconcile[name]
        assert bench.value("p4nsm_switch_reconcile_last_entities", switch=name, op="insert") == inserted
        assert bench.value("p4nsm_switch_reconcile_last_entities", switch=name, op="delete") == deleted
    assert bench.value("p4nsm_switch_reconcile_last_entities", switch="s1", op="insert") > 0  # its fabric-port marks
    await rig.clients["s3"].set_down()
    assert bench.value("p4nsm_switch_up", switch="s3") == 0
    assert bench.value("p4nsm_switch_ready", switch="s3") == 0
    assert bench.value("p4nsm_switch_primary", switch="s3") == 0
    bench.anti_entropy.counters["repaired"] += 3
    assert bench.value("p4nsm_anti_entropy_corrections_total", kind="repaired") == 3
    assert bench.value("p4nsm_anti_entropy_corrections_total", kind="orphans_deleted") == 0


async def test_writes_and_write_errors_per_switch(bench: Bench) -> None:
    rig = bench.rig
    before = {name: bench.value("p4nsm_switch_write_updates_total", switch=name) or 0 for name in rig.clients}
    plan = await rig.fabric.connect("h1", "h4")
    transit = plan.a_to_b.path.switches[1]
    sent = {name: sum(len(w) for w in c.writes) for name, c in rig.clients.items()}
    for name in rig.clients:
        assert bench.value("p4nsm_switch_write_updates_total", switch=name) == sent[name]
        assert bench.value("p4nsm_switch_writes_total", switch=name) == len(rig.clients[name].writes)
    assert sent[transit] > before[transit]
    assert bench.value("p4nsm_switch_write_duration_seconds_count", switch=transit) == len(rig.clients[transit].writes)
    rig.clients[transit].fail(lambda update: True, rpc_code.RESOURCE_EXHAUSTED)
    with pytest.raises((SwitchError, ConnectError)):
        await rig.fabric.connect("h1", "h4")
    assert bench.value("p4nsm_switch_write_errors_total", switch=transit, code="RESOURCE_EXHAUSTED") >= 1
    assert bench.value("p4nsm_switch_write_errors_total", switch="s1", code="RESOURCE_EXHAUSTED") is None


async def test_a_heal_round_counts_with_its_switchover_time(bench: Bench) -> None:
    rig = bench.rig
    plan = await rig.fabric.connect("h1", "h4")
    rig.fabric.set_link(plan.a_to_b.path.links[0], False)
    rig.rerouter.kick()  # what the controller's graph listener does
    time.sleep(0.01)  # the decision is 10 ms older than the round: the switch-over includes it
    await rig.rerouter.heal_round()
    assert bench.value("p4nsm_heal_rounds_total") == 1
    assert bench.value("p4nsm_heal_urgent_connections_total") == 1
    assert bench.value("p4nsm_heal_switchover_seconds_count") == 1
    assert 0.01 <= (bench.value("p4nsm_heal_switchover_seconds_sum") or 0) < 5
    assert bench.value("p4nsm_heal_round_duration_seconds_count") == 1
    await rig.rerouter.heal_round()  # nothing failed since: a round, no switch-over
    assert bench.value("p4nsm_heal_rounds_total") == 2
    assert bench.value("p4nsm_heal_switchover_seconds_count") == 1


async def test_detection_of_a_switch_is_from_its_last_sign_of_life(bench: Bench) -> None:
    fake = bench.rig.clients["s2"]
    fake.last_alive = time.monotonic() - 0.2
    await fake.set_down()
    assert bench.value("p4nsm_heal_detection_seconds_count", element="switch") == 1
    assert 0.2 <= (bench.value("p4nsm_heal_detection_seconds_sum", element="switch") or 0) < 5
    assert bench.value("p4nsm_heal_detection_seconds_count", element="link") == 0


async def test_link_hooks_feed_detection_and_probe_rtt(bench: Bench) -> None:
    link = next(iter(bench.rig.graph.links.values()))
    for listener in bench.links.detection_listeners:
        listener(link, 0.04)
    for listener in bench.links.rtt_listeners:
        listener(link.name, 0.003)
    assert bench.value("p4nsm_heal_detection_seconds_count", element="link") == 1
    assert bench.value("p4nsm_link_probe_rtt_seconds_count", link=link.name) == 1
    assert bench.value("p4nsm_link_probe_rtt_seconds_bucket", link=link.name, le="0.005") == 1
    assert bench.value("p4nsm_link_probe_rtt_seconds_bucket", link=link.name, le="0.002") == 0


async def test_nsm_requests_by_code_from_the_front_of_the_servers_chain(bench: Bench, tmp_path: Path) -> None:
    server = NsmServer(bench.rig.fabric, settings_for_test(env=False, nsm_run_dir=tmp_path))
    bench.metrics.watch_nsm(server)
    with pytest.raises(NsmError):
        await server.chain.request(Request(), CallContext())  # refused by validation, behind the outcome element
    assert bench.value("p4nsm_nsm_requests_total", code="INVALID_ARGUMENT") == 1
    assert bench.value("p4nsm_nsm_request_duration_seconds_count") == 1
    assert bench.value("p4nsm_nsm_requests_total", code="OK") is None
    server.host_pool.close()


async def test_outlier_ejections_of_registered_endpoints_only(bench: Bench) -> None:
    outliers = OutlierDetector(consecutive=1, base_time=30)
    bench.metrics.state.outliers = outliers
    bench.metrics.state.registrations = {"nse-a": object()}
    for name in ("nse-a", "nse-b"):  # nse-b: not registered (any caller can make up a name)
        outliers.report(name, False, [name])
    assert bench.value("p4nsm_nsm_endpoint_ejections_total", endpoint="nse-a") == 1
    assert bench.value("p4nsm_nsm_endpoint_ejections_total", endpoint="nse-b") is None
    assert bench.value("p4nsm_nsm_endpoints_ejected") == 2


def _families(metrics: ControllerMetrics) -> dict[str, str]:
    return {m.name: m.type for m in metrics.registry.collect()}


async def test_names_follow_prometheus_conventions(bench: Bench) -> None:
    families = _families(bench.metrics)
    assert len(families) >= 25
    for name, kind in families.items():
        assert re.fullmatch(r"p4nsm_[a-z0-9_]+", name), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        assert not name.endswith("_total"), f"{name}: the client adds _total to counters itself"
    exposition = bench.metrics.exposition().decode()
    counters = [n for n, k in families.items() if k == "counter"]
    for name in counters:
        assert f"# TYPE {name}_total counter" in exposition or f"# TYPE {name} counter" in exposition
    labels = set(re.findall(r"[{,]([a-z_]+)=", exposition))
    assert labels <= {"state", "link", "kind", "switch", "op", "endpoint", "element", "code", "le"}, labels


async def test_every_metric_is_in_the_readme(bench: Bench) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for name, kind in _families(bench.metrics).items():
        shown = f"{name}_total" if kind == "counter" else name
        assert f"`{shown}`" in section, f"{shown} is not in README.md's Metrics section"


async def test_metrics_over_http_parse_with_the_prometheus_parser(bench: Bench) -> None:
    await bench.rig.fabric.connect("h1", "h4")
    await bench.metrics.start()
    try:
        assert bench.metrics.url.startswith("http://127.0.0.1:") and not bench.metrics.url.endswith(":0/metrics")
        async with aiohttp.ClientSession() as http:
            async with http.get(bench.metrics.url) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            async with http.get(bench.metrics.url.replace("/metrics", "/other")) as resp:
                assert resp.status == 404
        parsed = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parsed.values() for s in f.samples}
        assert samples[("p4nsm_connections", (("state", "up"),))] == 1
        assert samples[("p4nsm_switch_up", (("switch", "s1"),))] == 1
        assert parsed["p4nsm_heal_switchover_seconds"].type == "histogram"
        assert parsed["p4nsm_switch_writes"].type == "counter"
        assert set(parsed) == set(_families(bench.metrics))
    finally:
        await bench.metrics.stop()
