"""paths.shortest and paths.backup_for, remembered per liveness state of the fabric.

Path search costs 0.2-0.4 ms, a good part of a connect's CPU, and heal rounds ask for a backup
for every connection; the answer depends only on the two attachment ports (or the primary) and
on which switches and links are down, and Paths are immutable, so it is remembered per such state.
"""

from __future__ import annotations

from controller.fabric.graph import FabricGraph
from controller.fabric.model import Attachment, Path
from controller.fabric.paths import backup_for, shortest

MEMO_MAX = 4096  # liveness states come and go; keep each memo bounded

Paths = tuple[Path, Path, Path | None, Path | None]


class PathMemo:
    def __init__(self, graph: FabricGraph) -> None:
        self.graph = graph
        self._paths: dict[tuple, Paths] = {}
        self._backups: dict[tuple, Path | None] = {}

    def _liveness(self) -> tuple[frozenset[str], ...]:
        g = self.graph
        return frozenset(g.down_switches), frozenset(g.down_links), frozenset(g.unknown_links), frozenset(g.drained_switches)

    def paths(self, a: Attachment, b: Attachment) -> Paths:
        """Primary, its reverse, backup, its reverse. Raises NoPath."""
        key = (a.switch, a.port, b.switch, b.port, *self._liveness())
        found = self._paths.get(key)
        if found is None:
            fwd = shortest(self.graph, a, b)
            back = self.backup(fwd, a, b)
            found = (fwd, fwd.reversed(), back, back.reversed() if back else None)
            if len(self._paths) >= MEMO_MAX:
                self._paths.clear()
            self._paths[key] = found
        return found

    def backup(self, primary: Path, a: Attachment, b: Attachment) -> Path | None:
        """backup_for: at thousands of connections most share a few primaries."""
        key = (primary.links, a.switch, a.port, b.switch, b.port, *self._liveness())
        if key not in self._backups:
            if len(self._backups) >= MEMO_MAX:
                self._backups.clear()
            self._backups[key] = backup_for(self.graph, primary, a, b)
        return self._backups[key]
