"""A leader that stops heartbeating is replaced by a follower without waiting for etcd to expire
its lease; one that heartbeats is never deposed (controller/cluster/election.py). Real 3-member
etcd, one etcd client per replica as in the controller."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aetcd
import pydantic
import pytest

from controller.aio import cancel_and_wait
from controller.cluster import etcd
from controller.cluster.election import Election
from controller.replication import Replication
from controller.settings import Settings
from tests.support.etcd_cluster import EtcdCluster
from tests.support.waiting import until

PREFIX = "/p4nsm/suspect/"
TTL = 1
SUSPECT = 0.5

pytestmark = pytest.mark.timeout(90)

MakeElection = Callable[..., Awaitable[Election]]


@pytest.fixture
async def make_election(cluster: EtcdCluster) -> AsyncIterator[MakeElection]:
    made: list[tuple[Election, aetcd.Client]] = []

    async def make(replica: str, suspect: float = SUSPECT) -> Election:
        client = await etcd.connect(cluster.url, 2.0)
        election = Election(client, PREFIX, replica, TTL, suspect=suspect)
        await election.start()
        made.append((election, client))
        return election

    yield make
    for election, client in made:
        await election.stop()
        await client.close()


def heartbeats_written(cluster: EtcdCluster) -> int:
    """How often etcd has had the heartbeat key written since it was created (its version)."""
    out = cluster.etcdctl("get", f"{PREFIX}heartbeat", "-w", "json")
    assert out.returncode == 0, out.stderr
    kvs = json.loads(out.stdout).get("kvs", [])
    return int(kvs[0]["version"]) if kvs else 0


async def leader_and_followers(make: MakeElection, leader_suspect: float = SUSPECT) -> tuple[Election, list[Election]]:
    leader = await make("a", leader_suspect)
    await leader.wait_term(5)
    followers = [await make("b"), await make("c")]
    # ready: both campaigns watch the leader key (and with it, the heartbeat)
    await until(lambda: all(f.watching.is_set() for f in followers), "both followers watch the leader key")
    return leader, followers


async def test_a_leader_that_stops_heartbeating_is_replaced_well_before_its_lease_expires(make_election: MakeElection) -> None:
    leader, followers = await leader_and_followers(make_election)
    old = leader.term
    assert old is not None
    stepped_down = Replication({}, leader, lead=lambda term: asyncio.sleep(0))
    stepped_down.start()
    await until(lambda: stepped_down.role == "leader", "the leader's replication takes the term")

    # The leader's process is alive and keeps its lease; only its heartbeat stops (as when its
    # event loop is stuck): etcd alone would never hand the term on.
    loop = asyncio.get_running_loop()
    assert leader.beat is not None
    await cancel_and_wait(leader.beat)
    silent_from = loop.time()
    took = await until(lambda: any(f.term is not None for f in followers), "a follower leads", timeout=TTL + 5.0)
    # the suspect window, one revocation and one campaign; etcd's own expiry takes 1.0-1.5 s
    assert took < TTL + 0.5, f"takeover {took:.2f} s after the heartbeat stopped"
    new = next(f for f in followers if f.term is not None)
    assert new.term is not None and new.term.revision > old.revision
    assert sum(f.leaders_suspected for f in followers) >= 1
    assert all(f.term is None for f in followers if f is not new)

    # The old leader hears of it (its key deleted, its lease gone) and steps down.
    await stepped_down.stepped_down.wait()
    assert leader.term is None and stepped_down.role == "stepped_down"
    await until(lambda: leader.lease not in (None, old.lease), "the old leader's new session", timeout=5)
    assert loop.time() - silent_from < 10
    await stepped_down.stop()


@pytest.mark.parametrize("leader_suspect", [SUSPECT, 0.0], ids=["heartbeating", "without_heartbeat"])
async def test_a_leader_that_heartbeats_or_never_did_is_never_revoked(make_election: MakeElection, cluster: EtcdCluster,
                                                                       leader_suspect: float) -> None:
    """A leader without heartbeat (suspect 0, as a replica of an earlier release) is left to
    its lease: followers suspect only a leader they have heard."""
    leader, followers = await leader_and_followers(make_election, leader_suspect)
    term = leader.term
    before = heartbeats_written(cluster)
    await asyncio.sleep(4.0)  # the time over which nothing may happen
    assert leader.term == term and leader.terms_lost == 0
    assert [(f.terms_won, f.leaders_suspected) for f in followers] == [(0, 0), (0, 0)]
    written = heartbeats_written(cluster) - before
    if leader_suspect:
        assert written >= 4.0 / (SUSPECT / 5) / 2, f"only {written} heartbeats in 4 s"
    else:
        assert heartbeats_written(cluster) == 0


def test_a_suspect_window_not_below_the_lease_ttl_is_refused() -> None:
    assert Settings.load({"store_leader_suspect": "0.5"}).store_leader_suspect == 0.5
    with pytest.raises(pydantic.ValidationError, match="store_leader_suspect"):
        Settings.load({"store_leader_suspect": "1", "store_lease_ttl": "1"})
    with pytest.raises(ValueError, match="below the lease TTL"):
        Election(None, PREFIX, "a", 1, suspect=1.5)  # type: ignore[arg-type]


async def test_an_etcd_raft_election_is_not_taken_for_a_silent_leader(make_election: MakeElection, cluster: EtcdCluster) -> None:
    """Killing etcd's raft leader stalls every heartbeat for 0.6 to over 1 s, longer than the
    window: the followers count the silence again from the new raft term, and the leader keeps
    its term (etcd gives its lease a full TTL again)."""
    leader, followers = await leader_and_followers(make_election)
    term = leader.term
    member = await asyncio.to_thread(cluster.raft_leader)
    await asyncio.to_thread(cluster.kill, member)
    alive = [m for m in cluster.members if m is not member]
    await asyncio.to_thread(cluster.wait_healthy, alive)
    # ready: the heartbeat is written again under the new raft leader
    written = heartbeats_written(cluster)
    await until(lambda: heartbeats_written(cluster) > written + 5, "heartbeats under the new raft leader")
    await asyncio.sleep(2 * SUSPECT)  # the followers' windows counted since the election run out
    assert leader.term == term and leader.terms_lost == 0
    assert [(f.terms_won, f.leaders_suspected) for f in followers] == [(0, 0), (0, 0)]
