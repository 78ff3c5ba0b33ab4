"""The etcd store against a real 3-member etcd cluster on loopback (tests/support/etcd_cluster.py):
the leader's writes reach etcd and the followers' caches, every write is fenced by the term,
start-up refusals, and the faults (a member killed, quorum lost, a deposed leader)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from controller.cluster.election import DuplicateReplica
from controller.fabric.etcd_store import EtcdStore, FabricMismatch
from controller.fabric.model import ConnectionPlan
from controller.fabric.store import StoreRefused, StoreUnavailable
from tests.support.etcd_cluster import EtcdCluster, until, until_stored
from tests.unit.test_fabric_paths import plan_on_line

pytestmark = pytest.mark.timeout(90)

MakeStore = Callable[..., Awaitable[EtcdStore]]


@pytest.fixture
async def make_store(cluster: EtcdCluster) -> AsyncIterator[MakeStore]:
    made: list[EtcdStore] = []

    async def make(replica: str, *, fabric: str = "f1", digest: str = "d1", topology: str = "diamond",
                   timeout: float = 2.0) -> EtcdStore:
        store = EtcdStore(cluster.url, fabric, replica, topology=topology, digest=digest, lease_ttl=1, timeout=timeout)
        made.append(store)
        await store.start()
        return store

    yield make
    for store in made:
        await store.stop()


def plan(conn_id: str, state: str = "up") -> ConnectionPlan:
    return plan_on_line().model_copy(update={"id": conn_id, "state": state})


async def test_leader_writes_reach_etcd_and_followers(cluster: EtcdCluster, make_store: MakeStore) -> None:
    a = await make_store("a")
    await a.election.wait_term(10)  # type: ignore[union-attr]
    b = await make_store("b")
    seen: list[tuple[str, str | None]] = []
    b.listeners.append(lambda key, value: seen.append((key, value.decode() if value is not None else None)))
    a.put(plan("c1"))
    a.put_record("nse", "e1", '{"x": 1}')
    a.set_meta("m", "v")
    assert a.get("c1") == plan("c1") and a.get_record("nse", "e1") == '{"x": 1}'  # read back before commit
    await a.durable()
    held = cluster.get("/p4nsm/f1/", prefix=True)
    assert ConnectionPlan.model_validate_json(held["/p4nsm/f1/c/c1"]) == plan("c1")
    assert held["/p4nsm/f1/r/nse/e1"] == '{"x": 1}' and held["/p4nsm/f1/m/m"] == "v"
    await until(lambda: b.records("nse") == {"e1": '{"x": 1}'} and b.all() == [plan("c1")] and b.get_meta("m") == "v",
                "the follower's cache follows the leader's writes")
    a.delete("c1")
    a.delete_record("nse", "e1")
    await a.durable()
    assert "/p4nsm/f1/c/c1" not in cluster.get("/p4nsm/f1/", prefix=True)
    await until(lambda: b.get("c1") is None and b.records("nse") == {}, "the follower sees the deletes")
    assert ("c/c1", None) in seen and ("r/nse/e1", None) in seen
    assert a.count() == 0 and b.count() == 0


async def test_a_follower_refuses_writes_and_sends_none(cluster: EtcdCluster, make_store: MakeStore) -> None:
    a = await make_store("a")
    await a.election.wait_term(10)  # type: ignore[union-attr]
    b = await make_store("b")
    b.put(plan("c9"))
    with pytest.raises(StoreRefused, match="does not lead"):
        await b.durable()
    assert b.refused_local == 1 and b.get("c9") is None
    assert "/p4nsm/f1/c/c9" not in cluster.get("/p4nsm/f1/", prefix=True)


async def test_a_second_replica_with_the_same_id_is_refused(make_store: MakeStore) -> None:
    await make_store("same")
    with pytest.raises(DuplicateReplica, match="replica 'same' is already running"):
        await make_store("same")


async def test_a_replica_restarted_after_its_predecessor_died_takes_its_id(cluster: EtcdCluster, make_store: MakeStore) -> None:
    """A crash leaves the replica key until the lease lapses: the successor waits that out."""
    a = await make_store("same")
    assert a.election is not None
    a.election._task.cancel()  # type: ignore[union-attr]  # dies: no revoke, no more keepalives
    await make_store("same")  # does not raise


async def test_an_etcd_holding_another_fabric_is_refused_naming_both(make_store: MakeStore) -> None:
    await make_store("a", topology="diamond", digest="1111aaaa")
    with pytest.raises(FabricMismatch) as info:
        await make_store("b", topology="ring6", digest="2222bbbb")
    assert "'diamond'" in str(info.value) and "1111aaaa" in str(info.value)
    assert "'ring6'" in str(info.value) and "2222bbbb" in str(info.value)
    await make_store("c", fabric="other", topology="ring6", digest="2222bbbb")  # its own prefix: fine


async def test_terms_rise_and_a_follower_takes_over_when_the_leader_stops(make_store: MakeStore) -> None:
    a = await make_store("a")
    first = await a.election.wait_term(10)  # type: ignore[union-attr]
    b = await make_store("b")
    a.put(plan("c1"))
    await a.durable()
    t0 = time.perf_counter()
    await a.stop()  # revokes its lease
    second = await b.election.wait_term(10)  # type: ignore[union-attr]
    took = time.perf_counter() - t0
    assert second.revision > first.revision and second.replica == "b"
    assert b.get("c1") == plan("c1")  # the new leader's cache holds the state at its term
    b.put(plan("c2"))
    await b.durable()
    assert took < 1.0, took


async def test_a_leader_whose_lease_expires_loses_its_term_to_a_follower(cluster: EtcdCluster, make_store: MakeStore) -> None:
    a = await make_store("a")
    first = await a.election.wait_term(10)  # type: ignore[union-attr]
    b = await make_store("b")
    lost: list[object] = []
    a.election.on_change.append(lost.append)  # type: ignore[union-attr]
    # The lease is revoked behind the leader's back (as etcd does when it expires).
    out = cluster.etcdctl("lease", "revoke", f"{first.lease:x}")
    assert out.returncode == 0, out.stderr
    second = await b.election.wait_term(10)  # type: ignore[union-attr]
    await until(lambda: None in lost, "the old leader learns it lost its term")
    assert second.revision > first.revision
    # It campaigns again as a follower, under a new lease, and takes over when b goes.
    await until(lambda: a.election is not None and a.election.lease not in (None, first.lease), "the old leader's new session")
    await b.stop()
    third = await a.election.wait_term(10)  # type: ignore[union-attr]
    assert third.revision > second.revision and third.lease != first.lease


async def test_a_deposed_leaders_queued_writes_are_refused_by_etcd(cluster: EtcdCluster, make_store: MakeStore) -> None:
    """The leader's event loop stands still (as under SIGSTOP) until etcd has let its lease
    expire; the writes it then makes still carry its old term, and etcd refuses every one."""
    a = await make_store("a")
    term = await a.election.wait_term(10)  # type: ignore[union-attr]
    a.put(plan("before"))
    await a.durable()
    deadline = time.monotonic() + 10
    while "/p4nsm/f1/leader" in cluster.get("/p4nsm/f1/leader"):  # the loop is blocked: no keepalive
        assert time.monotonic() < deadline, "the leader key outlived its lease"
        time.sleep(0.05)
    assert a.term == term  # it has not run: it still believes it leads
    for i in range(5):
        a.put(plan(f"late{i}"))
    a.put_record("nse", "late", "x")
    a.delete("before")
    with pytest.raises(StoreRefused, match="refused"):
        await a.durable()
    assert a.refused_writes == 7 and a.refused_txns == 1
    held = cluster.get("/p4nsm/f1/", prefix=True)
    assert not [k for k in held if "late" in k] and "/p4nsm/f1/c/before" in held
    # Its cache shows etcd's state again, not the refused writes.
    assert a.get("late0") is None and a.get("before") == plan("before")


@pytest.mark.parametrize("which", ["raft_leader", "first_listed"])
async def test_one_member_killed_writes_and_reads_go_on(cluster: EtcdCluster, make_store: MakeStore, which: str) -> None:
    """The raft leader: etcd elects another (0.6 to 1 s) while calls in flight hang; the first
    listed: the one the clients dial first, so their channel moves to another member."""
    a = await make_store("a")
    await a.election.wait_term(10)  # type: ignore[union-attr]
    b = await make_store("b")
    a.put(plan("c1"))
    await a.durable()
    cluster.kill(cluster.raft_leader() if which == "raft_leader" else cluster.members[0])
    for i in range(20):
        a.put(plan(f"k{i}"))
        await a.durable()
    assert a.term is not None and a.refused_writes == 0
    await until(lambda: b.count() == 21, "the follower reads on")
    assert len(cluster.get("/p4nsm/f1/c/", prefix=True)) == 21


async def test_quorum_lost_durable_raises_nothing_is_lost_and_service_resumes(cluster: EtcdCluster, make_store: MakeStore) -> None:
    a = await make_store("a", timeout=1.0)
    await a.election.wait_term(10)  # type: ignore[union-attr]
    a.put(plan("kept"))
    await a.durable()
    lost = cluster.lose_quorum()
    a.put(plan("during"))
    with pytest.raises(StoreUnavailable, match=r"did not commit .* within 1 s"):
        await a.durable()
    cluster.regain_quorum(lost)

    async def write_after() -> None:
        a.put(plan("after"))
        await a.durable()

    await until_stored(write_after)  # service resumes without a restart (perhaps in a new term)
    held = cluster.get("/p4nsm/f1/c/", prefix=True)
    assert ConnectionPlan.model_validate_json(held["/p4nsm/f1/c/kept"]) == plan("kept")
    assert "/p4nsm/f1/c/after" in held
    assert json.loads(held["/p4nsm/f1/c/kept"])["id"] == "kept"
