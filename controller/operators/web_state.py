"""What the web view shows, as JSON and as SVG: the topology with each element's state, every
connection with its active path and backup, and the heal log; and what changed since the last
push, so that a heal of thousands of connections is sent as one diff, not a snapshot each.

Serialising 10,000 connections takes ~0.1 s, too long for the loop to spend on every change or
every request, so each connection is serialised once per plan (plans are replaced, never
changed, so identity says whether it moved) and lists are joined from those pieces; the rest is
cached per change (`version`). A client that asks again and again costs a join, not a walk
through the serialiser.
"""

from __future__ import annotations

import json
from typing import Any

from controller.fabric.connections import Fabric
from controller.fabric.model import ConnectionPlan
from controller.operators.drawing import MAX_ROUTES, Picture, route_of
from controller.operators.drawing_svg import render_svg
from controller.operators.web_events import HealLog


def dumps(value: Any) -> bytes:
    """JSON in ASCII with <, > and & escaped too (they occur only inside strings, where \\u003c
    means the same): what a client named never reads as markup, wherever the JSON ends up."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def connection_view(plan: ConnectionPlan) -> dict[str, Any]:
    backup = plan.a_to_b_backup
    return {
        "id": plan.id, "state": plan.state, "revision": plan.revision,
        "a": {"host": plan.a.host, "switch": plan.a.switch, "port": plan.a.port, "vlan": plan.a.vlan},
        "b": {"host": plan.b.host, "switch": plan.b.switch, "port": plan.b.port, "vlan": plan.b.vlan},
        "path": list(plan.a_to_b.path.switches), "path_links": list(plan.a_to_b.path.links),
        "backup": list(backup.path.switches) if backup else [], "backup_links": list(backup.path.links) if backup else [],
        "labels": dict(plan.labels),
    }


class WebState:
    def __init__(self, picture: Picture, fabric: Fabric, heal_log: HealLog) -> None:
        self.picture = picture
        self.fabric = fabric
        self.heal_log = heal_log
        self.version = 0
        self._cache: dict[str, tuple[int, Any]] = {}
        self._sent: dict[str, ConnectionPlan] = {}  # the plans as the last push told them
        self._sent_seq = 0
        self._pieces: dict[str, tuple[ConnectionPlan, bytes]] = {}  # id -> (plan, its JSON)

    def changed(self) -> None:
        self.version += 1

    def _cached(self, key: str, make: Any) -> Any:
        hit = self._cache.get(key)
        if hit is not None and hit[0] == self.version:
            return hit[1]
        value = make()
        self._cache[key] = (self.version, value)
        return value

    # --- the views ---------------------------------------------------------------------------------

    def topology(self) -> dict[str, Any]:
        g = self.fabric.graph
        scene = self.scene()
        ready = self.fabric.ready_switches
        return {
            "name": self.picture.topo.name,
            "switches": [{"name": n.name, "state": n.state, "ready": n.name in ready, "x": round(n.x, 4), "y": round(n.y, 4)}
                         for n in scene.nodes.values() if n.kind == "switch"],
            "hosts": [{"name": h.name, "switch": h.attach.switch, "port": h.attach.port,
                       "x": round(scene.nodes[h.name].x, 4), "y": round(scene.nodes[h.name].y, 4)} for h in self.picture.topo.hosts],
            "links": [{"name": e.name, "a": g.links[e.name].a, "a_port": g.links[e.name].a_port, "b": g.links[e.name].b,
                       "b_port": g.links[e.name].b_port, "state": e.state, "connections": e.carried}
                      for e in scene.edges if e.kind == "link" and e.name in g.links],
        }

    def scene(self) -> Any:
        def make() -> Any:
            g, plans = self.fabric.graph, self.fabric.plans
            carried: dict[str, int] = {}
            for p in plans.values():
                for name in p.a_to_b.path.links:
                    carried[name] = carried.get(name, 0) + 1
            first = [route_of(p) for p, _ in zip(plans.values(), range(MAX_ROUTES))]
            return self.picture.scene(first, g.down_switches, g.down_links, carried=carried, total=len(plans))

        return self._cached("scene", make)

    def svg(self) -> str:
        return str(self._cached("svg", lambda: render_svg(self.scene())))

    def piece(self, plan: ConnectionPlan) -> bytes:
        """One connection's JSON, made once per plan."""
        hit = self._pieces.get(plan.id)
        if hit is None or hit[0] is not plan:
            hit = self._pieces[plan.id] = (plan, dumps(connection_view(plan)))
        return hit[1]

    def connections(self) -> bytes:
        def make() -> bytes:
            plans = self.fabric.plans
            for gone in [k for k in self._pieces if k not in plans]:
                del self._pieces[gone]
            return b"[" + b",".join(self.piece(p) for p in plans.values()) + b"]"

        return bytes(self._cached("json:connections", make))

    def body(self, what: str) -> bytes:
        """The JSON answer of /api/<what>, made once per change."""
        if what == "connections":
            return self.connections()
        views = {"topology": self.topology, "events": lambda: list(self.heal_log.events)}
        return bytes(self._cached(f"json:{what}", lambda: dumps(views[what]())))

    # --- pushes -----------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything, for a page that just connected (JSON)."""
        return b"".join((b'{"topology":', self.body("topology"), b',"svg":', dumps(self.svg()),
                         b',"connections":', self.connections(), b',"events":', self.body("events"),
                         b',"version":', str(self.version).encode(), b"}"))

    def update(self) -> bytes:
        """What changed since the last update (JSON): the connections whose plan was replaced, the
        ids of those removed, the new heal events, and the small parts (topology, picture) whole."""
        plans = self.fabric.plans
        changed = [self.piece(p) for p in plans.values() if self._sent.get(p.id) is not p]
        removed = [conn_id for conn_id in self._sent if conn_id not in plans]
        self._sent = dict(plans)
        events = self.heal_log.since(self._sent_seq)
        self._sent_seq = self.heal_log.seq
        return b"".join((b'{"topology":', self.body("topology"), b',"svg":', dumps(self.svg()),
                         b',"changed":[', b",".join(changed), b'],"removed":', dumps(removed),
                         b',"events":', dumps(events), b',"version":', str(self.version).encode(), b"}"))
