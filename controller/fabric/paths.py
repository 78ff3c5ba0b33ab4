"""Primary path and a maximally disjoint backup between two host attachments."""

from __future__ import annotations

import itertools

import networkx as nx

from controller.fabric.graph import FabricGraph
from controller.fabric.model import Attachment, Hop, Path


class NoPath(Exception):
    pass


# Sharing an element with the primary costs this much more than a hop, so the backup shares
# only what it must (node-disjoint first, then link-disjoint, then least overlap).
_SHARED_LINK_COST = 1000
_SHARED_NODE_COST = 100


def _to_path(view: nx.Graph, nodes: list[str], src: Attachment, dst: Attachment, graph: FabricGraph) -> Path:
    links = [view.edges[u, v]["link"] for u, v in itertools.pairwise(nodes)]
    hops = []
    for i, sw in enumerate(nodes):
        in_port = src.port if i == 0 else graph.links[links[i - 1]].port_of(sw)
        out_port = dst.port if i == len(nodes) - 1 else graph.links[links[i]].port_of(sw)
        hops.append(Hop(switch=sw, in_port=in_port, out_port=out_port))
    return Path(hops=tuple(hops), links=tuple(links))


def shortest(graph: FabricGraph, src: Attachment, dst: Attachment, trust_unknown: bool = False) -> Path:
    view = graph.live_view((src.switch, dst.switch), trust_unknown)
    try:
        nodes = nx.shortest_path(view, src.switch, dst.switch)
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        raise NoPath(f"no live path from {src.switch} to {dst.switch}") from None
    return _to_path(view, nodes, src, dst, graph)


def backup_for(graph: FabricGraph, primary: Path, src: Attachment, dst: Attachment) -> Path | None:
    """The live path that shares the fewest links, then switches, with `primary`; None if it
    would be the primary itself (nothing to fall back to)."""
    if len(primary.hops) < 2:
        return None
    view = graph.live_view((src.switch, dst.switch))
    shared_links = set(primary.links)
    inner = set(primary.switches[1:-1])

    def cost(u: str, v: str, data: dict) -> float:
        c = 1.0
        if data["link"] in shared_links:
            c += _SHARED_LINK_COST
        if u in inner or v in inner:
            c += _SHARED_NODE_COST
        return c

    try:
        nodes = nx.shortest_path(view, src.switch, dst.switch, weight=cost)
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return None
    path = _to_path(view, nodes, src, dst, graph)
    return None if path.links == primary.links else path
