"""Which monitor events concern a client's own connection (docs/nsm_contract.md §8.4, step 3)."""

from __future__ import annotations

from nsm_api import connection_pb2


def own_state(event: connection_pb2.ConnectionEvent, my_index: int, my_id: str) -> list[int]:
    """The states the event reports for the connection whose segment `my_index` is `my_id`;
    a DELETE reads as DOWN."""
    out = []
    for conn in event.connections.values():
        segments = conn.path.path_segments
        if len(segments) < my_index + 1 or segments[my_index].id != my_id:
            continue
        if conn.path.index not in (my_index, my_index + 1):
            continue
        out.append(connection_pb2.DOWN if event.type == connection_pb2.DELETE else conn.state)
    return out
