"""The hooks the metrics hang on, each in its own layer: the link monitor's probe round trips and
link-down judgments (on the fake packet fabric, in virtual time), the rerouter's finished rounds,
and the NSM chain element that tells how each call ended."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from controller.fabric.graph import Link
from controller.heal.reroute import HealRound
from controller.nsm.base.errors import invalid
from controller.nsm.elements.chain import CallContext, Chain, Connection, Element, Next, Request
from controller.nsm.elements.outcome import Outcome
from tests.unit.fabric_rig import DIAMOND, Rig
from tests.unit.test_link_monitor import Bench, run


def test_probe_round_trips_are_told_per_link_and_a_cut_is_judged_with_its_detection_time() -> None:
    rtts: list[tuple[str, float]] = []
    detections: list[tuple[Link, float]] = []

    async def body(b: Bench) -> None:
        b.monitor.rtt_listeners.append(lambda link, seconds: rtts.append((link, seconds)))
        b.monitor.detection_listeners.append(lambda link, seconds: detections.append((link, seconds)))
        await b.after_check(b.round_now() + 3)
        assert {link for link, _ in rtts} == set(b.fabric.graph.links)
        # wire, link latency and wire again: ~1.6 ms on this fake fabric
        assert all(0.001 < seconds < 0.01 for _, seconds in rtts)
        await b.cut_until_down("s1", "s2")
        [(link, seconds)] = detections
        assert link.name == b.name("s1", "s2")
        # from the first missing probe's send: at least the misses' intervals, less than one more
        assert (b.settings.probe_misses - 1) * b.interval <= seconds <= (b.settings.probe_misses + 1) * b.interval

    run(body)


async def test_a_finished_round_is_told_with_its_kick_and_head_acknowledgement() -> None:
    rig = Rig(DIAMOND)
    await rig.start()
    rounds: list[HealRound] = []
    rig.rerouter.round_listeners.append(rounds.append)
    plan = await rig.fabric.connect("h1", "h4")
    rig.fabric.set_link(plan.a_to_b.path.links[0], False)
    rig.rerouter.kick()
    await asyncio.sleep(0.005)
    rig.rerouter.kick()  # a second kick before the round: the round serves the first, 5 ms older
    await rig.rerouter.heal_round()
    [r] = rounds
    assert r.urgent == 1
    assert 0 < r.kicked_ns < r.started_ns - 4_000_000 < r.heads_acked_ns <= r.finished_ns
    await rig.rerouter.heal_round()  # no kick, nothing to switch over
    assert rounds[1].kicked_ns == 0 and rounds[1].heads_acked_ns == 0 and rounds[1].urgent == 0
    await rig.fabric.stop()
    rig.store.close()


class _Ends(Element):
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc

    async def request(self, req: Request, ctx: CallContext, nxt: Next) -> Connection:
        if self.exc is not None:
            raise self.exc
        return await nxt.request(req, ctx)

    async def close(self, conn: Connection, ctx: CallContext, nxt: Next) -> None:
        if self.exc is not None:
            raise self.exc


@pytest.mark.parametrize(("exc", "code"), [
    (None, grpc.StatusCode.OK),
    (invalid("connection", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (RuntimeError("a bug"), grpc.StatusCode.INTERNAL),
    (asyncio.CancelledError(), grpc.StatusCode.CANCELLED),
])
async def test_outcome_tells_each_call_with_the_code_the_caller_gets(exc: BaseException | None, code: grpc.StatusCode) -> None:
    seen: list[tuple[str, grpc.StatusCode, float]] = []
    chain = Chain([Outcome(lambda call, c, seconds: seen.append((call, c, seconds))), _Ends(exc)])
    for call in (chain.request(Request(), CallContext()), chain.close(Connection(), CallContext())):
        try:
            await call
        except BaseException as e:
            assert e is exc
    assert [(call, c) for call, c, _ in seen] == [("request", code), ("close", code)]
    assert all(0 <= seconds < 1 for _, _, seconds in seen)
