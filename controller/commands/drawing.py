"""`p4nsm topo --png`: the topology drawn as the web view draws it (controller.operators.drawing),
with the running controller's connections when there is one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.operators.drawing import Picture, Route
from controller.topology import Topology


def route_of_row(row: dict[str, Any]) -> Route:
    """A connection as the admin socket lists it (controller.runtime.describe): host names lead
    its ends, paths are 's1 -> s2 -> s4'."""
    a, b = row["a"].split()[0], row["b"].split()[0]
    primary = [p.strip() for p in row.get("path", "").split("->") if p.strip()]
    backup = [p.strip() for p in row.get("backup", "").split("->") if p.strip()]
    return Route(id=row["id"], title=f"{a} → {b}", state=row.get("state", ""), primary=(a, *primary, b),
                 backup=(a, *backup, b) if backup else (), primary_links=(), backup_links=())


def draw_topology(topo: Topology, connections: list[dict[str, Any]], out: Path) -> None:
    try:
        from controller.operators.drawing_png import render_png
    except ImportError as e:
        # matplotlib is the `draw` extra, not a dependency: nothing else in the controller draws PNGs.
        raise SystemExit(f"p4nsm topo --png needs {e.name}: pip install 'p4nsm[draw]'") from None
    # The admin socket tells paths but not element states: those are drawn as unknown (grey), not as up.
    render_png(Picture(topo).scene([route_of_row(c) for c in connections], down_switches=None, down_links=None), out)
