"""LinkMonitor's dead-link rule (see its module docstring), each case on its own, on a fake
packet fabric in virtual time: LinkMonitor's own loop of rounds and checks runs unchanged, every
`probe_interval`, with the settings' defaults unless a test says otherwise.

Times are in rounds: round k is sent at `round_at(k)` and checked half an interval later. A test
acts between events, never on one (`before_round`, `after_check`), so the order is not left to
ties. Rounds start when the monitor does and the links start up; round 0 of a test is the first
after the start-up grace (`probe_startup_grace`), whose own rules are tested apart."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
from collections.abc import Awaitable, Callable

import pytest

from controller.fabric.graph import FabricGraph, Link, link_name
from controller.fabric.store import Store
from controller.heal import probe_frame
from controller.heal.link_monitor import LINK_STATE, LinkMonitor, StoredLink
from controller.settings import Settings
from tests.unit.fake_packet_fabric import FakePacketFabric, VirtualTimeLoop, diamond, run_virtual

DEFAULTS = Settings.model_validate({})  # the defaults, whatever P4NSM_* the environment sets
# whether the fake switches stamp ingress_ts, and by which clocks: every rule runs each way
STAMPED = {"stamps": True, "own_clocks": False}


@pytest.fixture(autouse=True, params=[(True, False), (True, True), (False, False)],
                ids=["ingress-stamps", "own-clocks", "no-stamps"])
def _stamps(request: pytest.FixtureRequest) -> None:
    STAMPED["stamps"], STAMPED["own_clocks"] = request.param


@dataclasses.dataclass
class Bench:
    fabric: FakePacketFabric
    monitor: LinkMonitor
    settings: Settings
    changes: list[tuple[str, bool]]  # what the listener was told, in order
    t0: float

    @property
    def interval(self) -> float:
        return self.settings.probe_interval

    def round_at(self, k: int) -> float:
        return self.t0 + k * self.interval

    def check_at(self, k: int) -> float:
        return self.round_at(k) + self.interval / 2

    async def until(self, t: float) -> None:
        now = asyncio.get_running_loop().time()
        assert t >= now, "the test's own timeline runs backwards"
        await asyncio.sleep(t - now)

    async def before_round(self, k: int) -> None:
        """After round k-1's probes arrived (over fast links) and before round k is sent."""
        await self.until(self.round_at(k) - self.interval / 10)

    async def after_check(self, k: int) -> None:
        await self.until(self.check_at(k) + self.interval / 10)

    def round_now(self) -> int:
        """The newest round sent."""
        return int((asyncio.get_running_loop().time() - self.t0) / self.interval + 1e-6)

    def up(self, a: str, b: str) -> bool:
        return self.monitor.link_up(self.fabric.link(a, b).name)

    def missing(self, src: str, dst: str) -> int:
        return self.monitor.directions[self.fabric.end(src, dst)].unanswered

    def ends_ran_on(self, src: str, dst: str) -> bool:
        """Whether `probe_misses` probes of src -> dst are missing now while a later round has
        arrived from src and through dst: the moment a test of the other conditions needs."""
        d = self.monitor.directions[self.fabric.end(src, dst)]
        if d.unanswered < self.settings.probe_misses:
            return False
        ran_on = min(self.monitor.emitted_after[src], self.monitor.delivered_after[dst]) - self.interval / 2
        return ran_on > d.sent_time(d.rx_seq + self.settings.probe_misses)

    async def ends_ran_on_at_a_check(self, src: str, dst: str, checks: int) -> bool:
        """`ends_ran_on` just before one of the next `checks` checks."""
        seen = False
        for k in range(self.round_now() + 1, self.round_now() + 1 + checks):
            await self.until(self.check_at(k) - self.interval / 50)
            seen = seen or self.ends_ran_on(src, dst)
        return seen

    def name(self, a: str, b: str) -> str:
        return self.fabric.link(a, b).name

    def all_up(self) -> bool:
        return all(self.monitor.link_up(n) for n in self.fabric.graph.links)

    async def checks_to_rise(self, a: str, b: str, limit: int) -> int:
        """Mend the cut link a-b before the next round; how many checks until it is up again
        (the first check of that round counting one)."""
        k = self.round_now() + 1
        await self.before_round(k)
        self.fabric.cut(a, b, False)
        self.fabric.cut(b, a, False)
        for i in range(limit):
            await self.after_check(k + i)
            if self.up(a, b):
                return i + 1
        raise AssertionError(f"{a}-{b} not up after {limit} healthy checks")

    async def cut_until_down(self, a: str, b: str) -> None:
        k = self.round_now() + 1
        await self.before_round(k)
        self.fabric.cut(a, b)
        self.fabric.cut(b, a)
        await self.after_check(k + self.settings.probe_misses)
        assert not self.up(a, b)


Body = Callable[[Bench], Awaitable[None]]


def run(body: Body, graph: FabricGraph | None = None, store: Store | None = None,
        before_start: Callable[[FakePacketFabric], None] | None = None, **settings: object) -> None:
    """`body` on a started monitor whose links are all up and unchanged once settled; `store`
    holds the verdicts it starts from, `before_start` shapes the fabric before any probe."""
    s = DEFAULTS.model_copy(update=settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        fabric = FakePacketFabric(graph or diamond(), s, stamps=bool(STAMPED["stamps"]), own_clocks=bool(STAMPED["own_clocks"]))
        changes: list[tuple[str, bool]] = []

        async def on_change(link: Link, up: bool) -> None:
            changes.append((link.name, up))

        monitor = LinkMonitor(fabric.graph, fabric.clients, s, on_change, clock_ns=loop.clock_ns, store=store)
        if before_start is not None:
            before_start(fabric)
        fabric.start()
        grace_rounds = math.ceil(s.probe_startup_grace / s.probe_interval) + 2 if s.probe_startup_grace else 0
        bench = Bench(fabric, monitor, s, changes, loop.time() + grace_rounds * s.probe_interval)
        monitor.start()
        try:
            await bench.after_check(10)  # settled: every direction has answered
            assert (bench.all_up() and not changes) or store is not None
            await body(bench)
        finally:
            await monitor.stop()
            await fabric.stop()

    run_virtual(main)


# --- a dead direction ----------------------------------------------------------------------------


@pytest.mark.parametrize("misses", [DEFAULTS.probe_misses, 5])
def test_a_silently_cut_direction_is_dead_after_probe_misses_missing_probes(misses: int) -> None:
    async def body(b: Bench) -> None:
        await b.before_round(20)
        b.fabric.cut("s1", "s2")  # s2 -> s1 still works
        # the check of the round that misses the last of them sees it missing only once a later
        # round arrived from s1 (over s3) and through s2 (from s4)
        await b.after_check(20 + misses - 1)
        assert b.up("s1", "s2") and b.missing("s1", "s2") == misses
        await b.after_check(20 + misses)
        assert not b.up("s1", "s2")
        assert b.changes == [(b.name("s1", "s2"), False)]
        # down it stays, one direction healthy or not, and nothing else is touched
        await b.after_check(20 + misses + 4 * DEFAULTS.probe_recovery)
        assert b.changes == [(b.name("s1", "s2"), False)]
        assert all(b.monitor.link_up(n) for n in b.fabric.graph.links if n != b.name("s1", "s2"))

    run(body, probe_misses=misses)


def test_a_switch_with_one_fabric_port_proves_itself_by_keepalive_after_the_proof_delay() -> None:
    """No other port of s1 can show that its packet path runs: the keepalive must, and only
    `probe_keepalive_proof_delay` after the missing probes."""
    line = FabricGraph(["s1", "s2"], [Link(link_name("s1", 1, "s2", 1), "s1", 1, "s2", 1)])

    async def body(b: Bench) -> None:
        await b.before_round(20)
        b.fabric.cut("s1", "s2")
        proof = b.round_at(20 + DEFAULTS.probe_misses - 1) + DEFAULTS.probe_keepalive_proof_delay
        await b.until(proof)
        assert b.up("s1", "s2")
        await b.until(proof + DEFAULTS.keepalive_interval + DEFAULTS.probe_interval)
        assert b.changes == [(b.name("s1", "s2"), False)]

    run(body, graph=line)


# --- a switch whose packet path is silent or late: no link is dead -------------------------------


def test_a_switch_silent_on_every_port_for_less_than_the_proof_delay_takes_no_link_down() -> None:
    """s2's packet path stops and loses what it should carry, while its gRPC thread answers
    keepalives; then it runs again. Its first probes after the silence reach the controller
    through s1 before the one through s4 (a slower path): that moment, the probes lost in the
    silence look missing while both ends have run on; they are not held against the links, as
    none of their rounds shows s2's packet path running."""

    async def body(b: Bench) -> None:
        b.fabric.set_latency("s2", "s4", 0.007)
        await b.until(b.check_at(20) + 0.002)
        b.fabric.stall("s2", lose=True, answer_keepalives=True)
        await b.until(b.check_at(20) + 0.2)
        assert b.fabric.dropped["lost"] > 0
        b.fabric.resume("s2")
        assert await b.ends_ran_on_at_a_check("s2", "s4", 3), "the test's timing does not make the trap"
        await b.after_check(b.round_now() + 1)
        assert b.missing("s2", "s4") < DEFAULTS.probe_misses, "s2's packet path did not run again"
        await b.after_check(b.round_now() + 100)
        assert b.all_up() and not b.changes

    run(body)


def test_a_switch_silent_on_every_port_for_longer_than_the_proof_delay_loses_its_links() -> None:
    """What the keepalive proves at last: s2 runs, and its packet path does not."""

    async def body(b: Bench) -> None:
        await b.before_round(20)
        b.fabric.stall("s2", lose=True, answer_keepalives=True)
        proof = b.round_at(20 + DEFAULTS.probe_misses - 1) + DEFAULTS.probe_keepalive_proof_delay
        await b.until(proof)
        assert b.all_up() and not b.changes
        await b.until(proof + DEFAULTS.keepalive_interval + DEFAULTS.probe_interval)
        assert sorted(b.changes) == sorted([(b.name("s1", "s2"), False), (b.name("s2", "s4"), False)])

    run(body)


def test_a_late_probe_through_a_fast_neighbour_is_not_missing() -> None:
    """s2's packet path lags four rounds behind its neighbours', then catches up at once. Its
    backlog reaches the controller through s1 (fast) before its probes to s4 (a slower path) do,
    and s4 has delivered later probes from s3 meanwhile: both ends show they ran on after the
    probes to s4, which are merely on their way. They are younger than s2's packet path now
    takes, so not missing."""
    lag, slow = 0.04, 0.007

    async def body(b: Bench) -> None:
        b.fabric.set_latency("s2", "s4", slow)
        await b.before_round(20)
        b.fabric.set_lag("s2", lag)
        await b.after_check(60)  # lagging steadily: no harm either
        assert b.all_up() and not b.changes
        # Back to no lag: what s2 already holds goes out at round 60's arrival there plus the
        # lag, and whatever comes after it waits for that.
        b.fabric.set_lag("s2", 0.0)
        assert await b.ends_ran_on_at_a_check("s2", "s4", round(lag / b.interval) + 2), "the test's timing does not make the trap"
        await b.after_check(b.round_now() + 100)
        assert b.all_up() and not b.changes

    run(body)


def test_a_probe_its_source_still_holds_is_not_missing() -> None:
    """s2 stalls between the two probes of a round: the one to s1 went out, the one to s4 waits
    in s2 with what follows. That round shows s2 and s4 ran, and its probe to s4 grows older than
    the patience; it is not missing until a later round arrives from s2, which emits in order.
    With `probe_misses` 1, one round is all the proof there is; with more, the rounds of the
    stall show no probe of s2 arriving at all."""

    async def body(b: Bench) -> None:
        f = b.fabric
        await b.before_round(20)
        # both of s2's packet-outs of round 20 queue in its path at once: to s1, then to s4
        await b.until(b.round_at(20) + f.wire + 1.5 * f.service)
        f.stall("s2", answer_keepalives=True)
        await b.after_check(20)
        r = b.monitor.rounds[min(b.monitor.rounds, key=lambda ns: abs(ns / 1e9 - b.round_at(20)))]
        assert "s2" in r.emitted and "s4" in r.delivered and b.missing("s2", "s4") == 1, "the test's timing does not make the trap"
        await b.until(b.round_at(25) + 0.002)
        f.resume("s2")
        await b.after_check(b.round_now() + 100)
        assert b.all_up() and not b.changes

    run(body, probe_misses=1)


def test_short_stalls_below_the_keepalive_timeout_take_no_link_down() -> None:
    """tests/e2e/test_heal.py's stalls, each starting at another phase of the round: s2 frozen
    whole (keepalives unanswered too) for eight rounds, then its backlog goes out at once, to s1
    (fast) and s4 (slower)."""

    async def body(b: Bench) -> None:
        b.fabric.set_latency("s2", "s4", 0.007)
        stalls, stall, gap = 15, 0.08, 0.3
        assert stall < DEFAULTS.keepalive_timeout
        trapped = 0
        for i in range(stalls):
            await b.until(b.round_at(b.round_now() + 1) + i * b.interval / stalls)
            b.fabric.stall("s2")
            resumed = asyncio.get_running_loop().time() + stall
            await b.until(resumed)
            b.fabric.resume("s2")
            trapped += await b.ends_ran_on_at_a_check("s2", "s4", 2)
            await b.until(resumed + gap)
        assert trapped, "the test's timing does not make the trap"
        assert b.all_up() and not b.changes

    run(body)


# --- under load ----------------------------------------------------------------------------------


async def load(b: Bench, seconds: float, rng: random.Random, *, busy_max: float = 0.03, lag_max: float = 0.015) -> None:
    """The benchmark's load as the monitor sees it: the controller's loop busy about half the
    time in callbacks of up to `busy_max`, and every switch's packet path lagging by up to
    `lag_max`, each its own, changing every 50 ms, and now and then one of them by four times
    that at once (a big Write, a collection)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    next_lag = loop.time()
    while loop.time() < end:
        if loop.time() >= next_lag:
            for name in b.fabric.switches:
                b.fabric.set_lag(name, rng.uniform(0, lag_max) if rng.random() > 0.05 else 4 * lag_max)
            next_lag += 0.05
        b.fabric.busy_controller(rng.uniform(0, busy_max))
        await asyncio.sleep(rng.uniform(0.005, busy_max))
    for name in b.fabric.switches:
        b.fabric.set_lag(name, 0.0)


def test_a_loaded_controller_and_lagging_switches_take_no_link_down() -> None:
    """Ten seconds of the load: probes read up to tens of ms late, switches lagging by turns."""

    async def body(b: Bench) -> None:
        await load(b, 10.0, random.Random(16))
        await b.after_check(b.round_now() + 5)
        assert b.all_up() and not b.changes
        assert b.monitor.counters["received"] > 0.9 * b.monitor.counters["sent"]

    run(body)


def test_under_load_a_cut_is_found_without_waiting_for_the_slowest_recent_probe() -> None:
    """s2 lagged by 150 ms a moment ago (its probes took that long); then the usual load, and
    s1-s2 is cut. By the switches' stamps the cut is found in a few rounds plus what the busy
    loop adds; a patience of the slowest recent probes (the rule without stamps) waits ~300 ms."""
    rng = random.Random(7)
    quick = (DEFAULTS.probe_misses + 3) * DEFAULTS.probe_interval + 2 * 0.03  # rounds, plus two busy callbacks

    async def body(b: Bench) -> None:
        b.fabric.set_lag("s2", 0.15)
        await b.until(b.round_at(b.round_now() + 30))
        b.fabric.set_lag("s2", 0.0)
        await load(b, 0.2, rng)
        loop = asyncio.get_running_loop()
        background = asyncio.create_task(load(b, 2.0, rng))
        await asyncio.sleep(0)
        cut_at = loop.time()
        b.fabric.cut("s1", "s2")
        b.fabric.cut("s2", "s1")
        while b.up("s1", "s2"):
            await asyncio.sleep(0.001)
        took = loop.time() - cut_at
        await background
        assert b.changes == [(b.name("s1", "s2"), False)]
        if STAMPED["stamps"]:
            assert took < quick, f"found {took * 1000:.0f} ms after the cut"
        else:
            assert took > 2 * quick, "the test's timing does not make the trap"

    run(body)


# --- recovery and flapping -----------------------------------------------------------------------


def test_recovery_needs_probe_recovery_consecutive_intervals_with_probes_both_ways() -> None:
    need, misses = DEFAULTS.probe_recovery, DEFAULTS.probe_misses

    async def body(b: Bench) -> None:
        await b.cut_until_down("s1", "s2")
        k = b.round_now() + 1
        await b.before_round(k)
        b.fabric.cut("s1", "s2", False)
        b.fabric.cut("s2", "s1", False)
        j = k + need - 5  # healthy up to here ...
        await b.before_round(j)
        b.fabric.cut("s2", "s1")  # ... then one direction misses probes
        await b.after_check(j + misses - 2)
        assert not b.up("s1", "s2") and b.missing("s2", "s1") == misses - 1
        assert b.monitor.links[b.name("s1", "s2")].streak == need - 5 + misses - 1
        await b.after_check(j + misses - 1)  # an unhealthy check: the count starts over
        m = j + misses
        await b.before_round(m)
        b.fabric.cut("s2", "s1", False)
        await b.after_check(m + need - 2)
        assert not b.up("s1", "s2")
        await b.after_check(m + need - 1)
        assert b.up("s1", "s2")
        assert b.changes == [(b.name("s1", "s2"), False), (b.name("s1", "s2"), True)]

    run(body)


def test_a_fall_within_the_flap_window_doubles_what_the_next_rise_needs() -> None:
    need, cap = DEFAULTS.probe_recovery, 3 * DEFAULTS.probe_recovery

    async def body(b: Bench) -> None:
        await b.cut_until_down("s1", "s2")  # the first fall is no flap
        assert await b.checks_to_rise("s1", "s2", 10 * need) == need
        await b.cut_until_down("s1", "s2")
        assert await b.checks_to_rise("s1", "s2", 10 * need) == 2 * need
        await b.cut_until_down("s1", "s2")
        assert await b.checks_to_rise("s1", "s2", 10 * need) == cap  # 4 * need, capped
        # a fall longer than the flap window after the rise: back to the start
        await b.until(asyncio.get_running_loop().time() + DEFAULTS.flap_window)
        await b.cut_until_down("s1", "s2")
        assert await b.checks_to_rise("s1", "s2", 10 * need) == need
        assert [up for _, up in b.changes] == [False, True] * 4

    run(body, probe_recovery_max=cap)


def test_a_lost_switch_takes_its_links_down_at_once_and_they_return_verified() -> None:
    """The switch's loss is the client's news: its links go down with it, stay down while it is
    away (nothing to judge them by), and come back after `probe_recovery` healthy checks."""
    need = DEFAULTS.probe_recovery

    async def body(b: Bench) -> None:
        s2_links = sorted([(b.name("s1", "s2"), False), (b.name("s2", "s4"), False)])
        await b.before_round(20)
        await b.fabric.set_up("s2", False)
        assert sorted(b.changes) == s2_links and b.up("s1", "s3") and b.up("s3", "s4")
        await b.after_check(20 + 4 * need)
        assert sorted(b.changes) == s2_links
        k = b.round_now() + 1
        await b.before_round(k)
        await b.fabric.set_up("s2", True)
        await b.after_check(k + need - 2)
        assert not b.up("s1", "s2") and not b.up("s2", "s4")
        await b.after_check(k + need - 1)
        assert b.all_up() and sorted(b.changes[2:]) == sorted([(n, True) for n, _ in s2_links])

    run(body)


# --- probes that are not what they seem ----------------------------------------------------------


def test_a_probe_arriving_where_the_topology_says_it_should_not_is_reported_not_used(caplog: pytest.LogCaptureFixture) -> None:
    """s1's port towards s2 is cabled to s3's port towards s4 instead: its probes arrive, at the
    wrong place. They are reported, and do not keep the link s1-s2 alive."""

    async def body(b: Bench) -> None:
        await b.before_round(20)
        b.fabric.rewire("s1", "s2", to=b.fabric.end("s3", "s4"))
        await b.after_check(20 + DEFAULTS.probe_misses)
        assert b.changes == [(b.name("s1", "s2"), False)]
        assert b.monitor.counters["mismatch"] == DEFAULTS.probe_misses + 1
        assert b.fabric.dropped["cut"] == 0

    with caplog.at_level(logging.WARNING, logger="p4nsm.heal.links"):
        run(body)
    mismatch = [r.getMessage() for r in caplog.records if "event=probe_topology_mismatch" in r.getMessage()]
    assert mismatch and "sent_from=s1:3 arrived_at=s3:4 topology_says=s2:3" in mismatch[0]


def test_forged_probes_from_a_host_are_counted_and_change_nothing() -> None:
    """As tests/e2e/test_heal.py's: frames that look like probes arrive at a host port of s1."""

    async def body(b: Bench) -> None:
        m = b.monitor
        d = m.directions[b.fabric.end("s2", "s1")]
        device = b.fabric.switches["s2"].target.device_id
        foreign = probe_frame.encode(probe_frame.Probe(m.origin ^ 1, device, d.src_port, d.seq + 1, 0))
        # our origin, and far ahead: were it used, no probe of s2 -> s1 would be missing for long
        spoofed = probe_frame.encode(probe_frame.Probe(m.origin, device, d.src_port, 10**9, 0))
        for frame in [foreign] * 5 + [spoofed, b"\x00" * 60]:
            b.fabric.inject("s1", 1, frame)
        await b.before_round(20)
        assert (m.counters["foreign"], m.counters["mismatch"], m.counters["not_probe"]) == (5, 1, 1)
        assert b.all_up() and d.rx_seq < 10**9
        b.fabric.cut("s2", "s1")
        await b.after_check(20 + DEFAULTS.probe_misses)
        assert b.changes == [(b.name("s1", "s2"), False)]

    run(body)


# --- a start: stored verdicts, and the start-up grace ----------------------------------------------


def test_a_link_slow_from_the_start_is_not_taken_down_while_the_probe_history_is_empty() -> None:
    """s4 takes s2's frames 40 ms late from the first probe on (a peer busy with its start-up
    reconcile): s2's other probes and s4's other deliveries arrive at once, so s2 -> s4 misses
    four rounds of probes while both its ends run on, before any of its own lags is known. The
    grace from when probes began to flow lets the history fill; without it the link falls."""

    async def body(b: Bench) -> None:
        await b.after_check(b.round_now() + 200)
        assert b.all_up() and not b.changes

    run(body, before_start=lambda f: f.set_latency("s2", "s4", 0.04))


def test_without_the_start_up_grace_a_link_slow_from_the_start_falls() -> None:
    """What the grace is for: the case above, with `probe_startup_grace` 0."""

    async def body(b: Bench) -> None:
        pass

    with pytest.raises(AssertionError):
        run(body, before_start=lambda f: f.set_latency("s2", "s4", 0.04), probe_startup_grace=0.0)


def first_change_after_start(store: Store | None = None, cut: tuple[str, str] | None = None,
                             limit: float = 10.0, first_grace: float | None = None) -> tuple[list[str], FakePacketFabric, list[tuple[str, bool, float]]]:
    """A monitor started on diamond (`cut` both ways before the first probe), run until its first
    verdict changes or `limit` seconds: the links down when it was made, the fabric and (link,
    up, seconds after the start) of each change."""
    out: list = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fabric = FakePacketFabric(diamond(), DEFAULTS, stamps=bool(STAMPED["stamps"]), own_clocks=bool(STAMPED["own_clocks"]))
        changes: list[tuple[str, bool, float]] = []
        t0 = loop.time()

        async def on_change(link: Link, up: bool) -> None:
            changes.append((link.name, up, loop.time() - t0))

        monitor = LinkMonitor(fabric.graph, fabric.clients, DEFAULTS, on_change, clock_ns=loop.clock_ns, store=store)
        out.extend([monitor.down_links(), fabric, changes])
        if cut is not None:
            fabric.cut(*cut)
            fabric.cut(cut[1], cut[0])
        fabric.start()
        monitor.start(first_grace)
        try:
            while not changes and loop.time() < t0 + limit:
                await asyncio.sleep(DEFAULTS.probe_interval / 2)
        finally:
            await monitor.stop()
            await fabric.stop()

    run_virtual(main)
    return out[0], out[1], out[2]


def test_a_cut_at_the_start_is_found_on_fresh_probes_once_the_grace_has_passed() -> None:
    """s1-s2 cut before the first probe (a silent cut while the controller was away): it is not
    judged on probes of the grace, and is down a few rounds after it."""
    grace, misses = DEFAULTS.probe_startup_grace, DEFAULTS.probe_misses
    _, fabric, changes = first_change_after_start(cut=("s1", "s2"))
    assert [(name, up) for name, up, _ in changes] == [(fabric.link("s1", "s2").name, False)]
    took = changes[0][2]
    assert grace < took < grace + (misses + 3) * DEFAULTS.probe_interval, f"down {took:.3f} s after the start"


def test_a_replica_taking_over_judges_a_cut_at_its_start_after_the_shorter_takeover_grace() -> None:
    """The same cut, on a monitor started as a warm takeover starts it (first_grace): down a few
    rounds after probe_takeover_grace, well before probe_startup_grace."""
    grace, misses = DEFAULTS.probe_takeover_grace, DEFAULTS.probe_misses
    assert grace + (misses + 3) * DEFAULTS.probe_interval < DEFAULTS.probe_startup_grace
    _, fabric, changes = first_change_after_start(cut=("s1", "s2"), first_grace=grace)
    assert [(name, up) for name, up, _ in changes] == [(fabric.link("s1", "s2").name, False)]
    took = changes[0][2]
    assert grace < took < grace + (misses + 3) * DEFAULTS.probe_interval, f"down {took:.3f} s after the start"


def test_a_link_stored_down_starts_down_and_rises_only_after_its_recovery_checks() -> None:
    """The last run's verdict is evidence: s1-s2 starts down, needing the rise its flaps had made
    it need; probes cross it, and it is up after that many healthy checks (no grace: arriving
    probes are evidence at any load). The rise is stored."""
    need = 2 * DEFAULTS.probe_recovery
    store = Store(":memory:")
    graph = diamond()
    name = next(n for n, l in graph.links.items() if {l.a, l.b} == {"s1", "s2"})
    store.put_record(LINK_STATE, name, StoredLink(up=False, need=need).model_dump_json())
    restored, _, changes = first_change_after_start(store=store)
    assert restored == [name]
    assert [(n, up) for n, up, _ in changes] == [(name, True)]
    assert (need - 1) * DEFAULTS.probe_interval <= changes[0][2] < (need + 5) * DEFAULTS.probe_interval
    assert StoredLink.model_validate_json(store.get_record(LINK_STATE, name) or "") == StoredLink(up=True, need=need)


def test_a_verdict_is_stored_before_it_is_told() -> None:
    store = Store(":memory:")

    async def body(b: Bench) -> None:
        told: list[str | None] = []
        inner = b.monitor.on_change

        async def on_change(link: Link, up: bool) -> None:
            told.append(store.get_record(LINK_STATE, link.name))
            await inner(link, up)

        b.monitor.on_change = on_change
        await b.cut_until_down("s1", "s2")
        assert [StoredLink.model_validate_json(v or "") for v in told] == [StoredLink(up=False, need=DEFAULTS.probe_recovery)]

    run(body, store=store)
