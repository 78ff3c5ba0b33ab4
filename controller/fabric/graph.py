"""The fabric as a graph of switches and links, with the liveness of each element."""

from __future__ import annotations

import dataclasses

import networkx as nx


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    name: str  # "s1:2-s2:1", stable across runs
    a: str
    a_port: int
    b: str
    b_port: int

    def port_of(self, switch: str) -> int:
        return self.a_port if switch == self.a else self.b_port

    def other(self, switch: str) -> str:
        return self.b if switch == self.a else self.a


def link_name(a: str, a_port: int, b: str, b_port: int) -> str:
    left, right = sorted([(a, a_port), (b, b_port)])
    return f"{left[0]}:{left[1]}-{right[0]}:{right[1]}"


class FabricGraph:
    """Switches are nodes; links are edges of a MultiGraph keyed by link name."""

    def __init__(self, switches: list[str], links: list[Link]) -> None:
        self.g: nx.MultiGraph = nx.MultiGraph()
        self.g.add_nodes_from(switches)
        self.links: dict[str, Link] = {}
        self.port_link: dict[tuple[str, int], Link] = {}
        for link in links:
            self.links[link.name] = link
            self.port_link[(link.a, link.a_port)] = link
            self.port_link[(link.b, link.b_port)] = link
            self.g.add_edge(link.a, link.b, key=link.name)
        self.down_switches: set[str] = set()
        self.down_links: set[str] = set()
        # Links whose state nobody can tell now (a switch's gNMI port-state stream broke): no new
        # path is placed over them, and the paths already on them stay (nothing says they died).
        self.unknown_links: set[str] = set()
        # Switches not heard from since this controller started: the stored plans over them are
        # evidence that they forward, so they are not taken for dead (a restart must not move or
        # drop working connections), but no new path uses them until they are reconciled.
        self.unknown_switches: set[str] = set()
        # Switches being upgraded (controller/fabric/drain.py): alive, and the paths still on them
        # (their own hosts') stay, but no path crosses them, except one that starts or ends there.
        self.drained_switches: set[str] = set()

    def fabric_ports(self, switch: str) -> list[int]:
        return sorted(p for (s, p) in self.port_link if s == switch)

    def set_switch(self, switch: str, up: bool) -> bool:
        """Returns True when the state changed."""
        before = switch in self.down_switches
        (self.down_switches.discard if up else self.down_switches.add)(switch)
        return before == up

    def set_link(self, link: str, up: bool) -> bool:
        before = link in self.down_links
        (self.down_links.discard if up else self.down_links.add)(link)
        return before == up

    def set_link_known(self, link: str, known: bool) -> bool:
        """Returns True when the state changed."""
        before = link not in self.unknown_links
        (self.unknown_links.add if not known else self.unknown_links.discard)(link)
        return before != known

    def set_switch_known(self, switch: str, known: bool) -> bool:
        """Returns True when the state changed."""
        before = switch not in self.unknown_switches
        (self.unknown_switches.discard if known else self.unknown_switches.add)(switch)
        return before != known

    def set_switch_drained(self, switch: str, drained: bool) -> bool:
        """Returns True when the state changed."""
        before = switch in self.drained_switches
        (self.drained_switches.add if drained else self.drained_switches.discard)(switch)
        return before != drained

    def usable(self, switch: str) -> bool:
        return switch not in self.down_switches

    def live_view(self, ends: tuple[str, ...] = (), trust_unknown: bool = False) -> nx.Graph:
        """A simple graph of the usable elements; each edge remembers its first live link. A
        drained switch is in it only if it is one of `ends` (a path's own first or last switch).
        With `trust_unknown`, elements not heard from yet count as usable (only evidence removes one)."""
        view = nx.Graph()
        gone = self.down_switches | (self.drained_switches - set(ends))
        if not trust_unknown:
            gone |= self.unknown_switches
        dead = self.down_links if trust_unknown else self.down_links | self.unknown_links
        view.add_nodes_from(n for n in self.g.nodes if n not in gone)
        for a, b, key in self.g.edges(keys=True):
            if key in dead or a in gone or b in gone:
                continue
            if not view.has_edge(a, b):
                view.add_edge(a, b, link=key)
        return view
