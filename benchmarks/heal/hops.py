"""Where a heal's time goes, hop by hop, under the benchmark's own load.

The probe path, from the probes of the second before the failure (streams running): how long a
probe waited in the controller before gRPC took it (`SwitchClient.outbox_waits`); from its send
to its arrival at the peer switch by the peer's ingress stamp (gRPC to the source switch, its
packet-out, the wire, the peer's port); from that arrival to the controller reading its packet-in
(the peer's packet-in stream, gRPC, the controller's loop); and how late the controller's loop
runs a timer (a 2 ms sleep's overshoot), which every hop on the controller's side waits for too.
The failure path, per trial: the judgement (first missing probe sent -> link declared dead), the
judgement -> the heal round's start (the loop), the round's start -> the head-end write's
acknowledgement, and of that the head-end Write RPC itself (the slowest switch's, from the call
to its answer read; the rest is the controller's preparation of the batch). Times are time.monotonic_ns(), shared with the softswitches (they stamp
CLOCK_MONOTONIC); a switch on another clock is read through its bounds (SwitchClocks.best).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from controller.aio import cancel_and_wait
from controller.fabric.graph import Link
from controller.heal.reroute import HealRound
from controller.runtime import Controller

LOOP_TICK_S = 0.002
STEADY_S = 1.0  # the probe hops are taken from this long before the failure

# the rows of the breakdown, in the order of the way
PROBE_HOPS = ("controller outbox", "send -> peer ingress", "peer ingress -> controller read", "controller loop lag")
FAILURE_HOPS = ("judgement (first missing probe -> down)", "down -> heal round start", "round start -> head-end acked",
                "of which the Write RPC")
HOPS = PROBE_HOPS + FAILURE_HOPS


@dataclasses.dataclass
class HopSamples:
    """One trial's samples per hop, ms."""

    by_hop: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {h: [] for h in HOPS})


class HopRecorder:
    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.arrivals: list[tuple[int, int, float | None]] = []  # (sent, arrival, read) ns
        self.loop_lags: list[tuple[int, int]] = []  # (when, overshoot) ns
        self.detections: list[tuple[int, float]] = []  # (when, seconds since the first missing probe)
        self.rounds: list[HealRound] = []
        self.writes: list[tuple[int, float]] = []  # (answer read, seconds the RPC took) of every Write
        ctl.links.arrival_listeners.append(self._on_arrival)
        ctl.links.detection_listeners.append(self._on_detection)
        ctl.rerouter.round_listeners.append(self.rounds.append)
        for client in ctl.clients.values():
            client.write_listeners.append(self._on_write)
        self._task = asyncio.create_task(self._tick(), name="bench:loop-lag")

    def _on_arrival(self, link: str, sent_ns: int, arrival_ns: float | None, read_ns: int) -> None:
        self.arrivals.append((sent_ns, read_ns, arrival_ns))

    def _on_write(self, client: object, updates: int, failed: object, elapsed: float) -> None:
        self.writes.append((time.monotonic_ns(), elapsed))

    def _on_detection(self, link: Link, took: float) -> None:
        self.detections.append((time.monotonic_ns(), took))

    async def _tick(self) -> None:
        while True:
            before = time.monotonic_ns()
            await asyncio.sleep(LOOP_TICK_S)
            now = time.monotonic_ns()
            self.loop_lags.append((now, now - before - int(LOOP_TICK_S * 1e9)))

    def clear(self) -> None:
        self.arrivals.clear()
        self.loop_lags.clear()
        self.detections.clear()
        self.rounds.clear()
        self.writes.clear()
        for client in self.ctl.clients.values():
            client.outbox_waits.clear()

    def trial(self, t_fail: int, end_ns: int) -> HopSamples:
        """The samples of the trial just run, whose failure came at t_fail."""
        out = HopSamples()
        h = out.by_hop
        since = t_fail - int(STEADY_S * 1e9)
        for client in self.ctl.clients.values():
            h["controller outbox"] += [w / 1e6 for w in client.outbox_waits]
        for sent, read, arrival in self.arrivals:
            if since <= sent < t_fail and arrival is not None:
                h["send -> peer ingress"].append((arrival - sent) / 1e6)
                h["peer ingress -> controller read"].append((read - arrival) / 1e6)
        h["controller loop lag"] += [lag / 1e6 for t, lag in self.loop_lags if since <= t < t_fail]
        h["judgement (first missing probe -> down)"] += [took * 1000 for t, took in self.detections if t_fail <= t < end_ns][:1]
        urgent = [r for r in self.rounds if r.urgent and r.kicked_ns and t_fail <= r.kicked_ns < end_ns][:1]
        for r in urgent:
            h["down -> heal round start"].append((r.started_ns - r.kicked_ns) / 1e6)
            if r.heads_acked_ns:
                h["round start -> head-end acked"].append((r.heads_acked_ns - r.started_ns) / 1e6)
                rpcs = [took for at, took in self.writes if r.started_ns <= at <= r.heads_acked_ns]
                if rpcs:
                    h["of which the Write RPC"].append(max(rpcs) * 1000)
        return out

    async def close(self) -> None:
        await cancel_and_wait(self._task)
