"""When a client refreshes its connection (docs/nsm_contract.md §8.1)."""

from __future__ import annotations

from controller.nsm.base import clock
from nsm_api import connection_pb2

IMMEDIATELY = 1e-9


def refresh_delay(conn: connection_pb2.Connection, now: float | None = None) -> float:
    """A fraction of the shortest time left on any segment: 1/3 on a path of one segment, else
    0.2 + 0.2 * index / len. A segment without `expires` counts as long expired."""
    segments = conn.path.path_segments
    if not segments:
        return IMMEDIATELY
    now = clock.now() if now is None else now
    left = min((clock.to_seconds(s.expires) if clock.is_set(s.expires) else 0.0) - now for s in segments)
    if left <= 0:
        return IMMEDIATELY
    scale = 1 / 3 if len(segments) <= 1 else 0.2 + 0.2 * conn.path.index / len(segments)
    return left * scale
