"""The `store` setting picks the backend, and the controller runs on either: SQLite by default;
on etcd (a real 3-member cluster) one controller leads, a second waits as a standby and takes
over when the first stops, a second with the same replica id or of another topology is refused
at start. The switches are never started: only the store and the election are exercised."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from controller.cluster.election import DuplicateReplica
from controller.fabric.etcd_store import EtcdStore, FabricMismatch
from controller.fabric.store import Store
from controller.runtime import Controller
from controller.settings import REPO_ROOT, Settings
from controller.topology import load_topology
from tests.support.etcd_cluster import EtcdCluster
from tests.support.settings import settings_for_test
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(90)

DIAMOND = REPO_ROOT / "topologies" / "diamond.yaml"
RING6 = REPO_ROOT / "topologies" / "ring6.yaml"


def on_etcd(cluster: EtcdCluster, replica: str, **more: str) -> Settings:
    return settings_for_test(env=False, store=cluster.url, store_replica_id=replica, **more)


def test_sqlite_is_the_default(tmp_path: Path) -> None:
    ctl = Controller(load_topology(DIAMOND), settings_for_test(env=False, store_path=str(tmp_path / "s.sqlite")))
    assert isinstance(ctl.store, Store)
    ctl.store.close()


@pytest.mark.parametrize("bad", ["etcd://", "etcd:/h:1", "postgres://h:1", "etcd://h:1,,h:2"])
def test_a_store_that_is_neither_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="store"):
        settings_for_test(env=False, store=bad)


async def test_replicas_on_etcd_one_leads_the_other_follows_and_takes_over(cluster: EtcdCluster) -> None:
    first = Controller(load_topology(DIAMOND), on_etcd(cluster, "one"))
    second = Controller(load_topology(DIAMOND), on_etcd(cluster, "two"))
    await first.start()
    try:
        assert first.replication is not None
        await until(lambda: first.replication is not None and first.replication.leading.is_set(), "the first to lead")
        assert isinstance(first.store, EtcdStore) and first.store.term is not None
        first.store.set_meta("written_by", "one")
        await first.store.durable()
        await second.start()
        assert second.replication is not None and second.replication.role == "follower"
        assert isinstance(second.store, EtcdStore) and second.store.term is None
        # the follower's pipeline book is etcd's, read when it leads: nothing written meanwhile
        assert second.store.refused_local == 0
        await first.stop()
        await until(lambda: second.replication is not None and second.replication.leading.is_set(), "the takeover")
        assert second.store.term is not None
        assert second.store.get_meta("written_by") == "one"
        # the new leader found the fabric's revision in etcd rather than recording one of its own
        assert second.revisions.current() is not None
        assert set(second.revisions.revisions) == set(first.revisions.revisions)
    finally:
        await second.stop()


async def test_a_second_controller_with_the_same_replica_id_is_refused(cluster: EtcdCluster) -> None:
    first = Controller(load_topology(DIAMOND), on_etcd(cluster, "same"))
    await first.start()
    try:
        again = Controller(load_topology(DIAMOND), on_etcd(cluster, "same"))
        with pytest.raises(DuplicateReplica, match="'same' is already running"):
            await again.start()
    finally:
        await first.stop()


async def test_a_controller_of_another_topology_on_the_same_fabric_is_refused(cluster: EtcdCluster) -> None:
    first = Controller(load_topology(DIAMOND), on_etcd(cluster, "one"))
    await first.start()
    try:
        other = Controller(load_topology(RING6), on_etcd(cluster, "two", store_fabric_id="diamond"))
        with pytest.raises(FabricMismatch) as info:
            await other.start()
        assert "'diamond'" in str(info.value) and "'ring6'" in str(info.value)
    finally:
        await first.stop()
