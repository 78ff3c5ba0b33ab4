"""The topology as a PNG, with each connection's primary path highlighted."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from topologies.schema import Topology


def draw_topology(topo: Topology, connections: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = nx.Graph()
    for s in topo.switches:
        g.add_node(s.name, kind="switch")
    for h in topo.hosts:
        g.add_node(h.name, kind="host")
        g.add_edge(h.name, h.attach.switch)
    for link in topo.links:
        g.add_edge(link.a.switch, link.b.switch)
    pos = nx.kamada_kawai_layout(g)
    fig, ax = plt.subplots(figsize=(8, 6))
    switches = [n for n, d in g.nodes(data=True) if d["kind"] == "switch"]
    hosts = [n for n, d in g.nodes(data=True) if d["kind"] == "host"]
    nx.draw_networkx_edges(g, pos, ax=ax, edge_color="#bbbbbb", width=1.5)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, conn in enumerate(connections):
        path = [p.strip() for p in conn.get("path", "").split("->") if p.strip()]
        a, b = conn["a"].split()[0], conn["b"].split()[0]
        nodes = [a, *path, b]
        nx.draw_networkx_edges(g, pos, edgelist=list(zip(nodes, nodes[1:])), ax=ax, width=4, alpha=0.6,
                               edge_color=colors[i % len(colors)], label=f"{a}-{b} ({conn['id'][:8]})")
    nx.draw_networkx_nodes(g, pos, nodelist=switches, node_shape="s", node_color="#4c72b0", node_size=700, ax=ax)
    nx.draw_networkx_nodes(g, pos, nodelist=hosts, node_color="#dd8452", node_size=450, ax=ax)
    nx.draw_networkx_labels(g, pos, font_color="white", font_size=9, ax=ax)
    if connections:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{topo.name}: {len(switches)} switches, {len(hosts)} hosts, {len(connections)} connections")
    ax.axis("off")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
