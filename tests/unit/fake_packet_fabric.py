"""A fabric of fake switches that carries packet-outs to the peer's packet-in, on an event loop
whose clock is virtual: LinkMonitor runs its own loop of rounds and checks, unchanged, and a test
of many seconds of probing takes milliseconds and gives the same result every time.

Only the packet I/O of a switch is faked here (what LinkMonitor uses of a SwitchClient); entity
writes and reads are tests/unit/fake_switch.py's business.

A frame's way: the packet-out crosses the controller's stream to the source switch (`wire`), waits
its turn in that switch's packet path (FIFO, `service` per frame, `lag` added), crosses the link (its direction's
latency) to the peer, waits its turn in the peer's packet path and crosses the peer's stream back
as a packet-in, stamped (`ingress_ts`, microseconds of the virtual clock) with the moment it
reached the peer's port, before any wait in the peer's packet path, as the softswitch (the
kernel's receive time) and v1model do; `stamps=False` gives a target without the field, and
`own_clocks` stamps each switch by a clock of its own (BMv2 counts from its start).
A switch's packet path serves both its packet-outs and the frames its ports
receive, as one process does, so a stalled switch neither emits nor delivers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, cast

import grpc

from controller.fabric.graph import FabricGraph, Link, link_name
from controller.p4rt.client import PacketListener, StateListener, SwitchClient, SwitchTarget
from controller.p4rt.errors import SwitchError
from controller.settings import Settings

_START_NS = 1_000 * 10**9  # like a real monotonic clock, far from 0 (0.0 means "never" to the monitor)
_HORIZON_NS = 3_600 * 10**9


class _VirtualSelector(selectors.DefaultSelector):
    """Waiting is jumping: a select that would sleep moves the loop's clock to its deadline."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            # Only another thread could wake the loop now (the self-pipe); nothing here uses one,
            # so a loop with nothing scheduled is a test waiting for what will never happen.
            events: list[tuple[selectors.SelectorKey, int]] = super().select(1.0)
            if not events:
                raise RuntimeError("virtual time: nothing is scheduled and nothing can wake the loop")
            return events
        if timeout > 0:
            self._loop.now_ns += math.ceil(timeout * 1e9)  # ceil: never short of the deadline
            # the loop's own timers never run out: a test waiting for what never comes would
            # otherwise spin through virtual time until pytest's timeout
            if self._loop.now_ns - _START_NS > _HORIZON_NS:
                raise RuntimeError("virtual time: an hour went by; is the test waiting for what never comes?")
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now_ns = _START_NS
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self.now_ns / 1e9

    def clock_ns(self) -> int:
        return self.now_ns


def run_virtual(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())


def diamond() -> FabricGraph:
    """topologies/diamond.yaml's fabric: s1 and s4 joined via s2 and via s3."""
    ends = [("s1", 3, "s2", 3), ("s2", 4, "s4", 3), ("s1", 4, "s3", 3), ("s3", 4, "s4", 4)]
    return FabricGraph(["s1", "s2", "s3", "s4"], [Link(link_name(*e), *e) for e in ends])


@dataclasses.dataclass(slots=True)
class _PacketPath:
    lag: float = 0.0  # added to every frame's turn
    free_at: float = 0.0  # the last frame's turn ends then: FIFO even when `lag` drops
    stream_at: float = 0.0  # the last packet-out reaches the switch then
    stalled: bool = False
    lose: bool = False  # while stalled: frames are lost, not held
    answer_keepalives: bool = True  # while stalled: the gRPC thread still answers
    held: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    unanswered_pings: list[float] = dataclasses.field(default_factory=list)


class FakePacketSwitch:
    """Exactly what LinkMonitor uses of a SwitchClient: name, target.device_id, up, the listener
    lists, packet_out, and when its newest answered keepalive was sent."""

    def __init__(self, fabric: FakePacketFabric, target: SwitchTarget) -> None:
        self.target = target
        self.name = target.name
        self.up = asyncio.Event()
        self.up.set()
        self.packet_listeners: list[PacketListener] = []
        self.state_listeners: list[StateListener] = []
        self.answered_sent_at = 0.0
        self._fabric = fabric

    def packet_out(self, payload: bytes, **metadata: int) -> None:
        if not self.up.is_set():
            raise SwitchError(self.name, grpc.StatusCode.UNAVAILABLE, "switch is not up")
        self._fabric.packet_out(self.name, metadata["egress_port"], payload)

    def deliver(self, payload: bytes, meta: dict[str, int]) -> None:
        client = cast(SwitchClient, self)  # the listeners take a SwitchClient; this is its packet side
        for listener in self.packet_listeners:
            listener(client, payload, meta)


class FakePacketFabric:
    """Switches of `graph` joined by its links. Create and use on a running (virtual-time) loop.

    Knobs: `cut` a direction (its frames vanish), `set_latency` of a direction, `rewire` a
    direction to another switch port than the topology says, `set_lag` of a switch's packet
    path, `busy_controller` (the controller's loop), `stall`/`resume` a switch's packet path (frames held or lost; keepalives answered or
    not), `set_up` as the client reports a switch lost or back, `inject` a frame into a switch
    port from outside."""

    def __init__(self, graph: FabricGraph, settings: Settings, *, wire: float = 0.0003, latency: float = 0.001,
                 service: float = 0.00005, stamps: bool = True, own_clocks: bool = False) -> None:
        self.graph = graph
        self.settings = settings
        self.wire = wire  # controller <-> switch stream, each way
        self.service = service  # a packet path handles one frame at a time: a round's frames leave one after another
        self.stamps = stamps
        # microseconds each switch's clock is behind the controller's: started at other moments
        self.clock_behind_us = {name: (i + 1) * 97_000_003 if own_clocks else 0 for i, name in enumerate(sorted(graph.g.nodes))}
        self._loop = asyncio.get_running_loop()
        self.switches = {name: FakePacketSwitch(self, SwitchTarget(name, f"fake:{name}", i + 1, b"", b"", 0))
                         for i, name in enumerate(sorted(graph.g.nodes))}
        self.paths = {name: _PacketPath() for name in self.switches}
        self.latency: dict[tuple[str, int], float] = {end: latency for end in graph.port_link}
        self.cuts: set[tuple[str, int]] = set()
        self.rewired: dict[tuple[str, int], tuple[str, int]] = {}
        self.dropped: dict[str, int] = {"cut": 0, "lost": 0, "no_link": 0}
        self._keepalives: list[asyncio.Task[None]] = []

    @property
    def clients(self) -> dict[str, SwitchClient]:
        return cast(dict[str, SwitchClient], self.switches)  # the packet side of a client is all a LinkMonitor needs

    def start(self) -> None:
        self._keepalives = [asyncio.create_task(self._keepalive_loop(name)) for name in self.switches]

    async def stop(self) -> None:
        for task in self._keepalives:
            task.cancel()
        await asyncio.gather(*self._keepalives, return_exceptions=True)

    # --- knobs -----------------------------------------------------------------------------------

    def end(self, src: str, dst: str) -> tuple[str, int]:
        """The port of `src` that faces `dst` (the first link between them)."""
        link = next(l for l in self.graph.links.values() if {l.a, l.b} == {src, dst})
        return src, link.port_of(src)

    def link(self, a: str, b: str) -> Link:
        return self.graph.port_link[self.end(a, b)]

    def cut(self, src: str, dst: str, on: bool = True) -> None:
        """Silently drop what `src` sends to `dst` (the other direction still works)."""
        (self.cuts.add if on else self.cuts.discard)(self.end(src, dst))

    def set_latency(self, src: str, dst: str, seconds: float) -> None:
        self.latency[self.end(src, dst)] = seconds

    def rewire(self, src: str, dst: str, to: tuple[str, int]) -> None:
        """What `src` sends towards `dst` arrives at switch port `to` instead: cabled otherwise than
        the topology file says."""
        self.rewired[self.end(src, dst)] = to

    def set_lag(self, switch: str, seconds: float) -> None:
        self.paths[switch].lag = seconds

    def stall(self, switch: str, *, lose: bool = False, answer_keepalives: bool = False) -> None:
        """The switch's packet path stops: frames wait (or, with `lose`, vanish) until `resume`.
        Without `answer_keepalives` the whole switch is frozen (SIGSTOP); with it, only its packet
        path (a starved switch whose gRPC thread still answers)."""
        p = self.paths[switch]
        p.stalled, p.lose, p.answer_keepalives = True, lose, answer_keepalives

    def resume(self, switch: str) -> None:
        p = self.paths[switch]
        p.stalled = False
        held, p.held = p.held, []
        for step in held:  # the backlog goes out at once, in order
            self._turn(switch, step)
        if p.unanswered_pings:
            self.switches[switch].answered_sent_at = max(self.switches[switch].answered_sent_at, *p.unanswered_pings)
            p.unanswered_pings.clear()

    async def set_up(self, switch: str, up: bool) -> None:
        """What the client reports when the switch is lost (its keepalives unanswered too long, its
        stream gone: nothing it held comes out) or is back."""
        client = self.switches[switch]
        if up:
            self.paths[switch].unanswered_pings.clear()  # they died with the old session
            self.resume(switch)
            client.up.set()
        else:
            self.stall(switch, lose=True)
            client.up.clear()
        for listener in client.state_listeners:
            result = listener(cast(SwitchClient, client), up, "fake")
            if result is not None:
                await result

    def busy_controller(self, seconds: float) -> None:
        """The controller's loop runs one callback for `seconds` (call it from the loop): time
        passes and nothing else runs, so timers fire late and packet-ins wait unread."""
        loop = self._loop
        assert isinstance(loop, VirtualTimeLoop)
        loop.now_ns += round(seconds * 1e9)

    def inject(self, switch: str, port: int, frame: bytes) -> None:
        """A frame arrives at a switch port from outside the fabric (a host); the switch punts it."""
        arrived = self._loop.time()
        self._turn(switch, lambda: self._punt(switch, port, frame, arrived))

    # --- the frames' way -------------------------------------------------------------------------

    def packet_out(self, src: str, port: int, frame: bytes) -> None:
        # The stream keeps its order; timers due at one instant would not (heapq is no FIFO).
        p = self.paths[src]
        p.stream_at = max(self._loop.time() + self.wire, p.stream_at + 1e-6)
        self._loop.call_at(p.stream_at, self._turn, src, lambda: self._egress(src, port, frame))

    def _turn(self, switch: str, step: Callable[[], None]) -> None:
        """Queue `step` in the switch's packet path."""
        p = self.paths[switch]
        p.free_at = max(self._loop.time() + p.lag, p.free_at) + self.service
        self._loop.call_at(p.free_at, self._in_path, switch, step)

    def _in_path(self, switch: str, step: Callable[[], None]) -> None:
        p = self.paths[switch]
        if not p.stalled:
            step()
        elif p.lose:
            self.dropped["lost"] += 1
        else:
            p.held.append(step)

    def _egress(self, src: str, port: int, frame: bytes) -> None:
        end = (src, port)
        link = self.graph.port_link.get(end)
        if link is None:
            self.dropped["no_link"] += 1  # a host port: nothing of ours listens there
            return
        if end in self.cuts:
            self.dropped["cut"] += 1
            return
        dst, dst_port = self.rewired.get(end, (link.other(src), link.port_of(link.other(src))))
        self._loop.call_later(self.latency[end], self._arrive, dst, dst_port, frame)

    def _arrive(self, switch: str, port: int, frame: bytes) -> None:
        arrived = self._loop.time()
        self._turn(switch, lambda: self._punt(switch, port, frame, arrived))

    def _punt(self, switch: str, port: int, frame: bytes, arrived: float) -> None:
        meta = {"ingress_port": port}
        if self.stamps:
            meta["ingress_ts"] = round(arrived * 1e6) - self.clock_behind_us[switch]
        self._loop.call_later(self.wire, self.switches[switch].deliver, frame, meta)

    async def _keepalive_loop(self, switch: str) -> None:
        """As the client's keepalive loop: a liveness RPC every interval; its answer proves the
        switch ran after it was sent."""
        client, p = self.switches[switch], self.paths[switch]
        while True:
            sent = self._loop.time()
            if p.stalled and not p.answer_keepalives:
                p.unanswered_pings.append(sent)
            else:
                self._loop.call_later(2 * self.wire, self._answered, client, sent)
            await asyncio.sleep(self.settings.keepalive_interval)

    @staticmethod
    def _answered(client: FakePacketSwitch, sent: float) -> None:
        client.answered_sent_at = max(client.answered_sent_at, sent)
