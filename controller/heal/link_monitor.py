"""Link and port liveness from probes sent and received over the P4Runtime streams.

Every fabric port sends a probe each `probe_interval`, all of a round with one send time; the peer
switch punts it back as a packet-in. A direction is dead when `probe_misses` of its probes are
missing of which both ends show that their packet paths ran at the time and ran on after it: in
the probe's own round the source emitted another probe that arrived (on another port) and the
destination delivered one (from another neighbour), and a later round arrived from the source and
through the destination (a switch emits in order, so the missing probe left before that one); and
the probe is older than its ends' packet paths now take (the longest send-to-packet-in time of a
recent probe the source emitted, plus that of one the destination delivered, plus half an
interval): a lagging source sends the probe late and a lagging destination passes it on late, and
without this a source emitting a round behind its neighbours had its links declared dead while
their probes were merely on their way. Proof is judged by send times and rounds, so neither a busy
switch nor a backlog in the controller's own loop fakes a link failure, and probes lost while a
switch's whole packet path was silent are not held against a link once that path runs again. A
starved switch can answer keepalives on its gRPC thread while its packet path lags, so a keepalive
alone proves an end only after `probe_keepalive_proof_delay`: that is what a switch with one
fabric port, or one cut off on every port at once, has to show. Checks run half an interval after
each round of probes, and with stamps (below) also whenever a packet-in moves on the stamp of a
switch towards which a direction misses probes. A link is down when either direction is dead,
and up again only after `probe_recovery` consecutive intervals with probes in both directions;
every fall within `flap_window` of a rise doubles what the next rise needs (no thrash on a
flapping link). A probe that arrives where the topology file says it should not is reported, not
used.

Where the peer stamps each probe's arrival (packet-in metadata `ingress_ts`, `probe_ingress_stamps`),
"older than its ends' packet paths now take" is replaced by evidence on the switches' own clocks
(controller/heal/switch_clock.py), which a backlog in the packet-in streams or in the controller's
loop does not delay: a missing probe is lost once a probe its source sent after it has arrived
somewhere (the source emits in order, so the missing one left before), and the destination has
stamped, in a packet-in read since, a moment later than that arrival plus the link's lateness
(how much later than its source's other probes of the same round its probes usually arrive: a
slower wire or a busier peer) plus `probe_stamp_margin`. The destination takes its frames in the
order they come, so it would have taken the missing probe before, and its packet-ins come in
order.

A link's verdict is kept in the store (records of kind `link_state`: up or down, and what its
next rise needs), and a restarted controller starts from it: a link that was down stays down
until probes cross it for its recovery checks, one that was up carries its stored connections
until probes show it dead. Fresh evidence only: at a start (and whenever a switch comes up) the
probes' own history (lags, lateness, rounds) is empty while the switches and the controller are
at their busiest (pipeline checks, reconcile reads, NSM clients coming back), so a probe sent
before `probe_startup_grace` has passed since probes began to arrive from or through both ends of
its link is not counted as missing. An end through which none arrives (cut off on every port)
has its grace counted from when probes were first sent out of it, twice over. A replica taking
over from a dead leader starts warm (its process running, the switches' pipeline kept, reconcile
finding nothing), so its first sessions get `probe_takeover_grace` instead: a link cut around the
leader's death is judged that much sooner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ValidationError

from controller.aio import cancel_and_wait
from controller.fabric.graph import FabricGraph, Link
from controller.fabric.store import StateStore
from controller.heal import probe_frame
from controller.heal.switch_clock import SwitchClocks
from controller.p4rt.client import SwitchClient
from controller.p4rt.errors import SwitchError
from controller.settings import Settings

log = logging.getLogger("p4nsm.heal.links")

_ROUNDS_KEPT = 64  # proof by round: only the recent past matters
_LAG_SAMPLES = 64
_SEND_LOG = 1024  # a direction's send times: covers a keepalive proof delay of 10 s at 10 ms probes
_NEVER = 2**63  # later than any monotonic ns
_NO_STAMP = -(2**62)  # earlier than any stamp a clock of any offset gives
_ARRIVALS_KEPT = 64  # per source switch: where its recent probes arrived, for proof of emission
LINK_STATE = "link_state"  # store records: each probed link's last verdict

LinkListener = Callable[[Link, bool], Awaitable[None]]
RttListener = Callable[[str, float], None]  # (link name, seconds from a probe's send to its packet-in)
DetectionListener = Callable[[Link, float], None]  # (link, seconds from its first missing probe's send to the judgment)
# (link name, sent, arrival at the peer on the controller's clock or None without a stamp,
# packet-in read), all monotonic ns: where a probe's time went, for the benchmark's breakdown
ArrivalListener = Callable[[str, int, float | None, int], None]


@dataclasses.dataclass(slots=True)
class _Direction:
    src: str
    src_port: int
    dst: str
    dst_port: int
    link: str = ""  # the link's name
    seq: int = 0  # last probe sent
    rx_seq: int = 0  # newest probe that arrived
    sent_at: deque = dataclasses.field(default_factory=lambda: deque(maxlen=_SEND_LOG))  # (seq, monotonic ns, out_no), seq consecutive
    # how much later than the earliest of its source's other probes of a round its probe arrives (ns)
    skew: deque = dataclasses.field(default_factory=lambda: deque(maxlen=_LAG_SAMPLES))

    def sent_time(self, seq: int) -> float:
        """When probe `seq` went out; for one older than the log, the oldest logged send (later
        than the truth, so what is judged on it errs towards patience)."""
        first = self.sent_at[0][0]
        return self.sent_at[max(0, min(seq - first, len(self.sent_at) - 1))][1] / 1e9

    @property
    def unanswered(self) -> int:
        return self.seq - self.rx_seq


@dataclasses.dataclass(slots=True)
class _Round:
    """Which switches' packet paths carried probes of one round: some probe they emitted arrived,
    some probe reached the controller through them."""
    emitted: set[str] = dataclasses.field(default_factory=set)
    delivered: set[str] = dataclasses.field(default_factory=set)
    # stamped arrivals by source switch: (direction, stamp ns)
    arrived: dict[str, list[tuple[_Direction, int]]] = dataclasses.field(default_factory=dict)


class StoredLink(BaseModel):
    """A link's verdict as the last run left it."""

    up: bool
    need: int  # healthy checks its next rise needs (doubled by flaps)


@dataclasses.dataclass(slots=True)
class _LinkState:
    link: Link
    up: bool = True
    streak: int = 0  # consecutive healthy checks while down
    need: int = 0  # healthy checks required to come back
    went_up_at: float = 0.0


class LinkMonitor:
    def __init__(self, graph: FabricGraph, clients: dict[str, SwitchClient], settings: Settings, on_change: LinkListener,
                 clock_ns: Callable[[], int] = time.monotonic_ns, store: StateStore | None = None) -> None:
        self.graph = graph
        self.store = store
        # Tests drive the monitor on their event loop's virtual time. Seconds are derived from the
        # same reading, exactly as time.monotonic() derives them from time.monotonic_ns().
        self.clock_ns = clock_ns
        self.clients = clients
        self.settings = settings
        self.on_change = on_change
        self.origin = secrets.randbits(63)
        self.counters: Counter[str] = Counter()
        # Observers (metrics): every matching probe's round trip, and how long each link-down
        # judgment took from the evidence; empty lists cost the probe path one loop over nothing.
        self.rtt_listeners: list[RttListener] = []
        self.detection_listeners: list[DetectionListener] = []
        self.arrival_listeners: list[ArrivalListener] = []
        self._by_device = {c.target.device_id: c.name for c in clients.values()}
        # per switch: the newest send time of a probe it emitted (it arrived somewhere) and of one it
        # delivered (it arrived through it): its packet-out and packet-in paths ran after that
        self.emitted_after: dict[str, float] = {name: 0.0 for name in clients}
        self.delivered_after: dict[str, float] = {name: 0.0 for name in clients}
        # per switch: how long its recent probes took from send to packet-in, as source and as
        # destination; a switch whose packet path lags gets that much more patience
        self.emit_lag: dict[str, deque[float]] = {name: deque(maxlen=_LAG_SAMPLES) for name in clients}
        self.deliver_lag: dict[str, deque[float]] = {name: deque(maxlen=_LAG_SAMPLES) for name in clients}
        self.directions: dict[tuple[str, int], _Direction] = {}
        # Ingress stamps: the switches' clocks, the packet-outs each switch was given (numbered in
        # the order it emits them), where those arrived (out_no, peer, stamp ns), and the newest
        # stamp each switch put on a probe the controller has read.
        self.clocks = SwitchClocks(list(clients))
        self.out_no: dict[str, int] = {name: 0 for name in clients}
        self.arrivals: dict[str, deque[tuple[int, str, int]]] = {name: deque(maxlen=_ARRIVALS_KEPT) for name in clients}
        self.stamped_until: dict[str, int] = {name: _NO_STAMP for name in clients}
        # Since when (monotonic s) this session of each switch sends probes, and since when probes
        # arrive from or through it: the start of its grace (module docstring).
        self.sending_since: dict[str, float | None] = {name: None for name in clients}
        self.flowing_since: dict[str, float | None] = {name: None for name in clients}
        # ...and how long that grace is: start(first_grace) may shorten it for the first sessions
        # (a replica taking over), a switch's return always gets probe_startup_grace
        self.grace: dict[str, float] = {name: settings.probe_startup_grace for name in clients}
        self.rounds: dict[int, _Round] = {}  # by send time (monotonic ns), oldest first
        self.links: dict[str, _LinkState] = {}
        for link in graph.links.values():
            # Links start up (the topology file says they exist); probes get a grace period from
            # the moment both ends are up, see _on_switch_state. went_up_at far in the past: a
            # first failure is not a flap.
            self.links[link.name] = _LinkState(link, need=settings.probe_recovery, went_up_at=float("-inf"))
            for s, sp, d, dp in ((link.a, link.a_port, link.b, link.b_port), (link.b, link.b_port, link.a, link.a_port)):
                self.directions[(s, sp)] = _Direction(s, sp, d, dp, link.name)
        self._task: asyncio.Task[None] | None = None
        # set by a packet-in whose stamp moves on a switch that some probe towards it is missing at
        self._evidence = asyncio.Event()
        self._evidence_at: set[str] = set()  # ...and those switches
        self._into: dict[str, list[_Direction]] = {}
        for direction in self.directions.values():
            self._into.setdefault(direction.dst, []).append(direction)
        self._restore()

    def _restore(self) -> None:
        """Start from the stored verdicts (module docstring)."""
        for name, value in (self.store.records(LINK_STATE) if self.store is not None else {}).items():
            state = self.links.get(name)
            if state is None:
                continue  # a link the topology no longer has
            try:
                stored = StoredLink.model_validate_json(value)
            except ValidationError as e:  # unreadable is no evidence: the link starts as the topology says
                log.warning("link=%s event=stored_state_unreadable error=%s", name, e.errors()[0]["msg"])
                continue
            if stored.up:
                continue
            state.up = False
            state.need = max(stored.need, self.settings.probe_recovery)
            log.info("link=%s event=down reason=stored_down next_recovery_checks=%d", name, state.need)

    def down_links(self) -> list[str]:
        """The links whose verdict is down now (at a start: those stored down)."""
        return sorted(name for name, state in self.links.items() if not state.up)

    async def _changed(self, state: _LinkState) -> None:
        """A verdict: stored before anyone acts on it, then told."""
        if self.store is not None:
            self.store.put_record(LINK_STATE, state.link.name, StoredLink(up=state.up, need=state.need).model_dump_json())
            await self.store.durable()
        await self.on_change(state.link, state.up)

    def start(self, first_grace: float | None = None) -> None:
        """`first_grace`: the grace of the switches' current sessions, when it is not
        probe_startup_grace (module docstring)."""
        if first_grace is not None:
            self.grace = dict.fromkeys(self.clients, first_grace)
        for client in self.clients.values():
            client.packet_listeners.append(self._on_packet_in)
            client.state_listeners.append(self._on_switch_state)
        if self.directions:  # nothing to probe (probe-less targets, probe_interval 0): no ticking task
            self._task = asyncio.create_task(self._run(), name="heal:link-monitor")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def link_up(self, name: str) -> bool:
        return self.links[name].up

    # --- sending and checking -------------------------------------------------------------------

    async def _run(self) -> None:
        half = self.settings.probe_interval / 2
        loop = asyncio.get_running_loop()
        while True:
            next_round = loop.time() + self.settings.probe_interval
            try:
                self._send_all()
                await asyncio.sleep(half)
                await self._check_all()
                # Until the next round, a stamp that may complete a proof is judged when it comes.
                while (left := next_round - loop.time()) > 0:
                    self._evidence.clear()
                    try:
                        await asyncio.wait_for(self._evidence.wait(), left)
                    except TimeoutError:
                        break
                    at, self._evidence_at = self._evidence_at, set()
                    await self._check_all(at)
            except asyncio.CancelledError:
                raise
            except Exception:  # the monitor must outlive any one bad tick
                log.exception("event=link_monitor_tick_failed")
                await asyncio.sleep(half)

    def _send_all(self) -> None:
        now_ns = self.clock_ns()
        self.rounds[now_ns] = _Round()
        while len(self.rounds) > _ROUNDS_KEPT:
            del self.rounds[next(iter(self.rounds))]
        for d in self.directions.values():
            client = self.clients[d.src]
            if not client.up.is_set():
                continue
            if self.sending_since[d.src] is None:
                self.sending_since[d.src] = now_ns / 1e9
            d.seq += 1
            self.out_no[d.src] += 1
            d.sent_at.append((d.seq, now_ns, self.out_no[d.src]))
            frame = probe_frame.encode(probe_frame.Probe(self.origin, client.target.device_id, d.src_port, d.seq, now_ns))
            try:
                client.packet_out(frame, egress_port=d.src_port)
                self.counters["sent"] += 1
            except SwitchError:
                pass

    async def _check_all(self, only: set[str] | None = None) -> None:
        """Every link, or `only` those with an end there."""
        s = self.settings
        now = self._now()
        for state in self.links.values():
            link = state.link
            if only is not None and link.a not in only and link.b not in only:
                continue
            if not (self.clients[link.a].up.is_set() and self.clients[link.b].up.is_set()):
                continue  # a dead switch is the switch monitor's news, not a link failure
            dirs = (self.directions[(link.a, link.a_port)], self.directions[(link.b, link.b_port)])
            dead = next((d for d in dirs if self._dead(d, now)), None) if state.up else None
            if dead is not None:
                self._fall(state, now)
                log.warning("link=%s event=down a=%s:%d b=%s:%d dead_from=%s:%d missing=%d patience_ms=%.0f "
                            "skew_ms=%.1f next_recovery_checks=%d", link.name, link.a, link.a_port, link.b, link.b_port,
                            dead.src, dead.src_port, dead.unanswered, self.patience(dead) * 1000,
                            max(dead.skew, default=0.0) / 1e6, state.need)
                if self.detection_listeners:
                    # the evidence begins with the first probe that never arrived
                    took = now - dead.sent_time(dead.rx_seq + 1)
                    for listener in self.detection_listeners:
                        listener(link, took)
                await self._changed(state)
            elif not state.up:
                # Coming back needs probes that really arrive, in both directions.
                arriving = all(d.unanswered < s.probe_misses for d in dirs)
                state.streak = state.streak + 1 if arriving else 0
                if state.streak >= state.need:
                    state.up = True
                    state.went_up_at = now
                    log.info("link=%s event=up after_checks=%d", link.name, state.streak)
                    await self._changed(state)

    def _fall(self, state: _LinkState, now: float) -> None:
        s = self.settings
        state.up = False
        state.streak = 0
        flapped = now - state.went_up_at < s.flap_window
        state.need = min(state.need * 2, s.probe_recovery_max) if flapped else s.probe_recovery

    async def mark_down(self, name: str, reason: str) -> None:
        """Another source saw the link die (gNMI: a port's oper-status DOWN): down at once, and
        up again only as after a probe verdict, once probes cross it for the recovery checks."""
        state = self.links.get(name)
        if state is None or not state.up:
            return
        self._fall(state, self._now())
        log.warning("link=%s event=down reason=%r next_recovery_checks=%d", name, reason, state.need)
        await self._changed(state)

    def grace_end(self, switch: str) -> float:
        """Probes sent before this moment (monotonic s) do not count against a link at `switch`."""
        grace = self.grace[switch]
        if grace <= 0:
            return float("-inf")
        flowing, sending = self.flowing_since[switch], self.sending_since[switch]
        if flowing is not None:
            return flowing + grace
        return float("inf") if sending is None else sending + 2 * grace

    def _dead(self, d: _Direction, now: float) -> bool:
        s = self.settings
        if d.unanswered < s.probe_misses:
            return False
        judged_from = max(self.grace_end(d.src), self.grace_end(d.dst))
        if judged_from > now:
            return False
        fresh_ns = int(judged_from * 1e9) if judged_from > float("-inf") else -_NEVER
        # A later round arrived from the source (it emits in order, so the missing probe left
        # before it) and through the destination: both ran on after the probe went missing.
        ran_on = int((min(self.emitted_after[d.src], self.delivered_after[d.dst]) - s.probe_interval / 2) * 1e9)
        # ...and the probe is older than its ends' packet paths now take (a lagging source sends
        # the missing probe late, and a lagging destination passes it on late).
        stamped = s.probe_ingress_stamps and d.skew and self.clocks.known(d.dst)
        if stamped:
            # ...or rather, by the switches' clocks: the source emitted it, and the destination ran
            # past the moment it would have arrived (see the module docstring)
            ran_past = self.clocks.earliest(d.dst, self.stamped_until[d.dst]) - max(d.skew) - s.probe_stamp_margin * 1e9
            lost_below = self._emitted_by(d.src, ran_past)
            ran_on = _NEVER
        else:
            lost_below = 0
            ran_on = min(ran_on, int((now - self.patience(d)) * 1e9))
        shown = 0
        for i in range(len(d.sent_at) - 1, max(-1, len(d.sent_at) - 1 - _ROUNDS_KEPT), -1):  # newest first
            seq, sent_ns, out_no = d.sent_at[i]
            if seq <= d.rx_seq or sent_ns < fresh_ns:
                break
            if sent_ns >= ran_on:
                continue
            if stamped and out_no >= lost_below:
                continue
            # ...and the probe's own round went through both: neither end was silent then.
            r = self.rounds.get(sent_ns)
            shown += r is not None and d.src in r.emitted and d.dst in r.delivered
            if shown >= s.probe_misses:
                return True
        # the probes missed after the grace, as the rounds above count them
        late = max(d.sent_time(d.rx_seq + s.probe_misses), judged_from + (s.probe_misses - 1) * s.probe_interval)
        late += s.probe_keepalive_proof_delay
        return self._alive_after(d.src, late) and self._alive_after(d.dst, late)

    def _emitted_by(self, src: str, moment: float) -> int:
        """The newest packet-out of `src` that had arrived somewhere by `moment` (latest reading);
        every one it was given before that had been emitted by then (0: none known)."""
        newest = 0
        latest = self.clocks.latest
        for no, peer, stamp_ns in self.arrivals[src]:
            if no > newest and latest(peer, stamp_ns) < moment:
                newest = no
        return newest

    def _compare(self, arrived: list[tuple[_Direction, int]], d: _Direction, stamp_ns: int) -> None:
        """Lateness samples of a probe that arrived and of those its source sent in the same round
        that arrived before it, each against the other: how much later (earliest reading) than
        the other (latest reading) it reached its peer, never below 0."""
        clocks = self.clocks
        early, late = clocks.earliest(d.dst, stamp_ns), clocks.latest(d.dst, stamp_ns)
        for o, t in arrived:
            d.skew.append(max(0.0, early - clocks.latest(o.dst, t)))
            o.skew.append(max(0.0, clocks.earliest(o.dst, t) - late))
        arrived.append((d, stamp_ns))

    def patience(self, d: _Direction) -> float:
        """How old a probe of `d` must be to count as missing: the longest recent send-to-packet-in
        time of a probe its source emitted and of one its destination delivered, added (each lag
        holds both ends of another path, but when both ends of this one lag, its probes take
        both), and half an interval."""
        return max(self.emit_lag[d.src], default=0.0) + max(self.deliver_lag[d.dst], default=0.0) + self.settings.probe_interval / 2

    def _now(self) -> float:
        return self.clock_ns() / 1e9

    def _alive_after(self, switch: str, moment: float) -> bool:
        return (self.emitted_after[switch] > moment or self.delivered_after[switch] > moment
                or self.clients[switch].answered_sent_at > moment)

    # --- receiving ---------------------------------------------------------------------------------

    def _on_packet_in(self, client: SwitchClient, payload: bytes, meta: dict[str, int]) -> None:
        probe = probe_frame.decode(payload)
        if probe is None:
            self.counters["not_probe"] += 1
            return
        if probe.origin != self.origin:
            self.counters["foreign"] += 1
            log.debug("switch=%s port=%s event=foreign_probe origin=%x", client.name, meta.get("ingress_port"), probe.origin)
            return
        src = self._by_device.get(probe.device_id)
        d = self.directions.get((src, probe.port)) if src else None
        at = (client.name, meta.get("ingress_port", -1))
        if d is None or (d.dst, d.dst_port) != at:
            self.counters["mismatch"] += 1
            expected = f"{d.dst}:{d.dst_port}" if d else "no link"
            log.warning("event=probe_topology_mismatch sent_from=%s:%d arrived_at=%s:%s topology_says=%s", src, probe.port, at[0], at[1], expected)
            return
        self.counters["received"] += 1
        if probe.seq > d.rx_seq:
            d.rx_seq = probe.seq
        now_ns = self.clock_ns()
        for end in (d.src, d.dst):
            if self.flowing_since[end] is None and self.sending_since[end] is not None:
                self.flowing_since[end] = now_ns / 1e9
        r = self.rounds.get(probe.sent_ns)
        if r is not None:
            r.emitted.add(d.src)
            r.delivered.add(d.dst)
        stamp_us = meta.get("ingress_ts")
        arrival: float | None = None
        if stamp_us:
            stamp_ns = stamp_us * 1000
            self.clocks.observe(d.dst, stamp_ns, probe.sent_ns, now_ns)
            if stamp_ns > self.stamped_until[d.dst]:
                self.stamped_until[d.dst] = stamp_ns
                misses = self.settings.probe_misses
                if any(o.unanswered >= misses for o in self._into[d.dst]):
                    self._evidence_at.add(d.dst)
                    self._evidence.set()
            first = d.sent_at[0][0] if d.sent_at else probe.seq + 1
            if first <= probe.seq < first + len(d.sent_at):
                self.arrivals[d.src].append((d.sent_at[probe.seq - first][2], d.dst, stamp_ns))
            if r is not None:
                self._compare(r.arrived.setdefault(d.src, []), d, stamp_ns)
            arrival = self.clocks.best(d.dst, stamp_ns)
        for arrival_listener in self.arrival_listeners:
            arrival_listener(d.link, probe.sent_ns, arrival, now_ns)
        sent = probe.sent_ns / 1e9
        lag = now_ns / 1e9 - sent
        self.emit_lag[d.src].append(lag)
        for listener in self.rtt_listeners:
            listener(d.link, lag)
        self.deliver_lag[d.dst].append(lag)
        if sent > self.emitted_after[d.src]:
            self.emitted_after[d.src] = sent
        if sent > self.delivered_after[d.dst]:
            self.delivered_after[d.dst] = sent

    async def _on_switch_state(self, client: SwitchClient, up: bool, reason: str) -> None:
        """A switch's links go down with it, and come back only after probes cross them again:
        a returning switch is verified before paths use its links."""
        # a returning switch may be another process with another clock (BMv2 counts from its start)
        self.clocks.forget(client.name)
        self.arrivals[client.name].clear()
        self.stamped_until[client.name] = _NO_STAMP
        self.sending_since[client.name] = self.flowing_since[client.name] = None  # a new session's grace
        if not up:
            self.grace[client.name] = self.settings.probe_startup_grace  # its return meets a cold switch
        if up:
            for d in self.directions.values():
                if client.name in (d.src, d.dst):
                    d.rx_seq = d.seq  # nothing was sent while it was away: nothing is owed
            return
        for state in self.links.values():
            if state.up and client.name in (state.link.a, state.link.b):
                state.up = False
                state.streak = 0
                state.need = self.settings.probe_recovery
                await self._changed(state)
