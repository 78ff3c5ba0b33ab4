"""The controller's own view of a failure, recorded from the outside: when its graph changed
(detection), when connections were rerouted (the head-end writes were acknowledged: the fabric
emits `rerouted` after the batched MODIFY returns) and what each heal round reported."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from controller.runtime import Controller

ROUND_POLL_S = 0.005


@dataclasses.dataclass
class Window:
    detect_ns: int | None  # first graph change after the failure
    detected_by: str  # what the graph lost first: "link ..." or "switch ..."
    ack_ns: int | None  # last `rerouted` event
    rerouted: int
    rounds: list[dict[str, float]]


class Timeline:
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.graph: list[tuple[int, frozenset[str], frozenset[str]]] = []
        self.plans: list[tuple[int, str]] = []  # (time, event) of every connection event
        self.rounds: list[tuple[int, dict[str, float]]] = []
        ctl.fabric.graph_listeners.append(self._on_graph)
        ctl.fabric.listeners.append(self._on_plan)
        self._task = asyncio.create_task(self._watch_rounds(), name="bench:rounds")

    def _on_graph(self) -> None:
        g = self.ctl.fabric.graph
        self.graph.append((time.monotonic_ns(), frozenset(g.down_links), frozenset(g.down_switches)))

    def _on_plan(self, plan: object, event: str) -> None:
        self.plans.append((time.monotonic_ns(), event))

    async def _watch_rounds(self) -> None:
        # Rerouter.last_round is replaced by a new dict at the end of every round.
        seen = self.ctl.rerouter.last_round
        while True:
            await asyncio.sleep(ROUND_POLL_S)
            current = self.ctl.rerouter.last_round
            if current is not seen:
                seen = current
                self.rounds.append((time.monotonic_ns(), dict(current)))

    def clear(self) -> None:
        self.graph.clear()
        self.plans.clear()
        self.rounds.clear()

    def window(self, start_ns: int, end_ns: int) -> Window:
        detect = next(((t, l, s) for t, l, s in self.graph if start_ns <= t < end_ns and (l or s)), None)
        acks = [t for t, e in self.plans if start_ns <= t < end_ns and e == "rerouted"]
        by = ""
        if detect is not None:
            by = " ".join([*(f"switch {s}" for s in sorted(detect[2])), *(f"link {l}" for l in sorted(detect[1]))])
        return Window(
            detect_ns=detect[0] if detect else None, detected_by=by, ack_ns=max(acks) if acks else None,
            rerouted=len(acks), rounds=[r for t, r in self.rounds if start_ns <= t < end_ns],
        )

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
