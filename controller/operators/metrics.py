"""Prometheus metrics of one controller, served at /metrics on the `metrics_address` setting.

Each controller has its own CollectorRegistry (several live in one test process). What mirrors
state is read at scrape time (metrics_state.StateCollector); what happens (NSM calls, heal rounds,
link-down judgments, probe round trips, Writes) arrives through the listener hooks the lower
layers expose, each of which costs the hot path one call when the metrics are on:
  - probe packet-in: one listener call and one histogram observation per probe (~1 µs);
  - Write RPC: two clock reads and one call per RPC, whatever its number of updates; the failed
    updates are sorted by code only when some failed.
The exposition is generated in the event loop (generate_latest): scrapes are small and rare.
"""

from __future__ import annotations

import ssl
import time
from collections import Counter as Tally
from collections.abc import Mapping, Sequence

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

from controller.fabric.anti_entropy import AntiEntropy
from controller.fabric.connections import Fabric
from controller.fabric.graph import Link
from controller.fabric.store import StateStore
from controller.heal.link_monitor import LinkMonitor
from controller.heal.reroute import HealRound, Rerouter
from controller.nsm.server import NsmServer
from controller.operators.http_server import HttpServer
from controller.operators.metrics_state import StateCollector
from controller.p4rt.client import SwitchClient
from controller.p4rt.errors import UpdateError

# The text format shows each counter's and histogram's creation time as one more gauge series;
# nothing reads them, and they double the series. The client offers this switch process-wide only.
disable_created_metrics()

# gRPC canonical codes by number: per-update errors carry numbers, labels carry names.
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

# seconds; chosen around what each measures (probes every 10 ms, heads within ms, NSM in 10s of ms)
FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DETECTION_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
ROUND_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
NSM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)


def code_name(code: int) -> str:
    return CODE_NAMES.get(code, "UNKNOWN")


class ControllerMetrics:
    """Metrics of one controller. `watch_nsm` once its NSM server exists; `start` serves them."""

    def __init__(self, address: str, *, fabric: Fabric, clients: Mapping[str, SwitchClient], links: LinkMonitor,
                 rerouter: Rerouter, anti_entropy: AntiEntropy, store: StateStore, tls: ssl.SSLContext | None = None) -> None:
        self.registry = CollectorRegistry()
        self.state = StateCollector(fabric, clients, links, anti_entropy, store)
        self.registry.register(self.state)
        r = self.registry
        self.nsm_requests = Counter("p4nsm_nsm_requests", "NSM Requests by the gRPC status code the caller got", ["code"], registry=r)
        self.nsm_closes = Counter("p4nsm_nsm_closes", "NSM Closes by the gRPC status code the caller got", ["code"], registry=r)
        self.nsm_request_seconds = Histogram("p4nsm_nsm_request_duration_seconds", "Time an NSM Request took in the chain",
                                             registry=r, buckets=NSM_BUCKETS)
        self.nsm_close_seconds = Histogram("p4nsm_nsm_close_duration_seconds", "Time an NSM Close took in the chain",
                                           registry=r, buckets=NSM_BUCKETS)
        self.heal_rounds = Counter("p4nsm_heal_rounds", "Heal rounds finished", registry=r)
        self.heal_urgent = Counter("p4nsm_heal_urgent_connections", "Connections moved in the urgent pass of a heal round "
                                   "(switched to their backup, or stripped of a dead one)", registry=r)
        self.heal_round_seconds = Histogram("p4nsm_heal_round_duration_seconds", "Time a heal round took, repairs included",
                                            registry=r, buckets=ROUND_BUCKETS)
        self.detection_seconds = Histogram("p4nsm_heal_detection_seconds", "Time from the first evidence of a failure to the "
                                           "judgment: a link's first missing probe, a switch's last sign of life",
                                           ["element"], registry=r, buckets=DETECTION_BUCKETS)
        self.switchover_seconds = Histogram("p4nsm_heal_switchover_seconds", "Time from the decision that something failed to the "
                                            "acknowledgement of the head-end writes that moved traffic to the backups",
                                            registry=r, buckets=FAST_BUCKETS)
        self.probe_rtt = Histogram("p4nsm_link_probe_rtt_seconds", "Time from a probe's packet-out to its packet-in at the "
                                   "far end, as the controller sees it", ["link"], registry=r, buckets=FAST_BUCKETS)
        self.writes = Counter("p4nsm_switch_writes", "P4Runtime Write RPCs sent to the switch", ["switch"], registry=r)
        self.write_updates = Counter("p4nsm_switch_write_updates", "Updates sent in Write RPCs", ["switch"], registry=r)
        self.write_errors = Counter("p4nsm_switch_write_errors", "Updates the switch refused or whose outcome was lost, "
                                    "by gRPC status code", ["switch", "code"], registry=r)
        self.write_seconds = Histogram("p4nsm_switch_write_duration_seconds", "Time a Write RPC took", ["switch"],
                                       registry=r, buckets=FAST_BUCKETS)
        # Label children resolved once: the listeners look them up by name, no label parsing.
        self._rtt = {name: self.probe_rtt.labels(name) for name in links.links}
        self._write = {name: (self.writes.labels(name), self.write_updates.labels(name), self.write_seconds.labels(name))
                       for name in clients}
        self._link_detection = self.detection_seconds.labels("link")
        self._switch_detection = self.detection_seconds.labels("switch")
        links.rtt_listeners.append(self._on_probe_rtt)
        links.detection_listeners.append(self._on_link_detection)
        rerouter.round_listeners.append(self._on_heal_round)
        for client in clients.values():
            client.write_listeners.append(self._on_write)
            client.state_listeners.append(self._on_switch_state)
        self.server = HttpServer("metrics", address, [web.get("/metrics", self._serve)], tls=tls)

    @property
    def url(self) -> str:
        """Where the metrics are (the port resolved once started)."""
        return f"{self.server.url}/metrics"

    def watch_nsm(self, nsm: NsmServer) -> None:
        nsm.call_listeners.append(self._on_nsm_call)
        self.state.outliers = nsm.outliers
        self.state.registrations = nsm.endpoints.entries

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def _serve(self, request: web.Request) -> web.Response:
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # --- listeners ---------------------------------------------------------------------------

    def _on_nsm_call(self, call: str, code: grpc.StatusCode, seconds: float) -> None:
        if call == "request":
            self.nsm_requests.labels(code.name).inc()
            self.nsm_request_seconds.observe(seconds)
        else:
            self.nsm_closes.labels(code.name).inc()
            self.nsm_close_seconds.observe(seconds)

    def _on_heal_round(self, r: HealRound) -> None:
        self.heal_rounds.inc()
        self.heal_urgent.inc(r.urgent)
        self.heal_round_seconds.observe((r.finished_ns - r.started_ns) / 1e9)
        if r.kicked_ns and r.heads_acked_ns:
            self.switchover_seconds.observe((r.heads_acked_ns - r.kicked_ns) / 1e9)

    def _on_link_detection(self, link: Link, seconds: float) -> None:
        self._link_detection.observe(seconds)

    def _on_switch_state(self, client: SwitchClient, up: bool, reason: str) -> None:
        if not up and client.last_alive:
            self._switch_detection.observe(max(0.0, time.monotonic() - client.last_alive))

    def _on_probe_rtt(self, link: str, seconds: float) -> None:
        self._rtt[link].observe(seconds)

    def _on_write(self, client: SwitchClient, updates: int, failed: Sequence[UpdateError], seconds: float) -> None:
        writes, sent, duration = self._write[client.name]
        writes.inc()
        sent.inc(updates)
        duration.observe(seconds)
        if failed:
            for code, n in Tally(e.code for e in failed).items():
                self.write_errors.labels(client.name, code_name(code)).inc(n)
