"""The picture of a fabric, whatever draws it: where each switch and host stands, every link with
its state and colour, and the paths of connections over it. `p4nsm topo --png` (drawing_png) and
the web view (drawing_svg) render the same Scene, so the two never disagree on layout or colours.

The layout is stress majorization (what Kamada-Kawai approximates) over the hop distances of the
topology, in plain Python: the controller serves the picture and must not need numpy or scipy,
and a lab topology (tens of nodes) is laid out in milliseconds. It starts from a circle in
topology order, so the same file always gives the same picture.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable

import networkx as nx

from controller.fabric.graph import link_name
from controller.fabric.model import ConnectionPlan
from controller.topology import Topology

UP, DOWN, UNKNOWN = "up", "down", "unknown"
LINK_COLOURS = {UP: "#8c8c8c", DOWN: "#d62728", UNKNOWN: "#c7c7c7"}
SWITCH_COLOURS = {UP: "#4c72b0", DOWN: "#d62728", UNKNOWN: "#9a9a9a"}
HOST_COLOUR = "#dd8452"
# Route colours: no red (red is a dead element) and no grey (a link's own colour).
ROUTE_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
MAX_ROUTES = len(ROUTE_COLOURS)  # beyond that the overlays are unreadable; links carry counts instead
_ITERATIONS = 300


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    name: str
    kind: str  # "switch" or "host"
    x: float  # 0..1, left to right
    y: float  # 0..1, top to bottom
    state: str
    colour: str


@dataclasses.dataclass(frozen=True, slots=True)
class Edge:
    name: str  # a link's name ("s1:3-s2:3"), or "h1@s1:1" for a host's attachment
    kind: str  # "link" or "attach"
    a: str
    b: str
    state: str
    colour: str
    carried: int  # connections whose active path crosses it


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """A connection as drawn: its active a->b path and its backup, host to host."""

    id: str
    title: str
    state: str
    primary: tuple[str, ...]  # nodes: host, switches..., host
    backup: tuple[str, ...]  # () without a backup
    primary_links: tuple[str, ...]
    backup_links: tuple[str, ...]
    colour: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Scene:
    title: str
    nodes: dict[str, Node]
    edges: list[Edge]
    routes: list[Route]  # the drawn ones, each with its colour
    hidden_routes: int  # connections beyond MAX_ROUTES, shown by the links' counts only


def route_of(plan: ConnectionPlan) -> Route:
    title = f"{plan.a.host} → {plan.b.host}"
    if plan.labels.get("service"):
        title += f" ({plan.labels['service']})"
    backup = plan.a_to_b_backup
    return Route(
        id=plan.id, title=title, state=plan.state,
        primary=(plan.a.host, *plan.a_to_b.path.switches, plan.b.host),
        backup=(plan.a.host, *backup.path.switches, plan.b.host) if backup else (),
        primary_links=plan.a_to_b.path.links, backup_links=backup.path.links if backup else (),
    )


def layout(topo: Topology) -> dict[str, tuple[float, float]]:
    """Positions in [0, 1]² of every switch and host, by stress majorization: each pair of nodes
    is pulled towards a distance proportional to its hop count."""
    g = nx.Graph(topo.graph())
    names = [s.name for s in topo.switches] + [h.name for h in topo.hosts]
    n = len(names)
    if n == 1:
        return {names[0]: (0.5, 0.5)}
    hops = dict(nx.all_pairs_shortest_path_length(g))
    far = max((d for row in hops.values() for d in row.values()), default=1) + 1
    dist = [[float(hops.get(a, {}).get(b, far)) for b in names] for a in names]
    pos = [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]
    scale = far / 2
    pos = [(x * scale, y * scale) for x, y in pos]
    for _ in range(_ITERATIONS):
        new = []
        for i in range(n):
            xi, yi = pos[i]
            sx = sy = wsum = 0.0
            for j in range(n):
                if i == j:
                    continue
                xj, yj = pos[j]
                d = dist[i][j]
                w = 1.0 / (d * d)
                norm = math.hypot(xi - xj, yi - yj) or 1e-9
                sx += w * (xj + d * (xi - xj) / norm)
                sy += w * (yj + d * (yi - yj) / norm)
                wsum += w
            new.append((sx / wsum, sy / wsum))
        moved = max(math.hypot(a[0] - b[0], a[1] - b[1]) for a, b in zip(pos, new))
        pos = new
        if moved < 1e-4:
            break
    pos = _upright(pos, names.index(topo.switches[0].name), names.index(topo.switches[-1].name))
    xs, ys = [p[0] for p in pos], [p[1] for p in pos]
    span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
    # One scale for both axes keeps angles; centred in the unit square.
    ox, oy = (1 - (max(xs) - min(xs)) / span) / 2, (1 - (max(ys) - min(ys)) / span) / 2
    return {name: (ox + (x - min(xs)) / span, oy + (y - min(ys)) / span) for name, (x, y) in zip(names, pos)}


def _upright(pos: list[tuple[float, float]], first: int, last: int) -> list[tuple[float, float]]:
    """Turned so that the widest spread runs left to right (pictures are wider than tall), the
    first switch of the file left of the last one."""
    n = len(pos)
    mx, my = sum(p[0] for p in pos) / n, sum(p[1] for p in pos) / n
    sxx = sum((p[0] - mx) ** 2 for p in pos)
    syy = sum((p[1] - my) ** 2 for p in pos)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pos)
    angle = -0.5 * math.atan2(2 * sxy, sxx - syy)
    c, s = math.cos(angle), math.sin(angle)
    out = [((x - mx) * c - (y - my) * s, (x - mx) * s + (y - my) * c) for x, y in pos]
    if out[first][0] > out[last][0]:
        out = [(-x, y) for x, y in out]
    return out


class Picture:
    """One topology's layout, computed once, and the scenes drawn on it."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.positions = layout(topo)
        self.attachments = [(f"{h.name}@{h.attach}", h.name, h.attach.switch) for h in topo.hosts]
        self.links = [(link_name(l.a.switch, l.a.port, l.b.switch, l.b.port), l.a.switch, l.b.switch) for l in topo.links]

    def scene(self, routes: Iterable[Route], down_switches: Iterable[str] | None = (),
              down_links: Iterable[str] | None = (), title: str | None = None,
              carried: dict[str, int] | None = None, total: int | None = None) -> Scene:
        """None for the down switches or links: their states are not known (drawn from the file).
        With thousands of connections the caller gives the first routes only, with `carried`
        (link -> active paths crossing it) and `total` counted from all of them."""
        down_s, down_l = set(down_switches or ()), set(down_links or ())
        switches_known, links_known = down_switches is not None, down_links is not None
        every = list(routes)
        if carried is None:
            carried = {}
            for r in every:
                for name in r.primary_links or self._links_along(r.primary):
                    carried[name] = carried.get(name, 0) + 1
        total = len(every) if total is None else total

        def state(is_down: bool, known: bool) -> str:
            return DOWN if is_down else UP if known else UNKNOWN

        nodes = {}
        for s in self.topo.switches:
            st = state(s.name in down_s, switches_known)
            nodes[s.name] = Node(s.name, "switch", *self.positions[s.name], st, SWITCH_COLOURS[st])
        for h in self.topo.hosts:
            nodes[h.name] = Node(h.name, "host", *self.positions[h.name], UP, HOST_COLOUR)
        edges = []
        for name, a, b in self.links:
            st = state(name in down_l or a in down_s or b in down_s, links_known and switches_known)
            edges.append(Edge(name, "link", a, b, st, LINK_COLOURS[st], carried.get(name, 0)))
        for name, host, switch in self.attachments:
            st = state(switch in down_s, switches_known)
            edges.append(Edge(name, "attach", host, switch, st, LINK_COLOURS[st], 0))
        drawn = [dataclasses.replace(r, colour=ROUTE_COLOURS[i]) for i, r in enumerate(every[:MAX_ROUTES])]
        t = self.topo
        heading = title or (f"{t.name}: {_count(len(t.switches), 'switch', 'switches')}, {_count(len(t.hosts), 'host')}, "
                            f"{_count(len(t.links), 'link')}, {_count(total, 'connection')}")
        return Scene(heading, nodes, edges, drawn, max(0, total - len(drawn)))


    def _links_along(self, nodes: tuple[str, ...]) -> list[str]:
        """The links a path of switch names crosses, when only the names are known (the first
        link between two switches, as the fabric's live view takes it)."""
        between: dict[frozenset[str], str] = {}
        for name, a, b in self.links:
            between.setdefault(frozenset((a, b)), name)
        return [between[k] for k in (frozenset(p) for p in itertools.pairwise(nodes)) if k in between]


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def route_lines(scene: Scene, spread: float = 0.012) -> list[tuple[Route, bool, list[tuple[float, float, float, float]]]]:
    """Each drawn route's segments in unit coordinates, (route, is_backup, [(x1, y1, x2, y2)]):
    route i is shifted sideways by its own offset so that routes sharing a link stay apart."""
    out = []
    k = len(scene.routes)
    for i, route in enumerate(scene.routes):
        shift = (i - (k - 1) / 2) * spread
        for is_backup, path in ((False, route.primary), (True, route.backup)):
            lines = []
            for a, b in itertools.pairwise(path):
                na, nb = scene.nodes.get(a), scene.nodes.get(b)
                if na is None or nb is None:
                    continue  # a path through a switch the topology file does not have
                dx, dy = nb.x - na.x, nb.y - na.y
                norm = math.hypot(dx, dy) or 1.0
                px, py = -dy / norm * shift, dx / norm * shift
                lines.append((na.x + px, na.y + py, nb.x + px, nb.y + py))
            if lines:
                out.append((route, is_backup, lines))
    return out
