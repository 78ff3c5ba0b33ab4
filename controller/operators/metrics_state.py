"""The metrics that mirror state, read when Prometheus scrapes: nothing on a hot path keeps them.

Connections by state, the store, each link's judgment and probe counts, each switch's session,
role and last reconcile, anti-entropy's corrections, and outlier ejection of NSM endpoints.
Labels are the topology's names (switches, links) and small fixed sets; endpoint names come from
registrations, so only registered endpoints that were ejected are listed, and at most
MAX_ENDPOINT_SERIES of them.
"""

from __future__ import annotations

import typing
from collections import Counter
from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.fabric.anti_entropy import AntiEntropy
from controller.fabric.connections import Fabric
from controller.fabric.model import State
from controller.fabric.store import StateStore
from controller.heal.link_monitor import LinkMonitor
from controller.nsm.elements.select.outlier import OutlierDetector
from controller.p4rt.client import SwitchClient

CONNECTION_STATES: tuple[str, ...] = typing.get_args(State)
RECONCILE_OPS = ("insert", "modify", "delete")
MAX_ENDPOINT_SERIES = 100

Family = GaugeMetricFamily | CounterMetricFamily


class StateCollector(Collector):
    def __init__(self, fabric: Fabric, clients: Mapping[str, SwitchClient], links: LinkMonitor,
                 anti_entropy: AntiEntropy, store: StateStore) -> None:
        self.fabric = fabric
        self.clients = clients
        self.links = links
        self.anti_entropy = anti_entropy
        self.store = store
        # While the NSM API is served: its outlier detector and its endpoint registrations by name.
        self.outliers: OutlierDetector | None = None
        self.registrations: Mapping[str, object] = {}

    def describe(self) -> Iterator[Metric]:
        # The same families without reading any state: the registry checks names with these.
        yield from self._families().values()

    def collect(self) -> Iterator[Metric]:
        f = self._families()
        by_state: Counter[str] = Counter(p.state for p in self.fabric.plans.values())
        for state in CONNECTION_STATES:
            f["connections"].add_metric([state], by_state.get(state, 0))
        f["store_connections"].add_metric([], self.store.count())
        f["store_size"].add_metric([], self.store.size_bytes())
        for name, st in sorted(self.links.links.items()):
            f["link_up"].add_metric([name], 1 if st.up else 0)
        for kind, n in sorted(self.links.counters.items()):
            f["probes"].add_metric([kind], n)
        ready = self.fabric.ready_switches
        for name, c in sorted(self.clients.items()):
            f["switch_up"].add_metric([name], 1 if c.up.is_set() else 0)
            f["switch_ready"].add_metric([name], 1 if name in ready else 0)
            f["switch_primary"].add_metric([name], 1 if c.primary else 0)
            f["switch_sessions"].add_metric([name], c.sessions)
            f["switch_pushes"].add_metric([name], c.pipeline_pushes)
            f["switch_refused"].add_metric([name], c.refused_writes)
            f["switch_election_id"].add_metric([name], c.election_id)
        for name, counts in sorted(self.fabric.last_reconcile.items()):
            for op, n in zip(RECONCILE_OPS, counts):
                f["reconcile"].add_metric([name, op], n)
        for kind in ("orphans_deleted", "repaired"):
            f["anti_entropy"].add_metric([kind], self.anti_entropy.counters.get(kind, 0))
        if self.outliers is not None:
            self._endpoints(self.outliers, f)
        yield from f.values()

    def _endpoints(self, outliers: OutlierDetector, f: dict[str, Family]) -> None:
        ejected = [(rec.ejections, name) for name, rec in outliers.records.items()
                   if rec.ejections and name in self.registrations]
        for times, name in sorted(ejected, reverse=True)[:MAX_ENDPOINT_SERIES]:
            f["ejections"].add_metric([name], times)
        f["ejected_now"].add_metric([], sum(1 for name in outliers.records if outliers.ejected(name)))

    @staticmethod
    def _families() -> dict[str, Family]:
        g, c = GaugeMetricFamily, CounterMetricFamily
        return {
            "connections": g("p4nsm_connections", "Connections by state", labels=["state"]),
            "store_connections": g("p4nsm_store_connections", "Connections in the store (desired state)"),
            "store_size": g("p4nsm_store_size_bytes", "Size of the store's database and write-ahead log on disk"),
            "link_up": g("p4nsm_link_up", "1 while the link monitor judges the link up, 0 while down", labels=["link"]),
            "probes": c("p4nsm_link_probes", "Link probes sent, received and refused (foreign, mismatch, not_probe)",
                        labels=["kind"]),
            "switch_up": g("p4nsm_switch_up", "1 while the P4Runtime session is up (connected, primary, pipeline verified)",
                           labels=["switch"]),
            "switch_ready": g("p4nsm_switch_ready", "1 while the switch is reconciled and paths may use it", labels=["switch"]),
            "switch_primary": g("p4nsm_switch_primary", "1 while this controller is the switch's primary, 0 when backup or not connected",
                                labels=["switch"]),
            "switch_sessions": c("p4nsm_switch_sessions", "P4Runtime stream sessions opened to the switch", labels=["switch"]),
            "switch_pushes": c("p4nsm_switch_pipeline_pushes", "Pipeline configs pushed to the switch (0 when its program was kept)",
                               labels=["switch"]),
            "switch_refused": c("p4nsm_switch_writes_refused_not_primary", "Updates the switch refused "
                                "(PERMISSION_DENIED) because this controller was not its primary: a deposed replica fenced",
                                labels=["switch"]),
            "switch_election_id": g("p4nsm_switch_election_id", "The election id this controller arbitrates with (a leader's "
                                    "has its term in the high 64 bits)", labels=["switch"]),
            "reconcile": g("p4nsm_switch_reconcile_last_entities", "Entities the switch's last reconcile inserted, modified, deleted",
                           labels=["switch", "op"]),
            "anti_entropy": c("p4nsm_anti_entropy_corrections", "Anti-entropy corrections: orphans deleted, entities repaired",
                              labels=["kind"]),
            "ejections": c("p4nsm_nsm_endpoint_ejections", "Outlier ejections of a registered NSM endpoint", labels=["endpoint"]),
            "ejected_now": g("p4nsm_nsm_endpoints_ejected", "NSM endpoints out of selection now (outlier ejection)"),
        }
