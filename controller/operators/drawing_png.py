"""A Scene (controller.operators.drawing) as a PNG, with matplotlib: `p4nsm topo --png`.

matplotlib is the optional `draw` extra; importing this module without it raises ImportError,
which the command turns into a message saying what to install.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # writes files only, so it runs where there is no display
import matplotlib.pyplot as plt

from controller.operators.drawing import DOWN, UNKNOWN, Scene, route_lines


def render_png(scene: Scene, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 6))
    # y grows downwards in the scene (as on a page): flipped here, where it grows upwards.
    for e in scene.edges:
        a, b = scene.nodes[e.a], scene.nodes[e.b]
        ax.plot([a.x, b.x], [-a.y, -b.y], color=e.colour, linewidth=3 if e.kind == "link" else 1.5,
                linestyle="--" if e.state == DOWN else "-", zorder=1)
        if e.kind == "link" and (e.state == DOWN or scene.hidden_routes):
            ax.text((a.x + b.x) / 2, -(a.y + b.y) / 2, "DOWN" if e.state == DOWN else str(e.carried), color=e.colour,
                    fontsize=8, ha="center", va="bottom", zorder=4)
    labelled: set[str] = set()
    for route, is_backup, lines in route_lines(scene):
        for x1, y1, x2, y2 in lines:
            label = None
            if not is_backup and route.id not in labelled:
                labelled.add(route.id)
                label = f"{route.title} [{route.id[:8]}]"
            ax.plot([x1, x2], [-y1, -y2], color=route.colour, linewidth=1.5 if is_backup else 5,
                    linestyle=":" if is_backup else "-", alpha=0.9 if is_backup else 0.55, label=label,
                    solid_capstyle="round", zorder=2)
    for n in scene.nodes.values():
        ax.scatter([n.x], [-n.y], s=700 if n.kind == "switch" else 420, marker="s" if n.kind == "switch" else "o",
                   color=n.colour, zorder=3)
        ax.text(n.x, -n.y, n.name, color="white", fontsize=9 if n.kind == "switch" else 8, ha="center", va="center", zorder=4)
    if scene.routes:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.02 - 0.05 * len(scene.routes)), fontsize=8, frameon=False)
    title = scene.title + (f" ({scene.hidden_routes} more not drawn: links count active paths)" if scene.hidden_routes else "")
    key = "thick: active path, dotted: backup; red dashed: down"
    if any(n.state == UNKNOWN for n in scene.nodes.values()):
        key += "; grey: state not known (no controller asked)"
    ax.set_title(f"{title}\n{key}", fontsize=10)
    ax.set_aspect("equal")
    ax.margins(0.08)
    ax.axis("off")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
