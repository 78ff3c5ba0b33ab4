"""The last heal events, in one bounded log: links and switches going down and up (a link's with
how long its probes had been missing when it was judged down), head-end switch-overs
acknowledged (how long after that judgment), and heal rounds (how long the round took, when its
head-end batch was acknowledged, how many connections it moved).

It only listens: to the link monitor's detection listeners, the fabric's graph and connection
listeners, and the rerouter's switch-over and round listeners. A round's repairs move backups
without a connection event, so every finished round is news for whoever shows connections
(`on_change`), logged or not.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from controller.fabric.connections import Fabric
from controller.fabric.graph import Link
from controller.fabric.model import ConnectionPlan
from controller.heal.link_monitor import LinkMonitor
from controller.heal.reroute import HealRound, Rerouter

LOG_SIZE = 200
# A switch-over this long after the last element went down is not that failure's any more.
DETECTION_PAIRING_S = 10.0


class HealLog:
    def __init__(self, fabric: Fabric, rerouter: Rerouter, links: LinkMonitor | None,
                 on_change: Callable[[], None], size: int = LOG_SIZE) -> None:
        self.fabric = fabric
        self.on_change = on_change
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.seq = 0
        self._down_links = set(fabric.graph.down_links)
        self._down_switches = set(fabric.graph.down_switches)
        self._seen_up: set[str] = set()  # switches that were up once: their going down is news
        self._last_down_ns: int | None = None
        self._moved: collections.Counter[str] = collections.Counter()  # connection events since the last round
        self._detected: dict[str, float] = {}  # link -> seconds its judgment took, until the graph shows it down
        fabric.graph_listeners.append(self._on_graph)
        fabric.listeners.append(self._on_plan)
        rerouter.switchover_listeners.append(self._on_switchover)
        rerouter.round_listeners.append(self._on_round)
        if links is not None:
            links.detection_listeners.append(self._on_detection)

    def since(self, seq: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e["seq"] > seq]

    def _add(self, kind: str, **fields: Any) -> None:
        self.seq += 1
        self.events.append({"seq": self.seq, "at": time.time(), "kind": kind, **fields})
        self.on_change()

    def _on_graph(self) -> None:
        g = self.fabric.graph
        now_ns = time.monotonic_ns()
        for name in sorted(g.down_switches - self._down_switches):
            self._last_down_ns = now_ns
            if name in self._seen_up:  # not the start-up, where every switch begins down
                self._add("switch_down", element=name)
        for name in sorted(g.down_links - self._down_links):
            self._last_down_ns = now_ns
            took = self._detected.pop(name, None)
            # Without a judgment of its probes, a link goes down with a switch's lost session.
            cause = "probes" if took is not None else "switch"
            self._add("link_down", element=name, cause=cause, detection_ms=_ms(took * 1000) if took is not None else None)
        for name in sorted(self._down_links - g.down_links):
            self._add("link_up", element=name)
        for name in sorted(self._down_switches - g.down_switches):
            if name in self._seen_up:
                self._add("switch_up", element=name)
            self._seen_up.add(name)
        self._down_links, self._down_switches = set(g.down_links), set(g.down_switches)

    def _on_switchover(self, heads: int, acked_ns: int) -> None:
        after = None
        if self._last_down_ns is not None and (acked_ns - self._last_down_ns) / 1e9 < DETECTION_PAIRING_S:
            after = round((acked_ns - self._last_down_ns) / 1e6, 1)
        self._add("switchover", heads=heads, after_detection_ms=after)

    def _on_plan(self, plan: ConnectionPlan, event: str) -> None:
        self._moved[event] += 1

    def _on_detection(self, link: Link, seconds: float) -> None:
        self._detected[link.name] = seconds

    def _on_round(self, r: HealRound) -> None:
        moved = {k: self._moved.pop(k, 0) for k in ("rerouted", "down", "up")}
        self._moved.clear()
        if r.urgent or moved["rerouted"] or moved["down"]:
            self._add("heal_round", urgent=r.urgent, round_ms=_ms((r.finished_ns - r.started_ns) / 1e6),
                      heads_acked_ms=_ms((r.heads_acked_ns - r.started_ns) / 1e6) if r.heads_acked_ns else None,
                      since_kick_ms=_ms((r.finished_ns - r.kicked_ns) / 1e6) if r.kicked_ns else None, **moved)
        else:
            self.on_change()  # backups moved without an event of their own


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
