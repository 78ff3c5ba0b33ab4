"""The controller's own view of a failure, recorded from the outside: when its graph changed
(detection), when the heal round's head-end writes were acknowledged (the rerouter calls its
switchover listeners then, and reports it in `last_round` when the round ends), and when
connections were reported rerouted (after every phase of the round's writes)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from controller.aio import cancel_and_wait
from controller.runtime import Controller

ROUND_POLL_S = 0.005


@dataclasses.dataclass
class Window:
    detect_ns: int | None  # first graph change after the failure
    detected_by: str  # what the graph lost first: "link ..." or "switch ..."
    heads_ack_ns: int | None  # the last heal round with urgent work: its head-end phase acknowledged
    rerouted_ns: int | None  # last `rerouted` event
    rerouted: int
    rounds: list[dict[str, float]]
    declared_down: set[str]  # every link and switch the graph lost during the window


class Timeline:
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.graph: list[tuple[int, frozenset[str], frozenset[str]]] = []
        self.plans: list[tuple[int, str]] = []  # (time, event) of every connection event
        self.rounds: list[tuple[int, dict[str, float]]] = []
        self.sessions: list[tuple[int, str, str]] = []  # (time, switch, reason) of every session lost
        self.switchovers: list[int] = []  # when each head-end switch-over batch was acknowledged
        ctl.rerouter.switchover_listeners.append(lambda heads, at_ns: self.switchovers.append(at_ns))
        for client in ctl.clients.values():
            client.state_listeners.append(self._on_switch)
        ctl.fabric.graph_listeners.append(self._on_graph)
        ctl.fabric.listeners.append(self._on_plan)
        self._task = asyncio.create_task(self._watch_rounds(), name="bench:rounds")

    def _on_graph(self) -> None:
        g = self.ctl.fabric.graph
        self.graph.append((time.monotonic_ns(), frozenset(g.down_links), frozenset(g.down_switches)))

    def _on_switch(self, client: object, up: bool, reason: str) -> None:
        if not up:
            self.sessions.append((time.monotonic_ns(), getattr(client, "name", "?"), reason))

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
                now_ns = time.monotonic_ns()
                r = dict(current)
                if r.get("finished_at") and r.get("heads_acked_ms"):
                    # finished_at is wall-clock time: carried over to the monotonic clock here.
                    finished_ns = now_ns - int((time.time() - r["finished_at"]) * 1e9)
                    r["heads_ack_ns"] = finished_ns - int((r["round_ms"] - r["heads_acked_ms"]) * 1e6)
                self.rounds.append((now_ns, r))

    def clear(self) -> None:
        self.graph.clear()
        self.sessions.clear()
        self.plans.clear()
        self.rounds.clear()
        self.switchovers.clear()

    def window(self, start_ns: int, end_ns: int) -> Window:
        detect = next(((t, l, s) for t, l, s in self.graph if start_ns <= t < end_ns and (l or s)), None)
        acks = [t for t, e in self.plans if start_ns <= t < end_ns and e == "rerouted"]
        by = ""
        if detect is not None:
            # A lost session takes the switch's links down first: the graph shows links either way.
            lost = [(sw, why) for t, sw, why in self.sessions if start_ns <= t <= detect[0]]
            by = f"session of {lost[0][0]} ({lost[0][1]})" if lost else f"probes: {' '.join(sorted(detect[1]))}"
        rounds = [r for t, r in self.rounds if start_ns <= t < end_ns]
        heads = [r["heads_ack_ns"] for r in rounds if r.get("urgent") and "heads_ack_ns" in r]
        heads += [t for t in self.switchovers if start_ns <= t < end_ns]  # rounds that end after the window
        return Window(
            detect_ns=detect[0] if detect else None, detected_by=by, heads_ack_ns=max(heads) if heads else None,
            rerouted_ns=max(acks) if acks else None, rerouted=len(acks), rounds=rounds,
            declared_down={e for t, l, s in self.graph if start_ns <= t < end_ns for e in (*l, *s)},
        )

    async def close(self) -> None:
        await cancel_and_wait(self._task)
